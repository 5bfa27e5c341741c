//! Commands over an index's segments: merge, compact, import, verify.

use std::path::PathBuf;

use clap::Args;

use super::{one_of, print};
use partlens::encoder::{EncoderOptions, Feature};
use partlens::index::HnswParams;
use partlens::Result;

/// `partlens merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The index to create.
    #[arg(long)]
    pub out: PathBuf,
    /// The indexes to join, in order (e.g. the shards of `ingest --shard i/N`); their region
    /// ids follow one another.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Replace an existing index at --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn merge(a: &MergeArgs) -> Result<()> {
    let r = partlens::store::merge::merge(&a.out, &a.inputs, a.overwrite)?;
    if a.json {
        return print::json(&r);
    }
    println!(
        "merged {} indexes into {}: {} segments, {} regions, in {:.1} s (no re-embedding)",
        a.inputs.len(),
        r.path.display(),
        r.segments,
        r.regions,
        r.seconds
    );
    Ok(())
}

/// `partlens compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Index directory.
    pub index: PathBuf,
    /// Merge runs of consecutive segments with fewer regions than this.
    #[arg(long, default_value_t = partlens::store::manifest::DEFAULT_SEGMENT_SIZE)]
    pub below: usize,
    /// Merge every segment into one.
    #[arg(long)]
    pub all: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn compact(a: &CompactArgs) -> Result<()> {
    let r = partlens::store::merge::compact(&a.index, a.below, a.all)?;
    if a.json {
        return print::json(&r);
    }
    if r.written.is_empty() {
        println!(
            "{}: nothing to compact ({} segments, none of them consecutive and small)",
            r.path.display(),
            r.segments
        );
    } else {
        println!(
            "compacted {}: {} segments into {} ({}); {} segments now; graphs {:.1} s, {:.1} s in all",
            r.path.display(),
            r.removed.len(),
            r.written.len(),
            r.written.join(", "),
            r.segments,
            r.hnsw_seconds,
            r.seconds
        );
    }
    Ok(())
}

/// `partlens import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The vectors: a float32 N × D .npy (C order).
    #[arg(long)]
    pub vectors: PathBuf,
    /// What each row is: a Parquet table of N rows (column `image` required; `split`,
    /// `kind`, `label_name`, `label`, `object_name`, `object_label`, `instance`, `box`,
    /// `area` optional).
    #[arg(long)]
    pub metadata: PathBuf,
    /// The index to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Which feature the vectors are.
    #[arg(long, default_value = "mean", value_parser = one_of(&Feature::ALL, Feature::as_str))]
    pub feature: Feature,
    /// Rows per segment (each with its own graph).
    #[arg(long, default_value_t = partlens::store::manifest::DEFAULT_SEGMENT_SIZE)]
    pub segment_size: usize,
    /// HNSW links per node.
    #[arg(long = "hnsw-m", default_value_t = HnswParams::default().max_nb_connection)]
    pub hnsw_m: usize,
    /// HNSW candidate list while building.
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    /// The ONNX model that made the vectors: recorded, so image queries work too.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The folder the table's image paths are relative to (default: the table's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Replace an existing index at --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn import(a: &ImportArgs, enc: &EncoderOptions) -> Result<()> {
    let mut o =
        partlens::import::ImportOptions::new(a.vectors.clone(), a.metadata.clone(), a.out.clone());
    o.feature = a.feature;
    o.segment_size = a.segment_size;
    o.hnsw = HnswParams {
        max_nb_connection: a.hnsw_m,
        ef_construction: a.ef_construction,
    };
    o.model = a.model.clone();
    o.root = a.root.clone();
    o.overwrite = a.overwrite;
    let r = partlens::import::import(&o, enc)?;
    if a.json {
        return print::json(&r);
    }
    println!(
        "imported {} vectors of {} values into {} ({} segments) in {:.1} s (graphs {:.1} s)",
        r.regions,
        r.dim,
        r.path.display(),
        r.segments,
        r.seconds,
        r.hnsw_seconds
    );
    Ok(())
}

/// `partlens verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Index directory.
    pub index: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn verify(a: &VerifyArgs) -> Result<()> {
    let r = partlens::store::verify::verify(&a.index)?;
    if a.json {
        print::json(&r)?;
    } else {
        for s in &r.segments {
            let name = if s.name.is_empty() {
                "(one segment, schema 2)"
            } else {
                &s.name
            };
            if s.problems.is_empty() {
                println!("ok        {name}: {} regions, {} files", s.regions, s.files);
            } else {
                for p in &s.problems {
                    println!("damaged   {name}: {p}");
                }
            }
        }
    }
    if r.ok() {
        if !a.json {
            println!(
                "verified  {}: every segment matches its manifest",
                a.index.display()
            );
        }
        Ok(())
    } else {
        let bad: Vec<&str> = r
            .segments
            .iter()
            .filter(|s| !s.problems.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        Err(partlens::Error::corrupt(
            &a.index,
            format!(
                "damaged segments: {} (see above); re-ingest or restore them",
                bad.join(", ")
            ),
        ))
    }
}
