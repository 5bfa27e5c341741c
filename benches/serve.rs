//! `partlens serve` under load: encoder batching against one crop at a time, in the same run.
//!
//! The bundled Pascal-Part sample is ingested once with the default MobileNetV2 (library
//! `ingest`, default settings). Then the real server binary (the `partlens` of this build,
//! `--device cpu`, default threads) is started twice on an ephemeral loopback port, once per
//! configuration:
//!
//! - **batching**: the defaults (`--max-batch 8`, `--batch-wait-ms 0`), or what
//!   `PARTLENS_BENCH_BATCH_ARGS` says;
//! - **one at a time**: `--max-batch 1` (every crop is its own encoder run): the baseline.
//!
//! Against each, 32 client threads (blocking `ureq`, one keep-alive agent per thread) POST
//! `/v1/query?box=…&k=10` in a closed loop (each sends its next request when the last is
//! answered), the body one of the six JPEGs of `img/val/` as `image/jpeg`, the box drawn per
//! request from a seeded generator (inside the image, each side at least 32 px), for 2 s of
//! warm-up and then a 30 s measured window. Printed per configuration:
//!
//! - **requests/s**: requests answered within the window / window length;
//! - **p50 / p95 / p99 latency**, ms: client-side, send to body read, of those requests;
//! - **mean encoder batch**: the difference of `partlens_encoder_batch_size_sum` / `_count` of
//!   `/metrics` scraped at both ends of the window;
//! - **errors**: every request of the whole run (warm-up included) answered other than 200
//!   with a JSON array, or not answered at all; the first few are printed. Must be 0;
//! - **server peak RSS**: `VmHWM` of the server process (its own, whole life: open, warm-up,
//!   load), read before it is stopped, with its `VmRSS` right after it started listening;
//! - CPU used in the window, in cores: the server's (`/proc/PID/stat`) and the clients' (this
//!   process): the clients share the machine's cores with the server, as on any loopback run.
//!   Requests per server CPU-second (requests/s / server cores) is printed with the ratio: it
//!   says what each configuration costs, and moves less than requests/s when other work on
//!   the machine takes a share of the cores.
//!
//! The server runs as a separate process, not in this one: its peak RSS is then its own
//! (`VmHWM`), not mixed with 32 client threads and this bench's own encoder, and it is the
//! binary users run, with its `/metrics` as the only window into it. After both runs, the
//! ratio batching / one at a time of requests/s is printed with the goal (≥ 2× on 2 cores).
//!
//! Then, with no server running, what bounds that ratio, on the same index and encoder
//! (`QueryEngine::open`, as the server opens it): `Encoder::embed` alone on pre-made tensors
//! at batch 1 and batch 32 (crops/s and the cores used, 3 s each after a warm-up run): the
//! ratio is the most batching can give if the encoder were all the work; the same with one
//! intra-op thread (whether batching gains per core, threading apart); and on one thread, per
//! request, the work batching cannot share: decode + crop/resize/normalise
//! (`decode_rgb_bytes`, `crop_tensor`) and the search (`search_vector`, k = 10). From these a
//! simple model of the machine's time per request: that work spread over all cores + the
//! encoder's time per crop (it takes the whole machine), at batch 1 and at batch 32; its
//! ratio estimates what batching can give here.
//!
//! `cargo bench --bench serve` (about 85 s on 2 cores, plus the index build);
//! `PARTLENS_BENCH_QUICK=1` for a smoke run (8 clients, 1 s warm-up, 5 s windows, 1 s
//! encoder timings). The load average is printed: other work on the machine shows in every
//! figure. Nothing is asserted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use partlens::encoder::Encoder;
use partlens::eval::Rng;
use partlens::ingest::{ingest, IngestOptions};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::setup::{self, SetupOptions};
use partlens::{Device, EncoderOptions, MmsegDataset, PixelBox};

/// Sizes of one run.
struct Plan {
    clients: usize,
    warmup: Duration,
    window: Duration,
    /// Time of each encoder-alone measurement.
    encoder_time: Duration,
}

/// Results `k` of every query.
const K: usize = 10;
/// Smallest side of a query box, pixels.
const MIN_SIDE: u32 = 32;
/// Errors whose message is kept for printing.
const KEEP_ERRORS: usize = 5;
/// The batch of the batched encoder-alone measurement (a full batch of the GPU setting).
const BATCH: usize = 32;

