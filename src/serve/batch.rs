//! Encoder batching under load: the crops of requests that arrive together run as one encoder
//! batch, as inference servers do.
//!
//! Each served index has one [`Batcher`]: a worker thread owns the encoder's side of a
//! channel. It blocks for the first crop, then keeps collecting until the batch holds
//! `max_batch` crops or `wait` has passed since the first one arrived, runs them through
//! [`crate::encoder::Encoder::embed`] in one call and hands every request its own row. With
//! `max_batch` 1 every crop runs alone (the one-at-a-time baseline of the load benchmark).

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::encoder::Features;
use crate::error::{Error, Result};
use crate::query::QueryEngine;

/// One crop waiting for the encoder, and where its features go.
struct Job {
    tensor: Vec<f32>,
    reply: oneshot::Sender<Result<Features>>,
}

/// The queue in front of one index's encoder.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
}

impl Batcher {
    /// Starts the worker thread for `engine`'s encoder.
    pub fn start(
        engine: Arc<QueryEngine>,
        max_batch: usize,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Batcher {
        let (tx, rx) = channel::<Job>();
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("partlens-batcher".into())
            .spawn(move || {
                // Ends when every sender (the server's state) is dropped.
                while let Ok(first) = rx.recv() {
                    let start = Instant::now();
                    let mut jobs = vec![first];
                    while jobs.len() < max_batch {
                        let left = wait.saturating_sub(start.elapsed());
                        match rx.recv_timeout(left) {
                            Ok(j) => jobs.push(j),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                    run(&engine, jobs, &metrics);
                }
            })
            .expect("cannot start the encoder batching thread");
        Batcher { tx }
    }

    /// Embeds one crop tensor, batched with whatever else is waiting.
    pub async fn embed(&self, tensor: Vec<f32>) -> Result<Features> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { tensor, reply })
            .map_err(|_| Error::Ort("the encoder is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Ort("the encoder stopped".into()))?
    }
}

/// Runs `jobs` as one batch and answers each.
fn run(engine: &QueryEngine, jobs: Vec<Job>, metrics: &Metrics) {
    let n = jobs.len();
    metrics.batch(n);
    let mut pixels = Vec::with_capacity(jobs.iter().map(|j| j.tensor.len()).sum());
    for j in &jobs {
        pixels.extend_from_slice(&j.tensor);
    }
    match engine.encoder().and_then(|e| e.embed(&pixels, n)) {
        Ok(f) => {
            for (i, j) in jobs.into_iter().enumerate() {
                let values = f
                    .values
                    .iter()
                    .map(|(k, v)| {
                        let d = v.len() / n;
                        (*k, v[i * d..(i + 1) * d].to_vec())
                    })
                    .collect();
                let _ = j.reply.send(Ok(Features { n: 1, values }));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j
                    .reply
                    .send(Err(Error::Ort(format!("encoder failed on a batch: {msg}"))));
            }
        }
    }
}
