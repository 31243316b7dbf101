//! The HTTP surface: bearer-token auth, discovery, and the StatefulSet and Scale endpoints
//! (get, list, watch, patch, update), answering as the API server does.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::{self, str_at};
use super::query::{ListQuery, Start};
use super::{watch, KubeApi};

type Answer = Result<Response, ApiError>;

/// The routes, with auth and request counting around all of them (the fallbacks included).
pub(crate) fn router(api: KubeApi) -> Router<KubeApi> {
    let sts = "/apis/apps/v1/namespaces/{ns}/statefulsets";
    Router::new()
        .route(
            "/version",
            get(|| async { json_response(&objects::version()) }),
        )
        .route("/api", get(core_versions))
        .route("/api/{version}", get(core_resources))
        .route("/api/v1/namespaces/{ns}", get(get_namespace))
        .route(
            "/apis",
            get(|| async { json_response(&objects::group_list()) }),
        )
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/apis/apps/v1/statefulsets", get(list_all))
        .route(sts, get(list_namespaced))
        .route(
            &format!("{sts}/{{name}}"),
            get(get_statefulset)
                .put(put_statefulset)
                .patch(patch_statefulset),
        )
        .route(
            &format!("{sts}/{{name}}/scale"),
            get(get_scale).put(put_scale).patch(patch_scale),
        )
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(api, guard))
}

/// Who a request authenticated as (RBAC refusals name them).
#[derive(Clone, Debug)]
pub(crate) struct Caller(String);

