//! The Kubernetes manifests: `cluster/` rendered by kustomize (`kubectl kustomize`, from the
//! pinned kubectl wheel), every object validated offline in strict mode (`kubernetes-validate`)
//! against the schemas of every Kubernetes minor the manifests support, and the wiring schemas
//! cannot see checked here. `cluster/monitoring` (Prometheus Operator CRDs, which the schemas do
//! not know) is parsed and checked against the pods it scrapes and the metrics that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::objstore::{repo_root, run_bounded, show, tools};

/// The app's SIGTERM budget (it exits within 20 s) plus Litestream's shutdown sync (30 s).
const APP_SHUTDOWN_S: i64 = 20;
const LITESTREAM_FINAL_SYNC_S: i64 = 30;

const KUSTOMIZATIONS: [&str; 2] = ["cluster/base", "cluster/overlays/example"];

/// The Kubernetes minors the manifests run on: from 1.30 (native sidecars need 1.29; the http
/// pods' preStop `sleep` action is alpha and off in 1.29, on by default from 1.30) through the
/// newest whose schemas the pinned kubernetes-validate (1.37.0) bundles.
const MIN_KUBERNETES_MINOR: u32 = 30;
const MAX_KUBERNETES_MINOR: u32 = 37;

/// Discord's deadline for the first answer to an interaction.
const DISCORD_DEADLINE_S: i64 = 3;

/// How long Litestream must keep history: a bad deploy noticed after a weekend.
const RETENTION_AT_LEAST: Duration = Duration::from_secs(7 * 24 * 3600);

fn render(dir: &str) -> String {
    let out = run_bounded(
        std::process::Command::new(tools().path("kubectl"))
            .args(["kustomize"])
            .arg(repo_root().join(dir)),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        show(&out)
    );
    String::from_utf8(out.stdout).expect("rendered YAML is UTF-8")
}

fn parse(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).expect("rendered YAML parses");
            serde_json::to_value(v).expect("YAML document as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs `kubernetes-validate --strict -k <version>` on a rendered stream.
fn validate(yaml: &str, version: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write rendered");
    run_bounded(
        std::process::Command::new(tools().path("kubernetes-validate"))
            .args(["--strict", "-k", version])
            .arg(&file),
        Duration::from_secs(120),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// Generated objects carry a hash suffix; find by the generator's name.
fn find_generated<'a>(objs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    let mut hits = objs.iter().filter(|o| {
        o["kind"] == kind
            && o["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(prefix))
                .is_some_and(|rest| rest.starts_with('-') && rest.len() == 11)
    });
    let hit = hits
        .next()
        .unwrap_or_else(|| panic!("no generated {kind} {prefix}-<hash>"));
    assert!(hits.next().is_none(), "one generated {kind} {prefix}");
    hit
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn strs(v: &Value) -> Vec<&str> {
    arr(v).iter().filter_map(Value::as_str).collect()
}

/// The environment a container ends up with: `envFrom` ConfigMaps/Secrets expanded from the
/// rendered objects, then `env` entries (as JSON, so value and valueFrom both show).
fn container_env(objs: &[Value], container: &Value) -> BTreeMap<String, Value> {
    let mut env = BTreeMap::new();
    for from in arr(&container["envFrom"]) {
        let (kind, name) = if let Some(n) = from["configMapRef"]["name"].as_str() {
            ("ConfigMap", n)
        } else {
            (
                "Secret",
                from["secretRef"]["name"].as_str().expect("envFrom ref"),
            )
        };
        let obj = find(objs, kind, name);
        for data in ["data", "stringData"] {
            if let Some(map) = obj[data].as_object() {
                for (k, v) in map {
                    env.insert(k.clone(), serde_json::json!({ "value": v }));
                }
            }
        }
    }
    for e in arr(&container["env"]) {
        env.insert(e["name"].as_str().expect("env name").to_owned(), e.clone());
    }
    env
}

fn literal<'a>(env: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    env.get(name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("env {name} has no literal value: {:?}", env.get(name)))
}

fn pod_spec(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    arr(&spec["initContainers"])
        .iter()
        .chain(arr(&spec["containers"]))
        .collect()
}

#[test]
fn every_rendered_object_validates_strictly_against_kubernetes_schemas() {
    for dir in KUSTOMIZATIONS {
        let yaml = render(dir);
        let objs = parse(&yaml);
        assert!(
            objs.len() >= 9,
            "{dir} rendered only {} objects",
            objs.len()
        );
        for minor in MIN_KUBERNETES_MINOR..=MAX_KUBERNETES_MINOR {
            let version = format!("1.{minor}");
            let version = version.as_str();
            let out = validate(&yaml, version);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{dir} against {version}: {}",
                show(&out)
            );
            let passed = stdout.matches(" passed for resource ").count();
            assert_eq!(
                passed,
                objs.len(),
                "every object validated ({dir}, {version}):\n{stdout}"
            );
        }
    }
    // The Secret templates are not rendered (see cluster/base/kustomization.yaml) but must be
    // valid objects for whoever applies a filled-in copy.
    let templates = std::fs::read_to_string(repo_root().join("cluster/base/secrets.template.yaml"))
        .expect("secret templates");
    let out = validate(&templates, "1.31");
    assert!(out.status.success(), "secret templates: {}", show(&out));
}

#[test]
fn the_validator_rejects_what_it_must() {
    // So the check above cannot pass vacuously: an unknown field and a wrong type both fail.
    let yaml = render("cluster/overlays/example");
    let typo = yaml.replacen(
        "    spec:\n",
        "    spec:\n      imagePullPolicyy: Always\n",
        1,
    );
    assert_ne!(typo, yaml);
    assert!(
        !validate(&typo, "1.31").status.success(),
        "unknown field accepted"
    );
    let wrong = yaml.replacen("replicas: 3", "replicas: three", 1);
    assert_ne!(wrong, yaml);
    assert!(
        !validate(&wrong, "1.31").status.success(),
        "string replicas accepted"
    );
}

