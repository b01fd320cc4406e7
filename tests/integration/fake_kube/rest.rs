//! The fake's HTTP side: routing, RBAC, objects with resourceVersions, lists and selectors,
//! merge patches with preconditions, the scale subresource, metrics and `Status` errors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::portforward::{self, PortForward};
use super::{DialFn, EXEC_TOKEN, Metrics, Recorded, Scenario, TOKEN, USER};

pub(crate) struct State {
    pub namespace: String,
    /// collection (`pods`, `statefulsets`, `persistentvolumeclaims`) -> name -> object
    pub objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    pub metrics: Metrics,
    pub forbidden: Vec<(String, String)>,
    pub dials: BTreeMap<String, DialFn>,
    pub auto_available: bool,
    pub stamp_before_scale: Vec<String>,
    pub token_review: Option<super::TokenReview>,
    pub resource_version: u64,
    pub log: Vec<Recorded>,
    pub portforwards: Vec<PortForward>,
    /// Patches refused with 409 for a stale resourceVersion.
    pub conflicts: usize,
    pub changes: tokio::sync::watch::Sender<u64>,
}

impl State {
    pub fn new(s: Scenario) -> Self {
        let mut state = State {
            namespace: s.namespace,
            objects: BTreeMap::new(),
            metrics: s.metrics,
            forbidden: s.forbidden,
            dials: s.dials,
            auto_available: s.auto_available,
            stamp_before_scale: s.stamp_before_scale,
            token_review: s.token_review,
            resource_version: 100,
            log: Vec::new(),
            portforwards: Vec::new(),
            conflicts: 0,
            changes: tokio::sync::watch::channel(0).0,
        };
        for (collection, items) in [
            ("statefulsets", s.statefulsets),
            ("pods", s.pods),
            ("persistentvolumeclaims", s.pvcs),
        ] {
            state.objects.entry(collection).or_default();
            for mut obj in items {
                state.resource_version += 1;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let meta = &mut obj["metadata"];
                meta["uid"] = json!(format!(
                    "00000000-0000-4000-8000-{:012}",
                    state.resource_version
                ));
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                meta["resourceVersion"] = json!(state.resource_version.to_string());
                if collection == "statefulsets" {
                    meta["generation"] = json!(1);
                }
                state.objects.get_mut(collection).unwrap().insert(name, obj);
            }
        }
        state
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.objects.get(collection)?.get(name).cloned()
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.objects
            .get(collection)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    pub fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn set_available(&mut self, name: &str, available: i32) {
        let rv = self.bump();
        if let Some(sts) = self
            .objects
            .get_mut("statefulsets")
            .and_then(|m| m.get_mut(name))
        {
            sts["status"]["availableReplicas"] = json!(available);
            sts["status"]["readyReplicas"] = json!(available);
            sts["status"]["replicas"] = json!(available);
            sts["metadata"]["resourceVersion"] = json!(rv);
        }
    }
}

pub(crate) type Body = Full<Bytes>;

pub(crate) async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// A Kubernetes `Status` failure with the given code, reason and message.
pub(crate) fn status(code: u16, reason: &str, message: &str, details: Value) -> Response<Body> {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if !details.is_null() {
        body["details"] = details;
    }
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn not_found_path() -> Response<Body> {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
        json!({}),
    )
}

fn not_found(plural: &str, group: &str, name: &str) -> Response<Body> {
    let qualified = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    let mut details = json!({ "name": name, "kind": plural });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    status(
        404,
        "NotFound",
        &format!("{qualified} \"{name}\" not found"),
        details,
    )
}

fn forbidden(
    verb: &str,
    resource: &str,
    group: &str,
    name: Option<&str>,
    ns: &str,
) -> Response<Body> {
    let plural = resource.split('/').next().unwrap_or(resource);
    let qualified = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    let subject = match name {
        Some(n) => format!("{qualified} \"{n}\" is forbidden"),
        None => format!("{qualified} is forbidden"),
    };
    let message = format!(
        "{subject}: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{ns}\""
    );
    let mut details = json!({ "kind": plural });
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    status(403, "Forbidden", &message, details)
}

/// Percent-decodes a query component (`+` is a space, as form encoding has it).
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, repeated ones kept; accepts kube's leading `?&`.
pub(crate) fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Splits a selector on commas outside parentheses.
fn selector_terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    terms.push(cur);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Label selector semantics: `=`, `==`, `!=`, `in`, `notin`, exists, `!key`.
fn label_matches(labels: &Value, selector: &str) -> bool {
    selector_terms(selector).iter().all(|term| {
        let get = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some((k, v)) = term.split_once("!=") {
            return get(k.trim()).as_deref() != Some(v.trim());
        }
        if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return get(k.trim()).as_deref() == Some(v.trim());
        }
        for (op, want) in [(" notin ", false), (" in ", true)] {
            if let Some((k, set)) = term.split_once(op) {
                let set: Vec<&str> = set
                    .trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                let value = get(k.trim());
                let inside = value.as_deref().is_some_and(|v| set.contains(&v));
                return if want { inside } else { !inside };
            }
        }
        if let Some(k) = term.strip_prefix('!') {
            return get(k.trim()).is_none();
        }
        get(term).is_some()
    })
}

