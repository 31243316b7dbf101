//! The stateless HTTP service: signature checks, limits, PING and unsupported interaction
//! types against an in-process server; routing, deadlines and failures end to end through the
//! emulator, the service and real gateway pod processes.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use guildshard::config::{HttpConfig, Secret, UrlTemplate};
use guildshard::ownership::{Strategy, Topology};
use guildshard::shutdown::Shutdown;
use serde_json::{json, Value};

const INTERNAL_TOKEN: &str = "http-test-internal-token";

/// An in-process HTTP service on 127.0.0.1:0; shut down on drop.
struct Service {
    addr: SocketAddr,
    shutdown: Shutdown,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Service {
    async fn start(public_key: [u8; 32], url_template: &str, pods: u32) -> Service {
        let cfg = HttpConfig {
            initial_topology: Topology::new(Strategy::Md5, pods).expect("positive"),
            public_key,
            internal_token: Secret::new(INTERNAL_TOKEN),
            url_template: UrlTemplate::parse(url_template).expect("template"),
            discord: None,
            bind: "127.0.0.1:0".parse().expect("addr"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        tokio::spawn(guildshard::http::run(cfg, listener, shutdown.clone()));
        Service { addr, shutdown }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut msg = timestamp.as_bytes().to_vec();
    msg.extend_from_slice(body);
    hex::encode(key.sign(&msg).to_bytes())
}

/// POSTs `body` to /interactions with the given signature headers (None: header left out).
async fn post(
    svc: &Service,
    body: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(svc.url("/interactions"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-signature-ed25519", s);
    }
    if let Some(t) = timestamp {
        req = req.header("x-signature-timestamp", t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn signed(svc: &Service, key: &SigningKey, body: &[u8]) -> (u16, Value) {
    let ts = now_secs().to_string();
    let sig = sign(key, &ts, body);
    post(svc, body, Some(&sig), Some(&ts)).await
}

// Pods that are never there: a port from a listener that was closed again.
async fn unused_template() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/{{ordinal}}")
}

#[tokio::test]
async fn rejects_every_bad_signature_with_401_before_parsing() {
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let svc = Service::start(key.verifying_key().to_bytes(), &unused_template().await, 1).await;
    let body = br#"{"type":1,"id":"1","application_id":"2","token":"t","version":1}"#;
    let ts = now_secs().to_string();
    let good = sign(&key, &ts, body);

    assert_eq!(
        post(&svc, body, Some(&good), Some(&ts)).await,
        (200, json!({"type": 1}))
    );
    // Tampered body.
    let tampered = br#"{"type":1,"id":"9","application_id":"2","token":"t","version":1}"#;
    assert_eq!(post(&svc, tampered, Some(&good), Some(&ts)).await.0, 401);
    // Signed by another key.
    let other = SigningKey::from_bytes(&[4u8; 32]);
    assert_eq!(
        post(&svc, body, Some(&sign(&other, &ts, body)), Some(&ts))
            .await
            .0,
        401
    );
    // Missing headers, bad hex.
    assert_eq!(post(&svc, body, None, Some(&ts)).await.0, 401);
    assert_eq!(post(&svc, body, Some(&good), None).await.0, 401);
    assert_eq!(post(&svc, body, Some("not-hex"), Some(&ts)).await.0, 401);
    // Stale and future timestamps, correctly signed.
    for ts in [now_secs() - 600, now_secs() + 600] {
        let ts = ts.to_string();
        let (status, err) = post(&svc, body, Some(&sign(&key, &ts, body)), Some(&ts)).await;
        assert_eq!(status, 401, "{err}");
        assert!(
            err["error"].as_str().is_some_and(|e| e.contains("stale")),
            "{err}"
        );
    }
    // Garbage that is not even JSON is refused by the signature check, not the parser.
    assert_eq!(post(&svc, b"{{{", Some(&good), Some(&ts)).await.0, 401);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_malformed_ones_400() {
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let svc = Service::start(key.verifying_key().to_bytes(), &unused_template().await, 1).await;
    let big = format!(r#"{{"type":2,"pad":"{}"}}"#, "x".repeat(80 * 1024));
    assert_eq!(signed(&svc, &key, big.as_bytes()).await.0, 413);
    assert_eq!(signed(&svc, &key, b"{not json").await.0, 400);
    assert_eq!(signed(&svc, &key, br#"{"no_type":true}"#).await.0, 400);
    assert_eq!(
        signed(&svc, &key, br#"{"type":2,"guild_id":"abc"}"#)
            .await
            .0,
        400
    );
    // A guild id above i64::MAX cannot be stored by any pod: refused here, not routed.
    let (status, err) = signed(
        &svc,
        &key,
        br#"{"type":2,"guild_id":"9223372036854775808"}"#,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("9223372036854775808")),
        "{err}"
    );
    let resp = reqwest::Client::new()
        .get(svc.url("/api/v1/guilds/9223372036854775808/stats"))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn unsupported_types_are_answered_without_routing_and_dead_pods_politely() {
    let key = SigningKey::from_bytes(&[6u8; 32]);
    let svc = Service::start(key.verifying_key().to_bytes(), &unused_template().await, 2).await;
    // A button click (type 3) and a modal submit (type 5): a clear ephemeral message.
    for kind in [3, 5] {
        let body = json!({"type": kind, "guild_id": "81384788765712384"}).to_string();
        let (status, resp) = signed(&svc, &key, body.as_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(resp["type"], 4, "{resp}");
        assert_eq!(resp["data"]["flags"], 64, "{resp}");
    }
    // Autocomplete can only be answered with choices: none.
    let (_, resp) = signed(&svc, &key, br#"{"type":4,"guild_id":"1"}"#).await;
    assert_eq!(resp, json!({"type": 8, "data": {"choices": []}}));
    // A command while no pod is up: the polite ephemeral answer, at once.
    let body = json!({"type": 2, "guild_id": "81384788765712384", "data": {"name": "stats"}});
    let (status, resp) = signed(&svc, &key, body.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(resp["type"], 4, "{resp}");
    assert_eq!(resp["data"]["flags"], 64, "{resp}");
    assert!(
        resp["data"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("restarting")),
        "{resp}"
    );

    let client = reqwest::Client::new();
    // The operator API needs the internal bearer token; with it, a partial overview.
    let resp = client
        .get(svc.url("/api/v1/overview"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 401);
    let overview: Value = client
        .get(svc.url("/api/v1/overview"))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(overview["partial"], true, "{overview}");
    assert_eq!(
        overview["pods"].as_array().map(Vec::len),
        Some(2),
        "{overview}"
    );
    assert_eq!(overview["pods"][0]["health"], "unreachable", "{overview}");
    let resp = client
        .get(svc.url("/api/v1/guilds/81384788765712384/stats"))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 503);

    // Probes and metrics.
    let ready = client.get(svc.url("/readyz")).send().await.expect("get");
    assert_eq!(ready.status().as_u16(), 200);
    let metrics = client
        .get(svc.url("/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"outcome="owner_unavailable""#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="unsupported""#), "{metrics}");
    assert!(
        metrics.contains("guildshard_http_owner_unavailable_total{pod=\"http\"} 2"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits and overload, against an in-process service and a stand-in for the owner pod.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guildshard::http::AppState;
use guildshard::listener::{Arrival, Limits};
use guildshard::wire::{ErrorBody, InteractionOutcome, DEADLINE_HEADER};

/// A stand-in for the gateway pods' internal API on 127.0.0.1:0: answers every interaction
/// with `status` (200: "deferred"; otherwise an error body) after `delay`, and records the
/// deadline each request was given.
struct FakePod {
    template: String,
    deadlines: Arc<Mutex<Vec<u64>>>,
    shutdown: Shutdown,
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn fake_pod(status: u16, delay: Duration) -> FakePod {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            &format!("/{{ordinal}}{}", guildshard::internal_paths::INTERACTIONS),
            axum::routing::post(
                move |State(deadlines): State<Arc<Mutex<Vec<u64>>>>, headers: HeaderMap| async move {
                    let deadline = headers
                        .get(DEADLINE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    deadlines.lock().expect("lock").push(deadline);
                    tokio::time::sleep(delay).await;
                    if status == 200 {
                        axum::Json(InteractionOutcome::Deferred { ephemeral: true }).into_response()
                    } else {
                        let code = StatusCode::from_u16(status).expect("status");
                        (code, axum::Json(ErrorBody { error: "not a Discord interaction".into() }))
                            .into_response()
                    }
                },
            ),
        )
        .with_state(deadlines.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let stop = shutdown.cancelled();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    });
    FakePod {
        template: format!("http://{addr}/{{ordinal}}"),
        deadlines,
        shutdown,
    }
}

fn http_config(public_key: [u8; 32], url_template: &str) -> HttpConfig {
    HttpConfig {
        initial_topology: Topology::new(Strategy::Md5, 1).expect("positive"),
        public_key,
        internal_token: Secret::new(INTERNAL_TOKEN),
        url_template: UrlTemplate::parse(url_template).expect("template"),
        discord: None,
        bind: "127.0.0.1:0".parse().expect("addr"),
    }
}

/// Serves `state` on 127.0.0.1:0 with `limits`; shut down on drop.
async fn serve_state(state: AppState, limits: Limits) -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    tokio::spawn(guildshard::http::serve_with_limits(
        state,
        listener,
        limits,
        shutdown.clone(),
    ));
    Service { addr, shutdown }
}

const COMMAND: &str = r#"{"type":2,"guild_id":"81384788765712384","data":{"name":"stats"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_neither_starve_a_ping_nor_stay_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = SigningKey::from_bytes(&[11u8; 32]);
    let cfg = http_config(key.verifying_key().to_bytes(), &unused_template().await);
    let limits = Limits {
        max_connections: 2048,
        header_read: Duration::from_secs(2),
        body: Duration::from_secs(2),
        drain: Duration::from_secs(2),
    };
    let svc = serve_state(AppState::new(&cfg, "http").expect("state"), limits).await;

    // 500 connections that never finish a request: idle, half a head, a body that stalls.
    let mut slow = Vec::new();
    for i in 0..500 {
        let mut conn = tokio::net::TcpStream::connect(svc.addr)
            .await
            .expect("connect");
        match i % 3 {
            0 => {}
            1 => conn
                .write_all(b"POST /interactions HTTP/1.1\r\nHost: x\r\nX-Sig")
                .await
                .expect("write"),
            _ => conn
                .write_all(
                    b"POST /interactions HTTP/1.1\r\nHost: x\r\nx-signature-ed25519: 00\r\n\
                      x-signature-timestamp: 1\r\ncontent-length: 100\r\n\r\n{\"type\"",
                )
                .await
                .expect("write"),
        }
        slow.push(conn);
    }
    let opened = Instant::now();

    // A genuine PING is still answered at once.
    let started = Instant::now();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), signed(&svc, &key, br#"{"type":1}"#))
            .await
            .expect("the PING is answered while 500 slow connections are open");
    let ping = started.elapsed();
    println!("PING answered in {ping:?} with 500 slow connections open");
    assert_eq!((status, body), (200, json!({"type": 1})));
    assert!(
        opened.elapsed() < limits.header_read,
        "the slow connections were still open"
    );

    // Every slow connection is closed by the server within its timeouts (generously bounded).
    let closed_within = limits.header_read + limits.body + Duration::from_secs(5);
    let all_closed = futures::future::join_all(slow.into_iter().map(|mut conn| async move {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }));
    tokio::time::timeout(closed_within, all_closed)
        .await
        .expect("every slow connection closed by the server");
    println!(
        "all 500 slow connections closed {:?} after they were opened",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_admission_limit_users_are_told_busy_at_once() {
    let key = SigningKey::from_bytes(&[12u8; 32]);
    // An owner that takes 1.5 s to say "deferred" to everything.
    let pod = fake_pod(200, Duration::from_millis(1500)).await;
    let cfg = http_config(key.verifying_key().to_bytes(), &pod.template);
    let state = AppState::with_forward_limit(&cfg, "http", 4).expect("state");
    let svc = serve_state(state.clone(), Limits::PUBLIC).await;

    let answers = futures::future::join_all((0..24).map(|_| {
        let (svc, key) = (&svc, &key);
        async move {
            let started = Instant::now();
            let (status, body) = signed(svc, key, COMMAND.as_bytes()).await;
            (status, body, started.elapsed())
        }
    }))
    .await;
    let deferred = answers.iter().filter(|(_, b, _)| b["type"] == 5).count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(_, b, _)| {
            b["type"] == 4
                && b["data"]["flags"] == 64
                && b["data"]["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("busy"))
        })
        .collect();
    assert!(answers.iter().all(|(s, _, _)| *s == 200), "{answers:?}");
    assert_eq!(deferred, 4, "{answers:?}");
    assert_eq!(busy.len(), 20, "{answers:?}");
    let slowest_busy = busy.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
    println!("slowest 'busy' answer: {slowest_busy:?}");
    assert!(
        slowest_busy < Duration::from_millis(1500),
        "busy answers waited for the owner"
    );
    assert_eq!(
        pod.deadlines.lock().expect("lock").len(),
        4,
        "only admitted requests reach the pod"
    );
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains("guildshard_http_busy_total{pod=\"http\"} 20"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_deadline_counts_from_arrival_not_from_the_handler() {
    use tower::ServiceExt;
    let key = SigningKey::from_bytes(&[13u8; 32]);
    let pod = fake_pod(200, Duration::ZERO).await;
    let cfg = http_config(key.verifying_key().to_bytes(), &pod.template);
    let app = guildshard::http::app(AppState::new(&cfg, "http").expect("state"));
    let ts = now_secs().to_string();
    let mut request = axum::http::Request::post("/interactions")
        .header("content-type", "application/json")
        .header("x-signature-ed25519", sign(&key, &ts, COMMAND.as_bytes()))
        .header("x-signature-timestamp", &ts)
        .body(axum::body::Body::from(COMMAND))
        .expect("request");
    // The request reached the listener a second ago (it waited behind others since).
    request
        .extensions_mut()
        .insert(Arrival(Instant::now() - Duration::from_secs(1)));
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status().as_u16(), 200);
    let deadlines = pod.deadlines.lock().expect("lock").clone();
    // 3000 ms from arrival, less the 400 ms margin, less the second already gone.
    assert_eq!(deadlines.len(), 1, "{deadlines:?}");
    assert!(deadlines[0] <= 1600 && deadlines[0] > 1000, "{deadlines:?}");
}

#[tokio::test]
async fn a_pod_that_cannot_read_the_command_is_not_called_restarting() {
    let key = SigningKey::from_bytes(&[14u8; 32]);
    let pod = fake_pod(400, Duration::ZERO).await;
    let cfg = http_config(key.verifying_key().to_bytes(), &pod.template);
    let state = AppState::new(&cfg, "http").expect("state");
    let svc = serve_state(state.clone(), Limits::PUBLIC).await;
    let (status, body) = signed(&svc, &key, COMMAND.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], 4, "{body}");
    assert_eq!(body["data"]["flags"], 64, "{body}");
    let content = body["data"]["content"].as_str().unwrap_or_default();
    assert!(content.contains("could not read"), "{body}");
    assert!(!content.contains("restarting"), "{body}");
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains("guildshard_http_unreadable_total{pod=\"http\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guildshard_http_owner_unavailable_total{pod=\"http\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="unreadable""#), "{metrics}");
}

async fn start_emulator(
    cfg: guildshard::emulator::EmulatorConfig,
) -> (guildshard::emulator::Emulator, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = Shutdown::new();
    let emu = guildshard::emulator::start(cfg, listener, shutdown.clone())
        .await
        .expect("emulator starts");
    (emu, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_commands_bulk_overwrites_idempotently() {
    let (emu, shutdown) = start_emulator(Default::default()).await;
    let app = emu.application();
    let run = |env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            crate::support::process::run_cli(&["register-commands"], &env, None)
        })
    };
    let env = vec![
        ("DISCORD_TOKEN".to_owned(), app.token.clone()),
        ("DISCORD_API_BASE".to_owned(), app.api_base.clone()),
    ];
    let first = run(env.clone()).await.expect("join");
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "registered 5 commands"
    );
    let registered = emu.commands()["global"].clone();
    let names: Vec<&str> = registered
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["stats", "leaderboard", "modlog", "setup", "Report message"]
    );
    // Again, with the application id given: the same set, the same ids.
    let mut env = env;
    env.push(("DISCORD_APPLICATION_ID".to_owned(), app.id.to_string()));
    let second = run(env).await.expect("join");
    assert!(second.status.success(), "{second:?}");
    // Discord bumps `version` on an overwrite; everything else, ids included, stays.
    let without_version = |v: Value| -> Vec<Value> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.as_object_mut().expect("object").remove("version");
                c
            })
            .collect()
    };
    assert_eq!(
        without_version(emu.commands()["global"].clone()),
        without_version(registered)
    );
    // A wrong token is refused with one line and a failure exit.
    let bad = run(vec![
        ("DISCORD_TOKEN".to_owned(), "wrong".to_owned()),
        ("DISCORD_API_BASE".to_owned(), app.api_base.clone()),
    ])
    .await
    .expect("join");
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("401"),
        "{bad:?}"
    );
    shutdown.trigger();
}

// ---------------------------------------------------------------------------------------------
// End to end: emulator user → HTTP service (process) → owner gateway pod (process) → what the
// user sees.

use guildshard::emulator::{CommandKind, CommandOption, Emulator, InteractionRecord, RunCommand};
use guildshard::local_cluster::LocalCluster;
use guildshard::ownership::{owner, GuildId, Ordinal};

use std::collections::BTreeSet;

use crate::support::cluster;
use crate::support::eventually::{eventually, patience};

/// The emulator's signing key, derived as the emulator derives it from its seed, so tests can
/// forge requests that differ from a genuine one in exactly one way. Checked against the
/// public key the emulator announces.
fn emulator_key(emu: &Emulator) -> SigningKey {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(emu.config().seed ^ 0x5eed_ed25_519d_15c0);
    let key = SigningKey::from_bytes(&rng.gen::<[u8; 32]>());
    assert_eq!(
        hex::encode(key.verifying_key().as_bytes()),
        emu.application().public_key_hex,
        "the emulator's key derivation changed"
    );
    key
}

struct World {
    guild: u64,
    mod_user: u64,
    author: u64,
    general: u64,
    mod_log: u64,
}

/// A guild owned by `ordinal` under md5/`pods`, its owner (a moderator) and an ordinary member.
fn world(emu: &Emulator, pods: u32, ordinal: u32) -> World {
    let topology = Topology::new(Strategy::Md5, pods).expect("positive");
    let bot = emu.application().id;
    let g = emu
        .guilds()
        .into_iter()
        .find(|g| owner(GuildId(g.id), topology) == Ordinal(ordinal))
        .expect("some guild hashes to the ordinal");
    let author = *g
        .members
        .iter()
        .find(|m| **m != bot && **m != g.owner_id)
        .expect("an ordinary member");
    World {
        guild: g.id,
        mod_user: g.owner_id,
        author,
        general: g.channels[0],
        mod_log: g.channels[1],
    }
}

fn command(w: &World, name: &str, user: u64, options: Vec<CommandOption>) -> RunCommand {
    RunCommand {
        name: name.into(),
        kind: CommandKind::ChatInput,
        guild_id: Some(w.guild),
        channel_id: Some(w.general),
        user_id: user,
        options,
        target_id: None,
    }
}

fn option(name: &str, kind: u8, value: u64) -> CommandOption {
    CommandOption {
        name: name.into(),
        kind,
        value: json!(value.to_string()),
    }
}

/// Runs a command and returns its record once the initial response is in.
async fn run(emu: &Emulator, cmd: RunCommand) -> InteractionRecord {
    emu.run_command(cmd).await.expect("command delivered")
}

fn content(record: &InteractionRecord) -> String {
    record
        .original
        .as_ref()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn responded(record: &InteractionRecord) -> Option<u8> {
    match record.outcome {
        guildshard::emulator::InteractionOutcome::Responded { response_type } => {
            Some(response_type)
        }
        _ => None,
    }
}

/// Request headers for a hand-made POST.
type Headers<'a> = Vec<(&'a str, String)>;

async fn http_post(cluster: &LocalCluster, body: &[u8], headers: &[(&str, String)]) -> u16 {
    let addr = cluster.http_addr().expect("http runs");
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/interactions"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.expect("post").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_end_to_end_and_forgeries_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start_with(dir.path(), 2, 12, Strategy::Md5, &[], true).await;
    let emu = cluster.emulator();
    // A guild owned by ordinal 1, so routing (not a default to 0) is what gets it there.
    let w = world(emu, 2, 1);

    let mut messages = Vec::new();
    for i in 0..3 {
        let m = emu
            .post_message(w.general, w.author, &format!("hello {i}"))
            .expect("post");
        messages.push(m.id);
    }
    // /stats reflects the recorded activity (the gateway records it asynchronously).
    let stats = eventually("/stats to show 3 messages", || async {
        let r = run(emu, command(&w, "stats", w.author, vec![])).await;
        content(&r).contains("**3** messages").then_some(r)
    })
    .await;
    assert_eq!(responded(&stats), Some(4));
    // /stats user:<member> asked by someone else, and /stats server (sub-commands).
    let sub = |name: &str, options: Vec<CommandOption>| CommandOption {
        name: name.into(),
        kind: 1,
        value: serde_json::to_value(options).expect("options as json"),
    };
    let of_author = run(
        emu,
        command(
            &w,
            "stats",
            w.mod_user,
            vec![sub("user", vec![option("user", 6, w.author)])],
        ),
    )
    .await;
    assert!(
        content(&of_author).contains(&format!("<@{}>, last 30 days: **3** messages", w.author)),
        "{of_author:?}"
    );
    let server = run(
        emu,
        command(
            &w,
            "stats",
            w.author,
            vec![sub(
                "server",
                vec![CommandOption {
                    name: "days".into(),
                    kind: 4,
                    value: json!(7),
                }],
            )],
        ),
    )
    .await;
    assert!(
        content(&server).contains("last 7 days**: 3 messages"),
        "{server:?}"
    );
    let leaderboard = run(emu, command(&w, "leaderboard", w.author, vec![])).await;
    assert!(
        content(&leaderboard).contains(&format!("<@{}> — 3 messages", w.author)),
        "{leaderboard:?}"
    );

    // /setup by the guild owner; refused for an ordinary member.
    let refused = run(
        emu,
        command(&w, "setup", w.author, vec![option("mod-log", 7, w.mod_log)]),
    )
    .await;
    assert!(content(&refused).contains("Manage Server"), "{refused:?}");
    let setup = run(
        emu,
        command(
            &w,
            "setup",
            w.mod_user,
            vec![option("mod-log", 7, w.mod_log)],
        ),
    )
    .await;
    assert!(content(&setup).contains("Saved"), "{setup:?}");
    assert!(setup.is_ephemeral());

    // Report message → stored, posted to the mod-log, counted by /modlog.
    let report_cmd = RunCommand {
        name: "Report message".into(),
        kind: CommandKind::Message,
        target_id: Some(messages[0]),
        ..command(&w, "Report message", w.mod_user, vec![])
    };
    let report = run(emu, report_cmd).await;
    assert_eq!(responded(&report), Some(4), "{report:?}");
    assert!(report.is_ephemeral(), "{report:?}");
    eventually("the report in the mod-log", || async {
        let posts = emu.bot_messages(w.mod_log).expect("mod-log");
        posts
            .iter()
            .any(|m| m.content.contains("Report"))
            .then_some(())
    })
    .await;
    let modlog = || {
        run(
            emu,
            command(&w, "modlog", w.mod_user, vec![option("user", 6, w.author)]),
        )
    };
    let before = modlog().await;
    assert!(content(&before).contains("**1** reports"), "{before:?}");

    // DMs go to ordinal 0, which answers that the commands work in servers.
    let dm = run(
        emu,
        RunCommand {
            guild_id: None,
            channel_id: None,
            ..command(&w, "stats", w.author, vec![])
        },
    )
    .await;
    assert!(content(&dm).contains("inside a server"), "{dm:?}");

    // Forgeries of a second report: every variant is a 401 and nothing is executed.
    let key = emulator_key(emu);
    let mut forged = report.payload.clone();
    forged["id"] = json!("1234567890123456789");
    forged["data"]["target_id"] = json!(messages[1].to_string());
    let body = forged.to_string().into_bytes();
    let ts = now_secs().to_string();
    let stale = (now_secs() - 3600).to_string();
    let wrong_key = SigningKey::from_bytes(&[9u8; 32]);
    let sig = |k: &SigningKey, ts: &str, b: &[u8]| sign(k, ts, b);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let cases: Vec<(&str, Vec<u8>, Headers)> = vec![
        (
            "wrong key",
            body.clone(),
            vec![
                ("x-signature-ed25519", sig(&wrong_key, &ts, &body)),
                ("x-signature-timestamp", ts.clone()),
            ],
        ),
        (
            "tampered body",
            tampered,
            vec![
                ("x-signature-ed25519", sig(&key, &ts, &body)),
                ("x-signature-timestamp", ts.clone()),
            ],
        ),
        (
            "stale timestamp",
            body.clone(),
            vec![
                ("x-signature-ed25519", sig(&key, &stale, &body)),
                ("x-signature-timestamp", stale.clone()),
            ],
        ),
        (
            "missing signature",
            body.clone(),
            vec![("x-signature-timestamp", ts.clone())],
        ),
        (
            "missing timestamp",
            body.clone(),
            vec![("x-signature-ed25519", sig(&key, &ts, &body))],
        ),
    ];
    for (what, body, headers) in cases {
        assert_eq!(http_post(&cluster, &body, &headers).await, 401, "{what}");
    }
    let mut big = forged.clone();
    big["padding"] = json!("x".repeat(100 * 1024));
    let big = big.to_string().into_bytes();
    let headers = [
        ("x-signature-ed25519", sig(&key, &ts, &big)),
        ("x-signature-timestamp", ts.clone()),
    ];
    assert_eq!(http_post(&cluster, &big, &headers).await, 413);
    let after = modlog().await;
    assert!(
        content(&after).contains("**1** reports"),
        "forgeries executed: {after:?}"
    );

    // Every user saw exactly one reply per interaction.
    for r in emu.interactions() {
        assert_eq!(r.reply_count(), 1, "{r:?}");
    }

    // The operator API: the overview and a guild's stats from its owner.
    let addr = cluster.http_addr().expect("http runs");
    let client = reqwest::Client::new();
    let overview: Value = client
        .get(format!("http://{addr}/api/v1/overview"))
        .bearer_auth(cluster.internal_token())
        .send()
        .await
        .expect("overview")
        .json()
        .await
        .expect("json");
    assert_eq!(overview["partial"], false, "{overview}");
    assert_eq!(overview["topology_learned"], true, "{overview}");
    assert_eq!(
        overview["pods"].as_array().map(Vec::len),
        Some(2),
        "{overview}"
    );
    let stats: Value = client
        .get(format!("http://{addr}/api/v1/guilds/{}/stats", w.guild))
        .bearer_auth(cluster.internal_token())
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["ordinal"], 1, "{stats}");

    // A service that still believes in one pod (no refresher running, so it cannot learn
    // better first) sends the guild to ordinal 0, which refuses with 409 without executing;
    // the service re-routes once to the owner the pod names, and the user sees one answer.
    let cfg = HttpConfig {
        initial_topology: Topology::new(Strategy::Md5, 1).expect("positive"),
        public_key: key.verifying_key().to_bytes(),
        internal_token: Secret::new(cluster.internal_token()),
        url_template: UrlTemplate::parse(&cluster.url_template()).expect("template"),
        discord: None,
        bind: "127.0.0.1:0".parse().expect("addr"),
    };
    let state = guildshard::http::AppState::new(&cfg, "http-stale").expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stale_addr = listener.local_addr().expect("addr");
    let app_state = state.clone();
    let server =
        tokio::spawn(async move { axum::serve(listener, guildshard::http::app(app_state)).await });
    emu.set_interactions_url(Some(format!("http://{stale_addr}/interactions")));
    let rerouted = run(emu, command(&w, "stats", w.author, vec![])).await;
    assert!(
        content(&rerouted).contains("**3** messages"),
        "{rerouted:?}"
    );
    assert_eq!(rerouted.reply_count(), 1, "{rerouted:?}");
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains("guildshard_http_reroutes_total{pod=\"http-stale\"} 1"),
        "{metrics}"
    );
    // Asked to learn, it finds both pods and routes by N=2 from then on.
    let pods = guildshard::pod_client::PodClient::new(
        cfg.url_template.clone(),
        cfg.internal_token.clone(),
        guildshard::http::POD_TIMEOUTS,
    )
    .expect("client");
    state.topology().refresh(&pods, state.metrics()).await;
    assert_eq!(state.topology().current().topology.pods.get(), 2);
    assert!(state.topology().current().learned);
    server.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_down_is_answered_politely_and_a_slow_owner_defers_then_edits_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start_with(dir.path(), 2, 12, Strategy::Md5, &[], true).await;
    let w = world(cluster.emulator(), 2, 1);

    // The owner is killed: once its peer covers it, the peer answers for its guilds.
    cluster.kill_pod(1).await;
    let emu = cluster.emulator();
    let covered = eventually("the cover answers for the killed owner", || async {
        let r = run(emu, command(&w, "stats", w.author, vec![])).await;
        (responded(&r) == Some(4) && !content(&r).contains("restarting")).then_some(r)
    })
    .await;
    assert!(content(&covered).contains("messages here"), "{covered:?}");
    // Every pod down: the polite ephemeral answer, within Discord's deadline (the emulator
    // marks anything later as failed).
    cluster.kill_pod(0).await;
    let down = run(cluster.emulator(), command(&w, "stats", w.author, vec![])).await;
    assert_eq!(responded(&down), Some(4), "{down:?}");
    assert!(down.is_ephemeral(), "{down:?}");
    assert!(content(&down).contains("restarting"), "{down:?}");
    cluster.start_pod(0).await.expect("restart");

    // Back, but slower than the deadline: a deferred response, then exactly one edit.
    cluster
        .start_pod_with(
            1,
            &[("FAULT_COMMAND_DELAY_MS".to_owned(), "4000".to_owned())],
        )
        .await
        .expect("restart");
    cluster
        .wait_ready(1, crate::support::eventually::patience())
        .await
        .expect("ready");
    let slow = run(cluster.emulator(), command(&w, "stats", w.author, vec![])).await;
    assert_eq!(responded(&slow), Some(5), "{slow:?}");
    let emu = cluster.emulator();
    let edited = eventually("the deferred response to be edited", || async {
        let r = emu.interaction(slow.id).expect("recorded");
        (!r.edits.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(edited.edits.len(), 1, "{edited:?}");
    assert_eq!(edited.reply_count(), 1, "{edited:?}");
    assert!(content(&edited).contains("messages"), "{edited:?}");

    // Restarted normally: commands answer directly again.
    cluster
        .stop_pod(1, std::time::Duration::from_secs(20))
        .await;
    cluster.start_pod(1).await.expect("restart");
    cluster
        .wait_ready(1, crate::support::eventually::patience())
        .await
        .expect("ready");
    let back = run(cluster.emulator(), command(&w, "stats", w.author, vec![])).await;
    assert_eq!(responded(&back), Some(4), "{back:?}");
    assert!(content(&back).contains("messages"), "{back:?}");
    let emu = cluster.emulator();
    assert_eq!(emu.interaction(slow.id).expect("recorded").edits.len(), 1);
    // SIGTERM: the service drains and exits cleanly.
    assert_eq!(
        cluster.stop_http(std::time::Duration::from_secs(10)).await,
        Some(0)
    );
    cluster.shutdown().await;
}

/// A command whose caller (the HTTP service) gave up before it started is never run: that
/// user was told to try again, so running it too would make their retry act twice. Stood in
/// for by a client that gives up after 300 ms on a pod whose commands take 1.5 s to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_does_not_run_a_command_its_caller_gave_up_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start_with(
        dir.path(),
        1,
        12,
        Strategy::Md5,
        &[("FAULT_COMMAND_DELAY_MS", "1500")],
        true,
    )
    .await;
    let emu = cluster.emulator();
    let w = world(emu, 1, 0);
    let internal = UrlTemplate::parse(&cluster.url_template())
        .expect("template")
        .url_for(Ordinal(0));
    let public = cluster
        .pod(0)
        .and_then(|p| p.addr("public"))
        .expect("public address");
    let client = reqwest::Client::new();

    // /setup mod-log:#mod-log, abandoned after 300 ms although it was allowed 2 s.
    let setup = emu
        .signed_command(&command(
            &w,
            "setup",
            w.mod_user,
            vec![option("mod-log", 7, w.mod_log)],
        ))
        .expect("signed");
    let gave_up = client
        .post(format!(
            "{internal}{}",
            guildshard::internal_paths::INTERACTIONS
        ))
        .bearer_auth(cluster.internal_token())
        .header(DEADLINE_HEADER, "2000")
        .header("content-type", "application/json")
        .timeout(Duration::from_millis(300))
        .body(setup.body.clone())
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{gave_up:?}"
    );
    eventually("the pod to count the abandoned command", || async {
        let text = client
            .get(format!("http://{public}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("guildshard_interactions_abandoned_total{pod=\"gateway-0\"} 1")
            .then_some(())
    })
    .await;
    // Nothing was written and the "try again" answer was not edited afterwards.
    let record = emu.interaction(setup.id).expect("recorded");
    assert!(record.edits.is_empty(), "{record:?}");
    let current = run(emu, command(&w, "setup", w.mod_user, vec![])).await;
    assert!(
        content(&current).contains("mod-log not set"),
        "the abandoned /setup ran: {current:?}"
    );

    // A guild id the store cannot hold is refused as malformed, not failed on.
    for path in [
        "/internal/v1/guilds/9223372036854775808/export",
        "/internal/v1/guilds/9223372036854775808/stats",
    ] {
        let resp = client
            .get(format!("{internal}{path}"))
            .bearer_auth(cluster.internal_token())
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 400, "{path}");
    }
    cluster.shutdown().await;
}

/// The covering pod's posts and answers while an owner is down (DESIGN §6): with the owner's
/// settings and message cache restored from its replica, the deletion-log post for a message
/// posted before the owner stopped is made exactly once, by the cover; a command for the
/// covered guild is answered by the cover instead of "restarting"; and once the owner is back,
/// its rows are complete and the cover holds none of the guild's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_guild_gets_its_deletion_log_post_once_and_its_commands_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let store = tokio::task::block_in_place(|| {
        crate::support::objstore::start_object_store(&dir.path().join("s3"))
    });
    let mut cfg = cluster::config(dir.path(), 2, 12, Strategy::Md5);
    cfg.http = true;
    cluster::replicate(&mut cfg, dir.path(), &store);
    let mut cluster = cluster::start_config(dir.path(), cfg).await;
    let w = world(cluster.emulator(), 2, 1);
    let emu = cluster.emulator();
    let setup = run(
        emu,
        command(
            &w,
            "setup",
            w.mod_user,
            vec![option("deletion-log", 7, w.mod_log)],
        ),
    )
    .await;
    assert!(content(&setup).contains("Saved"), "{setup:?}");
    let text = "a message the owner cached before it stopped";
    let message = emu
        .post_message(w.general, w.author, text)
        .expect("posted")
        .id;
    let owner_db = cluster.db_path(1);
    eventually("the owner records the message", || async {
        cluster::activity(&owner_db)
            .contains(&(w.guild, message))
            .then_some(())
    })
    .await;

    // The owner stops (its sidecar's final sync follows), and stays down.
    assert_eq!(cluster.stop_pod(1, Duration::from_secs(25)).await, Some(0));
    let cover_db = cluster.db_path(0);
    let emu = cluster.emulator();
    emu.delete_message(w.general, message).expect("deleted");
    let post = eventually("the deletion-log post", || async {
        let posts = emu.bot_messages(w.mod_log).expect("channel");
        posts.into_iter().find(|m| m.content.contains(text))
    })
    .await;
    assert!(
        post.content.contains(&format!("<@{}>", w.author)),
        "{post:?}"
    );
    assert_eq!(
        sent_post(&cover_db, &format!("deleted:{message}")),
        Some(post.id),
        "the covering pod made the post"
    );
    // Commands for the covered guild are answered by the cover, from the owner's data.
    let stats = run(emu, command(&w, "stats", w.author, vec![])).await;
    assert_eq!(responded(&stats), Some(4), "{stats:?}");
    assert!(
        content(&stats).contains("**1** messages"),
        "answered by the cover with the owner's rows: {stats:?}"
    );

    // The owner returns and pulls the rows the cover wrote.
    cluster.start_pod(1).await.expect("restart");
    cluster.wait_ready(1, patience()).await.expect("ready");
    eventually(
        "the owner holds the post and the cover nothing of the guild",
        || async {
            (sent_post(&owner_db, &format!("deleted:{message}")) == Some(post.id)
                && !held_guilds(&cover_db).contains(&w.guild))
            .then_some(())
        },
    )
    .await;
    assert!(cluster::activity(&owner_db).contains(&(w.guild, message)));
    assert_eq!(
        deleted_at(&owner_db, w.guild, message).map(|_| ()),
        Some(())
    );
    // Exactly one post, still, after the owner's outbox ran.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = cluster.emulator().bot_messages(w.mod_log).expect("channel");
    assert_eq!(
        posts.iter().filter(|m| m.content.contains(text)).count(),
        1,
        "{posts:?}"
    );
    cluster.shutdown().await;
}

fn read_only(db: &std::path::Path) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open pod database");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// The Discord message id an outbox post was sent as, if it was sent.
fn sent_post(db: &std::path::Path, key: &str) -> Option<u64> {
    use rusqlite::OptionalExtension;
    read_only(db)
        .query_row(
            "SELECT sent_message_id FROM outbox WHERE key = ?1",
            [key],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()
        .expect("outbox query")
        .flatten()
        .map(|id| id as u64)
}

fn held_guilds(db: &std::path::Path) -> BTreeSet<u64> {
    let conn = read_only(db);
    let mut stmt = conn
        .prepare("SELECT guild_id FROM activity UNION SELECT guild_id FROM message_cache UNION SELECT guild_id FROM outbox WHERE guild_id IS NOT NULL")
        .expect("query");
    let rows = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .expect("rows")
        .map(|r| r.expect("row") as u64)
        .collect();
    rows
}

fn deleted_at(db: &std::path::Path, guild: u64, message: u64) -> Option<u64> {
    use rusqlite::OptionalExtension;
    read_only(db)
        .query_row(
            "SELECT deleted_at_ms FROM message_cache WHERE guild_id = ?1 AND message_id = ?2",
            [guild as i64, message as i64],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()
        .expect("message cache query")
        .flatten()
        .map(|t| t as u64)
}