/// Counts the request and authenticates it, as an API server with anonymous auth enabled does:
/// a known bearer token is the service account, no credentials at all is `system:anonymous`
/// (kubectl sends no token over plain http), anything else is 401.
async fn guard(State(api): State<KubeApi>, mut req: Request, next: Next) -> Response {
    api.shared.counters.request();
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let caller = match credentials {
        None if api.shared.cfg.allow_anonymous => Caller("system:anonymous".into()),
        Some(value)
            if value
                .strip_prefix("Bearer ")
                .map(str::trim)
                .is_some_and(|t| api.shared.cfg.tokens.iter().any(|ok| ok == t)) =>
        {
            Caller(api.user())
        }
        _ => return ApiError::unauthorized().into_response(),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn core_versions(State(api): State<KubeApi>) -> Response {
    json_response(&objects::core_versions(&api.shared.addr.to_string()))
}

async fn core_resources(Path(version): Path<String>) -> Answer {
    objects::resource_list(&version)
        .map(|v| json_response(&v))
        .ok_or_else(ApiError::no_route)
}

/// The StatefulSet's namespace (kubectl asks for it to explain a 404).
async fn get_namespace(State(api): State<KubeApi>, Path(ns): Path<String>) -> Answer {
    if ns != api.namespace() {
        return Err(ApiError::namespace_not_found(&ns));
    }
    let created = api.lock().created_secs();
    Ok(json_response(&objects::namespace(&ns, created)))
}

async fn api_group(Path(group): Path<String>) -> Answer {
    objects::api_group(&group)
        .map(|v| json_response(&v))
        .ok_or_else(ApiError::no_route)
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Answer {
    objects::resource_list(&format!("{group}/{version}"))
        .map(|v| json_response(&v))
        .ok_or_else(ApiError::no_route)
}

/// Whether the client asked for a server-side printed Table (`kubectl get`).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

/// The forbidden switch: RBAC says no to every StatefulSet request.
fn authorize(
    api: &KubeApi,
    caller: &Caller,
    verb: &str,
    resource: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if api.is_forbidden() {
        return Err(ApiError::forbidden(
            &caller.0, verb, resource, name, namespace,
        ));
    }
    Ok(())
}

async fn list_all(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    list(&api, &caller, None, &headers, &params)
}

async fn list_namespaced(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    list(&api, &caller, Some(ns), &headers, &params)
}

fn list(
    api: &KubeApi,
    caller: &Caller,
    ns: Option<String>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Answer {
    let query = ListQuery::parse(params)?;
    let verb = if query.watch { "watch" } else { "list" };
    authorize(api, caller, verb, "statefulsets", None, ns.as_deref())?;
    if query.watch {
        return Ok(watch::respond(api, ns, query));
    }
    let state = api.lock();
    if let (true, Start::After(rv)) = (query.exact, query.start) {
        if rv != state.rv() {
            return Err(ApiError::expired(rv, state.rv()));
        }
    }
    let items: Vec<Value> = state
        .object()
        .filter(|o| {
            ns.as_deref()
                .is_none_or(|ns| str_at(o, "/metadata/namespace") == ns)
        })
        .filter(|o| query.matches(o))
        .cloned()
        .into_iter()
        .collect();
    Ok(if wants_table(headers) {
        json_response(&objects::table(&items, state.rv(), objects::now_secs()))
    } else {
        json_response(&objects::list(&items, state.rv()))
    })
}

/// The named StatefulSet in `ns`, or 404.
fn find(api: &KubeApi, ns: &str, name: &str) -> Result<Value, ApiError> {
    api.lock()
        .object()
        .filter(|o| str_at(o, "/metadata/namespace") == ns && str_at(o, "/metadata/name") == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(name))
}

async fn get_statefulset(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    authorize(&api, &caller, "get", "statefulsets", Some(&name), Some(&ns))?;
    let obj = find(&api, &ns, &name)?;
    Ok(if wants_table(&headers) {
        let rv = api.lock().rv();
        json_response(&objects::table(&[obj], rv, objects::now_secs()))
    } else {
        json_response(&obj)
    })
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(&format!("error decoding the request body: {err}")))
}

/// Applies a PATCH body of `content_type` to `target`.
fn apply_patch(
    name: &str,
    target: &mut Value,
    content_type: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patch = match media {
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => parse_body(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if media == "application/json-patch+json" {
        objects::json_patch(target, &patch).map_err(|m| ApiError::invalid(name, &m))
    } else {
        objects::merge_patch(target, &patch);
        Ok(())
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn patch_statefulset(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    authorize(
        &api,
        &caller,
        "patch",
        "statefulsets",
        Some(&name),
        Some(&ns),
    )?;
    let updated = api.change(|state| {
        let mut obj = state
            .object()
            .filter(|o| {
                str_at(o, "/metadata/namespace") == ns && str_at(o, "/metadata/name") == name
            })
            .cloned()
            .ok_or_else(|| ApiError::not_found(&name))?;
        apply_patch(&name, &mut obj, content_type(&headers), &body)?;
        state.update(obj)
    })?;
    Ok(json_response(&updated))
}

async fn put_statefulset(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    authorize(
        &api,
        &caller,
        "update",
        "statefulsets",
        Some(&name),
        Some(&ns),
    )?;
    let obj = parse_body(&body)?;
    check_name(&obj, &name)?;
    find(&api, &ns, &name)?;
    let updated = api.change(|state| state.update(obj))?;
    Ok(json_response(&updated))
}

fn check_name(obj: &Value, name: &str) -> Result<(), ApiError> {
    let in_body = str_at(obj, "/metadata/name");
    if in_body != name {
        return Err(ApiError::bad_request(&format!(
            "the name of the object ({in_body}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

async fn get_scale(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    authorize(
        &api,
        &caller,
        "get",
        "statefulsets/scale",
        Some(&name),
        Some(&ns),
    )?;
    Ok(json_response(&objects::scale(&find(&api, &ns, &name)?)))
}

/// Sets the StatefulSet's replicas from a (patched or PUT) Scale, honouring its
/// resourceVersion as a precondition, and answers with the new Scale.
fn apply_scale(
    api: &KubeApi,
    ns: &str,
    name: &str,
    scale: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Answer {
    let updated = api.change(|state| {
        let obj = state
            .object()
            .filter(|o| {
                str_at(o, "/metadata/namespace") == ns && str_at(o, "/metadata/name") == name
            })
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        let wanted = scale(objects::scale(&obj))?;
        if !wanted["spec"].is_object() {
            return Err(ApiError::bad_request("a Scale must have a spec"));
        }
        let mut candidate = obj;
        // An omitted replicas field is 0 in the Go struct the real server decodes into.
        candidate["spec"]["replicas"] = match &wanted["spec"]["replicas"] {
            Value::Null => json!(0),
            replicas => replicas.clone(),
        };
        candidate["metadata"]["resourceVersion"] = wanted["metadata"]["resourceVersion"].clone();
        state.update(candidate)
    })?;
    Ok(json_response(&objects::scale(&updated)))
}

async fn patch_scale(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    authorize(
        &api,
        &caller,
        "patch",
        "statefulsets/scale",
        Some(&name),
        Some(&ns),
    )?;
    apply_scale(&api, &ns, &name, |mut scale| {
        apply_patch(&name, &mut scale, content_type(&headers), &body)?;
        Ok(scale)
    })
}

async fn put_scale(
    State(api): State<KubeApi>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    authorize(
        &api,
        &caller,
        "update",
        "statefulsets/scale",
        Some(&name),
        Some(&ns),
    )?;
    let wanted = parse_body(&body)?;
    check_name(&wanted, &name)?;
    apply_scale(&api, &ns, &name, |_| Ok(wanted))
}
