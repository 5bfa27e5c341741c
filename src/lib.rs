//! # partlens
//!
//! An embedded vector-search engine for part-aware image representations: ingest a dataset of
//! part-annotated images, embed every part and object region with an ONNX encoder, store the
//! embeddings (Parquet + `.npy`) and HNSW indexes, and search them by an image crop.
//!
//! ```no_run
//! use partlens::{ingest, query, EncoderOptions, IngestOptions, MmsegDataset};
//!
//! # fn main() -> partlens::Result<()> {
//! let dataset = MmsegDataset::open("data/samples/pascal_part")?;
//! let enc = EncoderOptions::default();
//! let model = partlens::setup::default_model_path();
//! let report = ingest::ingest(&dataset, &model, &enc, &IngestOptions::new("indexes/demo"))?;
//! println!("{} regions", report.manifest.counts.regions);
//!
//! let engine = query::QueryEngine::open("indexes/demo", &enc)?;
//! let hits = engine.search_image_file("crop.jpg".as_ref(), None, &query::SearchOptions::default())?;
//! for h in hits {
//!     println!("{} {} {:.3}", h.image, h.label, h.score);
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod dataset;
pub mod dense;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod files;
pub mod import;
pub mod index;
pub mod ingest;
pub mod preprocess;
pub mod query;
pub mod region;
pub mod serve;
pub mod setup;
pub mod store;

pub use dataset::{Dataset, MmsegDataset, RegionSettings};
pub use encoder::{Device, Encoder, EncoderOptions, Feature, TokenGrid};
pub use error::{Error, Result};
pub use ingest::IngestOptions;
pub use region::{PixelBox, Region, RegionKind};
pub use store::IndexDir;