/// The field selectors the real API server accepts per collection.
fn field_value(collection: &str, obj: &Value, field: &str) -> Result<Option<String>, ()> {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    match (collection, field) {
        (_, "metadata.name") => Ok(s(&obj["metadata"]["name"])),
        (_, "metadata.namespace") => Ok(s(&obj["metadata"]["namespace"])),
        ("pods", "status.phase") => Ok(s(&obj["status"]["phase"])),
        ("pods", "status.podIP") => Ok(s(&obj["status"]["podIP"])),
        ("pods", "spec.nodeName") => Ok(s(&obj["spec"]["nodeName"])),
        (
            "pods",
            "spec.restartPolicy"
            | "spec.schedulerName"
            | "spec.serviceAccountName"
            | "spec.hostNetwork"
            | "status.nominatedNodeName",
        ) => Ok(None),
        _ => Err(()),
    }
}

fn field_matches(collection: &str, obj: &Value, selector: &str) -> Result<bool, String> {
    for term in selector_terms(selector) {
        let (field, want, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, false)
        } else {
            return Err(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            ));
        };
        let value = field_value(collection, obj, field.trim())
            .map_err(|()| format!("field label not supported: {}", field.trim()))?;
        let equal = value.as_deref().unwrap_or("") == want.trim();
        if equal == negate {
            return Ok(false);
        }
    }
    Ok(true)
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv.to_string() }, "items": items }),
    )
}

/// Whether a refused resource as a test names it (`pods`, `statefulsets/scale`, or qualified
/// with its group, `pods.metrics.k8s.io`) is `resource` of `group`. Unqualified names mean the
/// core and apps groups, as RBAC rules for this fleet are written.
fn rbac_names(refused: &str, resource: &str, group: &str) -> bool {
    if group == "metrics.k8s.io" {
        refused == format!("{resource}.{group}")
    } else {
        refused == resource || refused == format!("{resource}.{group}")
    }
}

