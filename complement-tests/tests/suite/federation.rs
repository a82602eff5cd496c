//! The federation API's own listener (issue 14): TLS on `MYELIN_FEDERATION_LISTEN` with a
//! self-signed certificate made once in the data directory, the server's version and keys
//! there, Matrix errors for unknown paths, and nothing spoken in plain HTTP; and two Myelins
//! that reach each other (named after their federation listeners on loopback), sign their
//! requests and check each other's.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, ServerOptions, TestServer,
};
use serde_json::Value;

/// A client that accepts the test server's self-signed certificate (tests only).
fn tls_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The federation listener answers over TLS: version, signing keys (the same as the client
/// listener publishes), `M_UNRECOGNIZED` for unknown paths; plain HTTP gets no answer; the
/// certificate is kept across a restart.
#[tokio::test]
async fn federation_listener_speaks_tls() {
    let Some(mut hs) = TestServer::start(Backend::Sqlite, ServerOptions::default()).await else {
        return;
    };
    let Some(base) = hs.federation_tls_url().map(str::to_owned) else {
        return; // an external server
    };
    let client = tls_client();
    let (status, version) =
        get_json(&client, &format!("{base}/_matrix/federation/v1/version")).await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(version["server"]["name"], "Myelin", "{version}");
    assert!(version["server"]["version"].is_string(), "{version}");

    let (status, keys) = get_json(&client, &format!("{base}/_matrix/key/v2/server")).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["server_name"], "localhost", "{keys}");
    let (_, client_keys) = get_json(&client, &format!("{}/_matrix/key/v2/server", hs.url())).await;
    assert_eq!(
        keys["verify_keys"], client_keys["verify_keys"],
        "one signing key on both listeners"
    );
    assert!(keys["signatures"]["localhost"].is_object(), "{keys}");

    let (status, unknown) =
        get_json(&client, &format!("{base}/_matrix/federation/v1/nonsense")).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["errcode"], "M_UNRECOGNIZED", "{unknown}");
    // The client API is not served there.
    let (status, _) = get_json(&client, &format!("{base}/_matrix/client/versions")).await;
    assert_eq!(status, 404);

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = base.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/_matrix/federation/v1/version"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        answer.is_err() || !answer.unwrap().status().is_success(),
        "plain HTTP must not be served on the federation listener"
    );

    // A client that checks certificates refuses the self-signed one.
    let strict = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        strict
            .get(format!("{base}/_matrix/federation/v1/version"))
            .send()
            .await
            .is_err(),
        "a self-signed certificate is not trusted by default"
    );

    // After a restart the listener is back, with the same certificate and key.
    hs.restart().await;
    let (status, again) = get_json(&client, &format!("{base}/_matrix/federation/v1/version")).await;
    assert_eq!(status, 200, "{again}");
}

/// `MYELIN_FEDERATION_LISTEN=""` (or `MYELIN_FEDERATION_ENABLED=false`) turns the listener
/// off; the client API is unaffected.
#[tokio::test]
async fn federation_listener_can_be_turned_off() {
    for (key, value) in [
        ("MYELIN_FEDERATION_LISTEN", ""),
        ("MYELIN_FEDERATION_ENABLED", "false"),
    ] {
        let options = ServerOptions::default().env(key, value);
        let Some(hs) = TestServer::start(Backend::Sqlite, options).await else {
            return;
        };
        let Some(base) = hs.federation_tls_url() else {
            return;
        };
        assert!(
            tls_client()
                .get(format!("{base}/_matrix/federation/v1/version"))
                .send()
                .await
                .is_err(),
            "{key}={value:?}: nothing listens"
        );
        let (status, _) = get_json(
            &tls_client(),
            &format!("{}/_matrix/client/versions", hs.url()),
        )
        .await;
        assert_eq!(status, 200);
    }
}

