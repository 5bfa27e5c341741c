//! The encoder alone: regions per second on pre-made tensors, every session busy — the
//! ceiling an ingest is measured against (`partlens encode-bench`, `scripts/gpu_check.sh`).

use std::time::Instant;

use serde::Serialize;

use super::Encoder;
use crate::error::Result;

/// What [`measure`] saw.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Regions embedded (whole batches).
    pub regions: usize,
    /// Regions per batch.
    pub batch_size: usize,
    /// Sessions run at once.
    pub sessions: usize,
    /// Wall seconds of the timed part.
    pub seconds: f64,
    /// Regions per second.
    pub regions_per_second: f64,
    /// Median seconds of one batch, input copy and output read included.
    pub batch_seconds_p50: f64,
}

/// Embeds at least `regions` pre-made regions in batches of `batch_size`, one thread per
/// session, after one warm-up batch per session (not timed).
pub fn measure(encoder: &Encoder, batch_size: usize, regions: usize) -> Result<Throughput> {
    let len = encoder.preprocessor().tensor_len();
    let batch_size = batch_size.max(1);
    // Values in the range normalised pixels take; the same batch every time.
    let pixels: Vec<f32> = (0..batch_size * len)
        .map(|i| ((i * 7919 % 251) as f32 / 125.0) - 1.0)
        .collect();
    let sessions = encoder.sessions();
    let batches = regions.div_ceil(batch_size).max(sessions);
    let run = |count: usize| -> Result<Vec<f64>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let times = std::sync::Mutex::new(Vec::with_capacity(count));
        std::thread::scope(|s| -> Result<()> {
            let workers: Vec<_> = (0..sessions)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                            let t = Instant::now();
                            encoder.embed_parts(&[&pixels], batch_size, false)?;
                            let dt = t.elapsed().as_secs_f64();
                            times.lock().unwrap_or_else(|e| e.into_inner()).push(dt);
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("encoder thread panicked")?;
            }
            Ok(())
        })?;
        Ok(times.into_inner().unwrap_or_else(|e| e.into_inner()))
    };
    run(sessions)?;
    let t = Instant::now();
    let mut times = run(batches)?;
    let seconds = t.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let done = batches * batch_size;
    Ok(Throughput {
        regions: done,
        batch_size,
        sessions,
        seconds,
        regions_per_second: done as f64 / seconds.max(1e-9),
        batch_seconds_p50: times[times.len() / 2],
    })
}
