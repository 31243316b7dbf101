//! The stand-in's "etcd": the one StatefulSet (or its absence), the resourceVersion counter and
//! the bounded event history that watches replay from. Every change goes through here, so
//! resourceVersion, generation and the history stay consistent.

use std::collections::VecDeque;

use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::{self, int_at, str_at};
use super::{KubeApiConfig, StatefulSetSnapshot};

/// A watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// The `type` of a watch frame.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, kept for watches that resume from an older resourceVersion.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// The resourceVersion the change produced.
    pub(crate) rv: u64,
    /// What happened.
    pub(crate) kind: EventType,
    /// The object after the change (for a deletion: the last state, at the deletion's version).
    pub(crate) object: Value,
}

/// The history no longer reaches back to the requested resourceVersion.
#[derive(Debug)]
pub(crate) struct Expired {
    /// The oldest resourceVersion a watch can still start from.
    pub(crate) oldest: u64,
}

/// Spec fields a StatefulSet update may change (the API server's validation list).
const MUTABLE_SPEC: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// The object store.
pub(crate) struct State {
    /// The StatefulSet; `None` while it is deleted.
    object: Option<Value>,
    /// The last object that existed (what a snapshot shows while deleted).
    last: Value,
    /// The last resourceVersion handed out.
    rv: u64,
    /// Events with `rv > compacted`, oldest first.
    history: VecDeque<Event>,
    /// Every event after this version is in `history`.
    compacted: u64,
    /// How many events `history` keeps.
    capacity: usize,
    /// Counts objects created, for distinct uids.
    incarnation: u64,
    /// Unix seconds at start.
    started: u64,
}

impl State {
    /// A store holding the StatefulSet `cfg` describes, created now at resourceVersion 1.
    pub(crate) fn new(cfg: &KubeApiConfig) -> Self {
        let mut state = State {
            object: None,
            last: Value::Null,
            rv: 0,
            history: VecDeque::new(),
            compacted: 0,
            capacity: cfg.watch_history.max(1),
            incarnation: 0,
            started: objects::now_secs(),
        };
        state.create(cfg);
        state
    }

    /// The last resourceVersion handed out (a list's resourceVersion).
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// When the stand-in started (its namespace's creation time).
    pub(crate) fn created_secs(&self) -> u64 {
        self.started
    }

    /// The StatefulSet, if it exists.
    pub(crate) fn object(&self) -> Option<&Value> {
        self.object.as_ref()
    }

    /// The in-process view of the current (or, while deleted, the last) object.
    pub(crate) fn snapshot(&self) -> StatefulSetSnapshot {
        let obj = &self.last;
        let count = |ptr: &str| u32::try_from(int_at(obj, ptr).unwrap_or(0)).unwrap_or(0);
        StatefulSetSnapshot {
            exists: self.object.is_some(),
            replicas: count("/spec/replicas"),
            pod_management_policy: objects::policy_of(obj),
            termination_grace_period: std::time::Duration::from_secs(
                int_at(obj, "/spec/template/spec/terminationGracePeriodSeconds")
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(30),
            ),
            resource_version: str_at(obj, "/metadata/resourceVersion")
                .parse()
                .unwrap_or(0),
            generation: int_at(obj, "/metadata/generation")
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(0),
            ready_replicas: count("/status/readyReplicas"),
            current_replicas: count("/status/currentReplicas"),
        }
    }

