//! The configuration contract of the `myelin` binary: bad settings stop it
//! with a message naming the key, and `generate-config` prints a usable
//! commented TOML file. These run the binary directly and need no backend.

use std::time::Duration;

use complement_tests::server::{run_myelin, Exited};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `myelin` with otherwise valid settings plus `overrides`.
async fn run_with(args: &[&str], overrides: &[(&str, &str)]) -> Exited {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = complement_tests::postgres::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let federation_listen = format!("127.0.0.1:{}", complement_tests::postgres::free_port());
    let data_dir = dir.path().to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = vec![
        ("MYELIN_SERVER_NAME", "localhost"),
        ("MYELIN_CLIENT_LISTEN", &listen),
        ("MYELIN_FEDERATION_LISTEN", &federation_listen),
        ("MYELIN_DATA_DIR", &data_dir),
        ("MYELIN_LOG", "warn"),
    ];
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key, value));
    }
    run_myelin(args, &env, TIMEOUT).await
}

#[track_caller]
fn assert_fails_naming(run: &Exited, key: &str) {
    assert!(
        !run.status.success(),
        "myelin must refuse to start, exited with {}",
        run.status
    );
    assert!(
        run.stderr.to_lowercase().contains(key),
        "the error must name {key}; stderr:\n{}",
        run.stderr
    );
}

#[tokio::test]
async fn config_invalid_listen_address_is_fatal() {
    let run = run_with(&[], &[("MYELIN_CLIENT_LISTEN", "notanaddress")]).await;
    assert_fails_naming(&run, "client_listen");
}

#[tokio::test]
async fn config_bad_federation_listener_settings_are_fatal() {
    let run = run_with(&[], &[("MYELIN_FEDERATION_LISTEN", "notanaddress")]).await;
    assert_fails_naming(&run, "federation_listen");
    let run = run_with(&[], &[("MYELIN_FEDERATION_TLS_CERT", "/tmp/cert.pem")]).await;
    assert_fails_naming(&run, "federation_tls_key");
    let run = run_with(
        &[],
        &[
            ("MYELIN_FEDERATION_TLS_CERT", "/nonexistent-myelin/cert.pem"),
            ("MYELIN_FEDERATION_TLS_KEY", "/nonexistent-myelin/key.pem"),
        ],
    )
    .await;
    assert_fails_naming(&run, "/nonexistent-myelin/cert.pem");
}

#[tokio::test]
async fn config_invalid_boolean_is_fatal() {
    let run = run_with(&[], &[("MYELIN_REGISTRATION_OPEN", "maybe")]).await;
    assert_fails_naming(&run, "registration_open");
}

#[tokio::test]
async fn config_bad_voip_and_rtc_settings_are_fatal() {
    for (env, key, value) in [
        (
            "MYELIN_VOIP_TURN_URIS",
            "voip.turn_uris",
            "http://turn.example.org",
        ),
        (
            "MYELIN_VOIP_TURN_SHARED_SECRET",
            "voip.turn_shared_secret",
            "",
        ),
        (
            "MYELIN_VOIP_TURN_USER_LIFETIME",
            "voip.turn_user_lifetime",
            "0",
        ),
        (
            "MYELIN_RTC_LIVEKIT_SERVICE_URLS",
            "rtc.livekit_service_urls",
            "livekit.example.org",
        ),
    ] {
        let run = run_with(&[], &[(env, value)]).await;
        assert_fails_naming(&run, key);
    }
}

#[tokio::test]
async fn config_missing_config_file_is_fatal() {
    let path = "/nonexistent-myelin-dir/myelin.toml";
    let run = run_with(&["--config", path], &[]).await;
    assert!(
        !run.status.success(),
        "a missing --config file must be fatal, exited with {}",
        run.status
    );
    assert!(
        run.stderr.contains(path),
        "the error must name the file; stderr:\n{}",
        run.stderr
    );
}

#[tokio::test]
async fn config_generate_config_prints_commented_toml() {
    let run = run_with(&["generate-config"], &[]).await;
    assert!(
        run.status.success(),
        "generate-config exited with {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    assert!(
        run.stdout.contains('#'),
        "the generated config should be commented:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("server_name"),
        "the generated config should mention server_name:\n{}",
        run.stdout
    );
    if let Err(e) = run.stdout.parse::<toml::Table>() {
        panic!(
            "generate-config did not print valid TOML: {e}\n{}",
            run.stdout
        );
    }
}
