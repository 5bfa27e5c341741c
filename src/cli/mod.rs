//! The `partlens` command line: parse, call the library, print. No engine logic lives here:
//! every command is a library call (`partlens::ingest`, `partlens::dataset::stats`,
//! `partlens::query::QueryEngine`, …) that a Rust program or the HTTP server can make too.

mod data;
mod eval;
mod index;
mod print;
mod probe_dense;
mod segments;
mod serve;

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use partlens::encoder::{Device, EncoderOptions, Precision};

/// A clap parser for one of a fixed set of library values, named by `name` (the help lists
/// the names; the library types stay free of clap).
pub(crate) fn one_of<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(&T) -> &'static str,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(all.iter().map(name)).try_map(move |s| {
        all.iter()
            .copied()
            .find(|v| name(v) == s)
            .ok_or_else(|| format!("unknown value {s:?}"))
    })
}

/// Part-aware image search: index the parts and objects of annotated images with an ONNX
/// encoder, and find the regions most like a crop.
#[derive(Debug, Parser)]
#[command(name = "partlens", version, about)]
pub struct Cli {
    /// ONNX Runtime library (default: $ORT_DYLIB_PATH, then the one `partlens setup` installed,
    /// then Python's onnxruntime).
    #[arg(long, global = true, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: cpu, cuda (fails if CUDA cannot run) or auto.
    #[arg(long, global = true, default_value = "auto",
          value_parser = one_of(&Device::ALL, Device::as_str))]
    pub device: Device,
    /// Precision: fp32, or fp16 (CUDA only; runs the model's fp16 variant `X.fp16.onnx`,
    /// written by scripts/models/fp16.py). Default: the model file's own.
    #[arg(long, global = true,
          value_parser = one_of(&Precision::ALL, Precision::as_str))]
    pub precision: Option<Precision>,
    /// ONNX Runtime intra-op threads (default: all cores; at most 4 per core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install ONNX Runtime and the default models into the per-user data folder.
    Setup(data::SetupArgs),
    /// Set up, ingest the bundled sample dataset, run a sample query, print where things are.
    Demo(data::DemoArgs),
    /// Embed every part and object region of a dataset into a new index directory.
    Ingest(data::IngestArgs),
    /// Measure the encoder alone: regions per second on pre-made tensors, every session busy
    /// (the ceiling an ingest's regions/s is compared with).
    EncodeBench(data::EncodeBenchArgs),
    /// Describe an index directory (and check its files with --verify).
    Info(index::InfoArgs),
    /// Write a synthetic dataset (objects made of textured parts) for tests and scale runs.
    Synth(data::SynthArgs),
    /// Write a dataset's label maps in the mmseg layout, for other tools.
    Convert(data::ConvertArgs),
    /// Look at a dataset without embedding it.
    #[command(subcommand)]
    Dataset(data::DatasetCommand),
    /// Find the stored regions most similar to an image crop.
    Query(index::QueryArgs),
    /// Convert an index written by an earlier partlens to the current layout, in place,
    /// without re-embedding.
    Upgrade(index::UpgradeArgs),
    /// Join indexes (e.g. the shards of `ingest --shard i/N`) into one, without re-embedding.
    Merge(segments::MergeArgs),
    /// Merge an index's small segments into one (rebuilding its graph).
    Compact(segments::CompactArgs),
    /// Build an index from vectors made elsewhere (a .npy) and a Parquet table of regions.
    Import(segments::ImportArgs),
    /// Check every segment of an index against its manifest (row counts, sizes, checksums,
    /// graphs) and name what is damaged; exits with 1 if anything is.
    Verify(segments::VerifyArgs),
    /// Evaluate an encoder's stored features with the paper's retrieval protocol.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Train and evaluate classification probes on stored features (linear, k-NN).
    #[command(subcommand)]
    Probe(eval::ProbeCommand),
    /// Compare indexes (one encoder each) on every task, parts next to objects: Markdown,
    /// JSON and an HTML page with charts.
    Report(eval::ReportArgs),
    /// Serve one or more indexes over HTTP: a JSON API under /v1 and a search page at /.
    Serve(serve::ServeArgs),
}

impl Cli {
    fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions {
            ort_lib: self.ort_lib.clone(),
            device: self.device,
            intra_threads: self.threads,
            spec_file: None,
            precision: self.precision,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> partlens::Result<()> {
    let enc = cli.encoder_options();
    match &cli.command {
        Command::Setup(a) => data::setup(a),
        Command::Demo(a) => data::demo(a, &enc),
        Command::Ingest(a) => data::ingest(a, &enc, cli.quiet),
        Command::EncodeBench(a) => data::encode_bench(a, &enc),
        Command::Info(a) => index::info(a),
        Command::Synth(a) => data::synth(a),
        Command::Convert(a) => data::convert(a),
        Command::Dataset(data::DatasetCommand::Stats(a)) => data::dataset_stats(a),
        Command::Query(a) => index::query(a, &enc),
        Command::Upgrade(a) => index::upgrade(a),
        Command::Merge(a) => segments::merge(a),
        Command::Compact(a) => segments::compact(a),
        Command::Import(a) => segments::import(a, &enc),
        Command::Verify(a) => segments::verify(a),
        Command::Eval(c) => eval::eval(c),
        Command::Probe(c) => eval::probe(c),
        Command::Report(a) => eval::run_report(a),
        Command::Serve(a) => serve::serve(a, &enc),
    }
}
