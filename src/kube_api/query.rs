//! The list and watch query parameters (`watch`, `resourceVersion`, `fieldSelector`,
//! `labelSelector`, `timeoutSeconds`, `allowWatchBookmarks`, `sendInitialEvents`), parsed once
//! into typed values; bad values become 400 `Status` answers.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::error::ApiError;
use super::objects::str_at;

/// Where a list or watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Unset or "0": the current state (a watch begins with a synthetic ADDED).
    Current,
    /// Events after this resourceVersion.
    After(u64),
}

/// One selector requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// The parsed parameters of a list or watch request.
#[derive(Clone, Debug)]
pub(crate) struct ListQuery {
    /// `watch=true|1`.
    pub(crate) watch: bool,
    /// From `resourceVersion`.
    pub(crate) start: Start,
    /// `resourceVersionMatch=Exact` (lists only).
    pub(crate) exact: bool,
    /// `timeoutSeconds`.
    pub(crate) timeout: Option<Duration>,
    /// `allowWatchBookmarks=true`.
    pub(crate) bookmarks: bool,
    /// `sendInitialEvents=true`.
    pub(crate) initial_events: bool,
    fields: Vec<(String, Term)>,
    labels: Vec<Term>,
}

fn flag(params: &HashMap<String, String>, key: &str) -> bool {
    params
        .get(key)
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "True" | "TRUE"))
}

impl ListQuery {
    /// Parses the query string's parameters.
    ///
    /// # Errors
    /// 400 for a non-numeric resourceVersion or timeout, an unsupported field label or a label
    /// selector this stand-in cannot read.
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let start = match params.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => Start::Current,
            Some(rv) => Start::After(rv.parse().map_err(|_| {
                ApiError::bad_request(&format!("invalid resource version: {rv:?}"))
            })?),
        };
        let timeout = match params.get("timeoutSeconds") {
            None => None,
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(&format!("invalid timeoutSeconds: {t:?}"))
            })?)),
        };
        let mut fields = Vec::new();
        for term in parse_terms(params.get("fieldSelector").map_or("", String::as_str))? {
            let key = match &term {
                Term::Equals(k, _) | Term::NotEquals(k, _) => k.clone(),
                Term::Exists(k) | Term::NotExists(k) => {
                    return Err(ApiError::bad_request(&format!(
                        "invalid selector: {k:?}; can't understand '{k}'"
                    )))
                }
            };
            if !matches!(key.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(&format!(
                    "field label not supported: {key}"
                )));
            }
            fields.push((key, term));
        }
        let labels = parse_terms(params.get("labelSelector").map_or("", String::as_str))?;
        Ok(Self {
            watch: flag(params, "watch"),
            start,
            exact: params.get("resourceVersionMatch").map(String::as_str) == Some("Exact"),
            timeout,
            bookmarks: flag(params, "allowWatchBookmarks"),
            initial_events: flag(params, "sendInitialEvents"),
            fields,
            labels,
        })
    }

    /// Whether `obj` matches the field and label selectors.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let fields_match = self.fields.iter().all(|(key, term)| {
            let actual = match key.as_str() {
                "metadata.name" => str_at(obj, "/metadata/name"),
                _ => str_at(obj, "/metadata/namespace"),
            };
            match term {
                Term::Equals(_, v) => actual == v,
                Term::NotEquals(_, v) => actual != v,
                Term::Exists(_) | Term::NotExists(_) => false,
            }
        });
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        fields_match
            && self.labels.iter().all(|term| match term {
                Term::Equals(k, v) => label(k) == Some(v.as_str()),
                Term::NotEquals(k, v) => label(k) != Some(v.as_str()),
                Term::Exists(k) => label(k).is_some(),
                Term::NotExists(k) => label(k).is_none(),
            })
    }
}

/// Equality-based selector terms: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn parse_terms(selector: &str) -> Result<Vec<Term>, ApiError> {
    let mut terms = Vec::new();
    for raw in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let term = if let Some((k, v)) = raw.split_once("!=") {
            Term::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
            Term::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = raw.strip_prefix('!') {
            Term::NotExists(k.trim().into())
        } else {
            Term::Exists(raw.into())
        };
        let key = match &term {
            Term::Equals(k, _) | Term::NotEquals(k, _) | Term::Exists(k) | Term::NotExists(k) => k,
        };
        let valid = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        if key.is_empty() || !valid(key) || raw.contains(" in ") || raw.contains(" notin ") {
            return Err(ApiError::bad_request(&format!(
                "unable to parse requirement: {raw:?}"
            )));
        }
        terms.push(term);
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn parameters_parse_as_the_api_server_reads_them() {
        let q = query(&[
            ("watch", "1"),
            ("resourceVersion", "12"),
            ("timeoutSeconds", "5"),
            ("allowWatchBookmarks", "true"),
        ])
        .expect("valid");
        assert!(q.watch && q.bookmarks && !q.initial_events);
        assert_eq!(q.start, Start::After(12));
        assert_eq!(q.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            query(&[("resourceVersion", "0")]).expect("valid").start,
            Start::Current
        );
        assert_eq!(
            query(&[("resourceVersion", "x")]).expect_err("bad").code,
            400
        );
        assert_eq!(
            query(&[("fieldSelector", "spec.replicas=1")])
                .expect_err("bad")
                .code,
            400
        );
    }

    #[test]
    fn selectors_filter_by_name_namespace_and_labels() {
        let obj = json!({"metadata": {"name": "gateway", "namespace": "guildshard",
            "labels": {"app.kubernetes.io/name": "guildshard"}}});
        let matches = |pairs: &[(&str, &str)]| query(pairs).expect("valid").matches(&obj);
        assert!(matches(&[("fieldSelector", "metadata.name=gateway")]));
        assert!(matches(&[(
            "fieldSelector",
            "metadata.name==gateway,metadata.namespace=guildshard"
        )]));
        assert!(!matches(&[("fieldSelector", "metadata.name=other")]));
        assert!(!matches(&[("fieldSelector", "metadata.name!=gateway")]));
        assert!(matches(&[(
            "labelSelector",
            "app.kubernetes.io/name=guildshard"
        )]));
        assert!(matches(&[(
            "labelSelector",
            "app.kubernetes.io/name,!other"
        )]));
        assert!(!matches(&[(
            "labelSelector",
            "app.kubernetes.io/name!=guildshard"
        )]));
    }
}
