//! Every Kubernetes-shaped JSON document the stand-in sends: the StatefulSet, its Scale, lists,
//! server-side-printed Tables, `Status` errors and the discovery documents; plus RFC 7386 merge
//! patches, RFC 6902 JSON patches and the timestamp formats. No I/O and no locking here.

use serde_json::{json, Map, Value};

use super::{KubeApiConfig, PodManagementPolicy};
use crate::calendar::civil_from_days;

/// The API group and version of StatefulSets.
pub(crate) const APPS_V1: &str = "apps/v1";

/// The Kubernetes version `/version` reports (the kubectl the tests run is 1.37).
const MINOR: &str = "37";

/// The StatefulSet as `kubectl apply` of `cluster/base/gateway-statefulset.yaml` would leave it
/// (the parts a client can observe), at resourceVersion `rv`, created at `created_secs`.
pub(crate) fn statefulset(cfg: &KubeApiConfig, uid: &str, rv: u64, created_secs: u64) -> Value {
    let labels = labels();
    json!({
        "kind": "StatefulSet",
        "apiVersion": APPS_V1,
        "metadata": {
            "name": cfg.statefulset,
            "namespace": cfg.namespace,
            "uid": uid,
            "resourceVersion": rv.to_string(),
            "generation": 1,
            "creationTimestamp": rfc3339(created_secs),
            "labels": labels,
        },
        "spec": {
            "replicas": cfg.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "gateway",
                        "image": cfg.image,
                        "args": ["gateway"],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent",
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": cfg.termination_grace_period_seconds,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": cfg.service_account,
                    "serviceAccount": cfg.service_account,
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
            },
            "serviceName": cfg.service_name,
            "podManagementPolicy": cfg.pod_management_policy.as_str(),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "revisionHistoryLimit": 10,
            "minReadySeconds": 5,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        },
        "status": {
            "replicas": 0,
            "readyReplicas": 0,
            "currentReplicas": 0,
            "updatedReplicas": 0,
            "availableReplicas": 0,
            "observedGeneration": 0,
            "collisionCount": 0,
        },
    })
}

fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": "guildshard",
        "app.kubernetes.io/component": "gateway",
    })
}

/// An integer field of `v` at JSON pointer `ptr`, if it is one.
pub(crate) fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// A string field of `v` at JSON pointer `ptr`, or "".
pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// The pod management policy a StatefulSet object names (Kubernetes' default when absent).
pub(crate) fn policy_of(sts: &Value) -> PodManagementPolicy {
    match str_at(sts, "/spec/podManagementPolicy") {
        "Parallel" => PodManagementPolicy::Parallel,
        _ => PodManagementPolicy::OrderedReady,
    }
}

/// The label selector of `sts` as a string, as `Scale.status.selector` carries it.
fn selector_string(sts: &Value) -> String {
    sts.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The `autoscaling/v1` Scale of `sts` (what `/scale` serves).
pub(crate) fn scale(sts: &Value) -> Value {
    let meta = &sts["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": sts["spec"]["replicas"]},
        "status": {
            "replicas": sts["status"]["replicas"],
            "selector": selector_string(sts),
        },
    })
}