/// One query image.
struct Image {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A `kB` field of `/proc/PID/status` (`self` for this process).
fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process so far (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

fn mb_of_kb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A box inside a `w × h` image, each side at least [`MIN_SIDE`] (or the image's side).
fn random_box(r: &mut Rng, w: u32, h: u32) -> [u32; 4] {
    let span = |r: &mut Rng, n: u32| {
        let side = MIN_SIDE.min(n);
        let a = r.below((n - side + 1) as usize) as u32;
        let b = a + side + r.below((n - a - side + 1) as usize) as u32;
        (a, b)
    };
    let (x0, x1) = span(r, w);
    let (y0, y1) = span(r, h);
    [x0, y0, x1, y1]
}

/// The JPEGs of the sample's `img/val/`, with their sizes.
fn load_images(dir: &Path) -> Vec<Image> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("img/val")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("image");
            let (width, height) = image::image_dimensions(p).expect("image size");
            Image {
                bytes,
                width,
                height,
            }
        })
        .collect()
}

/// A running `partlens serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
    pid: String,
}

impl Server {
    /// Starts the binary on an ephemeral loopback port and waits until it listens.
    fn start(index: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_partlens"))
            .args(["--device", "cpu", "-q", "serve", "--addr", "127.0.0.1:0"])
            .arg("--index")
            .arg(index)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start partlens serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let pid = child.id().to_string();
        Server { child, base, pid }
    }

