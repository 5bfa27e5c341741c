//! Commands that read an index: info and query.

use std::path::PathBuf;

use clap::Args;

use super::{one_of, print};
use partlens::encoder::{EncoderOptions, Feature};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::region::{PixelBox, RegionKind};
use partlens::{IndexDir, Result};

/// `partlens info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Index directory.
    pub index: PathBuf,
    /// Also re-read every file and compare its SHA-256 with the one recorded at ingest.
    /// (Damaged feature rows, NaN or infinite, are always looked for.) Exits with 1 if
    /// anything is damaged.
    #[arg(long)]
    pub verify: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn info(a: &InfoArgs) -> Result<()> {
    let idx = IndexDir::open(&a.index)?;
    let changed = if a.verify { Some(idx.verify()?) } else { None };
    let damaged: Vec<(Feature, Vec<usize>)> = idx
        .feature_names()
        .into_iter()
        .map(|f| (f, idx.damaged_rows(f)))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let m = idx.manifest();
    let healthy = damaged.is_empty() && changed.as_ref().is_none_or(Vec::is_empty);
    if a.json {
        print::json(&serde_json::json!({
            "manifest": m,
            "labels": idx.label_counts(),
            "changed_files": changed,
            "damaged_rows": damaged.iter().map(|(f, r)| (f.as_str(), r)).collect::<std::collections::BTreeMap<_, _>>(),
        }))?;
    } else {
        print_info(&idx, &a.index);
        for (f, rows) in &damaged {
            let shown: Vec<String> = rows.iter().take(10).map(|r| r.to_string()).collect();
            println!(
                "damaged      {} rows of {f} hold NaN or infinity (never returned by queries): {}{}",
                rows.len(),
                shown.join(", "),
                if rows.len() > 10 { ", …" } else { "" }
            );
        }
        match &changed {
            Some(c) if c.is_empty() => println!(
                "verified     {} files match the SHA-256 recorded at ingest",
                m.files.len()
            ),
            Some(c) => c.iter().for_each(|c| println!("changed      {c}")),
            None => {}
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(partlens::Error::corrupt(
            &a.index,
            "damaged: see the damaged/changed lines above; rebuild the index with ingest --overwrite",
        ))
    }
}

fn print_info(idx: &IndexDir, path: &std::path::Path) {
    let m = idx.manifest();
    println!("index        {}", path.display());
    println!(
        "encoder      {} ({}), sha256 {}…, ran on {}",
        m.encoder.spec.name,
        m.encoder.file,
        &m.encoder.sha256[..12.min(m.encoder.sha256.len())],
        m.encoder.provider
    );
    let dims: Vec<String> = m
        .encoder
        .dims
        .iter()
        .map(|(k, v)| format!("{k} {v}-d"))
        .collect();
    println!("features     {}", dims.join(", "));
    println!(
        "dataset      {} ({}; splits {})",
        m.dataset.path,
        m.dataset.format,
        m.dataset.splits.join(", ")
    );
    println!(
        "regions      {} ({} parts, {} objects) from {} images; {} inputs skipped",
        m.counts.regions,
        m.counts.parts,
        m.counts.objects,
        m.counts.images,
        m.skipped.len()
    );
    println!(
        "settings     min area {} px, margin {}, objects {}, label maps resized: {}",
        m.settings.min_area,
        m.settings.margin,
        m.settings.objects,
        m.settings.resize_labels.as_str()
    );
    if let Some(d) = &m.dense {
        let sets: Vec<String> = [("parts", &d.part_classes), ("objects", &d.object_classes)]
            .iter()
            .filter_map(|(n, c)| c.as_ref().map(|c| format!("{n} ({} classes)", c.len() - 1)))
            .collect();
        println!(
            "dense        {} images, {} cells of {} values ({} px cells, short side {}, stride {}); label maps: {}",
            d.images,
            d.cells,
            d.dim,
            d.cell,
            d.size,
            d.stride,
            if sets.is_empty() { "none".into() } else { sets.join(", ") }
        );
    }
    if let Some(t) = &m.tokens {
        println!(
            "tokens       {} × {} per region, float16 ({:.0} KB per region)",
            t.tokens,
            t.dim,
            (t.tokens * t.dim * 2) as f64 / 1000.0
        );
    }
    let labels = idx.label_counts();
    println!("labels       {} distinct; most frequent:", labels.len());
    for l in labels.iter().take(12) {
        println!("  {:>6}  {:<6} {}", l.regions, l.kind.as_str(), l.label);
    }
    for s in m.skipped.iter().take(20) {
        println!("skipped      {}: {}", s.path, s.reason);
    }
    if m.skipped.len() > 20 {
        println!(
            "skipped      … {} more (--json lists all)",
            m.skipped.len() - 20
        );
    }
}

/// `partlens query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Index directory.
    #[arg(long)]
    pub index: PathBuf,
    /// Image to search with.
    #[arg(long)]
    pub image: PathBuf,
    /// Region of the image, x0,y0,x1,y1 in pixels (default: the whole image); may start
    /// left of or above the image (negative values), the part inside is used.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box,
          allow_hyphen_values = true)]
    pub bbox: Option<PixelBox>,
    /// Number of results.
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Feature to compare: mean, cls or projection.
    #[arg(long, default_value = "mean", value_parser = one_of(&Feature::ALL, Feature::as_str))]
    pub feature: Feature,
    /// Only regions with this label (name or id).
    #[arg(long)]
    pub label: Option<String>,
    /// Only regions of this object class (name or id).
    #[arg(long)]
    pub object: Option<String>,
    /// Only `part` or `object` regions.
    #[arg(long, value_parser = one_of(&[RegionKind::Part, RegionKind::Object], RegionKind::as_str))]
    pub kind: Option<RegionKind>,
    /// Only this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Exact (brute-force) search instead of HNSW.
    #[arg(long)]
    pub exact: bool,
    /// HNSW search width.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
    /// Use this model file (must be the one the index was built with).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print hits as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_box(s: &str) -> std::result::Result<PixelBox, String> {
    PixelBox::parse(s).ok_or_else(|| {
        format!("{s:?} is not x0,y0,x1,y1 (integers within ±2^40) with x1 > x0 and y1 > y0")
    })
}

pub(super) fn query(a: &QueryArgs, enc: &EncoderOptions) -> Result<()> {
    let engine = QueryEngine::open_with_model(&a.index, a.model.as_deref(), enc)?;
    let opts = SearchOptions {
        k: a.k,
        feature: a.feature,
        exact: a.exact,
        ef: a.ef,
        exact_below: partlens::query::EXACT_BELOW,
        label: a.label.clone(),
        kind: a.kind,
        split: a.split.clone(),
        object: a.object.clone(),
    };
    let hits = engine.search_image_file(&a.image, a.bbox, &opts)?;
    let filtered = a.label.is_some() || a.object.is_some() || a.split.is_some() || a.kind.is_some();
    if hits.is_empty() && filtered {
        eprintln!(
            "no region matches all the filters together (each matches some regions on its own)"
        );
    }
    let damaged = engine.damaged_rows(a.feature);
    if !damaged.is_empty() {
        eprintln!(
            "warning: {} stored {} rows hold NaN or infinity and were left out (damaged file; \
             `partlens info --verify {}` lists them)",
            damaged.len(),
            a.feature,
            a.index.display()
        );
    }
    if a.json {
        print::json(&hits)
    } else {
        print::hits(&hits);
        Ok(())
    }
}