    /// Events after `rv`, or [`Expired`] when some of them are no longer kept.
    pub(crate) fn events_after(&self, rv: u64) -> Result<Vec<Event>, Expired> {
        if rv < self.compacted {
            return Err(Expired {
                oldest: self.compacted,
            });
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    fn record(&mut self, kind: EventType, object: Value) {
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            object,
        });
        while self.history.len() > self.capacity {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Creates the StatefulSet from `cfg` (as applying the manifest again would), unless it
    /// exists. Returns whether it was created.
    pub(crate) fn create(&mut self, cfg: &KubeApiConfig) -> bool {
        if self.object.is_some() {
            return false;
        }
        self.rv += 1;
        self.incarnation += 1;
        let uid = uid(cfg, self.incarnation);
        let obj = objects::statefulset(cfg, &uid, self.rv, objects::now_secs());
        self.last = obj.clone();
        self.object = Some(obj.clone());
        self.record(EventType::Added, obj);
        true
    }

    /// Deletes the StatefulSet. Returns whether it existed.
    pub(crate) fn delete(&mut self) -> bool {
        let Some(mut obj) = self.object.take() else {
            return false;
        };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.last = obj.clone();
        self.record(EventType::Deleted, obj);
        true
    }

    /// Replaces the StatefulSet with `candidate` (a patched or PUT object) after the API
    /// server's checks: server-owned metadata and status are kept, an outdated
    /// `metadata.resourceVersion` conflicts, only mutable spec fields may change, and values
    /// must be valid. A change bumps the resourceVersion (and the generation when the spec
    /// changed) and is recorded; an update that changes nothing is a no-op, as on a real server.
    ///
    /// # Errors
    /// NotFound, Conflict, BadRequest (wrong types) or Invalid, as the real server answers.
    pub(crate) fn update(&mut self, mut candidate: Value) -> Result<Value, ApiError> {
        let Some(current) = self.object.as_ref() else {
            return Err(ApiError::not_found(str_at(&self.last, "/metadata/name")));
        };
        let name = str_at(current, "/metadata/name").to_owned();
        if !candidate.is_object()
            || !candidate["metadata"].is_object()
            || !candidate["spec"].is_object()
        {
            return Err(ApiError::bad_request(
                "the object must have metadata and spec",
            ));
        }
        let wanted_rv = str_at(&candidate, "/metadata/resourceVersion");
        if !wanted_rv.is_empty() && wanted_rv != str_at(current, "/metadata/resourceVersion") {
            return Err(ApiError::conflict(&name));
        }
        for key in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            candidate["metadata"][key] = current["metadata"][key].clone();
        }
        candidate["kind"] = current["kind"].clone();
        candidate["apiVersion"] = current["apiVersion"].clone();
        candidate["status"] = current["status"].clone();
        validate_spec(&name, &current["spec"], &candidate["spec"])?;
        if candidate["spec"]["replicas"].is_null() {
            // The API server defaults an omitted replicas field to 1.
            candidate["spec"]["replicas"] = json!(1);
        }
        if &candidate == current {
            return Ok(candidate);
        }
        let spec_changed = candidate["spec"] != current["spec"];
        self.rv += 1;
        candidate["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if spec_changed {
            let generation = int_at(current, "/metadata/generation").unwrap_or(0) + 1;
            candidate["metadata"]["generation"] = json!(generation);
        }
        self.commit(candidate.clone());
        Ok(candidate)
    }

    /// Sets the status a controller reports. Returns whether anything changed.
    ///
    /// # Errors
    /// NotFound while the StatefulSet is deleted.
    pub(crate) fn set_status(&mut self, ready: u32, current: u32) -> Result<bool, ApiError> {
        let Some(obj) = self.object.as_ref() else {
            return Err(ApiError::not_found(str_at(&self.last, "/metadata/name")));
        };
        let mut next = obj.clone();
        next["status"] = json!({
            "replicas": current,
            "readyReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": current,
            "availableReplicas": ready,
            "observedGeneration": obj["metadata"]["generation"],
            "collisionCount": 0,
        });
        if &next == obj {
            return Ok(false);
        }
        self.rv += 1;
        next["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.commit(next);
        Ok(true)
    }

    fn commit(&mut self, obj: Value) {
        self.last = obj.clone();
        self.object = Some(obj.clone());
        self.record(EventType::Modified, obj);
    }
}

/// A stable, distinct uid per (namespace, name, incarnation), shaped like a UUID.
fn uid(cfg: &KubeApiConfig, incarnation: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &cfg.namespace,
        &cfg.statefulset,
        incarnation,
        objects::now_secs(),
    )
        .hash(&mut hasher);
    let a = hasher.finish();
    incarnation.hash(&mut hasher);
    let b = hasher.finish();
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The API server's StatefulSet spec validation, for the fields a client can reach here.
fn validate_spec(name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let replicas = &new["replicas"];
    match replicas.as_i64() {
        Some(n) if n < 0 => {
            return Err(ApiError::invalid(
                name,
                &format!("spec.replicas: Invalid value: {n}: must be greater than or equal to 0"),
            ))
        }
        Some(n) if i32::try_from(n).is_ok() => {}
        _ if replicas.is_null() => {}
        _ => {
            return Err(ApiError::bad_request(&format!(
                "json: cannot unmarshal {replicas} into Go struct field StatefulSetSpec.spec.replicas of type int32"
            )))
        }
    }
    let grace = new.pointer("/template/spec/terminationGracePeriodSeconds");
    if grace.is_some_and(|g| !g.is_null() && g.as_u64().is_none()) {
        return Err(ApiError::invalid(
            name,
            "spec.template.spec.terminationGracePeriodSeconds: Invalid value: must be a non-negative integer",
        ));
    }
    let (empty, empty2) = (serde_json::Map::new(), serde_json::Map::new());
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty2);
    let changed_immutable = old
        .keys()
        .chain(new.keys())
        .filter(|k| !MUTABLE_SPEC.contains(&k.as_str()))
        .any(|k| old.get(k) != new.get(k));
    if changed_immutable {
        return Err(ApiError::invalid(
            name,
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', \
             'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', \
             'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(history: usize) -> State {
        State::new(&KubeApiConfig {
            watch_history: history,
            ..KubeApiConfig::default()
        })
    }

    fn with_replicas(state: &State, n: i64) -> Value {
        let mut obj = state.object().cloned().expect("exists");
        obj["spec"]["replicas"] = json!(n);
        obj
    }

    #[test]
    fn a_spec_change_bumps_version_and_generation_a_no_op_bumps_nothing() {
        let mut s = state(10);
        assert_eq!((s.rv(), s.snapshot().generation), (1, 1));
        s.update(with_replicas(&s, 5)).expect("scale");
        let snap = s.snapshot();
        assert_eq!(
            (snap.replicas, snap.resource_version, snap.generation),
            (5, 2, 2)
        );
        s.update(with_replicas(&s, 5)).expect("same");
        assert_eq!(s.rv(), 2);
        assert!(s.set_status(5, 5).expect("status"));
        assert_eq!(
            (s.rv(), s.snapshot().generation, s.snapshot().ready_replicas),
            (3, 2, 5)
        );
    }

    #[test]
    fn history_replays_and_then_expires() {
        let mut s = state(2);
        for n in 2..6 {
            s.update(with_replicas(&s, n)).expect("scale");
        }
        // rv 1 created, 2..=5 scaled; only 4 and 5 are kept.
        let kinds: Vec<u64> = s
            .events_after(3)
            .expect("kept")
            .iter()
            .map(|e| e.rv)
            .collect();
        assert_eq!(kinds, vec![4, 5]);
        assert!(s.events_after(5).expect("kept").is_empty());
        assert_eq!(s.events_after(2).expect_err("expired").oldest, 3);
    }

    #[test]
    fn invalid_and_immutable_changes_are_refused() {
        let mut s = state(10);
        assert_eq!(
            s.update(with_replicas(&s, -1)).expect_err("negative").code,
            422
        );
        let mut obj = s.object().cloned().expect("exists");
        obj["spec"]["replicas"] = json!("five");
        assert_eq!(s.update(obj).expect_err("string").code, 400);
        let mut obj = s.object().cloned().expect("exists");
        obj["spec"]["serviceName"] = json!("other");
        assert_eq!(s.update(obj).expect_err("immutable").code, 422);
        let mut obj = with_replicas(&s, 4);
        obj["metadata"]["resourceVersion"] = json!("999");
        assert_eq!(s.update(obj).expect_err("stale").code, 409);
        assert_eq!(s.rv(), 1);
    }

    #[test]
    fn delete_and_recreate_give_a_new_object() {
        let mut s = state(10);
        let uid = str_at(s.object().expect("exists"), "/metadata/uid").to_owned();
        assert!(s.delete());
        assert!(!s.delete());
        assert!(!s.snapshot().exists);
        assert_eq!(s.update(Value::Null).expect_err("gone").code, 404);
        assert!(s.create(&KubeApiConfig::default()));
        let obj = s.object().expect("exists");
        assert_ne!(str_at(obj, "/metadata/uid"), uid);
        let kinds: Vec<EventType> = s
            .events_after(0)
            .expect("kept")
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![EventType::Added, EventType::Deleted, EventType::Added]
        );
    }
}
