//! The Kubernetes API stand-in: the real kubectl (installed by `.ci/install-tools.sh`; a missing
//! kubectl fails the test with the installer's message) scales and gets the gateway StatefulSet
//! through a kubeconfig; watches keep the API server's resourceVersion semantics (read with plain
//! HTTP, as kube-rs and client-go send them); every fault switch behaves as the real failure
//! does. Everything binds 127.0.0.1:0 and is bounded in time.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use guildshard::kube_api::{self, KubeApi, KubeApiConfig, PodManagementPolicy};
use guildshard::shutdown::Shutdown;

use crate::support::eventually::eventually_within;
use crate::support::objstore::{run_bounded, tools};

/// How long one frame, request or kubectl run may take.
const BOUND: Duration = Duration::from_secs(20);

/// A running stand-in with a kubeconfig in its own directory; shuts down on drop.
struct Running {
    api: KubeApi,
    shutdown: Shutdown,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start(cfg: KubeApiConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = Shutdown::new();
    let api = kube_api::start(cfg, listener, shutdown.clone())
        .await
        .expect("stand-in starts");
    let dir = tempfile::tempdir().expect("tempdir");
    api.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    let http = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    Running {
        api,
        shutdown,
        dir,
        http,
    }
}

impl Running {
    /// Runs the real kubectl against the stand-in, with its own HOME and discovery cache.
    async fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tools().path("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--request-timeout=10s")
            .args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("PATH", "/usr/bin:/bin");
        tokio::task::spawn_blocking(move || run_bounded(&mut cmd, BOUND))
            .await
            .expect("kubectl runner")
    }

    /// kubectl that must succeed; returns its stdout.
    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns its stderr.
    async fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.base_url())
    }

    fn sts_path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/statefulsets",
            self.api.namespace()
        )
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(self.api.token())
    }

    /// Opens a watch with `query` (appended to `?watch=true&`).
    async fn watch(&self, query: &str) -> Frames {
        let resp = self
            .get(&format!("{}?watch=true&{query}", self.sts_path()))
            .send()
            .await
            .expect("watch request");
        assert_eq!(resp.status(), 200, "watch answered {}", resp.status());
        Frames {
            resp,
            buf: Vec::new(),
        }
    }
}

/// What reading a watch stream gave.
#[derive(Debug)]
enum Next {
    Frame(Value),
    /// The stream ended cleanly (the terminating chunk arrived).
    End,
    /// The connection broke mid-stream.
    Broken,
    /// Nothing arrived in time.
    Quiet,
}

/// A watch response read as newline-delimited JSON frames.
struct Frames {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Frames {
    async fn next_within(&mut self, limit: Duration) -> Next {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Next::Frame(serde_json::from_slice(&line).expect("a frame is json"));
            }
            match tokio::time::timeout(limit, self.resp.chunk()).await {
                Err(_) => return Next::Quiet,
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => return Next::End,
                Ok(Err(_)) => return Next::Broken,
            }
        }
    }

    /// The next frame, which must arrive within [`BOUND`].
    async fn frame(&mut self) -> Value {
        match self.next_within(BOUND).await {
            Next::Frame(f) => f,
            other => panic!("expected a watch frame, got {other:?}"),
        }
    }
}

fn small_history(history: usize) -> KubeApiConfig {
    KubeApiConfig {
        watch_history: history,
        ..KubeApiConfig::default()
    }
}