/// A `StatefulSetList` at resourceVersion `rv`. Items carry no kind/apiVersion, as the real
/// server's typed lists.
pub(crate) fn list(items: &[Value], rv: u64) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            item
        })
        .collect();
    json!({
        "kind": "StatefulSetList",
        "apiVersion": APPS_V1,
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

/// The server-side printed `Table` (`kubectl get`'s default output) of `items`, with the real
/// server's StatefulSet columns.
pub(crate) fn table(items: &[Value], rv: u64, now_secs: u64) -> Value {
    let column = |name: &str, format: &str, description: &str, priority: u8| json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority});
    let rows: Vec<Value> = items
        .iter()
        .map(|sts| {
            let created = parse_rfc3339(str_at(sts, "/metadata/creationTimestamp")).unwrap_or(now_secs);
            let ready = format!(
                "{}/{}",
                int_at(sts, "/status/readyReplicas").unwrap_or(0),
                int_at(sts, "/spec/replicas").unwrap_or(1)
            );
            let containers = sts.pointer("/spec/template/spec/containers").and_then(Value::as_array);
            let field = |key: &str| {
                containers
                    .map(|cs| {
                        cs.iter()
                            .map(|c| c[key].as_str().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            json!({
                "cells": [sts["metadata"]["name"], ready, human_duration(now_secs.saturating_sub(created)), field("name"), field("image")],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": sts["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [
            column("Name", "name", "Name must be unique within a namespace.", 0),
            column("Ready", "", "Number of the pod with ready state", 0),
            column("Age", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            column("Containers", "", "Names of each container in the template.", 1),
            column("Images", "", "Images referenced by each container in the template.", 1),
        ],
        "rows": rows,
    })
}

/// A `Status` failure object, the body of every error answer and of watch ERROR events.
pub(crate) fn status_failure(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// The namespace object, created at `created_secs`.
pub(crate) fn namespace(name: &str, created_secs: u64) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-4000-8000-{:012x}", created_secs),
            "resourceVersion": "1",
            "creationTimestamp": rfc3339(created_secs),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// `GET /version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "emulationMajor": "1",
        "emulationMinor": MINOR,
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": format!("v1.{MINOR}.0+guildshard"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`: the legacy core group's versions.
pub(crate) fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group(name: &str) -> Value {
    let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({
        "name": name,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `GET /apis`: the groups served (apps for StatefulSets, autoscaling for their Scale).
pub(crate) fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group("apps"), group("autoscaling")],
    })
}

/// `GET /apis/{group}`, for a served group.
pub(crate) fn api_group(name: &str) -> Option<Value> {
    matches!(name, "apps" | "autoscaling").then(|| {
        let mut g = group(name);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `GET /api/v1` and `GET /apis/{group}/v1`: the resources served in that group version.
pub(crate) fn resource_list(group_version: &str) -> Option<Value> {
    let resources = match group_version {
        "v1" => json!([{
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": false,
            "kind": "Namespace",
            "verbs": ["get"],
            "shortNames": ["ns"],
        }]),
        "autoscaling/v1" => json!([]),
        APPS_V1 => json!([
            {
                "name": "statefulsets",
                "singularName": "statefulset",
                "namespaced": true,
                "kind": "StatefulSet",
                "verbs": ["get", "list", "patch", "update", "watch"],
                "shortNames": ["sts"],
                "categories": ["all"],
            },
            {
                "name": "statefulsets/scale",
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            },
        ]),
        _ => return None,
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Applies an RFC 7386 JSON merge patch to `target`. Strategic merge patches of the fields this
/// stand-in serves (maps and scalars) merge the same way; lists are replaced whole.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        // Strategic-merge directives (`$patch`, `$setElementOrder/…`) steer list merges, which
        // are replaced whole here.
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `replace`, `remove`, `test`) to `target`.
///
/// # Errors
/// A message naming the operation that could not be applied.
pub(crate) fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a json patch must be an array of operations")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("operation has no path")?;
        let (parent_ptr, last) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("invalid path {path:?}"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test operation failed at {path}"));
                }
            }
            kind @ ("add" | "replace" | "remove") => {
                let parent = target.pointer_mut(parent_ptr).ok_or_else(|| {
                    format!("{kind} operation does not apply: doc is missing path: {path}")
                })?;
                let missing =
                    || format!("{kind} operation does not apply: doc is missing key: {path}");
                match (kind, parent) {
                    ("remove", Value::Object(m)) => {
                        m.remove(&last).ok_or_else(missing)?;
                    }
                    ("replace", Value::Object(m)) if !m.contains_key(&last) => {
                        return Err(missing())
                    }
                    (_, Value::Object(m)) => {
                        m.insert(last, op["value"].clone());
                    }
                    (_, Value::Array(a)) => {
                        let len = a.len();
                        let index = if last == "-" {
                            len
                        } else {
                            last.parse().map_err(|_| missing())?
                        };
                        match kind {
                            "add" if index <= len => a.insert(index, op["value"].clone()),
                            "replace" if index < len => a[index] = op["value"].clone(),
                            "remove" if index < len => {
                                a.remove(index);
                            }
                            _ => return Err(missing()),
                        }
                    }
                    _ => return Err(missing()),
                }
            }
            other => return Err(format!("unsupported json patch operation {other:?}")),
        }
    }
    Ok(())
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Unix seconds as Kubernetes writes timestamps: `2026-01-01T00:00:00Z`.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`rfc3339`] (whole seconds, `Z` only).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |range: std::ops::Range<usize>| s.get(range).and_then(|p| p.parse::<i64>().ok());
    if s.len() != 20 || !s.ends_with('Z') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// A proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An age as the API server's printers write it (`apimachinery` `duration.HumanDuration`).
pub(crate) fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => format!("{}y{}d", d / 365, d % 365),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        for secs in [0, 951_782_400, 1_767_225_599, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00.5Z"), None);
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86_400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86_400), "30d");
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "$patch": "merge"}),
        );
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_replaces_adds_removes_and_tests() {
        let mut doc = json!({"spec": {"replicas": 3, "list": [1, 2]}});
        let ops = json!([
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "add", "path": "/spec/new", "value": true},
        ]);
        json_patch(&mut doc, &ops).expect("applies");
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 5, "list": [2, 3], "new": true}})
        );
        let failing = json!([{"op": "replace", "path": "/spec/absent", "value": 1}]);
        assert!(json_patch(&mut doc, &failing).is_err());
        let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 4}]);
        assert!(json_patch(&mut doc, &failing).is_err());
    }

    #[test]
    fn scale_mirrors_the_statefulset() {
        let sts = statefulset(&KubeApiConfig::default(), "uid", 7, 0);
        let scale = scale(&sts);
        assert_eq!(scale["spec"]["replicas"], sts["spec"]["replicas"]);
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
        assert_eq!(
            scale["status"]["selector"],
            "app.kubernetes.io/component=gateway,app.kubernetes.io/name=guildshard"
        );
    }
}
