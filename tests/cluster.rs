//! The Kubernetes manifests: `cluster/` rendered by kustomize (`kubectl kustomize`, from the
//! pinned kubectl wheel), every object validated offline against the Kubernetes 1.31 schemas in
//! strict mode (`kubernetes-validate`), and the wiring schemas cannot see checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::objstore::{repo_root, run_bounded, show, tools};

/// The app's SIGTERM budget (it exits within 20 s) plus Litestream's shutdown sync (30 s).
const APP_SHUTDOWN_S: i64 = 20;
const LITESTREAM_FINAL_SYNC_S: i64 = 30;

const KUSTOMIZATIONS: [&str; 2] = ["cluster/base", "cluster/overlays/example"];

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
        for version in ["1.31", "1.37"] {
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
    assert_eq!(replica["path"].as_str(), Some("gateway-${POD_ORDINAL}"));
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
