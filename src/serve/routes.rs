//! The HTTP routes of `partlens serve` (documented with curl examples in the README):
//!
//! | route | answer |
//! |---|---|
//! | `GET /` (`/app.js`, `/style.css`) | the search page, embedded in the binary |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/indexes` | the served indexes: name, encoder, features, labels, objects, splits, counts |
//! | `POST /v1/query?index&box&k&feature&label&object&kind&split` | hits, as `partlens query --json`; the image as the raw body or a multipart field |
//! | `GET /v1/regions/{index}/{id}` | one region's metadata |
//! | `GET /v1/regions/{index}/{id}/similar?k&feature&…` | hits nearest to the stored vector |
//! | `GET /v1/regions/{index}/{id}/thumbnail` | the region cut from its source image, JPEG |
//!
//! Every error is JSON `{"error": …}`: 400 for a malformed request, 404 for an unknown index,
//! region or route, 413 for an upload or image over the limits, 415 for a body that is not an
//! image, 503 when a request outlives the timeout, 500 for the server's own failures.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Query, Request, State,
};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{AppState, Served};
use crate::encoder::Feature;
use crate::error::Error;
use crate::query::{QueryHit, SearchOptions};
use crate::region::{PixelBox, RegionKind};

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) | Error::Annotation { .. } => StatusCode::BAD_REQUEST,
            Error::Image { message, .. } if message.contains("limit") => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Image { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = e.to_string();
        // Filter errors name the command line's flags; here they are parameters.
        for flag in ["--label ", "--object ", "--split "] {
            if let Some(rest) = message.strip_prefix(flag) {
                message = format!("{}={rest}", &flag[2..flag.len() - 1]);
            }
        }
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/indexes", get(indexes))
        .route("/v1/query", post(query))
        .route("/v1/regions/{index}/{id}", get(region))
        .route("/v1/regions/{index}/{id}/similar", get(similar))
        .route("/v1/regions/{index}/{id}/thumbnail", get(thumbnail))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; see GET /v1/indexes and the README",
            )
        })
        // Without this axum answers 405 with an empty body; the `Allow` header is kept.
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(DefaultBodyLimit::max(state.opts.max_upload))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// The route template a path falls under, for `/metrics` (a bounded set of labels, whatever
/// paths clients send).
fn route_label(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts[..] {
        [""] => "/",
        ["", "app.js"] | ["", "style.css"] => "/page",
        ["", "healthz"] => "/healthz",
        ["", "metrics"] => "/metrics",
        ["", "v1", "indexes"] => "/v1/indexes",
        ["", "v1", "query"] => "/v1/query",
        ["", "v1", "regions", _, _] => "/v1/regions/{index}/{id}",
        ["", "v1", "regions", _, _, "similar"] => "/v1/regions/{index}/{id}/similar",
        ["", "v1", "regions", _, _, "thumbnail"] => "/v1/regions/{index}/{id}/thumbnail",
        _ => "other",
    }
}