/// What a request needs from RBAC: verbs, resource, group.
fn permission(
    method: &Method,
    collection: &str,
    sub: Option<&str>,
    named: bool,
) -> (Vec<&'static str>, String) {
    let resource = match sub {
        Some(s) => format!("{collection}/{s}"),
        None => collection.to_owned(),
    };
    let verbs = match (method, sub) {
        // A WebSocket GET is authorized as `get`, and since 1.35 also as `create`.
        (&Method::GET, Some("portforward")) => vec!["get", "create"],
        (&Method::GET, _) if named => vec!["get"],
        (&Method::GET, _) => vec!["list"],
        (&Method::PATCH, _) => vec!["patch"],
        (&Method::DELETE, _) => vec!["delete"],
        (&Method::POST, _) => vec!["create"],
        (&Method::PUT, _) => vec!["update"],
        _ => vec!["get"],
    };
    (verbs, resource)
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header("content-type");
    let authorization = header("authorization");
    let ws_protocol = header("sec-websocket-protocol");
    let user_agent = header("user-agent");
    let is_upgrade = header("upgrade").eq_ignore_ascii_case("websocket");
    let ws_key = header("sec-websocket-key");
    let (parts, body) = req.into_parts();
    let body = if is_upgrade {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    {
        let mut s = state.lock().unwrap();
        s.log.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            authorization: authorization.clone(),
            ws_protocol: ws_protocol.clone(),
            user_agent,
        });
    }
    let review = state.lock().unwrap().token_review.clone();
    let reviewed = || {
        let token = authorization.strip_prefix("Bearer ");
        review
            .as_ref()
            .zip(token)
            .is_some_and(|(ok, token)| ok(token))
    };
    if authorization != format!("Bearer {TOKEN}")
        && authorization != format!("Bearer {EXEC_TOKEN}")
        && !reviewed()
    {
        return status(401, "Unauthorized", "Unauthorized", Value::Null);
    }
    let params = query_params(&query);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();

    // (group, collection, namespace, name, subresource)
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "apps", "v1", rest @ ..] => ("apps", rest),
        ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] => ("metrics.k8s.io", rest),
        _ => return not_found_path(),
    };
    let (ns, collection, name, sub) = match rest {
        ["namespaces", ns, c] => (*ns, *c, None, None),
        ["namespaces", ns, c, n] => (*ns, *c, Some(*n), None),
        ["namespaces", ns, c, n, s] => (*ns, *c, Some(*n), Some(*s)),
        _ => return not_found_path(),
    };
    let known = matches!(
        (group, collection, sub),
        ("", "pods", None | Some("portforward"))
            | ("", "persistentvolumeclaims", None)
            | ("apps", "statefulsets", None | Some("scale"))
            | ("metrics.k8s.io", "pods", None)
    );
    if !known {
        return not_found_path();
    }
    // Authorization runs before the API group is looked up: without rights on metrics.k8s.io
    // an absent metrics API is 403, not 404.
    let (verbs, resource) = permission(&method, collection, sub, name.is_some());
    {
        let s = state.lock().unwrap();
        for verb in &verbs {
            if s.forbidden
                .iter()
                .any(|(v, r)| v == verb && rbac_names(r, &resource, group))
            {
                if is_upgrade && sub == Some("portforward") {
                    // The WebSocket path's refusal gives no reason (measured on v1.36).
                    return status(
                        403,
                        "Forbidden",
                        &format!("pods \"{}\" is forbidden: ", name.unwrap_or_default()),
                        json!({ "name": name.unwrap_or_default(), "kind": "pods" }),
                    );
                }
                return forbidden(verb, &resource, group, name, ns);
            }
        }
    }
    if group == "metrics.k8s.io" {
        match &state.lock().unwrap().metrics {
            Metrics::Absent => return not_found_path(),
            Metrics::Unavailable => {
                return status(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                    Value::Null,
                );
            }
            Metrics::Present(_) => {}
        }
    }

    if sub == Some("portforward") {
        return portforward::upgrade(
            state,
            parts,
            ns,
            name.unwrap_or_default(),
            &params,
            is_upgrade,
            &ws_key,
            &ws_protocol,
        );
    }

    let mut s = state.lock().unwrap();
    let in_ns = ns == s.namespace;
    let coll: &'static str = match collection {
        "pods" => "pods",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        _ => "statefulsets",
    };

    if group == "metrics.k8s.io" {
        let Metrics::Present(m) = &s.metrics else {
            unreachable!()
        };
        let items: Vec<Value> = if in_ns {
            m.iter()
                .map(|(pod, containers)| {
                    json!({
                        "metadata": { "name": pod, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z",
                                      "labels": s.get("pods", pod).map(|p| p["metadata"]["labels"].clone()).unwrap_or(json!({})) },
                        "timestamp": "2026-01-01T00:00:00Z",
                        "window": "15.003s",
                        "containers": containers.iter().map(|(c, cpu)| json!({ "name": c, "usage": { "cpu": cpu, "memory": "20480Ki" } })).collect::<Vec<_>>()
                    })
                })
                .filter(|o| param(&params, "labelSelector").is_none_or(|sel| label_matches(&o["metadata"]["labels"], sel)))
                .collect()
        } else {
            Vec::new()
        };
        return match name {
            None => list(
                "PodMetricsList",
                "metrics.k8s.io/v1beta1",
                s.resource_version,
                items,
            ),
            Some(n) => match items.into_iter().find(|i| i["metadata"]["name"] == n) {
                Some(mut item) => {
                    item["kind"] = json!("PodMetrics");
                    item["apiVersion"] = json!("metrics.k8s.io/v1beta1");
                    json_response(StatusCode::OK, &item)
                }
                None => not_found("pods", "metrics.k8s.io", n),
            },
        };
    }

    let plural_kind = match coll {
        "pods" => ("PodList", "v1"),
        "persistentvolumeclaims" => ("PersistentVolumeClaimList", "v1"),
        _ => ("StatefulSetList", "apps/v1"),
    };

    match (&method, name, sub) {
        (&Method::GET, None, None) => {
            if param(&params, "watch").is_some_and(|w| w != "false" && w != "0") {
                return status(
                    405,
                    "MethodNotAllowed",
                    "watch is not served by this fake API server",
                    Value::Null,
                );
            }
            let mut items = Vec::new();
            if in_ns {
                for obj in s.objects.get(coll).into_iter().flat_map(|m| m.values()) {
                    if let Some(sel) = param(&params, "labelSelector")
                        && !label_matches(&obj["metadata"]["labels"], sel)
                    {
                        continue;
                    }
                    if let Some(sel) = param(&params, "fieldSelector") {
                        match field_matches(coll, obj, sel) {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(message) => {
                                return status(400, "BadRequest", &message, Value::Null);
                            }
                        }
                    }
                    let mut item = obj.clone();
                    if let Some(o) = item.as_object_mut() {
                        // List items may omit kind and apiVersion, as the real server's do.
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    items.push(item);
                }
            }
            list(plural_kind.0, plural_kind.1, s.resource_version, items)
        }
        (_, Some(n), _) if !in_ns || s.get(coll, n).is_none() => not_found(collection, group, n),
        (&Method::GET, Some(n), None) => json_response(StatusCode::OK, &s.get(coll, n).unwrap()),
        (&Method::GET, Some(n), Some("scale")) => {
            json_response(StatusCode::OK, &scale_of(&s.get(coll, n).unwrap()))
        }
        (&Method::PATCH, Some(n), sub) => {
            if !matches!(
                content_type.split(';').next().unwrap_or("").trim(),
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
                    ),
                    Value::Null,
                );
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    400,
                    "BadRequest",
                    "error decoding patch: invalid JSON",
                    Value::Null,
                );
            };
            if sub == Some("scale") && s.stamp_before_scale.iter().any(|x| x == n) {
                s.stamp_before_scale.retain(|x| x != n);
                let rv = s.bump();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let sts = s.objects.get_mut(coll).unwrap().get_mut(n).unwrap();
                sts["metadata"]["annotations"]["panfactum.com/last-build"] = json!(now.to_string());
                sts["metadata"]["resourceVersion"] = json!(rv);
            }
            let current = s.get(coll, n).unwrap();
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                && current["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                s.conflicts += 1;
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {collection}.{group} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                    json!({ "name": n, "group": group, "kind": collection }),
                );
            }
            let mut updated = current.clone();
            if sub == Some("scale") {
                let mut scale = scale_of(&current);
                merge_patch(&mut scale, &patch);
                let Some(replicas) = scale["spec"]["replicas"].as_i64() else {
                    return status(
                        422,
                        "Invalid",
                        "Scale.autoscaling \"\" is invalid: spec.replicas: Required value",
                        Value::Null,
                    );
                };
                if replicas < 0 {
                    return status(
                        422,
                        "Invalid",
                        &format!(
                            "StatefulSet.apps \"{n}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                        ),
                        json!({ "name": n, "group": "apps", "kind": "StatefulSet" }),
                    );
                }
                updated["spec"]["replicas"] = json!(replicas);
            } else {
                merge_patch(&mut updated, &patch);
            }
            if updated["spec"] != current["spec"] {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                updated["metadata"]["generation"] = json!(generation);
            }
            updated["metadata"]["resourceVersion"] = json!(s.bump());
            // Identity fields are not patchable.
            for key in ["name", "namespace", "uid", "creationTimestamp"] {
                updated["metadata"][key] = current["metadata"][key].clone();
            }
            if s.auto_available && coll == "statefulsets" {
                let r = updated["spec"]["replicas"].clone();
                updated["status"]["availableReplicas"] = r.clone();
                updated["status"]["readyReplicas"] = r.clone();
                updated["status"]["replicas"] = r;
            }
            s.objects
                .get_mut(coll)
                .unwrap()
                .insert(n.to_owned(), updated.clone());
            s.notify();
            if sub == Some("scale") {
                json_response(StatusCode::OK, &scale_of(&updated))
            } else {
                json_response(StatusCode::OK, &updated)
            }
        }
        (&Method::DELETE, Some(n), None) if coll == "persistentvolumeclaims" => {
            // The API server marks the claim for deletion behind the pvc-protection finalizer
            // and answers with it (ReturnDeletedObject); the claim goes only once no pod
            // mounts it (the controller is instant here).
            let rv = s.bump();
            let mounted = s.objects["pods"].values().any(|p| {
                p["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == n)
            });
            let pvc = s.objects.get_mut(coll).unwrap().get_mut(n).unwrap();
            if pvc["metadata"]["deletionTimestamp"].is_null() {
                let meta = &mut pvc["metadata"];
                meta["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
                meta["deletionGracePeriodSeconds"] = json!(0);
                meta["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
                meta["resourceVersion"] = json!(rv);
            }
            let answer = pvc.clone();
            if !mounted {
                s.objects.get_mut(coll).unwrap().remove(n);
            }
            s.notify();
            json_response(StatusCode::OK, &answer)
        }
        (&Method::DELETE, Some(n), None) => {
            let removed = s.objects.get_mut(coll).unwrap().remove(n).unwrap();
            s.bump();
            s.notify();
            // Pods answer with the deleted object (ReturnDeletedObject).
            json_response(StatusCode::OK, &removed)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Value::Null,
        ),
    }
}

/// The `autoscaling/v1` Scale of a StatefulSet.
fn scale_of(sts: &Value) -> Value {
    let selector = sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let m = &sts["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": { "name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"] },
        "spec": { "replicas": sts["spec"]["replicas"] },
        "status": { "replicas": sts["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_follow_the_api_server_grammar() {
        let labels = json!({ "app": "buildkit", "arch": "amd64", "tier": "build" });
        for (selector, want) in [
            ("app=buildkit", true),
            ("app==buildkit,arch=amd64", true),
            ("app!=buildkit", false),
            ("arch in (amd64, arm64)", true),
            ("arch notin (amd64)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app=buildkit", true),
            ("arch in (arm64),app=buildkit", false),
        ] {
            assert_eq!(label_matches(&labels, selector), want, "{selector}");
        }
    }

    #[test]
    fn field_selectors_accept_only_the_whitelist() {
        let pod = json!({ "metadata": { "name": "p" }, "status": { "phase": "Running" } });
        assert_eq!(
            field_matches("pods", &pod, "status.phase=Running"),
            Ok(true)
        );
        assert_eq!(
            field_matches("pods", &pod, "status.phase!=Running"),
            Ok(false)
        );
        assert_eq!(
            field_matches("pods", &pod, "status.hostIP=1"),
            Err("field label not supported: status.hostIP".into())
        );
        assert!(field_matches("persistentvolumeclaims", &pod, "status.phase=Bound").is_err());
    }

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut target = json!({ "a": { "b": 1, "c": 2 }, "d": [1, 2] });
        merge_patch(
            &mut target,
            &json!({ "a": { "b": null, "e": 3 }, "d": [3] }),
        );
        assert_eq!(target, json!({ "a": { "c": 2, "e": 3 }, "d": [3] }));
    }

    #[test]
    fn queries_decode_as_kube_sends_them() {
        assert_eq!(
            query_params("&fieldSelector=status.phase%3DRunning&labelSelector=a+in+%28b%29"),
            [
                (
                    "fieldSelector".to_owned(),
                    "status.phase=Running".to_owned()
                ),
                ("labelSelector".to_owned(), "a in (b)".to_owned())
            ]
        );
    }
}
