//! `partlens serve`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use partlens::serve::{run, ServeOptions};
use partlens::{EncoderOptions, Error, Result};

/// `partlens serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// An index to serve, as PATH or NAME=PATH (repeat; the name defaults to the folder's and
    /// is what URLs use).
    #[arg(long = "index", required = true, value_name = "[NAME=]DIR")]
    indexes: Vec<String>,
    /// Address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Largest upload, MB.
    #[arg(long, default_value_t = 32)]
    max_upload_mb: usize,
    /// Largest image, megapixels (read from the header before decoding).
    #[arg(long, default_value_t = 50.0)]
    max_megapixels: f64,
    /// Largest k a request may ask for.
    #[arg(long, default_value_t = 1000)]
    max_k: usize,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Most crops in one encoder batch (1 turns batching off). On a GPU, raise it (e.g. 32).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Longest the first crop waits for others to join its encoder batch, milliseconds. 0
    /// (the default): no waiting; the crops that queued while the encoder was busy run
    /// together. On a GPU a few ms gather fuller batches.
    #[arg(long, default_value_t = 0.0)]
    batch_wait_ms: f64,
}

pub(super) fn serve(a: &ServeArgs, enc: &EncoderOptions) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
    if !(a.timeout_s.is_finite() && a.timeout_s > 0.0 && a.timeout_s <= 3600.0) {
        return bad("--timeout-s must be between 0 and 3600");
    }
    if !(a.batch_wait_ms.is_finite() && (0.0..=1000.0).contains(&a.batch_wait_ms)) {
        return bad("--batch-wait-ms must be between 0 and 1000");
    }
    if !(a.max_megapixels.is_finite() && a.max_megapixels > 0.0 && a.max_megapixels <= 178.0) {
        return bad(
            "--max-megapixels must be between 0 and 178 (Pillow's decompression-bomb limit)",
        );
    }
    let max_upload = a
        .max_upload_mb
        .checked_mul(1 << 20)
        .filter(|&b| b > 0 && b <= 4 << 30)
        .ok_or_else(|| {
            Error::InvalidArgument("--max-upload-mb must be between 1 and 4096".into())
        })?;
    let opts = ServeOptions {
        addr: a.addr,
        indexes: a
            .indexes
            .iter()
            .map(|s| super::eval::named_index(s))
            .collect(),
        max_upload,
        max_pixels: (a.max_megapixels * 1e6) as u64,
        max_k: a.max_k,
        timeout: Duration::from_secs_f64(a.timeout_s),
        max_batch: a.max_batch,
        batch_wait: Duration::from_secs_f64(a.batch_wait_ms / 1e3),
        ..ServeOptions::default()
    };
    run(&opts, enc, |addr| {
        println!("listening on http://{addr}/  (Ctrl-C to stop)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
}
