//! The `myelin-admin` operator CLI, run as a separate process against a
//! server under test.

use std::time::Duration;

use complement_tests::admin::run_admin;
use complement_tests::server::Exited;
use complement_tests::{
    assert_error, assert_ok, backend_tests, unique_name, Backend, ServerOptions, TestServer,
};

const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `myelin-admin --url URL --shared-secret SECRET user create NAME [--admin]
/// --password PASSWORD`.
async fn user_create(url: &str, secret: &str, name: &str, password: &str, admin: bool) -> Exited {
    let mut args = vec![
        "--url",
        url,
        "--shared-secret",
        secret,
        "user",
        "create",
        name,
    ];
    if admin {
        args.push("--admin");
    }
    args.extend(["--password", password]);
    run_admin(&args, CLI_TIMEOUT).await
}

#[track_caller]
fn assert_exit(run: &Exited, code: i32, what: &str) {
    assert_eq!(
        run.status.code(),
        Some(code),
        "{what}: expected exit code {code}, got {}\nstdout: {}\nstderr: {}",
        run.status,
        run.stdout,
        run.stderr
    );
}

/// `user create` registers users through shared-secret registration, with
/// or without the admin flag, and reports failures on stderr with exit 1.
async fn admin_cli_user_create(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let Some(secret) = hs.shared_secret() else {
        complement_tests::skip(
            "admin_cli_user_create",
            "set MYELIN_TEST_SHARED_SECRET for an external server",
        );
        return;
    };
    let client = hs.client();

    // An admin and a normal user.
    let admin_name = unique_name("cli-admin");
    let run = user_create(hs.url(), &secret, &admin_name, "admin pw", true).await;
    assert_exit(&run, 0, "user create --admin");
    assert_eq!(
        run.stdout.trim_end(),
        format!("Created user {} (admin)", hs.user_id(&admin_name)),
        "stdout of user create --admin (stderr: {})",
        run.stderr
    );
    let user_name = unique_name("cli-user");
    let run = user_create(hs.url(), &secret, &user_name, "user pw", false).await;
    assert_exit(&run, 0, "user create");
    assert_eq!(
        run.stdout.trim_end(),
        format!("Created user {} (not admin)", hs.user_id(&user_name)),
        "stdout of user create (stderr: {})",
        run.stderr
    );

    // Both can log in with the password they were given.
    let login = client.login(&admin_name, "admin pw").await;
    let body = assert_ok(&login, "login as the CLI-created admin");
    assert_eq!(body["user_id"], hs.user_id(&admin_name), "{body}");
    let admin = client.authed(body, "admin pw");
    let login = client.login(&user_name, "user pw").await;
    let body = assert_ok(&login, "login as the CLI-created user");
    assert_eq!(body["user_id"], hs.user_id(&user_name), "{body}");
    let user = client.authed(body, "user pw");

    // The admin flag took effect: only the admin may use the admin API.
    let tokens = admin.get(TOKENS).await;
    let body = assert_ok(&tokens, "admin lists registration tokens");
    assert!(
        body["registration_tokens"].is_array(),
        "registration_tokens must be an array: {body}"
    );
    assert_error(
        &user.get(TOKENS).await,
        403,
        "M_FORBIDDEN",
        "non-admin lists registration tokens",
    );

    // A wrong secret is refused by the server, and nobody is created.
    let refused_name = unique_name("cli-refused");
    let run = user_create(hs.url(), "not the secret", &refused_name, "pw", false).await;
    assert_exit(&run, 1, "user create with a wrong shared secret");
    assert!(
        run.stderr.starts_with("error: M_FORBIDDEN"),
        "wrong secret: stderr must start with `error: M_FORBIDDEN`, got {:?}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "nothing on stdout on failure: {:?}",
        run.stdout
    );
    assert_error(
        &client.login(&refused_name, "pw").await,
        403,
        "M_FORBIDDEN",
        "login as a user whose creation was refused",
    );

    // A taken name.
    let run = user_create(hs.url(), &secret, &user_name, "other pw", false).await;
    assert_exit(&run, 1, "user create with a taken name");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("M_USER_IN_USE"),
        "taken name: stderr must be `error: M_USER_IN_USE…`, got {:?}",
        run.stderr
    );
    assert_ok(
        &client.login(&user_name, "user pw").await,
        "the original user keeps their password",
    );

    // Nothing listens on port 1 of the loopback interface.
    let run = user_create("http://127.0.0.1:1", &secret, "nobody", "pw", false).await;
    assert_exit(&run, 1, "user create against an unreachable server");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("could not reach the server"),
        "unreachable server: stderr must say it could not reach the server, got {:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains("127.0.0.1:1"),
        "unreachable server: stderr must name the URL, got {:?}",
        run.stderr
    );
}

backend_tests!(admin_cli_user_create);