/// Times every request, answers 503 past the timeout, and counts it for `/metrics`.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let start = Instant::now();
    let resp = match tokio::time::timeout(state.opts.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s; try again, or a smaller image",
                state.opts.timeout.as_secs_f64()
            ),
        )
        .into_response(),
    };
    state
        .metrics
        .request(route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

async fn page_html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page/index.html"),
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page/app.js"),
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page/style.css"),
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /v1/indexes`.
async fn indexes(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .indexes
        .iter()
        .map(|s| {
            let idx = s.engine.index();
            let m = idx.manifest();
            // Computed when the server opened the index (`serve::open`), so no I/O here.
            let summary = idx.summary().cloned().unwrap_or_default();
            let kinds: Vec<&str> = summary.kinds.iter().map(|k| k.as_str()).collect();
            let (objects, splits) = (&summary.objects, &summary.splits);
            let labels: Vec<Value> = summary
                .labels
                .iter()
                .map(|l| json!({"kind": l.kind.as_str(), "name": l.label, "regions": l.regions}))
                .collect();
            json!({
                "name": s.name,
                "encoder": m.encoder.spec.name,
                "features": m.features,
                "labels": labels,
                "objects": objects,
                "splits": splits,
                "kinds": kinds,
                "counts": m.counts,
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// The served index named `name`; with one index served, `None` means it.
fn served<'a>(state: &'a AppState, name: Option<&str>) -> ApiResult<&'a Served> {
    let names = || {
        state
            .indexes
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => state.indexes.iter().find(|s| s.name == n).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no index named {n:?}; served: {}", names()),
            )
        }),
        None if state.indexes.len() == 1 => Ok(&state.indexes[0]),
        None => Err(ApiError::bad(format!(
            "several indexes are served ({}); name one with index=",
            names()
        ))),
    }
}

/// Query parameters, each at most once, none unknown.
fn params(
    q: std::result::Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    allowed: &[&str],
) -> ApiResult<HashMap<String, String>> {
    let Query(pairs) = q.map_err(|e| ApiError::bad(format!("malformed query string: {e}")))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter {k:?}; this route takes {}",
                allowed.join(", ")
            )));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad(format!("parameter {k:?} given twice")));
        }
    }
    Ok(out)
}

/// Search settings from query parameters (`k`, `feature`, filters), checked.
fn search_options(p: &HashMap<String, String>, max_k: usize) -> ApiResult<SearchOptions> {
    let mut o = SearchOptions::default();
    if let Some(k) = p.get("k") {
        o.k = k
            .parse::<usize>()
            .ok()
            .filter(|&k| (1..=max_k).contains(&k))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "k must be a whole number from 1 to {max_k}, not {k:?}"
                ))
            })?;
    }
    if let Some(f) = p.get("feature") {
        o.feature = Feature::parse(f).ok_or_else(|| {
            ApiError::bad(format!(
                "unknown feature {f:?}; features: mean, cls, projection"
            ))
        })?;
    }
    if let Some(k) = p.get("kind") {
        o.kind = Some(match k.as_str() {
            "part" => RegionKind::Part,
            "object" => RegionKind::Object,
            _ => {
                return Err(ApiError::bad(format!(
                    "kind must be part or object, not {k:?}"
                )))
            }
        });
    }
    let text = |name: &str| p.get(name).filter(|v| !v.is_empty()).cloned();
    o.label = text("label");
    o.object = text("object");
    o.split = text("split");
    Ok(o)
}

/// `box=x0,y0,x1,y1` (integers, x1 > x0, y1 > y0).
fn parse_box(s: &str) -> ApiResult<PixelBox> {
    let v: Vec<i64> = s
        .split(',')
        .map(|t| t.trim().parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            ApiError::bad(format!(
                "box must be x0,y0,x1,y1 in whole pixels, not {s:?}"
            ))
        })?;
    let limit = 1i64 << 31;
    match v[..] {
        [x0, y0, x1, y1] if x1 > x0 && y1 > y0 && v.iter().all(|c| c.abs() < limit) => {
            Ok(PixelBox { x0, y0, x1, y1 })
        }
        _ => Err(ApiError::bad(format!(
            "box must be four whole numbers x0,y0,x1,y1 with x1 > x0 and y1 > y0, not {s:?}"
        ))),
    }
}

/// The uploaded image's bytes: a multipart field (named `image`, else the first with a file
/// name) or the raw body with an `image/*` (or `application/octet-stream`) type.
async fn upload(state: &Arc<AppState>, req: Request) -> ApiResult<Bytes> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let too_large = |what: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{what}; the limit is {} MB (--max-upload-mb)",
                state.opts.max_upload >> 20
            ),
        )
    };
    // An announced length over the limit is refused at once, before any of the body is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.opts.max_upload as u64) {
        return Err(too_large(format!(
            "the upload is {} bytes",
            announced.unwrap_or_default()
        )));
    }
    if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad(format!("malformed multipart body: {e}")))?;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad(format!("malformed multipart body: {e}")))?
        {
            if field.name() == Some("image") || field.file_name().is_some() {
                return field.bytes().await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large("the upload is too large".into())
                    } else {
                        ApiError::bad(format!("malformed multipart body: {e}"))
                    }
                });
            }
        }
        return Err(ApiError::bad(
            "the multipart body has no image field (name it \"image\")",
        ));
    }
    if !(ctype.is_empty()
        || ctype.starts_with("image/")
        || ctype.starts_with("application/octet-stream"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "send the image as the body (image/*) or as multipart/form-data, not {ctype:?}"
            ),
        ));
    }
    Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large("the upload is too large".into())
        } else {
            ApiError::bad(format!("cannot read the body: {e}"))
        }
    })
}

/// `POST /v1/query`.
async fn query(State(state): State<Arc<AppState>>, req: Request) -> ApiResult<Json<Vec<QueryHit>>> {
    let q = Query::<Vec<(String, String)>>::try_from_uri(req.uri());
    let p = params(
        q,
        &[
            "index", "box", "k", "feature", "label", "object", "kind", "split",
        ],
    )?;
    let s = served(&state, p.get("index").map(String::as_str))?;
    let opts = search_options(&p, state.opts.max_k)?;
    let bbox = p.get("box").map(|b| parse_box(b)).transpose()?;
    let bytes = upload(&state, req).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad("the request has no image (empty body)"));
    }
    // The header says how large the image claims to be: refused before decoding.
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad(format!("cannot read the image: {e}")))?
        .into_dimensions()
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body is not an image partlens can read (JPEG, PNG): {e}"),
            )
        })?;
    if u64::from(w) * u64::from(h) > state.opts.max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the image is {w}×{h} pixels, over the {} limit (--max-megapixels)",
                state.opts.max_pixels
            ),
        ));
    }
    let engine = s.engine.clone();
    let tensor = tokio::task::spawn_blocking(move || {
        let img = crate::preprocess::decode_rgb_bytes(&bytes, Path::new("the uploaded image"))?;
        engine.crop_tensor(&img, bbox, "the uploaded image")
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let features = s.batcher.embed(tensor).await?;
    let v = features
        .values
        .get(&opts.feature)
        .ok_or_else(|| ApiError::bad(format!("the index's model has no {} feature", opts.feature)))?
        .clone();
    let engine = s.engine.clone();
    let hits = tokio::task::spawn_blocking(move || engine.search_vector(&v, &opts))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(hits))
}

/// `{index}/{id}` of a URL; a malformed one (invalid UTF-8 after percent-decoding) is a JSON
/// 400 like every other error, not axum's plain-text rejection.
fn url_path(
    p: std::result::Result<UrlPath<(String, String)>, PathRejection>,
) -> ApiResult<(String, String)> {
    p.map(|UrlPath(v)| v)
        .map_err(|e| ApiError::bad(format!("malformed path: {}", e.body_text())))
}

/// The region `{index}/{id}` of a URL.
fn region_of<'a>(state: &'a AppState, index: &str, id: &str) -> ApiResult<(&'a Served, usize)> {
    let s = served(state, Some(index))?;
    let n = s.engine.index().len();
    let id = id.parse::<usize>().ok().filter(|&i| i < n).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no region {id:?} in {index:?}: ids are 0 to {}",
                n.saturating_sub(1)
            ),
        )
    })?;
    Ok((s, id))
}

/// `GET /v1/regions/{index}/{id}`.
async fn region(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (index, id) = url_path(path)?;
    let (s, id) = region_of(&state, &index, &id)?;
    let mut v = serde_json::to_value(s.engine.hit(id, 1.0)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("score");
        o.insert("index".into(), json!(s.name));
    }
    Ok(Json(v))
}

/// `GET /v1/regions/{index}/{id}/similar`.
async fn similar(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
    q: std::result::Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<QueryHit>>> {
    let p = params(q, &["k", "feature", "label", "object", "kind", "split"])?;
    let opts = search_options(&p, state.opts.max_k)?;
    let (index, id) = url_path(path)?;
    let (s, id) = region_of(&state, &index, &id)?;
    let engine = s.engine.clone();
    let hits = tokio::task::spawn_blocking(move || engine.similar(id, &opts))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(hits))
}

/// (index position, region id).
type ThumbKey = (usize, usize);

/// Thumbnails made recently, by [`ThumbKey`]; the oldest go first.
pub struct ThumbnailCache {
    cap: usize,
    inner: Mutex<(HashMap<ThumbKey, Bytes>, VecDeque<ThumbKey>)>,
}

impl ThumbnailCache {
    /// A cache of at most `cap` thumbnails.
    pub fn new(cap: usize) -> Self {
        ThumbnailCache {
            cap,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn get(&self, key: (usize, usize)) -> Option<Bytes> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(&key).cloned()
    }

    fn put(&self, key: (usize, usize), b: Bytes) {
        if self.cap == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.insert(key, b).is_none() {
            g.1.push_back(key);
        }
        while g.1.len() > self.cap {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }
}

/// Longest side of a thumbnail, pixels.
const THUMB_SIDE: u32 = 192;

/// The region's crop box (clipped to its image) from its source image, scaled to fit
/// [`THUMB_SIDE`], as JPEG.
fn make_thumbnail(s: &Served, id: usize) -> ApiResult<Bytes> {
    let idx = s.engine.index();
    let r = idx
        .region(id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let src = Path::new(&idx.manifest().dataset.path).join(&r.image);
    let img = crate::preprocess::decode_rgb(&src).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the region's source image cannot be read (was the dataset moved?): {e}"),
        )
    })?;
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let c = r.crop_box;
    let (x0, y0) = (c.x0.clamp(0, w - 1), c.y0.clamp(0, h - 1));
    let (x1, y1) = (c.x1.clamp(x0 + 1, w), c.y1.clamp(y0 + 1, h));
    let crop = image::imageops::crop_imm(
        &img,
        x0 as u32,
        y0 as u32,
        (x1 - x0) as u32,
        (y1 - y0) as u32,
    )
    .to_image();
    let scale = f64::from(THUMB_SIDE) / f64::from(crop.width().max(crop.height()));
    let thumb = if scale < 1.0 {
        let (tw, th) = (
            ((f64::from(crop.width()) * scale).round() as u32).max(1),
            ((f64::from(crop.height()) * scale).round() as u32).max(1),
        );
        image::imageops::resize(&crop, tw, th, image::imageops::FilterType::Triangle)
    } else {
        crop
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&thumb)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("JPEG encoding failed: {e}"),
            )
        })?;
    Ok(Bytes::from(out))
}

/// `GET /v1/regions/{index}/{id}/thumbnail`.
async fn thumbnail(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let (index, id) = url_path(path)?;
    let (s, id) = region_of(&state, &index, &id)?;
    let pos = state
        .indexes
        .iter()
        .position(|x| std::ptr::eq(x, s))
        .unwrap_or(0);
    let bytes = match state.thumbnails.get((pos, id)) {
        Some(b) => b,
        None => {
            let st = state.clone();
            let b = tokio::task::spawn_blocking(move || make_thumbnail(&st.indexes[pos], id))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            state.thumbnails.put((pos, id), b.clone());
            b
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "image/jpeg".parse().expect("valid header"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        "public, max-age=3600".parse().expect("valid header"),
    );
    Ok((headers, Body::from(bytes)).into_response())
}