#[tokio::test]
async fn kubectl_scales_and_gets_the_statefulset() {
    let k = start(KubeApiConfig::default()).await;
    let mut changes = k.api.subscribe();
    assert_eq!(k.api.replicas(), 3);

    let out = k
        .kubectl_ok(&["scale", "statefulset", "gateway", "--replicas=5"])
        .await;
    assert!(out.contains("statefulset.apps/gateway scaled"), "{out}");
    assert_eq!(k.api.replicas(), 5);
    assert!(changes.has_changed().expect("sender alive"));
    let seen = changes.borrow_and_update().clone();
    assert_eq!((seen.replicas, seen.generation), (5, 2));
    assert_eq!(seen.pod_management_policy, PodManagementPolicy::Parallel);
    assert_eq!(seen.termination_grace_period, Duration::from_secs(60));

    let table = k.kubectl_ok(&["get", "statefulset", "gateway"]).await;
    assert!(
        table.contains("NAME") && table.contains("gateway"),
        "{table}"
    );
    assert!(table.contains("0/5"), "READY column: {table}");
    let short = k.kubectl_ok(&["get", "sts"]).await;
    assert!(short.contains("gateway"), "{short}");

    let replicas = k
        .kubectl_ok(&[
            "get",
            "statefulset",
            "gateway",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas.trim(), "5");
    let obj: Value = serde_json::from_str(
        &k.kubectl_ok(&["get", "statefulset", "gateway", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(obj["kind"], "StatefulSet");
    assert_eq!(obj["spec"]["replicas"], 5);
    assert_eq!(obj["metadata"]["generation"], 2);
    assert_eq!(obj["spec"]["podManagementPolicy"], "Parallel");

    // The controller reports what runs; kubectl shows it.
    k.api.set_status(5, 5).expect("status");
    let table = k.kubectl_ok(&["get", "statefulset", "gateway"]).await;
    assert!(table.contains("5/5"), "READY column: {table}");

    // Patching through kubectl (a strategic merge patch) and scaling down both land.
    k.kubectl_ok(&[
        "patch",
        "sts",
        "gateway",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ])
    .await;
    assert_eq!(k.api.replicas(), 2);
    k.kubectl_ok(&[
        "patch",
        "sts",
        "gateway",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ])
    .await;
    assert_eq!(k.api.replicas(), 4);
}

#[tokio::test]
async fn kubectl_shows_the_servers_refusals() {
    let k = start(KubeApiConfig::default()).await;
    k.api.set_forbidden(true);
    let err = k.kubectl_err(&["get", "statefulset", "gateway"]).await;
    assert!(
        err.contains(
            // kubectl sends no token over plain http, so it is anonymous here.
            r#"Error from server (Forbidden): statefulsets.apps "gateway" is forbidden: User "system:anonymous" cannot get resource "statefulsets" in API group "apps" in the namespace "guildshard""#
        ),
        "{err}"
    );
    let err = k
        .kubectl_err(&["scale", "statefulset", "gateway", "--replicas=5"])
        .await;
    assert!(err.contains("(Forbidden)"), "{err}");
    assert_eq!(k.api.replicas(), 3);
    k.api.set_forbidden(false);

    assert!(k.api.delete_statefulset());
    let err = k.kubectl_err(&["get", "statefulset", "gateway"]).await;
    assert!(
        err.contains(r#"Error from server (NotFound): statefulsets.apps "gateway" not found"#),
        "{err}"
    );
    assert!(k.api.recreate_statefulset());
    k.kubectl_ok(&["scale", "statefulset", "gateway", "--replicas=1"])
        .await;
    assert_eq!(k.api.replicas(), 1);
}

#[tokio::test]
async fn a_watch_starts_with_added_then_sees_every_change() {
    let k = start(KubeApiConfig::default()).await;
    let mut watch = k
        .watch("fieldSelector=metadata.name%3Dgateway&resourceVersion=0&allowWatchBookmarks=true")
        .await;
    let added = watch.frame().await;
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["kind"], "StatefulSet");
    assert_eq!(added["object"]["spec"]["replicas"], 3);
    let start_rv: u64 = added["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("numeric resourceVersion");

    k.api.set_replicas(5).expect("scale");
    let modified = watch.frame().await;
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["spec"]["replicas"], 5);
    assert_eq!(modified["object"]["metadata"]["generation"], 2);
    let rv: u64 = modified["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("numeric resourceVersion");
    assert!(rv > start_rv);
    assert_eq!(k.api.statefulset().resource_version, rv);
    assert_eq!(k.api.counters().watches_opened, 1);

    // A status report is a change too, without a new generation.
    k.api.set_status(5, 5).expect("status");
    let status = watch.frame().await;
    assert_eq!(status["object"]["status"]["readyReplicas"], 5);
    assert_eq!(status["object"]["metadata"]["generation"], 2);
}

#[tokio::test]
async fn a_watch_from_a_version_replays_what_came_after_it() {
    let k = start(KubeApiConfig::default()).await;
    let created = k.api.statefulset().resource_version;
    k.api.set_replicas(4).expect("scale");
    k.api.set_replicas(6).expect("scale");
    let mut watch = k.watch(&format!("resourceVersion={created}")).await;
    for replicas in [4, 6] {
        let frame = watch.frame().await;
        assert_eq!(frame["type"], "MODIFIED");
        assert_eq!(frame["object"]["spec"]["replicas"], replicas);
    }
    assert!(matches!(
        watch.next_within(Duration::from_millis(300)).await,
        Next::Quiet
    ));
}

#[tokio::test]
async fn a_watch_from_an_expired_version_gets_410() {
    let k = start(small_history(2)).await;
    for replicas in [4, 5, 6] {
        k.api.set_replicas(replicas).expect("scale");
    }
    let mut watch = k.watch("resourceVersion=1").await;
    let error = watch.frame().await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(matches!(watch.next_within(BOUND).await, Next::End));
    // The current version still works.
    let rv = k.api.statefulset().resource_version;
    let mut watch = k.watch(&format!("resourceVersion={rv}")).await;
    k.api.set_replicas(7).expect("scale");
    assert_eq!(watch.frame().await["object"]["spec"]["replicas"], 7);
}

#[tokio::test]
async fn field_selectors_filter_and_timeouts_end_watches_cleanly() {
    let k = start(KubeApiConfig::default()).await;
    let mut other = k
        .watch("fieldSelector=metadata.name%3Dother&timeoutSeconds=1")
        .await;
    k.api.set_replicas(5).expect("scale");
    assert!(matches!(other.next_within(BOUND).await, Next::End));

    let mut mine = k
        .watch("fieldSelector=metadata.name%3Dgateway&timeoutSeconds=1")
        .await;
    assert_eq!(mine.frame().await["type"], "ADDED");
    assert!(matches!(mine.next_within(BOUND).await, Next::End));

    let resp = k
        .get(&format!(
            "{}?watch=true&fieldSelector=spec.replicas%3D1",
            k.sts_path()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let status: Value = resp.json().await.expect("status");
    assert_eq!(
        status["message"],
        "field label not supported: spec.replicas"
    );
}

#[tokio::test]
async fn initial_events_end_with_a_bookmark() {
    let k = start(KubeApiConfig::default()).await;
    let mut watch = k
        .watch("sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan")
        .await;
    assert_eq!(watch.frame().await["type"], "ADDED");
    let bookmark = watch.frame().await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        k.api.statefulset().resource_version.to_string()
    );
}

#[tokio::test]
async fn list_get_and_scale_answer_as_the_api_server() {
    let k = start(KubeApiConfig::default()).await;
    let list: Value = k
        .get(&format!(
            "{}?fieldSelector=metadata.name%3Dgateway",
            k.sts_path()
        ))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["kind"], "StatefulSetList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["metadata"]["resourceVersion"], "1");

    let scale_url = k.url(&format!("{}/gateway/scale", k.sts_path()));
    let scale: Value = k
        .http
        .get(&scale_url)
        .bearer_auth(k.api.token())
        .send()
        .await
        .expect("scale")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            &scale["kind"],
            &scale["apiVersion"],
            &scale["spec"]["replicas"]
        ),
        (&json!("Scale"), &json!("autoscaling/v1"), &json!(3))
    );

    // PUT with a stale resourceVersion conflicts; with the current one it scales.
    let mut stale = scale.clone();
    stale["metadata"]["resourceVersion"] = json!("999");
    stale["spec"]["replicas"] = json!(8);
    let resp = k
        .http
        .put(&scale_url)
        .bearer_auth(k.api.token())
        .json(&stale)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 409);
    let mut fresh = scale.clone();
    fresh["spec"]["replicas"] = json!(8);
    let resp = k
        .http
        .put(&scale_url)
        .bearer_auth(k.api.token())
        .json(&fresh)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(k.api.replicas(), 8);

    // A JSON patch and an invalid value.
    let sts_url = k.url(&format!("{}/gateway", k.sts_path()));
    let patch = |body: Value, kind: &str| {
        k.http
            .patch(&sts_url)
            .bearer_auth(k.api.token())
            .header("content-type", kind)
            .body(body.to_string())
            .send()
    };
    let resp = patch(
        json!([{"op": "replace", "path": "/spec/replicas", "value": 2}]),
        "application/json-patch+json",
    )
    .await
    .expect("patch");
    assert_eq!(resp.status(), 200);
    assert_eq!(k.api.replicas(), 2);
    let resp = patch(
        json!({"spec": {"replicas": -1}}),
        "application/merge-patch+json",
    )
    .await
    .expect("patch");
    assert_eq!(resp.status(), 422);
    let status: Value = resp.json().await.expect("status");
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(k.api.replicas(), 2);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_no_token_is_anonymous_if_allowed() {
    let k = start(KubeApiConfig::default()).await;
    let path = format!("{}/gateway", k.sts_path());
    let anonymous = k.http.get(k.url(&path)).send().await.expect("request");
    assert_eq!(anonymous.status(), 200);
    let k = start(KubeApiConfig {
        allow_anonymous: false,
        ..KubeApiConfig::default()
    })
    .await;
    assert_eq!(k.get(&path).send().await.expect("request").status(), 200);
    for token in [None, Some("wrong")] {
        let mut req = k.http.get(k.url(&format!("{}/gateway", k.sts_path())));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 401);
        let status: Value = resp.json().await.expect("status");
        assert_eq!(
            status,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        );
    }
}

#[tokio::test]
async fn forbidden_answers_use_rbacs_wording_for_each_verb() {
    let k = start(KubeApiConfig::default()).await;
    k.api.set_forbidden(true);
    let message = |path: String| {
        let req = k.get(&path);
        async move {
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 403);
            let status: Value = resp.json().await.expect("status");
            assert_eq!(status["reason"], "Forbidden");
            status["message"].as_str().unwrap_or_default().to_owned()
        }
    };
    let user = r#"User "system:serviceaccount:guildshard:gateway""#;
    assert_eq!(
        message(format!("{}/gateway", k.sts_path())).await,
        format!(
            r#"statefulsets.apps "gateway" is forbidden: {user} cannot get resource "statefulsets" in API group "apps" in the namespace "guildshard""#
        )
    );
    assert_eq!(
        message(format!("{}?watch=1", k.sts_path())).await,
        format!(
            r#"statefulsets.apps is forbidden: {user} cannot watch resource "statefulsets" in API group "apps" in the namespace "guildshard""#
        )
    );
    assert_eq!(
        message(format!("{}/gateway/scale", k.sts_path())).await,
        format!(
            r#"statefulsets.apps "gateway" is forbidden: {user} cannot get resource "statefulsets/scale" in API group "apps" in the namespace "guildshard""#
        )
    );
    // Discovery stays open, as for any authenticated user.
    let resp = k.get("/apis/apps/v1").send().await.expect("discovery");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn deleting_tells_watchers_and_answers_404_until_recreated() {
    let k = start(KubeApiConfig::default()).await;
    let mut watch = k.watch("").await;
    assert_eq!(watch.frame().await["type"], "ADDED");
    assert!(k.api.delete_statefulset());
    assert_eq!(watch.frame().await["type"], "DELETED");
    assert!(!k.api.statefulset().exists);
    assert_eq!(k.api.replicas(), 0);
    assert!(k.api.set_replicas(4).is_err());

    let resp = k
        .get(&format!("{}/gateway", k.sts_path()))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    let status: Value = resp.json().await.expect("status");
    assert_eq!(
        status["message"],
        r#"statefulsets.apps "gateway" not found"#
    );
    assert_eq!(status["reason"], "NotFound");

    assert!(k.api.recreate_statefulset());
    let added = watch.frame().await;
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["metadata"]["generation"], 1);
    assert_eq!(k.api.replicas(), 3);
}

#[tokio::test]
async fn broken_watches_end_abruptly_and_new_ones_work() {
    let k = start(KubeApiConfig::default()).await;
    let mut watch = k.watch("").await;
    assert_eq!(watch.frame().await["type"], "ADDED");
    k.api.break_watches();
    assert!(matches!(watch.next_within(BOUND).await, Next::Broken));
    let mut again = k.watch("").await;
    assert_eq!(again.frame().await["type"], "ADDED");
    eventually_within(BOUND, "the broken watch to be counted closed", || async {
        (k.api.counters().watches_open == 1).then_some(())
    })
    .await;
    assert_eq!(k.api.counters().watches_opened, 2);
}

#[tokio::test]
async fn an_outage_cuts_connections_then_serving_resumes_on_the_same_address() {
    let k = start(KubeApiConfig::default()).await;
    let path = format!("{}/gateway", k.sts_path());
    let mut watch = k.watch("").await;
    assert_eq!(watch.frame().await["type"], "ADDED");
    assert_eq!(k.get(&path).send().await.expect("get").status(), 200);

    k.api.set_outage(true);
    assert!(matches!(watch.next_within(BOUND).await, Next::Broken));
    // The pooled keep-alive connection was cut too; every new one is closed unanswered.
    for _ in 0..2 {
        assert!(
            k.get(&path).send().await.is_err(),
            "answered during the outage"
        );
    }
    assert!(k.api.counters().connections_dropped >= 1);

    k.api.set_outage(false);
    let resp = k.get(&path).send().await.expect("served again");
    assert_eq!(resp.status(), 200);
    let replicas = k
        .kubectl_ok(&["get", "sts", "gateway", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(replicas.trim(), "3");
}

#[tokio::test]
async fn the_kubeconfig_names_the_server_token_and_namespace() {
    let k = start(KubeApiConfig::default()).await;
    let path: PathBuf = k.dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(&path).expect("read");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(doc["current-context"], "guildshard-local");
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"].as_str(),
        Some(k.api.base_url().as_str())
    );
    assert_eq!(
        doc["users"][0]["user"]["token"].as_str(),
        Some(k.api.token())
    );
    assert_eq!(
        doc["contexts"][0]["context"]["namespace"].as_str(),
        Some("guildshard")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the kubeconfig holds a token");
}
