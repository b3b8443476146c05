//! The HTTP front end: URL routing, query parsing, request log, fault injection, and
//! turning operations into responses.

use crate::Inner;
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::faults::RequestRecord;
use crate::ops::{self, DeleteOpts, ListQuery, PatchType, WriteOpts};
use crate::resources::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector, Selectors};
use crate::watch::{self, BoxError, WatchParams};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Response body: a full JSON document or a watch stream.
pub type Body = BoxBody<Bytes, BoxError>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).expect("JSON values serialize")));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed query parameters (last value wins).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parse a raw query string.
    pub fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    /// A parameter's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "True"))
    }

    fn selectors(&self) -> ApiResult<Selectors> {
        Ok(Selectors {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or_default())?,
        })
    }

    fn write_opts(&self, user_agent: Option<&str>, apply: bool) -> WriteOpts {
        let from_ua = user_agent
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let fm = self
            .get("fieldManager")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        WriteOpts {
            dry_run: self.get("dryRun") == Some("All"),
            field_manager: if apply { fm } else { fm.or(from_ua) },
            force: self.flag("force"),
            keep_status: false,
        }
    }
}

/// Where a resource URL points.
struct Target {
    res: Arc<ResourceInfo>,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// Handle one HTTP request.
pub async fn handle(inner: Arc<Inner>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let query = Query::parse(&raw_query);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let is_watch = query.flag("watch")
        || segs.get(2).is_some_and(|s| s == "watch") && segs[0] == "api"
        || segs.get(3).is_some_and(|s| s == "watch") && segs[0] == "apis";
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };

    let resp = if let Some(code) = (!is_watch).then(|| inner.faults.take_failure()).flatten() {
        error_response(&ApiError::injected(code))
    } else {
        let ctx = Ctx {
            inner: &inner,
            method: &method,
            query: &query,
            body: &body,
            content_type: &content_type,
            user_agent: user_agent.as_deref(),
            host: &host,
        };
        match route(&ctx, &segs, is_watch) {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    };
    inner.faults.record(RequestRecord {
        method: method.to_string(),
        path,
        query: raw_query,
        code: resp.status().as_u16(),
        watch: is_watch,
    });
    resp
}

struct Ctx<'a> {
    inner: &'a Arc<Inner>,
    method: &'a Method,
    query: &'a Query,
    body: &'a Bytes,
    content_type: &'a str,
    user_agent: Option<&'a str>,
    host: &'a str,
}