/// What the schemas cannot see, for the base and the example overlay.
#[test]
fn gateway_statefulset_wiring() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        check_gateway(&objs, dir);
    }
}

fn check_gateway(objs: &[Value], dir: &str) {
    let sts = find(objs, "StatefulSet", "gateway");
    let spec = pod_spec(sts);

    // Init order: restore, then the native sidecar, then the app.
    let inits = arr(&spec["initContainers"]);
    let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["litestream-restore", "litestream"],
        "{dir}: init order"
    );
    let (restore, sidecar) = (&inits[0], &inits[1]);
    assert!(
        restore["restartPolicy"].is_null(),
        "{dir}: the restore runs once"
    );
    assert_eq!(sidecar["restartPolicy"], "Always", "{dir}: native sidecar");
    let restore_args = strs(&restore["args"]);
    assert_eq!(restore_args[0], "restore");
    for flag in ["-if-db-not-exists", "-if-replica-exists"] {
        assert!(restore_args.contains(&flag), "{dir}: restore needs {flag}");
    }
    assert_eq!(strs(&sidecar["args"])[0], "replicate");
    // Both go through the entrypoint that refuses an unset ordinal or bucket.
    for c in [restore, sidecar] {
        assert_eq!(
            strs(&c["command"]),
            ["/bin/sh", "/etc/litestream/entrypoint.sh"],
            "{dir}: {} must run the refusing entrypoint",
            c["name"]
        );
    }
    let app = &arr(&spec["containers"])[0];
    assert_eq!(app["name"], "gateway");
    assert_eq!(strs(&app["args"]), ["gateway"]);

    // POD_ORDINAL comes from the pod-index label in all three containers; DATABASE_PATH agrees.
    let db_path = restore_args.last().copied().expect("restore db path");
    for c in [restore, sidecar, app] {
        let env = container_env(objs, c);
        assert_eq!(
            env["POD_ORDINAL"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.labels['apps.kubernetes.io/pod-index']",
            "{dir}: {} POD_ORDINAL",
            c["name"]
        );
        assert_eq!(
            literal(&env, "DATABASE_PATH"),
            db_path,
            "{dir}: {}",
            c["name"]
        );
        for var in [
            "LITESTREAM_BUCKET",
            "LITESTREAM_S3_ENDPOINT",
            "LITESTREAM_S3_REGION",
        ] {
            assert!(!literal(&env, var).is_empty(), "{dir}: {} {var}", c["name"]);
        }
        for var in ["LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"] {
            assert!(
                env[var]["valueFrom"]["secretKeyRef"].is_object(),
                "{dir}: {var} from a Secret"
            );
        }
        // The replica path's prefix: the namespace from the downward API, the cluster's name
        // from the configMap. The base leaves the name empty (the pods refuse to start), so
        // every overlay must name its cluster.
        assert_eq!(
            env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
            "{dir}: {} POD_NAMESPACE",
            c["name"]
        );
        let cluster = literal(&env, "CLUSTER_NAME");
        if dir != "cluster/base" {
            assert!(
                !cluster.is_empty()
                    && cluster
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{dir}: {} CLUSTER_NAME {cluster:?}",
                c["name"]
            );
        }
        let mounts: BTreeMap<&str, &str> = arr(&c["volumeMounts"])
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().expect("mount name"),
                    m["mountPath"].as_str().expect("path"),
                )
            })
            .collect();
        assert!(
            Path::new(db_path).starts_with(mounts["data"]),
            "{dir}: {} mounts the data volume at the db's directory",
            c["name"]
        );
    }

    // Every variable the gateway reads is set.
    let app_env = container_env(objs, app);
    // The replica fallback runs litestream in the gateway container with the same config.
    let config = Path::new(literal(&app_env, "LITESTREAM_CONFIG"));
    assert!(
        arr(&app["volumeMounts"])
            .iter()
            .any(|m| m["name"] == "litestream-config"
                && config.parent() == Some(Path::new(m["mountPath"].as_str().unwrap_or_default()))),
        "{dir}: the gateway mounts litestream.yml where LITESTREAM_CONFIG points"
    );
    for var in [
        "POD_ORDINAL",
        "POD_NAME",
        "POD_NAMESPACE",
        "STATEFULSET_NAME",
        "SHARD_STRATEGY",
        "DISCORD_TOKEN",
        "DISCORD_APPLICATION_ID",
        "DISCORD_PUBLIC_KEY",
        "DATABASE_PATH",
        "INTERNAL_AUTH_TOKEN",
        "GATEWAY_INTERNAL_URL_TEMPLATE",
        "PUBLIC_BIND_ADDR",
        "INTERNAL_BIND_ADDR",
    ] {
        assert!(app_env.contains_key(var), "{dir}: gateway env lacks {var}");
    }
    assert_eq!(literal(&app_env, "PUBLIC_BIND_ADDR"), "0.0.0.0:8080");
    assert_eq!(literal(&app_env, "INTERNAL_BIND_ADDR"), "0.0.0.0:8081");
    assert_eq!(
        literal(&app_env, "GATEWAY_INTERNAL_URL_TEMPLATE"),
        format!(
            "http://gateway-{{ordinal}}.{}:8081",
            sts["spec"]["serviceName"].as_str().expect("serviceName")
        )
    );
    for secret in ["DISCORD_TOKEN", "DISCORD_PUBLIC_KEY", "INTERNAL_AUTH_TOKEN"] {
        assert!(
            app_env[secret]["valueFrom"]["secretKeyRef"].is_object(),
            "{dir}: {secret} from a Secret"
        );
    }
    // The pod count comes live from this StatefulSet's spec.replicas: the pod watches the
    // StatefulSet named here, in its own namespace. A NUM_GATEWAY_PODS would pin the count.
    assert!(
        !app_env.contains_key("NUM_GATEWAY_PODS"),
        "{dir}: NUM_GATEWAY_PODS would override the live spec.replicas"
    );
    assert_eq!(
        literal(&app_env, "STATEFULSET_NAME"),
        sts["metadata"]["name"].as_str().expect("name"),
        "{dir}"
    );
    assert_eq!(
        app_env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
        "{dir}"
    );

    // The replica path is per ordinal, in the litestream.yml the pods actually mount.
    let config_volume = arr(&spec["volumes"])
        .iter()
        .find(|v| v["name"] == "litestream-config")
        .expect("litestream-config volume");
    let cm_name = config_volume["configMap"]["name"]
        .as_str()
        .expect("configMap volume");
    let cm = find(objs, "ConfigMap", cm_name);
    let shipped = std::fs::read_to_string(repo_root().join("litestream/litestream.yml"))
        .expect("litestream.yml");
    assert_eq!(
        cm["data"]["litestream.yml"].as_str(),
        Some(shipped.as_str())
    );
    let entrypoint = std::fs::read_to_string(repo_root().join("litestream/entrypoint.sh"))
        .expect("entrypoint.sh");
    assert_eq!(
        cm["data"]["entrypoint.sh"].as_str(),
        Some(entrypoint.as_str())
    );
    let ls: serde_yaml::Value = serde_yaml::from_str(&shipped).expect("litestream.yml parses");
    let dbs = ls["dbs"].as_sequence().expect("dbs");
    assert_eq!(dbs.len(), 1, "one database");
    assert_eq!(dbs[0]["path"].as_str(), Some("${DATABASE_PATH}"));
    let replica = &dbs[0]["replica"];
    assert_eq!(replica["type"].as_str(), Some("s3"));
    assert_eq!(
        replica["path"].as_str(),
        Some("${CLUSTER_NAME}/${POD_NAMESPACE}/gateway-${POD_ORDINAL}")
    );
    assert_eq!(replica["bucket"].as_str(), Some("${LITESTREAM_BUCKET}"));
    assert_eq!(
        replica["endpoint"].as_str(),
        Some("${LITESTREAM_S3_ENDPOINT}")
    );
    assert_eq!(replica["force-path-style"].as_bool(), Some(true));

    // Grace period outlasts the app's shutdown plus Litestream's final sync.
    let grace = spec["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period set");
    assert!(
        grace > APP_SHUTDOWN_S + LITESTREAM_FINAL_SYNC_S,
        "{dir}: terminationGracePeriodSeconds {grace} must exceed {APP_SHUTDOWN_S} + {LITESTREAM_FINAL_SYNC_S}"
    );

    // Probes on the public port; ports as the app binds them.
    let ports: BTreeMap<&str, i64> = arr(&app["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name"),
                p["containerPort"].as_i64().expect("port"),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("internal", 8081), ("public", 8080)])
    );
    assert_eq!(app["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(app["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(app[probe]["httpGet"]["port"], "public", "{dir}: {probe}");
    }
    for c in all_containers(spec) {
        assert!(
            c["resources"]["requests"].is_object(),
            "{dir}: {} requests",
            c["name"]
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{dir}: {} memory limit",
            c["name"]
        );
    }

    // One volume per ordinal; the headless Service the DNS names come from.
    let claims: Vec<&str> = arr(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(claims, ["data"]);
    assert!(
        arr(&spec["volumes"]).iter().all(|v| v["name"] != "data"),
        "{dir}: data must come from the claim template, not a pod volume"
    );
    assert_eq!(sts["spec"]["serviceName"], "gateway-internal");
    let svc = find(objs, "Service", "gateway-internal");
    assert_eq!(svc["spec"]["clusterIP"], "None", "{dir}: headless");
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    assert!(
        sts["spec"]["podManagementPolicy"].is_string(),
        "chosen explicitly"
    );
    assert!(
        spec["securityContext"]["fsGroup"].is_i64(),
        "{dir}: fsGroup makes the volume writable for the non-root user"
    );

    let pdb = find(objs, "PodDisruptionBudget", "gateway");
    assert_eq!(pdb["spec"]["selector"], sts["spec"]["selector"]);
}

/// Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp; an API token
/// only in the gateway pods (which watch their StatefulSet), none in the http pods.
#[test]
fn pods_are_locked_down() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        let gateway = pod_spec(find(&objs, "StatefulSet", "gateway"));
        let http = pod_spec(find(&objs, "Deployment", "http"));
        let (gateway_sa, http_sa) = (
            gateway["serviceAccountName"].as_str().expect("gateway SA"),
            http["serviceAccountName"].as_str().expect("http SA"),
        );
        assert_ne!(gateway_sa, http_sa, "{dir}: one account per role");
        // The gateway gets a token (pod spec and account agree, so neither silently wins).
        assert_eq!(gateway["automountServiceAccountToken"], true, "{dir}");
        assert_eq!(
            find(&objs, "ServiceAccount", gateway_sa)["automountServiceAccountToken"],
            true,
            "{dir}"
        );
        // The http pods get none, and nothing binds their account to a role.
        assert_eq!(http["automountServiceAccountToken"], false, "{dir}");
        assert_eq!(
            find(&objs, "ServiceAccount", http_sa)["automountServiceAccountToken"],
            false,
            "{dir}"
        );
        assert!(
            arr(&http["volumes"])
                .iter()
                .all(|v| v["projected"].is_null()),
            "{dir}: no projected token volume in the http pods"
        );
        for b in objs
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            assert!(
                arr(&b["subjects"]).iter().all(|s| s["name"] != http_sa),
                "{dir}: the http account is bound: {b}"
            );
        }
        for (kind, name) in [("StatefulSet", "gateway"), ("Deployment", "http")] {
            let spec = pod_spec(find(&objs, kind, name));
            let psc = &spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{dir}: {kind}");
            assert!(
                psc["runAsUser"].as_i64().is_some_and(|u| u > 0),
                "{dir}: {kind} uid"
            );
            assert_eq!(
                psc["seccompProfile"]["type"], "RuntimeDefault",
                "{dir}: {kind}"
            );
            for c in all_containers(spec) {
                let sc = &c["securityContext"];
                let what = format!("{dir}: {kind} container {}", c["name"]);
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
                assert!(
                    sc["runAsUser"].as_i64() != Some(0) && sc["privileged"] != true,
                    "{what}"
                );
            }
        }
    }
}

