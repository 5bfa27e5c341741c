//! `/metrics` in the Prometheus text format: requests by route and status, a latency
//! histogram and the encoder's batch sizes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds of the batch-size histogram.
const BATCH_BUCKETS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: [u64; LATENCY_BUCKETS.len()],
    latency_sum: f64,
    latency_count: u64,
    batches: [u64; BATCH_BUCKETS.len()],
    batch_sum: u64,
    batch_count: u64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        for (b, le) in m.latency.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= le {
                *b += 1;
            }
        }
        m.latency_sum += seconds;
        m.latency_count += 1;
    }

    /// Records one encoder batch of `n` crops.
    pub fn batch(&self, n: usize) {
        let mut m = self.lock();
        for (b, le) in m.batches.iter_mut().zip(BATCH_BUCKETS) {
            if n <= le {
                *b += 1;
            }
        }
        m.batch_sum += n as u64;
        m.batch_count += 1;
    }

    /// Mean encoder batch size so far (0 before the first batch).
    pub fn mean_batch(&self) -> f64 {
        let m = self.lock();
        m.batch_sum as f64 / m.batch_count.max(1) as f64
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut s = String::new();
        let _ = writeln!(s, "# HELP partlens_requests_total HTTP requests answered.");
        let _ = writeln!(s, "# TYPE partlens_requests_total counter");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                s,
                "partlens_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(s, "# HELP partlens_request_seconds Request latency.");
        let _ = writeln!(s, "# TYPE partlens_request_seconds histogram");
        for (le, n) in LATENCY_BUCKETS.iter().zip(m.latency) {
            let _ = writeln!(s, "partlens_request_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "partlens_request_seconds_bucket{{le=\"+Inf\"}} {}",
            m.latency_count
        );
        let _ = writeln!(s, "partlens_request_seconds_sum {}", m.latency_sum);
        let _ = writeln!(s, "partlens_request_seconds_count {}", m.latency_count);
        let _ = writeln!(
            s,
            "# HELP partlens_encoder_batch_size Crops per encoder run."
        );
        let _ = writeln!(s, "# TYPE partlens_encoder_batch_size histogram");
        for (le, n) in BATCH_BUCKETS.iter().zip(m.batches) {
            let _ = writeln!(s, "partlens_encoder_batch_size_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "partlens_encoder_batch_size_bucket{{le=\"+Inf\"}} {}",
            m.batch_count
        );
        let _ = writeln!(s, "partlens_encoder_batch_size_sum {}", m.batch_sum);
        let _ = writeln!(s, "partlens_encoder_batch_size_count {}", m.batch_count);
        s
    }
}