fn route(c: &Ctx<'_>, segs: &[String], is_watch: bool) -> ApiResult<Response<Body>> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get_only = |v: Option<Value>| -> ApiResult<Response<Body>> {
        if *c.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        v.map(|v| json_response(200, &v))
            .ok_or_else(ApiError::no_route)
    };
    match s.as_slice() {
        ["version"] => get_only(Some(discovery::version())),
        ["healthz" | "livez" | "readyz", ..] => {
            let mut r = Response::new(full("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        ["api"] => get_only(Some(discovery::api_versions(c.host))),
        ["apis"] => get_only(Some(discovery::api_group_list(
            &c.inner.store.lock().registry,
        ))),
        ["api", v] => get_only(discovery::api_resource_list(
            &c.inner.store.lock().registry,
            "",
            v,
        )),
        ["apis", g] => get_only(discovery::api_group(&c.inner.store.lock().registry, g)),
        ["apis", g, v] => get_only(discovery::api_resource_list(
            &c.inner.store.lock().registry,
            g,
            v,
        )),
        ["api", v, rest @ ..] => resource(c, "", v, rest, is_watch),
        ["apis", g, v, rest @ ..] => resource(c, g, v, rest, is_watch),
        _ => Err(ApiError::no_route()),
    }
}

fn resolve(c: &Ctx<'_>, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let st = c.inner.store.lock();
    let rest = if rest.first() == Some(&"watch") {
        &rest[1..]
    } else {
        rest
    };
    let sub = |s: Option<&&str>| -> ApiResult<bool> {
        match s {
            None => Ok(false),
            Some(&"status") => Ok(true),
            Some(_) => Err(ApiError::no_route()),
        }
    };
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && let Some(res) = st
            .registry
            .find(group, version, rest[2])
            .filter(|r| r.namespaced)
    {
        if rest.len() > 5 {
            return Err(ApiError::no_route());
        }
        let status = sub(rest.get(4))?;
        if status && !res.status {
            return Err(ApiError::no_route());
        }
        return Ok(Target {
            res,
            namespace: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            status,
        });
    }
    let plural = rest.first().ok_or_else(ApiError::no_route)?;
    let res = st
        .registry
        .find(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if rest.len() > 3 || (res.namespaced && rest.len() > 1) {
        return Err(ApiError::no_route());
    }
    let status = sub(rest.get(2))?;
    if status && !res.status {
        return Err(ApiError::no_route());
    }
    Ok(Target {
        res,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        status,
    })
}

fn resource(
    c: &Ctx<'_>,
    group: &str,
    version: &str,
    rest: &[&str],
    is_watch: bool,
) -> ApiResult<Response<Body>> {
    let t = resolve(c, group, version, rest)?;
    let inner = c.inner;
    let store = &inner.store;
    let ns = t.namespace.as_deref();
    let q = c.query;
    match (c.method.clone(), t.name.as_deref()) {
        (Method::GET, name) if is_watch => {
            let mut selectors = q.selectors()?;
            if let Some(n) = name {
                let fs = match q.get("fieldSelector").filter(|f| !f.is_empty()) {
                    Some(f) => format!("{f},metadata.name={n}"),
                    None => format!("metadata.name={n}"),
                };
                selectors.fields = FieldSelector::parse(&fs)?;
            }
            let p = WatchParams {
                namespace: t.namespace.clone(),
                selectors,
                resource_version: q.get("resourceVersion").map(str::to_string),
                version_match: q
                    .get("resourceVersionMatch")
                    .map(str::to_string)
                    .filter(|s| !s.is_empty()),
                send_initial_events: q.get("sendInitialEvents").map(|v| v == "true" || v == "1"),
                bookmarks: q.flag("allowWatchBookmarks"),
                timeout: q
                    .get("timeoutSeconds")
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
            };
            p.validate()?;
            inner.faults.count("watch", &t.res.key());
            let rx = watch::start(inner.clone(), t.res.clone(), p);
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
                );
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            Ok(r)
        }
        (Method::GET, None) => {
            let lq = ListQuery {
                selectors: q.selectors()?,
                limit: q.get("limit").and_then(|l| l.parse().ok()),
                continue_token: q.get("continue").map(str::to_string),
                resource_version: q.get("resourceVersion").map(str::to_string),
                version_match: q
                    .get("resourceVersionMatch")
                    .map(str::to_string)
                    .filter(|s| !s.is_empty()),
            };
            inner.faults.count("list", &t.res.key());
            let v = ops::list(&store.lock(), &t.res, ns, &lq)?;
            Ok(json_response(200, &v))
        }
        (Method::GET, Some(name)) => Ok(json_response(
            200,
            &ops::get(&store.lock(), &t.res, ns, name)?,
        )),
        (Method::POST, None) => {
            if t.res.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let body = parse_json(c.body)?;
            let o = q.write_opts(c.user_agent, false);
            let v = store.with(|st| ops::create(st, &t.res, ns, body, &o))?;
            Ok(json_response(201, &v))
        }
        (Method::PUT, Some(name)) => {
            let body = parse_json(c.body)?;
            let o = q.write_opts(c.user_agent, false);
            let v = store.with(|st| ops::update(st, &t.res, ns, name, body, t.status, &o))?;
            Ok(json_response(200, &v))
        }
        (Method::PATCH, Some(name)) => {
            let pt = PatchType::from_content_type(c.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(c.content_type))?;
            let o = q.write_opts(c.user_agent, pt == PatchType::Apply);
            let (v, created) =
                store.with(|st| ops::patch(st, &t.res, ns, name, pt, c.body, t.status, &o))?;
            Ok(json_response(if created { 201 } else { 200 }, &v))
        }
        (Method::DELETE, Some(name)) => {
            let d = DeleteOpts::from_body(c.body, q.get("dryRun") == Some("All"))?;
            let (v, pending) = store.with(|st| ops::delete(st, &t.res, ns, name, &d))?;
            Ok(json_response(if pending { 202 } else { 200 }, &v))
        }
        (Method::DELETE, None) => {
            let d = DeleteOpts::from_body(c.body, q.get("dryRun") == Some("All"))?;
            let sel = q.selectors()?;
            let lq = ListQuery {
                selectors: sel,
                ..Default::default()
            };
            let v = store.with(|st| -> ApiResult<Value> {
                let list = ops::list(st, &t.res, ns, &lq)?;
                let mut deleted = Vec::new();
                for item in list["items"].as_array().into_iter().flatten() {
                    let n = item["metadata"]["name"].as_str().unwrap_or_default();
                    let ins = item["metadata"]["namespace"].as_str();
                    if let Ok((o, _)) = ops::delete(st, &t.res, ins, n, &d) {
                        deleted.push(o);
                    }
                }
                Ok(
                    json!({"kind": t.res.list_kind(), "apiVersion": t.res.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": deleted}),
                )
            })?;
            Ok(json_response(200, &v))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
}