/// Only http pods and gateway peers reach the internal port; the public port stays scrapeable.
#[test]
fn network_policy_guards_the_internal_port() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        let sts = find(&objs, "StatefulSet", "gateway");
        let http = find(&objs, "Deployment", "http");
        let gateway_labels = &sts["spec"]["template"]["metadata"]["labels"];
        let http_labels = &http["spec"]["template"]["metadata"]["labels"];
        let internal_port = 8081;

        let selects = |selector: &Value, labels: &Value| {
            selector["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
                && selector["matchExpressions"].is_null()
        };
        let policies: Vec<&Value> = objs
            .iter()
            .filter(|o| {
                o["kind"] == "NetworkPolicy" && selects(&o["spec"]["podSelector"], gateway_labels)
            })
            .collect();
        assert_eq!(
            policies.len(),
            1,
            "{dir}: one policy selects the gateway pods"
        );
        let policy = policies[0];
        assert!(strs(&policy["spec"]["policyTypes"]).contains(&"Ingress"));

        let mut allowed_sources = BTreeSet::new();
        for rule in arr(&policy["spec"]["ingress"]) {
            let ports: Vec<i64> = arr(&rule["ports"])
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            // A rule without ports opens every port, including the internal one.
            let opens_internal = rule["ports"].is_null() || ports.contains(&internal_port);
            if !opens_internal {
                continue;
            }
            let from = arr(&rule["from"]);
            assert!(
                !from.is_empty(),
                "{dir}: a rule opens {internal_port} to everyone"
            );
            for peer in from {
                assert!(
                    peer["namespaceSelector"].is_null() && peer["ipBlock"].is_null(),
                    "{dir}: internal port open beyond this namespace's pods: {peer}"
                );
                let sel = &peer["podSelector"];
                if selects(sel, http_labels) && !selects(sel, gateway_labels) {
                    allowed_sources.insert("http");
                } else if selects(sel, gateway_labels) && !selects(sel, http_labels) {
                    allowed_sources.insert("gateway");
                } else {
                    panic!("{dir}: internal port open to other pods: {sel}");
                }
            }
        }
        assert_eq!(
            allowed_sources,
            BTreeSet::from(["gateway", "http"]),
            "{dir}"
        );
    }
}