/// A user on one server reads the profile of a user on another: the first server signs a
/// `query/profile` request, the second fetches the first's keys from it and checks the
/// signature. Unsigned or garbled requests are 401 `M_UNAUTHORIZED`; a server with the
/// default outbound policy does not reach loopback peers at all.
async fn remote_profile_over_federation(backend: Backend) {
    let Some(a) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b_federation) = b.federation_tls_url().map(str::to_owned) else {
        return;
    };
    let alice = a.register_user("alice").await;
    let bob = b.register_user("bob").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(bob.user_id())
    );
    assert_ok(
        &bob.put(&set, &serde_json::json!({ "displayname": "Bob of B" }))
            .await,
        "set name",
    );

    let path = format!("/_matrix/client/v3/profile/{}", encode(bob.user_id()));
    let profile = alice.get(&path).await;
    assert_eq!(
        assert_ok(&profile, "remote profile")["displayname"],
        "Bob of B"
    );
    let field = alice.get(&format!("{path}/displayname")).await;
    assert_eq!(assert_ok(&field, "remote field")["displayname"], "Bob of B");
    // Someone B does not have.
    let nobody = format!(
        "/_matrix/client/v3/profile/{}",
        encode(&b.user_id("nobody"))
    );
    assert_error(
        &alice.get(&nobody).await,
        404,
        "M_NOT_FOUND",
        "unknown remote user",
    );

    // B refuses what is not signed by a server it can check.
    let query = format!(
        "{b_federation}/_matrix/federation/v1/query/profile?user_id={}",
        encode(bob.user_id())
    );
    let client = tls_client();
    let unsigned = client.get(&query).send().await.expect("request");
    assert_eq!(unsigned.status().as_u16(), 401);
    let body: Value = unsigned.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    for header in [
        "X-Matrix nonsense",
        "X-Matrix origin=\"127.0.0.1:1\",key=\"ed25519:x\",sig=\"dGVzdA\"",
        &format!(
            "X-Matrix origin=\"{}\",destination=\"elsewhere.example\",key=\"ed25519:x\",sig=\"dGVzdA\"",
            a.server_name()
        ),
        &format!(
            "X-Matrix origin=\"{}\",key=\"ed25519:x\",sig=\"dGVzdA\"",
            a.server_name()
        ),
    ] {
        let response = client
            .get(&query)
            .header("Authorization", header)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 401, "{header}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{header}: {body}");
    }

    // A server with the default outbound policy does not reach a loopback peer.
    let Some(c) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let carol = c.register_user("carol").await;
    assert_error(
        &carol.get(&path).await,
        404,
        "M_NOT_FOUND",
        "loopback peer refused",
    );
}

backend_tests!(remote_profile_over_federation);

/// The operator's deny list (`MYELIN_FEDERATION_DENIED_SERVERS`) works both ways: the denying
/// server refuses the denied one's requests (403 `M_FORBIDDEN`) and never asks it anything,
/// while it still federates with everyone else.
#[tokio::test]
async fn denied_servers_are_refused_both_ways() {
    let backend = Backend::Sqlite;
    let Some(a) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(d) = TestServer::start(
        backend,
        ServerOptions::default()
            .federating()
            .env("MYELIN_FEDERATION_DENIED_SERVERS", a.server_name()),
    )
    .await
    else {
        return;
    };
    let alice = a.register_user("alice").await;
    let bob = b.register_user("bob").await;
    let dave = d.register_user("dave").await;
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{}", encode(user));
    // A cannot read D's users (D refuses), D cannot read A's (D does not ask).
    assert_error(
        &alice.get(&profile(dave.user_id())).await,
        404,
        "M_NOT_FOUND",
        "denied inbound",
    );
    assert_error(
        &dave.get(&profile(alice.user_id())).await,
        404,
        "M_NOT_FOUND",
        "denied outbound",
    );
    // B is not denied: both directions work.
    assert_ok(&bob.get(&profile(dave.user_id())).await, "b reads d");
    assert_ok(&dave.get(&profile(bob.user_id())).await, "d reads b");
}

/// Myelin and Synapse (the reference implementation) read each other's users' profiles over
/// federation: each signs its `query/profile` request (X-Matrix), fetches the other's keys
/// from its TLS listener, checks the key document and the request's signature. CI installs
/// Synapse (`.ci/run`); elsewhere the test is skipped when it is missing.
#[tokio::test]
async fn profiles_between_myelin_and_synapse() {
    if !complement_tests::synapse::available() {
        // CI installs Synapse (.ci/run); elsewhere it is optional.
        assert!(
            !complement_tests::in_ci(),
            "CI=true but Synapse is not installed in {}",
            complement_tests::synapse::venv().display()
        );
        eprintln!("skipping: Synapse is not installed");
        return;
    }
    let Some(myelin) =
        TestServer::start(Backend::Sqlite, ServerOptions::default().federating()).await
    else {
        return;
    };
    let synapse = complement_tests::synapse::Synapse::start_federating(Backend::Sqlite)
        .await
        .expect("Synapse starts");
    let alice = myelin.register_user("alice").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(alice.user_id())
    );
    assert_ok(
        &alice
            .put(
                &set,
                &serde_json::json!({ "displayname": "Alice on Myelin" }),
            )
            .await,
        "alice's name",
    );
    let bob = synapse.register_user("bob").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(bob.user_id())
    );
    assert_ok(
        &bob.put(
            &set,
            &serde_json::json!({ "displayname": "Bob on Synapse" }),
        )
        .await,
        "bob's name",
    );

    // Myelin asks Synapse.
    let path = format!("/_matrix/client/v3/profile/{}", encode(bob.user_id()));
    let profile = alice.get(&path).await;
    assert_eq!(
        assert_ok(
            &profile,
            &format!(
                "Bob's profile through Myelin; Synapse's log:\n{}",
                synapse.logs()
            )
        )["displayname"],
        "Bob on Synapse"
    );
    // Synapse asks Myelin.
    let path = format!("/_matrix/client/v3/profile/{}", encode(alice.user_id()));
    let profile = bob.get(&path).await;
    assert_eq!(
        assert_ok(
            &profile,
            &format!(
                "Alice's profile through Synapse; Synapse's log:\n{}",
                synapse.logs()
            )
        )["displayname"],
        "Alice on Myelin"
    );
}
