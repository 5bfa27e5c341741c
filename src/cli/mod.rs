//! The `partlens` command line: parse, call the library, print.

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::encoder::{Device, EncoderOptions};

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
    #[arg(long, global = true, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// ONNX Runtime intra-op threads (default: all cores).
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
    Setup(commands::SetupArgs),
    /// Set up, ingest the bundled sample dataset, run a sample query, print where things are.
    Demo(commands::DemoArgs),
    /// Embed every part and object region of a dataset into a new index directory.
    Ingest(commands::IngestArgs),
    /// Describe an index directory.
    Info(commands::InfoArgs),
    /// Write a synthetic dataset (objects made of textured parts) for tests and scale runs.
    Synth(commands::SynthArgs),
    /// Write a dataset's label maps in the mmseg layout, for other tools.
    Convert(commands::ConvertArgs),
    /// Look at a dataset without embedding it.
    #[command(subcommand)]
    Dataset(commands::DatasetCommand),
    /// Find the stored regions most similar to an image crop.
    Query(commands::QueryArgs),
}

impl Cli {
    fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions {
            ort_lib: self.ort_lib.clone(),
            device: self.device,
            intra_threads: self.threads,
            spec_file: None,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> crate::Result<()> {
    let enc = cli.encoder_options();
    match &cli.command {
        Command::Setup(a) => commands::setup(a),
        Command::Demo(a) => commands::demo(a, &enc),
        Command::Ingest(a) => commands::ingest(a, &enc, cli.quiet),
        Command::Info(a) => commands::info(a),
        Command::Synth(a) => commands::synth(a),
        Command::Convert(a) => commands::convert(a),
        Command::Dataset(commands::DatasetCommand::Stats(a)) => commands::dataset_stats(a),
        Command::Query(a) => commands::query(a, &enc),
    }
}