#[test]
fn http_deployment_wiring() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        let dep = find(&objs, "Deployment", "http");
        let app = &arr(&pod_spec(dep)["containers"])[0];
        assert_eq!(strs(&app["args"]), ["http"]);
        let env = container_env(&objs, app);
        assert_eq!(literal(&env, "HTTP_BIND_ADDR"), "0.0.0.0:8080");
        for var in [
            "DISCORD_PUBLIC_KEY",
            "INTERNAL_AUTH_TOKEN",
            "GATEWAY_INTERNAL_URL_TEMPLATE",
        ] {
            assert!(env.contains_key(var), "{dir}: http env lacks {var}");
        }
        // It learns the pod count from the gateway pods; a fixed one would go stale.
        assert!(!env.contains_key("NUM_GATEWAY_PODS"), "{dir}");
        let svc = find(&objs, "Service", "http");
        assert_eq!(
            svc["spec"]["selector"],
            dep["spec"]["selector"]["matchLabels"]
        );
        let hpa = find(&objs, "HorizontalPodAutoscaler", "http");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "http");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        let pdb = find(&objs, "PodDisruptionBudget", "http");
        assert_eq!(pdb["spec"]["selector"], dep["spec"]["selector"]);

        // No Secret is rendered (applying placeholders would overwrite the real ones); every
        // Secret reference resolves to a key of the template file, which holds placeholders only.
        assert!(
            objs.iter().all(|o| o["kind"] != "Secret"),
            "{dir}: renders a Secret"
        );
        let templates = parse(
            &std::fs::read_to_string(repo_root().join("cluster/base/secrets.template.yaml"))
                .expect("secret templates"),
        );
        let secrets: BTreeMap<&str, &Value> = templates
            .iter()
            .filter(|o| o["kind"] == "Secret")
            .map(|o| (o["metadata"]["name"].as_str().expect("secret name"), o))
            .collect();
        for s in secrets.values() {
            for (k, v) in s["stringData"].as_object().expect("stringData templates") {
                assert!(
                    v.as_str().is_some_and(|v| v.starts_with("replace-me")),
                    "{dir}: {k} is a placeholder"
                );
            }
        }
        for (kind, name) in [("StatefulSet", "gateway"), ("Deployment", "http")] {
            for c in all_containers(pod_spec(find(&objs, kind, name))) {
                for e in arr(&c["env"]) {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    if r.is_null() {
                        continue;
                    }
                    let s = secrets.get(r["name"].as_str().expect("secret ref name"));
                    assert!(
                        s.is_some_and(
                            |s| !s["stringData"][r["key"].as_str().expect("key")].is_null()
                        ),
                        "{dir}: {kind} {} refers to missing secret key {r}",
                        c["name"]
                    );
                }
            }
        }
        let _ = find_generated(&objs, "ConfigMap", "guildshard");
        let _ = find_generated(&objs, "ConfigMap", "litestream");
    }
}

