//! The ONNX Runtime sessions of one encoder: execution providers, I/O binding, and several
//! sessions so that batches overlap.
//!
//! A run copies the batch into an input tensor the session owns — pinned (page-locked) host
//! memory on CUDA, so the host-to-device copy is one DMA queued on the session's stream — binds
//! it with ONNX Runtime's I/O binding, and binds only the outputs asked for, which ONNX Runtime
//! leaves on the device until the end of the run and then copies once into pinned host memory
//! (CPU memory on the CPU provider). On CUDA an encoder holds [`DEFAULT_CUDA_SESSIONS`]
//! sessions, each with its own stream, so one batch's copies and the host's work on it overlap
//! another's compute; callers on different threads get different sessions.
//!
//! `PARTLENS_IO_BINDING=0` runs plain `Session::run` instead (for comparisons);
//! `PARTLENS_SESSIONS=N` (1 to 4) sets the number of sessions on either provider (on CPU each
//! session's threads compete for the same cores, so more than 1 only serves tests).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;
use rayon::prelude::*;

use super::EncoderOptions;
use crate::error::{Error, Result};

/// Sessions per CUDA encoder: two batches in flight.
pub const DEFAULT_CUDA_SESSIONS: usize = 2;

/// Most sessions `PARTLENS_SESSIONS` may ask for.
pub const MAX_SESSIONS: usize = 4;

/// Input bytes past which a batch is copied into the input tensor by several threads.
const PARALLEL_COPY_BYTES: usize = 8 << 20;

fn cuda_provider() -> ort::ep::ExecutionProviderDispatch {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let mut ep = ort::ep::CUDA::default()
        .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic);
    if let Ok(extra) = std::env::var("PARTLENS_CUDA_OPTIONS") {
        for kv in extra.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                ep = ep.with_arbitrary_config(k.trim(), v.trim());
            }
        }
    }
    ep.build()
}

/// One session on the CPU provider or (`cuda`) the CUDA provider, which must work: its failure
/// is [`Error::Device`], never a silent CPU fallback.
pub(super) fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    opts: &EncoderOptions,
    cuda: bool,
) -> Result<Session> {
    let mut b = Session::builder(env)?;
    // ONNX Runtime's per-node profile (JSON), for diagnosing where inference time goes.
    if let Some(p) = std::env::var_os("PARTLENS_ORT_PROFILE") {
        b = b.with_profiling(p)?;
    }
    if let Some(n) = opts.intra_threads {
        b = b.with_intra_threads(n)?;
    }
    if cuda {
        b = b
            // Heuristic cuDNN algorithm choice: the exhaustive default benchmarks every conv for
            // every new batch shape, which cost more than the whole inference on the sample
            // (scripts/gpu_check.sh on an H200). PARTLENS_CUDA_OPTIONS="key=value,…" passes
            // further CUDA provider options through.
            .with_execution_providers([cuda_provider().error_on_failure()])
            .map_err(|e| Error::Device {
                provider: "cuda".into(),
                message: format!(
                    "{}. The CUDA provider needs the onnxruntime-gpu build of ONNX Runtime \
                     (pass its libonnxruntime.so with --ort-lib), an NVIDIA driver and the \
                     CUDA 13 / cuDNN 9 libraries",
                    e.to_string().trim_end_matches('.')
                ),
            })?;
    }
    b.commit_from_file(path).map_err(|e| {
        if cuda {
            Error::Device {
                provider: "cuda".into(),
                message: e.to_string(),
            }
        } else {
            Error::model(path, format!("ONNX Runtime cannot load it: {e}"))
        }
    })
}

/// How many sessions an encoder on `provider` holds.
pub(super) fn session_count(provider: &str) -> Result<usize> {
    match std::env::var("PARTLENS_SESSIONS") {
        Err(_) if provider == "cuda" => Ok(DEFAULT_CUDA_SESSIONS),
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_SESSIONS).contains(&n) => Ok(n),
            _ => Err(Error::InvalidArgument(format!(
                "PARTLENS_SESSIONS={v:?}: use 1 to {MAX_SESSIONS}"
            ))),
        },
    }
}

fn io_binding_enabled() -> bool {
    std::env::var("PARTLENS_IO_BINDING").map_or(true, |v| v.trim() != "0")
}

/// A session's bound input and outputs.
struct Bound {
    binding: IoBinding,
    /// Allocates input tensors: pinned host memory on CUDA, ordinary memory on CPU.
    input_alloc: Allocator,
    /// Where outputs are written: pinned host memory on CUDA, CPU memory on CPU.
    output_mem: MemoryInfo<'static>,
    /// The outputs bound now, and the batch size they were bound for (ONNX Runtime reuses a
    /// bound output's buffer, so a new batch size needs a new binding).
    outputs: (Vec<String>, usize),
    /// Input tensors by batch size: the full batch and the last, shorter one.
    inputs: Vec<(usize, Tensor<f32>)>,
}

impl Bound {
    fn new(session: &Session, cuda: bool) -> Result<Bound> {
        let (input_alloc, output_mem) = if cuda {
            let pinned =
                |t| MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, t);
            (
                Allocator::new(session, pinned(MemoryType::CPUInput)?)?,
                pinned(MemoryType::CPUOutput)?,
            )
        } else {
            let cpu = MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?;
            (Allocator::new(session, cpu.clone())?, cpu)
        };
        Ok(Bound {
            binding: session.create_binding()?,
            input_alloc,
            output_mem,
            outputs: (Vec::new(), 0),
            inputs: Vec::new(),
        })
    }

    /// Fills the input tensor for `shape` with the concatenation of `parts` and binds it.
    fn bind_input(&mut self, input: &str, shape: [usize; 4], parts: &[&[f32]]) -> Result<()> {
        let n = shape[0];
        let at = match self.inputs.iter().position(|(b, _)| *b == n) {
            Some(i) => i,
            None => {
                if self.inputs.len() >= 2 {
                    self.inputs.remove(0);
                }
                self.inputs
                    .push((n, Tensor::<f32>::new(&self.input_alloc, shape)?));
                self.inputs.len() - 1
            }
        };
        let (_, data) = self.inputs[at].1.extract_tensor_mut();
        copy_parts(parts, data);
        self.binding.bind_input(input, &self.inputs[at].1)?;
        Ok(())
    }
}

