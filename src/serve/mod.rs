//! `partlens serve`: part retrieval over HTTP (axum on tokio).
//!
//! One process serves one or more indexes, each opened once with its own encoder
//! ([`QueryEngine`]: the same code path as `partlens query` and the library). Crops of requests
//! that arrive together are embedded as one encoder batch ([`batch`]); searches run in
//! parallel on tokio's blocking pool. Routes are in [`routes`]; every error is JSON
//! `{"error": …}` with a fitting status. Limits: upload size, image pixels (read from the
//! header before decoding), `k`, a per-request timeout; no file path is ever taken from a
//! request (indexes by name, regions by id). SIGINT/SIGTERM stop accepting and finish the
//! requests in flight.

pub mod batch;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::encoder::EncoderOptions;
use crate::error::{Error, Result};
use crate::query::QueryEngine;

/// Settings of `partlens serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (loopback by default).
    pub addr: SocketAddr,
    /// `(name, path)` of every index served; names are unique.
    pub indexes: Vec<(String, PathBuf)>,
    /// Largest request body, bytes.
    pub max_upload: usize,
    /// Largest image accepted, pixels (checked from the header before decoding).
    pub max_pixels: u64,
    /// Largest `k`.
    pub max_k: usize,
    /// Time a request may take before it is answered 503.
    pub timeout: Duration,
    /// Most crops in one encoder batch (1: no batching).
    pub max_batch: usize,
    /// Longest a crop waits for others to join its batch.
    pub batch_wait: Duration,
    /// Thumbnails kept in memory.
    pub thumbnail_cache: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7878)),
            indexes: Vec::new(),
            max_upload: 32 << 20,
            max_pixels: 50_000_000,
            max_k: 1000,
            timeout: Duration::from_secs(30),
            max_batch: 8,
            batch_wait: Duration::ZERO,
            thumbnail_cache: 2048,
        }
    }
}

/// One served index.
pub struct Served {
    /// Its name in URLs.
    pub name: String,
    /// The engine (index, encoder, graphs).
    pub engine: Arc<QueryEngine>,
    /// The queue in front of its encoder.
    pub batcher: batch::Batcher,
}

/// What every handler sees.
pub struct AppState {
    /// The served indexes, in the order given.
    pub indexes: Vec<Served>,
    /// The settings.
    pub opts: ServeOptions,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Recently made thumbnails, by (index, region id).
    pub thumbnails: routes::ThumbnailCache,
}

/// Opens every index of `opts` with its encoder and starts their batchers.
pub fn open(opts: &ServeOptions, enc: &EncoderOptions) -> Result<AppState> {
    if opts.indexes.is_empty() {
        return Err(Error::InvalidArgument(
            "no index to serve: pass --index PATH (or NAME=PATH), once per index".into(),
        ));
    }
    let mut names: Vec<&str> = opts.indexes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!(
            "two indexes are named {:?}; name them with --index NAME=PATH",
            w[0]
        )));
    }
    if opts.max_k == 0 || opts.max_batch == 0 || opts.max_upload == 0 {
        return Err(Error::InvalidArgument(
            "--max-k, --max-batch and --max-upload-mb must be at least 1".into(),
        ));
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let mut indexes = Vec::new();
    for (name, path) in &opts.indexes {
        let engine = Arc::new(QueryEngine::open(path, enc)?);
        // Labels, splits and objects for `/v1/indexes`: one pass over the columns, now.
        engine.index().summary()?;
        tracing::info!(
            "serving {} as {name:?}: {} regions, encoder {} on {}",
            path.display(),
            engine.index().len(),
            engine
                .encoder()
                .map_or("imported vectors", |e| &e.spec().name),
            engine.encoder().map_or("-", |e| e.provider())
        );
        let batcher = batch::Batcher::start(
            engine.clone(),
            opts.max_batch,
            opts.batch_wait,
            metrics.clone(),
        );
        indexes.push(Served {
            name: name.clone(),
            engine,
            batcher,
        });
    }
    Ok(AppState {
        indexes,
        opts: opts.clone(),
        metrics,
        thumbnails: routes::ThumbnailCache::new(opts.thumbnail_cache),
    })
}

/// Serves `state` on an already bound listener until `shutdown` resolves; requests in flight
/// are finished first.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = routes::router(Arc::new(state));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::InvalidArgument(format!("server error: {e}")))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

/// Opens the indexes, binds `opts.addr` and serves until SIGINT/SIGTERM. `ready` is called
/// with the bound address (the port may have been 0).
pub fn run(
    opts: &ServeOptions,
    enc: &EncoderOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let state = open(opts, enc)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {}: {e}", opts.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("cannot read the bound address: {e}")))?;
        ready(addr);
        serve_on(listener, state, shutdown_signal()).await
    })
}