/// The image and the manifests agree: the final Dockerfile stage runs `guildshard` as the uid
/// the pods require, and the Litestream image deployed is the version the tests ran.
#[test]
fn image_matches_the_manifests() {
    let dockerfile =
        std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile at the root");
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a multi-stage Dockerfile");
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
    let user = final_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .expect("USER is a numeric uid");
    assert!(uid > 0, "the image runs non-root");
    assert!(
        final_stage.contains("ENTRYPOINT [\"/usr/local/bin/guildshard\"]"),
        "the image runs guildshard"
    );

    let tested = run_bounded(
        std::process::Command::new(tools().path("litestream")).arg("version"),
        Duration::from_secs(30),
    );
    let tested = String::from_utf8_lossy(&tested.stdout).trim().to_owned();
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        for (kind, name) in [("StatefulSet", "gateway"), ("Deployment", "http")] {
            let spec = pod_spec(find(&objs, kind, name));
            assert_eq!(
                spec["securityContext"]["runAsUser"].as_i64(),
                Some(uid),
                "{dir}: {kind} runs as the image's user"
            );
        }
        let sts = find(&objs, "StatefulSet", "gateway");
        for c in arr(&pod_spec(sts)["initContainers"]) {
            assert_eq!(
                c["image"].as_str(),
                Some(format!("litestream/litestream:{tested}").as_str()),
                "{dir}: {} runs the Litestream version the tests ran",
                c["name"]
            );
        }
    }
    assert!(
        dockerfile.contains(&format!("FROM litestream/litestream:{tested} ")),
        "the image bundles the tested Litestream"
    );
}

/// Renders a throwaway overlay that renames everything (namePrefix and nameSuffix) on top of
/// the example overlay, as a real deployment might.
fn render_renamed() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    // kustomize takes only relative paths: climb from the temporary directory to `/`.
    let tmp = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
    let example = std::fs::canonicalize(repo_root().join("cluster/overlays/example"))
        .expect("canonical example");
    let example = Path::new(&"../".repeat(tmp.components().count() - 1))
        .join(example.strip_prefix("/").expect("absolute"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namePrefix: blue-\nnameSuffix: -eu\nresources:\n  - {}\n",
            example.display()
        ),
    )
    .expect("write kustomization");
    let out = run_bounded(
        std::process::Command::new(tools().path("kubectl"))
            .args(["kustomize"])
            .arg(dir.path()),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "renamed overlay: {}", show(&out));
    String::from_utf8(out.stdout).expect("rendered YAML is UTF-8")
}

/// The gateway's account may get, list and watch its own StatefulSet and nothing else, and
/// the pods name that StatefulSet, also when an overlay renames it.
fn check_rbac(objs: &[Value], what: &str) {
    let of_kind =
        |kind: &str| -> Vec<&Value> { objs.iter().filter(|o| o["kind"] == kind).collect() };
    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1, "{what}: one StatefulSet");
    let sts = sets[0];
    let sts_name = sts["metadata"]["name"].as_str().expect("StatefulSet name");
    let spec = pod_spec(sts);
    let sa = spec["serviceAccountName"]
        .as_str()
        .expect("gateway account");
    assert_eq!(spec["automountServiceAccountToken"], true, "{what}: token");
    assert_eq!(
        find(objs, "ServiceAccount", sa)["automountServiceAccountToken"],
        true,
        "{what}: token"
    );

    assert!(
        of_kind("ClusterRole").is_empty() && of_kind("ClusterRoleBinding").is_empty(),
        "{what}: nothing cluster-wide"
    );
    let roles = of_kind("Role");
    assert_eq!(roles.len(), 1, "{what}: one Role");
    let role = roles[0];
    let rules = arr(&role["rules"]);
    assert_eq!(rules.len(), 1, "{what}: one rule: {role}");
    let rule = &rules[0];
    assert_eq!(strs(&rule["apiGroups"]), ["apps"], "{what}");
    assert_eq!(strs(&rule["resources"]), ["statefulsets"], "{what}");
    assert_eq!(
        strs(&rule["resourceNames"]),
        [sts_name],
        "{what}: the Role must name the rendered StatefulSet"
    );
    let verbs: BTreeSet<&str> = strs(&rule["verbs"]).into_iter().collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{what}");
    assert_eq!(
        rule.as_object().map(|r| r.len()),
        Some(4),
        "{what}: no other rule fields: {rule}"
    );

    let bindings = of_kind("RoleBinding");
    assert_eq!(bindings.len(), 1, "{what}: one RoleBinding");
    let binding = bindings[0];
    assert_eq!(binding["roleRef"]["kind"], "Role", "{what}");
    assert_eq!(
        binding["roleRef"]["name"], role["metadata"]["name"],
        "{what}"
    );
    let subjects = arr(&binding["subjects"]);
    assert_eq!(subjects.len(), 1, "{what}: only the gateway account");
    assert_eq!(subjects[0]["kind"], "ServiceAccount", "{what}");
    assert_eq!(subjects[0]["name"], sa, "{what}");
    assert!(
        subjects[0]["namespace"].is_null()
            || subjects[0]["namespace"] == sts["metadata"]["namespace"],
        "{what}: the account in the pods' namespace"
    );

    // The pods watch the StatefulSet the Role names, in their own namespace.
    let app = arr(&spec["containers"])
        .iter()
        .find(|c| c["name"] == "gateway")
        .expect("gateway container");
    let env = container_env(objs, app);
    assert_eq!(literal(&env, "STATEFULSET_NAME"), sts_name, "{what}");
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
        "{what}"
    );
}