    /// (sum, count) of the encoder batch sizes so far, from `/metrics`.
    fn batches(&self, agent: &ureq::Agent) -> (f64, f64) {
        let text = agent
            .get(format!("{}/metrics", self.base))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics body");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("partlens_encoder_batch_size_sum"),
            value("partlens_encoder_batch_size_count"),
        )
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signals the child this bench started, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// What one client thread saw.
#[derive(Default)]
struct ClientLog {
    /// Latencies (ms) of the requests answered within the window.
    latencies: Vec<f64>,
    errors: u64,
    messages: Vec<String>,
}

/// One configuration's figures.
struct Outcome {
    rps: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    mean_batch: f64,
    errors: u64,
    messages: Vec<String>,
    server_cores: f64,
    client_cores: f64,
    rss_start_kb: u64,
    rss_peak_kb: u64,
}

/// One client: requests in a closed loop until `end`.
fn client(
    url: String,
    images: Arc<Vec<Image>>,
    seed: u64,
    window: (Instant, Instant),
) -> ClientLog {
    let agent = agent();
    let mut r = Rng::new(seed);
    let mut log = ClientLog::default();
    let (t0, t1) = window;
    while Instant::now() < t1 {
        let img = &images[r.below(images.len())];
        let [x0, y0, x1, y1] = random_box(&mut r, img.width, img.height);
        let start = Instant::now();
        let res = agent
            .post(format!("{url}?box={x0},{y0},{x1},{y1}&k={K}"))
            .header("Content-Type", "image/jpeg")
            .send(&img.bytes[..]);
        let error = match res {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                match resp.body_mut().read_to_vec() {
                    Ok(body) if status == 200 && body.first() == Some(&b'[') => None,
                    Ok(body) => Some(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => Some(format!("{status}, body unread: {e}")),
                }
            }
            Err(e) => Some(format!("no answer: {e}")),
        };
        let done = Instant::now();
        match error {
            None if done >= t0 && done < t1 => {
                log.latencies.push((done - start).as_secs_f64() * 1e3)
            }
            None => {}
            Some(m) => {
                log.errors += 1;
                if log.messages.len() < KEEP_ERRORS {
                    log.messages.push(m);
                }
            }
        }
    }
    log
}

/// Runs the load against a fresh server started with `extra` flags.
fn load(index: &Path, extra: &[&str], images: &Arc<Vec<Image>>, plan: &Plan) -> Outcome {
    let server = Server::start(index, extra);
    let rss_start_kb = status_kb(&server.pid, "VmRSS").unwrap_or(0);
    let url = format!("{}/v1/query", server.base);
    let t0 = Instant::now() + plan.warmup;
    let t1 = t0 + plan.window;
    let handles: Vec<_> = (0..plan.clients)
        .map(|i| {
            let (url, images) = (url.clone(), images.clone());
            thread::spawn(move || client(url, images, 1000 + i as u64, (t0, t1)))
        })
        .collect();
    let scrape = agent();
    thread::sleep(t0.saturating_duration_since(Instant::now()));
    let (sum0, count0) = server.batches(&scrape);
    let (srv0, cli0) = (cpu_seconds(&server.pid), cpu_seconds("self"));
    thread::sleep(t1.saturating_duration_since(Instant::now()));
    let (sum1, count1) = server.batches(&scrape);
    let (srv1, cli1) = (cpu_seconds(&server.pid), cpu_seconds("self"));
    let logs: Vec<ClientLog> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let rss_peak_kb = status_kb(&server.pid, "VmHWM").unwrap_or(0);
    let status = server.stop();
    let mut latencies: Vec<f64> = logs.iter().flat_map(|l| l.latencies.clone()).collect();
    latencies.sort_by(f64::total_cmp);
    let mut messages: Vec<String> = logs.iter().flat_map(|l| l.messages.clone()).collect();
    messages.truncate(KEEP_ERRORS);
    if !status.success() {
        messages.push(format!("the server ended with {status} on SIGTERM"));
    }
    let secs = plan.window.as_secs_f64();
    Outcome {
        rps: latencies.len() as f64 / secs,
        p50: quantile(&latencies, 0.50),
        p95: quantile(&latencies, 0.95),
        p99: quantile(&latencies, 0.99),
        mean_batch: (sum1 - sum0) / (count1 - count0).max(1.0),
        errors: logs.iter().map(|l| l.errors).sum::<u64>() + u64::from(!status.success()),
        messages,
        server_cores: (srv1 - srv0) / secs,
        client_cores: (cli1 - cli0) / secs,
        rss_start_kb,
        rss_peak_kb,
    }
}

fn print(name: &str, o: &Outcome, plan: &Plan) {
    println!(
        "serve/{name}: {:.1} requests/s, latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, \
         mean encoder batch {:.2}, errors {} ({} clients, {} s; CPU in the window: server {:.2} \
         cores, clients {:.2} cores); server peak RSS {:.0} MB ({:.0} MB when it started listening)",
        o.rps,
        o.p50,
        o.p95,
        o.p99,
        o.mean_batch,
        o.errors,
        plan.clients,
        plan.window.as_secs_f64(),
        o.server_cores,
        o.client_cores,
        mb_of_kb(o.rss_peak_kb),
        mb_of_kb(o.rss_start_kb),
    );
    for m in &o.messages {
        println!("serve/{name}:   error: {m}");
    }
}

/// Crops/s of `Encoder::embed` alone at batch `n`, on pre-made tensors, for about `time`, and
/// the CPU this process used meanwhile, in cores.
fn encoder_rate(enc: &Encoder, n: usize, time: Duration) -> (f64, f64) {
    let len = enc.preprocessor().tensor_len();
    let tensors: Vec<f32> = (0..n * len)
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect();
    enc.embed(&tensors, n).expect("embed"); // warm-up
    let (t, cpu) = (Instant::now(), cpu_seconds("self"));
    let mut crops = 0;
    while t.elapsed() < time {
        enc.embed(&tensors, n).expect("embed");
        crops += n;
    }
    let secs = t.elapsed().as_secs_f64();
    (crops as f64 / secs, (cpu_seconds("self") - cpu) / secs)
}

/// What bounds the ratio: the encoder alone at batch 1 and [`BATCH`], and the per-request
/// work batching cannot share, on one thread.
fn bounds(index: &Path, enc_opts: &EncoderOptions, images: &[Image], plan: &Plan) -> f64 {
    let engine = QueryEngine::open(index, enc_opts).expect("open the index");
    let enc = engine.encoder().expect("encoder");
    let ((one, c1), (many, c32)) = (
        encoder_rate(enc, 1, plan.encoder_time),
        encoder_rate(enc, BATCH, plan.encoder_time),
    );
    println!(
        "serve/encoder alone, default threads (as the server): {one:.1} crops/s at batch 1 \
         ({c1:.2} cores), {many:.1} crops/s at batch {BATCH} ({c32:.2} cores), ratio {:.2} (the \
         most batching can give if the encoder were all the work); per CPU-second {:.2}",
        many / one,
        (many / c32) / (one / c1)
    );
    {
        let single = Encoder::load(
            setup::default_model_path(),
            &EncoderOptions {
                intra_threads: Some(1),
                ..enc_opts.clone()
            },
        )
        .expect("model");
        let ((one, c1), (many, c32)) = (
            encoder_rate(&single, 1, plan.encoder_time),
            encoder_rate(&single, BATCH, plan.encoder_time),
        );
        println!(
            "serve/encoder alone, 1 thread: {one:.1} crops/s at batch 1 ({c1:.2} cores), \
             {many:.1} crops/s at batch {BATCH} ({c32:.2} cores), ratio {:.2}",
            many / one
        );
    }
    let mut r = Rng::new(7);
    let opts = SearchOptions {
        k: K,
        ..SearchOptions::default()
    };
    let (mut t_pre, mut t_search, mut n) = (0.0, 0.0, 0);
    let t_all = Instant::now();
    while t_all.elapsed() < plan.encoder_time || n < 20 {
        let img = &images[r.below(images.len())];
        let [x0, y0, x1, y1] = random_box(&mut r, img.width, img.height);
        let b = PixelBox {
            x0: x0.into(),
            y0: y0.into(),
            x1: x1.into(),
            y1: y1.into(),
        };
        let t = Instant::now();
        let rgb = partlens::preprocess::decode_rgb_bytes(&img.bytes, Path::new("query.jpg"))
            .expect("decode");
        let tensor = engine.crop_tensor(&rgb, Some(b), "query").expect("crop");
        t_pre += t.elapsed().as_secs_f64();
        let f = enc.embed(&tensor, 1).expect("embed");
        let v = &f.values[&opts.feature];
        let t = Instant::now();
        let hits = engine.search_vector(v, &opts).expect("search");
        t_search += t.elapsed().as_secs_f64();
        assert_eq!(hits.len(), K.min(engine.index().len()));
        n += 1;
    }
    let (pre, search) = (t_pre / n as f64, t_search / n as f64);
    let cores = thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let per = |rate: f64| (pre + search) / cores + 1.0 / rate;
    let model = per(one) / per(many);
    println!(
        "serve/per request, one thread ({n} requests): decode + crop/resize/normalise {:.2} ms, \
         search (k = {K}) {:.3} ms; model (that work spread over {cores} cores + the encoder's \
         time per crop): {:.1} requests/s at batch 1, {:.1} at batch {BATCH}, ratio {model:.2}",
        1e3 * pre,
        1e3 * search,
        1.0 / per(one),
        1.0 / per(many),
    );
    model
}

fn main() {
    let quick = std::env::var("PARTLENS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let plan = if quick {
        Plan {
            clients: 8,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(5),
            encoder_time: Duration::from_secs(1),
        }
    } else {
        Plan {
            clients: 32,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(30),
            encoder_time: Duration::from_secs(3),
        }
    };
    println!(
        "serve: load average {} at the start, {} cores{}",
        loadavg(),
        thread::available_parallelism().map_or(1, |c| c.get()),
        if quick { " (PARTLENS_BENCH_QUICK)" } else { "" }
    );
    setup::ensure(&SetupOptions::default()).expect("partlens setup");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples/pascal_part");
    let dataset = MmsegDataset::open(&sample).expect("sample dataset");
    let enc_opts = EncoderOptions {
        device: Device::Cpu,
        ..EncoderOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let index = dir.path().join("pascal_part");
    let t = Instant::now();
    let report = ingest(
        &dataset,
        &setup::default_model_path(),
        &enc_opts,
        &IngestOptions::new(&index),
    )
    .expect("ingest the bundled sample");
    println!(
        "serve: index of the bundled Pascal-Part sample, {} regions (MobileNetV2), built in {:.1} s",
        report.manifest.counts.regions,
        t.elapsed().as_secs_f64()
    );
    let images = Arc::new(load_images(&sample.join("img/val")));

    // PARTLENS_BENCH_BATCH_ARGS="--max-batch 8 …" tries other batching settings.
    let extra = std::env::var("PARTLENS_BENCH_BATCH_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let batched = load(&index, &extra, &images, &plan);
    let label = if extra.is_empty() {
        "batching (the defaults)".to_string()
    } else {
        format!("batching ({})", extra.join(" "))
    };
    print(&label, &batched, &plan);
    let single = load(&index, &["--max-batch", "1"], &images, &plan);
    print("one at a time (max batch 1)", &single, &plan);
    let ratio = batched.rps / single.rps;
    let per_cpu = |o: &Outcome| o.rps / o.server_cores.max(1e-9);
    println!(
        "serve: batching / one at a time = {ratio:.2}× the requests/s (goal ≥ 2× on 2 cores: {}); \
         errors {} and {}; requests per server CPU-second {:.1} and {:.1}, ratio {:.2}",
        if ratio >= 2.0 { "met" } else { "NOT met" },
        batched.errors,
        single.errors,
        per_cpu(&batched),
        per_cpu(&single),
        per_cpu(&batched) / per_cpu(&single)
    );
    let model = bounds(&index, &enc_opts, &images, &plan);
    println!(
        "serve: measured ratio {ratio:.2}× against the model's {model:.2}×; load average {} at the end",
        loadavg()
    );
}
