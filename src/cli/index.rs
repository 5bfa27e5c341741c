//! Commands that read an index: info and query.

use std::path::PathBuf;

use clap::Args;

use super::{one_of, print};
use partlens::encoder::{EncoderOptions, Feature};
use partlens::index::GraphHeader;
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
    // Opening a graph validates every byte of it (every segment's).
    let graphs: Vec<(Feature, std::result::Result<Vec<GraphHeader>, String>)> =
        if idx.needs_upgrade() {
            Vec::new()
        } else {
            idx.feature_names()
                .into_iter()
                .map(|f| {
                    (
                        f,
                        idx.graphs(f)
                            .map(|g| g.iter().map(|g| *g.header()).collect())
                            .map_err(|e| e.to_string()),
                    )
                })
                .collect()
        };
    let labels = idx.label_counts()?;
    let healthy = damaged.is_empty()
        && changed.as_ref().is_none_or(Vec::is_empty)
        && graphs.iter().all(|(_, g)| g.is_ok());
    if a.json {
        let graph_json: std::collections::BTreeMap<&str, serde_json::Value> = graphs
            .iter()
            .map(|(f, g)| {
                let v = match g {
                    Ok(hs) => serde_json::Value::Array(hs.iter().map(|h| serde_json::json!({
                        "points": h.n, "dims": h.dim, "m": h.m, "m0": h.m0,
                        "ef_construction": h.ef_construction, "layers": h.layers,
                        "layer_nodes": &h.layer_nodes[..h.layers], "entry": h.entry, "seed": h.seed,
                    })).collect()),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                (f.as_str(), v)
            })
            .collect();
        print::json(&serde_json::json!({
            "manifest": m,
            "labels": labels,
            "segments": segment_rows(&idx),
            "graphs": graph_json,
            "needs_upgrade": idx.needs_upgrade(),
            "changed_files": changed,
            "damaged_rows": damaged.iter().map(|(f, r)| (f.as_str(), r)).collect::<std::collections::BTreeMap<_, _>>(),
        }))?;
    } else {
        print_info(&idx, &a.index, &graphs, &labels);
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
                idx.segments()
                    .iter()
                    .map(|s| s.files().len())
                    .sum::<usize>()
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

/// Bytes of the files a segment lists.
fn segment_bytes(s: &partlens::store::Segment) -> u64 {
    s.files().values().map(|r| r.bytes).sum()
}

/// Per segment: name, ids, counts, size and origin (for `info --json`).
fn segment_rows(idx: &IndexDir) -> Vec<serde_json::Value> {
    let infos = &idx.manifest().segments;
    idx.segments()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let info = infos.get(i);
            serde_json::json!({
                "name": s.name(),
                "first_id": s.first_id(),
                "regions": s.len(),
                "bytes": segment_bytes(s),
                "origin": info.and_then(|x| x.origin.as_ref()),
                "counts": info.map(|x| &x.counts),
            })
        })
        .collect()
}