#[test]
fn gateway_may_only_read_its_own_statefulset() {
    for dir in KUSTOMIZATIONS {
        check_rbac(&parse(&render(dir)), dir);
    }
    // kustomize renames resourceNames only for kinds it knows; the base's kustomizeconfig.yaml
    // makes the StatefulSet one of them. Without it this prefixed rendering would keep
    // `gateway` and the pods' watch would be forbidden.
    let renamed = parse(&render_renamed());
    assert_eq!(
        find(&renamed, "StatefulSet", "blue-gateway-eu")["kind"],
        "StatefulSet"
    );
    check_rbac(&renamed, "renamed overlay");
}

#[test]
fn no_fixed_pod_count_anywhere_in_the_rendering() {
    for dir in KUSTOMIZATIONS {
        let yaml = render(dir);
        assert!(
            !yaml.contains("NUM_GATEWAY_PODS"),
            "{dir}: the pods read the count from spec.replicas; NUM_GATEWAY_PODS would pin it"
        );
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector["matchExpressions"].is_null()
        && selector["matchLabels"]
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// Named container ports of a pod (init containers included: Litestream is one).
fn named_ports(spec: &Value) -> BTreeMap<&str, (i64, &Value)> {
    all_containers(spec)
        .into_iter()
        .flat_map(|c| arr(&c["ports"]).iter().map(move |p| (p, c)))
        .filter_map(|(p, c)| Some((p["name"].as_str()?, (p["containerPort"].as_i64()?, c))))
        .collect()
}

#[test]
fn prometheus_scrapes_every_pod_by_its_port_names() {
    let monitoring = parse(&render("cluster/monitoring"));
    assert!(
        monitoring
            .iter()
            .all(|o| o["apiVersion"] == "monitoring.coreos.com/v1"),
        "cluster/monitoring holds only Prometheus Operator objects"
    );
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        let mut scraped_by_role = BTreeMap::new();
        for (kind, name) in [("StatefulSet", "gateway"), ("Deployment", "http")] {
            let workload = find(&objs, kind, name);
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            let spec = pod_spec(workload);
            let ports = named_ports(spec);
            let monitor = find(&monitoring, "PodMonitor", name);
            assert!(
                labels_match(&monitor["spec"]["selector"], labels),
                "{dir}: PodMonitor/{name} selects the {kind}'s pods"
            );
            let mut scraped = BTreeSet::new();
            for ep in arr(&monitor["spec"]["podMetricsEndpoints"]) {
                let port = ep["port"].as_str().expect("endpoints name their port");
                assert!(
                    ports.contains_key(port),
                    "{dir}: PodMonitor/{name} scrapes port {port}, which the pods lack: {:?}",
                    ports.keys()
                );
                assert_eq!(ep["path"], "/metrics", "{dir}: {name} {port}");
                scraped.insert(port);
            }
            // The conventional annotations name the app's metrics port.
            let ann = &workload["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(ann["prometheus.io/scrape"], "true", "{dir}: {kind}");
            assert_eq!(ann["prometheus.io/path"], "/metrics", "{dir}: {kind}");
            let ann_port: i64 = ann["prometheus.io/port"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .expect("prometheus.io/port is a number");
            assert!(
                scraped.iter().any(|p| ports[p].0 == ann_port),
                "{dir}: {kind} annotation port {ann_port} is a scraped port"
            );
            scraped_by_role.insert(name, (scraped, ports));
        }
        let (gateway_scraped, gateway_ports) = &scraped_by_role["gateway"];
        assert_eq!(
            gateway_scraped,
            &BTreeSet::from(["litestream", "public"]),
            "{dir}: the app's and Litestream's metrics"
        );
        assert_eq!(scraped_by_role["http"].0, BTreeSet::from(["http"]), "{dir}");

        // Litestream listens where its port is declared: on the sidecar, and only there.
        let (ls_port, ls_container) = gateway_ports["litestream"];
        assert_eq!(
            ls_container["restartPolicy"], "Always",
            "{dir}: on the sidecar"
        );
        let sts = find(&objs, "StatefulSet", "gateway");
        for c in all_containers(pod_spec(sts)) {
            let env = container_env(&objs, c);
            if c["name"] == ls_container["name"] {
                assert_eq!(
                    literal(&env, "LITESTREAM_METRICS_ADDR"),
                    format!(":{ls_port}"),
                    "{dir}"
                );
            } else {
                assert!(
                    !env.contains_key("LITESTREAM_METRICS_ADDR"),
                    "{dir}: {} would listen on Litestream's port too",
                    c["name"]
                );
            }
        }

        // The NetworkPolicy lets the scrapes in.
        let policy = find(&objs, "NetworkPolicy", "gateway");
        for port in gateway_scraped {
            let number = gateway_ports[port].0;
            assert!(
                arr(&policy["spec"]["ingress"])
                    .iter()
                    .any(|rule| rule["from"].is_null()
                        && arr(&rule["ports"]).iter().any(|p| p["port"] == number)),
                "{dir}: the NetworkPolicy blocks scraping port {port} ({number})"
            );
        }
    }
}

/// Metric names in a PromQL expression: identifiers outside label matchers, ranges and
/// strings that are not functions, keywords or the label lists of by/without/on/ignoring.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 8] = [
        "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may put `by (...)` before their argument: `sum by (pod) (x)`.
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let b: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        let open = b[*i];
        let mut depth = 0;
        while *i < b.len() {
            let c = b[*i];
            if c == '"' || c == '\'' || c == '`' {
                *i += 1;
                while *i < b.len() && b[*i] != c {
                    *i += if b[*i] == '\\' { 2 } else { 1 };
                }
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => skip_to(&mut i, '}'),
            '[' => skip_to(&mut i, ']'),
            '#' => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == '(';
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = j;
                        skip_to(&mut i, ')');
                    }
                } else if !call
                    && !AGGREGATIONS.contains(&word.as_str())
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Whether the pods export `name`: the registered name (without the registry's prefix and the
/// `_total`/histogram suffixes the encoder adds) or the full name appears as a string literal
/// in the metrics source.
fn exported_by_the_pods(name: &str) -> bool {
    let sources = [
        ("src/gateway/metrics.rs", "guildshard_"),
        ("src/http/metrics.rs", "guildshard_http_"),
    ];
    let mut stems = vec![name];
    for suffix in ["_total", "_bucket", "_count", "_sum"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            stems.push(stem);
        }
    }
    sources.iter().any(|(file, prefix)| {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("metrics source");
        stems.iter().any(|stem| {
            text.contains(&format!("\"{stem}\""))
                || stem
                    .strip_prefix(prefix)
                    .is_some_and(|registered| text.contains(&format!("\"{registered}\"")))
        })
    })
}

/// Metric names the alert rules may use beyond the pods' own, each documented by its exporter.
/// kube-state-metrics: docs/metrics/workload/pod-metrics.md (kube_pod_status_ready,
/// kube_pod_init_container_status_restarts_total) and storage/persistentvolumeclaim-metrics.md;
/// the kubelet's volume stats (/metrics of every kubelet); Prometheus' own `up`.
const KUBE_METRICS: [&str; 5] = [
    "kube_pod_status_ready",
    "kube_pod_init_container_status_restarts_total",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
    "up",
];

fn alert_rules() -> Vec<Value> {
    let monitoring = parse(&render("cluster/monitoring"));
    let rules = find(&monitoring, "PrometheusRule", "guildshard");
    arr(&rules["spec"]["groups"])
        .iter()
        .flat_map(|g| arr(&g["rules"]).iter().cloned())
        .collect()
}

fn litestream_names_in_rules() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .flat_map(|r| metric_names(r["expr"].as_str().unwrap_or_default()))
        .filter(|n| n.starts_with("litestream_"))
        .collect()
}

#[test]
fn alert_rules_use_only_metrics_that_exist() {
    // The extractor itself, so the check below cannot pass by finding nothing.
    assert_eq!(
        metric_names(
            "sum by (pod) (rate(a_total{job=\"x\", le=~\"1|2\"}[5m])) > on(pod) group_left(b) \
             max_over_time(b[1h:5m]) * 2 and c offset 5m unless label_replace(d, \"x\", \"$1\", \"y\", \"(.*)\")"
        ),
        ["a_total", "b", "c", "d"].map(String::from).into()
    );

    let rules = alert_rules();
    let mut used = BTreeSet::new();
    for rule in &rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{alert}: severity"
        );
        assert!(
            rule["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && rule["annotations"]["description"].is_string(),
            "{alert}: summary and description"
        );
        assert!(
            rule["for"].is_string(),
            "{alert}: a `for` so one bad scrape does not page"
        );
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no metric in {expr}");
        for name in names {
            let known = if name.starts_with("guildshard_") {
                exported_by_the_pods(&name)
            } else if name.starts_with("litestream_") {
                // Checked against the real binary's /metrics in
                // litestream_accepts_the_config_and_serves_the_metrics_the_alerts_use.
                true
            } else {
                KUBE_METRICS.contains(&name.as_str())
            };
            assert!(known, "{alert} uses {name}, which nothing exports");
            used.insert(name);
        }
    }
    // What the alerts must cover.
    for needed in [
        "guildshard_gateway_session_gaps_total",
        "guildshard_gateway_delivery_queue_full_total",
        "kube_pod_status_ready",
        "litestream_wal_size",
        "litestream_txid",
        "litestream_replica_operation_total",
    ] {
        assert!(used.contains(needed), "no alert on {needed}: {used:?}");
    }
}

/// The real Litestream accepts litestream.yml as the sidecar runs it (metrics address set) and
/// serves every litestream_* metric the alert rules use.
#[test]
fn litestream_accepts_the_config_and_serves_the_metrics_the_alerts_use() {
    use crate::support::objstore::{start_object_store, Litestream};
    use std::io::{Read as _, Write as _};

    let wanted = litestream_names_in_rules();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_object_store(&dir.path().join("s3"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let db = dir.path().join("data/bot.db");
    std::fs::create_dir_all(db.parent().expect("db dir")).expect("mkdir");
    let conn = rusqlite::Connection::open(&db).expect("open db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .expect("write");
    let ls = Litestream::new(&store, &db, 0)
        .with_env("LITESTREAM_METRICS_ADDR", &format!("127.0.0.1:{port}"));
    let config = Litestream::config_path().display().to_string();

    let out = run_bounded(
        &mut ls.command(&["databases", "-config", &config]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "litestream databases: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&db.display().to_string()),
        "the config names the database: {}",
        show(&out)
    );

    let mut child = ls
        .command(&["replicate", "-config", &config])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn litestream replicate");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut body = String::new();
    let missing = loop {
        conn.execute("INSERT INTO t VALUES (2)", []).expect("write");
        body.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        let served: BTreeSet<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut missing: Vec<String> = wanted
            .iter()
            .filter(|w| !served.contains(w.as_str()))
            .cloned()
            .collect();
        // The lag alert counts uploads by this label value.
        if !body.lines().any(|l| {
            l.starts_with("litestream_replica_operation_total{") && l.contains("operation=\"PUT\"")
        }) {
            missing.push("litestream_replica_operation_total{operation=\"PUT\"}".into());
        }
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        missing.is_empty(),
        "Litestream does not serve {missing:?} on {port}; it served:\n{body}"
    );
}

fn parse_go_duration(d: &str) -> Duration {
    let (num, unit) = d.split_at(d.find(|c: char| c.is_ascii_alphabetic()).expect("a unit"));
    let n: u64 = num.parse().expect("whole number");
    Duration::from_secs(match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        other => panic!("unit {other} in {d}"),
    })
}

#[test]
fn litestream_keeps_a_week_of_history_and_exports_metrics() {
    let shipped = std::fs::read_to_string(repo_root().join("litestream/litestream.yml"))
        .expect("litestream.yml");
    let ls: serde_yaml::Value = serde_yaml::from_str(&shipped).expect("litestream.yml parses");
    let retention = parse_go_duration(ls["snapshot"]["retention"].as_str().expect("retention"));
    let interval = parse_go_duration(ls["snapshot"]["interval"].as_str().expect("interval"));
    assert!(
        retention >= RETENTION_AT_LEAST,
        "retention {retention:?}: a bad deploy noticed after a weekend must still be restorable"
    );
    assert!(
        interval <= Duration::from_secs(24 * 3600) && interval < retention,
        "snapshot interval {interval:?}: restores replay at most this much"
    );
    assert_eq!(
        ls["addr"].as_str(),
        Some("${LITESTREAM_METRICS_ADDR}"),
        "the metrics address comes from the sidecar's env (empty elsewhere: no listener)"
    );
}

#[test]
fn pods_spread_over_nodes_and_zones() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        for (kind, name) in [("StatefulSet", "gateway"), ("Deployment", "http")] {
            let workload = find(&objs, kind, name);
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            let constraints = arr(&pod_spec(workload)["topologySpreadConstraints"]);
            let keys: BTreeSet<&str> = constraints
                .iter()
                .filter_map(|c| c["topologyKey"].as_str())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]),
                "{dir}: {kind}"
            );
            for c in constraints {
                assert_eq!(
                    c["whenUnsatisfiable"], "ScheduleAnyway",
                    "{dir}: {kind}: a one-node cluster must still schedule"
                );
                assert!(
                    c["maxSkew"].as_i64().is_some_and(|s| s >= 1),
                    "{dir}: {kind}"
                );
                assert!(
                    labels_match(&c["labelSelector"], labels),
                    "{dir}: {kind} spreads its own pods"
                );
            }
        }
    }
}