/// Copies `parts` one after another into `out` (whose length is their total), with several
/// threads for large batches.
fn copy_parts(parts: &[&[f32]], out: &mut [f32]) {
    let large = std::mem::size_of_val(out) >= PARALLEL_COPY_BYTES && parts.len() > 1;
    let mut pieces = Vec::with_capacity(parts.len());
    let mut rest = out;
    for p in parts {
        let (head, tail) = rest.split_at_mut(p.len());
        pieces.push((head, *p));
        rest = tail;
    }
    if large {
        pieces
            .into_par_iter()
            .for_each(|(dst, src)| dst.copy_from_slice(src));
    } else {
        for (dst, src) in pieces {
            dst.copy_from_slice(src);
        }
    }
}

/// One session and, with I/O binding, its bound tensors.
pub(super) struct Runner {
    session: Session,
    bound: Option<Bound>,
}

impl Runner {
    /// The session (metadata, input and output descriptions).
    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// Runs `input` = the concatenation of `parts` (shape `shape`), computing only `names`, and
    /// hands each output's shape and values to `f`.
    pub(super) fn run<T>(
        &mut self,
        input: &str,
        shape: [usize; 4],
        parts: &[&[f32]],
        names: &[String],
        f: impl FnMut(&str, Vec<i64>, &[f32]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Some(bound) = self.bound.as_mut() else {
            return run_plain(&mut self.session, input, shape, parts, names, f);
        };
        bound.bind_input(input, shape, parts)?;
        if bound.outputs.0 != names || bound.outputs.1 != shape[0] {
            bound.binding.clear_outputs();
            for n in names {
                bound
                    .binding
                    .bind_output_to_device(n.as_str(), &bound.output_mem)?;
            }
            bound.outputs = (names.to_vec(), shape[0]);
        }
        let outputs = self.session.run_binding(&bound.binding)?;
        read_outputs(&outputs, names, f)
    }
}

/// `Session::run` on a borrowed (or, for several parts, concatenated) input.
fn run_plain<T>(
    session: &mut Session,
    input: &str,
    shape: [usize; 4],
    parts: &[&[f32]],
    names: &[String],
    f: impl FnMut(&str, Vec<i64>, &[f32]) -> Result<T>,
) -> Result<Vec<T>> {
    let joined;
    let pixels: &[f32] = match parts {
        [one] => one,
        _ => {
            joined = parts.concat();
            &joined
        }
    };
    let value = ort::value::TensorRef::from_array_view((shape, pixels))?;
    let selector = names
        .iter()
        .fold(ort::session::OutputSelector::no_default(), |sel, n| {
            sel.with(n.as_str())
        });
    let options = ort::session::RunOptions::new()?.with_outputs(selector);
    let outputs = session.run_with_options(ort::inputs![input => value], &options)?;
    read_outputs(&outputs, names, f)
}

/// Hands each output in `names` (float32) to `f`, in order.
fn read_outputs<T>(
    outputs: &ort::session::SessionOutputs<'_>,
    names: &[String],
    mut f: impl FnMut(&str, Vec<i64>, &[f32]) -> Result<T>,
) -> Result<Vec<T>> {
    let mut res = Vec::with_capacity(names.len());
    for name in names {
        let value = outputs
            .get(name)
            .ok_or_else(|| Error::Ort(format!("output {name:?} missing from the run")))?;
        let (s, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::Ort(format!("output {name:?} is not float32: {e}")))?;
        res.push(f(name, s.iter().copied().collect(), data)?);
    }
    Ok(res)
}

/// An encoder's sessions; each call takes a free one.
pub(super) struct Sessions {
    runners: Vec<Mutex<Runner>>,
    next: AtomicUsize,
}

impl Sessions {
    /// `count` sessions of `path` (the first one already built).
    pub(super) fn new(
        first: Session,
        count: usize,
        env: &ort::environment::Environment,
        path: &Path,
        opts: &EncoderOptions,
        cuda: bool,
    ) -> Result<Sessions> {
        let binding = io_binding_enabled();
        let runner = |session: Session| -> Result<Mutex<Runner>> {
            let bound = if binding {
                Some(Bound::new(&session, cuda)?)
            } else {
                None
            };
            Ok(Mutex::new(Runner { session, bound }))
        };
        let mut runners = vec![runner(first)?];
        for _ in 1..count {
            runners.push(runner(build_session(env, path, opts, cuda)?)?);
        }
        Ok(Sessions {
            runners,
            next: AtomicUsize::new(0),
        })
    }

    /// How many sessions there are: the batches that can be in flight at once.
    pub(super) fn len(&self) -> usize {
        self.runners.len()
    }

    /// Whether runs use I/O binding.
    pub(super) fn io_binding(&self) -> bool {
        self.first().bound.is_some()
    }

    /// The first session (for its metadata).
    pub(super) fn first(&self) -> MutexGuard<'_, Runner> {
        self.runners[0].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free session, or (all busy) the next one in turn, waiting for it.
    pub(super) fn take(&self) -> MutexGuard<'_, Runner> {
        let n = self.runners.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(g) = self.runners[(start + i) % n].try_lock() {
                return g;
            }
        }
        self.runners[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