fn print_info(
    idx: &IndexDir,
    path: &std::path::Path,
    graphs: &[(Feature, std::result::Result<Vec<GraphHeader>, String>)],
    labels: &[partlens::store::LabelCount],
) {
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
    print_segments(idx);
    print_graphs(idx, path, graphs);
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

/// One line per segment (schema 3): ids, counts, size, shard of origin.
fn print_segments(idx: &IndexDir) {
    let m = idx.manifest();
    if m.schema_version < 3 {
        println!(
            "segments     one (schema {}: the whole folder)",
            m.schema_version
        );
        return;
    }
    let total: u64 = idx.segments().iter().map(segment_bytes).sum();
    println!(
        "segments     {} ({:.1} MB in all)",
        m.segments.len(),
        total as f64 / 1e6
    );
    for (s, info) in idx.segments().iter().zip(&m.segments) {
        let c = &info.counts;
        let origin = info
            .origin
            .as_ref()
            .map(|o| {
                let mut parts = Vec::new();
                if let Some(sh) = &o.shard {
                    parts.push(format!("shard {sh}"));
                }
                if let Some(i) = &o.index {
                    parts.push(format!(
                        "from {}{}",
                        i,
                        o.segment
                            .as_ref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    ));
                }
                format!("; {}", parts.join(" "))
            })
            .unwrap_or_default();
        println!(
            "  {}  ids {}..{}: {} regions ({} parts, {} objects) from {} images, {:.1} MB{origin}",
            s.name(),
            s.first_id(),
            s.first_id() + s.len(),
            c.regions,
            c.parts,
            c.objects,
            c.images,
            segment_bytes(s) as f64 / 1e6
        );
    }
}

/// One line per HNSW graph: its parameters from the files' headers (every segment's), or
/// what is wrong with one.
fn print_graphs(
    idx: &IndexDir,
    path: &std::path::Path,
    graphs: &[(Feature, std::result::Result<Vec<GraphHeader>, String>)],
) {
    if idx.needs_upgrade() {
        println!(
            "graphs       hnsw_rs dumps (schema {}): queries need `partlens upgrade {}` first",
            idx.manifest().schema_version,
            path.display()
        );
        return;
    }
    for (f, g) in graphs {
        let info = idx.manifest().hnsw.get(f.as_str());
        match g {
            Ok(hs) if hs.len() == 1 => {
                let h = &hs[0];
                let sizes: Vec<String> = h.layer_nodes[..h.layers]
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                println!(
                    "graph        {f}: M {} ({} on layer 0), ef_construction {}, {} layers ({} nodes), built by {}, seed {:#x}",
                    h.m,
                    h.m0,
                    h.ef_construction,
                    h.layers,
                    sizes.join(" / "),
                    info.and_then(|i| i.builder.as_deref()).unwrap_or("?"),
                    h.seed
                );
            }
            Ok(hs) => {
                let (m, m0, efc) = hs
                    .first()
                    .map_or((0, 0, 0), |h| (h.m, h.m0, h.ef_construction));
                let layers: Vec<String> = hs.iter().map(|h| h.layers.to_string()).collect();
                println!(
                    "graph        {f}: one per segment ({} graphs, {} nodes; layers {}), M {m} ({m0} on layer 0), ef_construction {efc}, built by {}",
                    hs.len(),
                    hs.iter().map(|h| h.n).sum::<usize>(),
                    layers.join(", "),
                    info.and_then(|i| i.builder.as_deref()).unwrap_or("?"),
                );
            }
            Err(e) => println!("damaged      graph of {f}: {e}"),
        }
    }
}

/// `partlens upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Index directory.
    pub index: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn upgrade(a: &UpgradeArgs) -> Result<()> {
    let r = partlens::store::upgrade::upgrade(&a.index)?;
    if a.json {
        return print::json(&r);
    }
    if r.from == r.to {
        println!(
            "{} is already schema {}: nothing to do",
            a.index.display(),
            r.to
        );
    } else {
        println!(
            "upgraded {} from schema {} to {} in {:.1} s: wrote {}; removed {}",
            a.index.display(),
            r.from,
            r.to,
            r.seconds,
            r.written.join(", "),
            if r.removed.is_empty() {
                "nothing".into()
            } else {
                r.removed.join(", ")
            }
        );
    }
    Ok(())
}

/// `partlens query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Index directory.
    #[arg(long)]
    pub index: PathBuf,
    /// Image to search with.
    #[arg(long, required_unless_present = "like", conflicts_with = "like")]
    pub image: Option<PathBuf>,
    /// "More like this": search with stored region ID's own vector instead of an image (no
    /// encoder run; works on indexes imported without a model).
    #[arg(long, value_name = "ID")]
    pub like: Option<usize>,
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
    /// HNSW search width: more is better recall and slower (raised to -k; `partlens info`
    /// shows the graph's own parameters).
    #[arg(long, default_value_t = partlens::query::SearchOptions::default().ef)]
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
    let hits = match (&a.image, a.like) {
        (_, Some(id)) => engine.similar(id, &opts)?,
        (Some(image), None) => engine.search_image_file(image, a.bbox, &opts)?,
        (None, None) => unreachable!("clap requires --image or --like"),
    };
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