#[test]
fn http_pods_finish_interactions_before_they_stop() {
    for dir in KUSTOMIZATIONS {
        let objs = parse(&render(dir));
        let dep = find(&objs, "Deployment", "http");
        assert!(
            dep["spec"]["replicas"].is_null(),
            "{dir}: replicas in the Deployment fights the HPA on every apply"
        );
        let spec = pod_spec(dep);
        let app = &arr(&spec["containers"])[0];
        let pre_stop = &app["lifecycle"]["preStop"];
        assert!(pre_stop["exec"].is_null(), "{dir}: the image has no shell");
        let sleep = pre_stop["sleep"]["seconds"]
            .as_i64()
            .expect("a preStop sleep action");
        assert!(
            sleep >= DISCORD_DEADLINE_S,
            "{dir}: preStop sleep {sleep} s shorter than Discord's deadline"
        );
        let grace = spec["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("grace period set");
        assert!(
            grace > sleep + DISCORD_DEADLINE_S,
            "{dir}: grace {grace} s must cover the preStop sleep and the drain"
        );
    }
}

#[test]
fn minimum_kubernetes_version_is_documented() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let deploying = readme
        .split("\n## Deploying")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Deploying section");
    assert!(
        deploying.contains(&format!("Kubernetes 1.{MIN_KUBERNETES_MINOR} or later")),
        "README's Deploying section states the minimum Kubernetes version the tests validate"
    );
}

/// The build stage copies only what the binary is built from, and the context excludes local
/// state.
#[test]
fn the_image_builds_from_its_sources_only() {
    let dockerfile =
        std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile at the root");
    let build_stage: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    let mut copied = BTreeSet::new();
    for line in build_stage.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (sources, _dest) = words.split_at(words.len() - 1);
        for src in sources {
            copied.insert(src.trim_end_matches('/'));
        }
    }
    assert_eq!(
        copied,
        BTreeSet::from([
            "Cargo.lock",
            "Cargo.toml",
            "litestream",
            "migrations",
            "src"
        ]),
        "the build stage copies exactly the sources"
    );
    // Every file the sources embed lies in a copied directory.
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&repo_root().join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        const MACRO: &str = "include_str!(\"";
        for (i, _) in text.match_indices(MACRO) {
            let rest = &text[i + MACRO.len()..];
            let rel = rest.split('"').next().unwrap_or_default();
            let path = file.parent().expect("dir").join(rel);
            let path = std::fs::canonicalize(&path).expect("embedded file exists");
            let top = path
                .strip_prefix(std::fs::canonicalize(repo_root()).expect("root"))
                .expect("inside the repository")
                .components()
                .next()
                .expect("a path");
            assert!(
                copied.contains(top.as_os_str().to_str().unwrap_or_default()),
                "{} embeds {}, which the build stage does not copy",
                file.display(),
                path.display()
            );
        }
    }
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for dir in ["target", ".git", ".cache"] {
        assert!(ignored.contains(dir), ".dockerignore lacks {dir}");
    }
}
