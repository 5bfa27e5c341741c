//! The paper's comparison at a glance: for each index (one encoder each), part and object
//! retrieval mAP, linear-probe top-1 and k-NN top-1, per feature the index has; and, per index
//! with dense features, the segmentation probe's part and object mIoU (the dense grids come
//! from the encoder's token grid, so segmentation does not depend on the feature). Each result
//! is cached as JSON inside its index (`evals/<task>-<kind>-<feature>.json`, or
//! `evals/segment-<parts|objects>.json`, keyed by the settings and the data file that made
//! it), so a report re-runs only what is missing. Output: `report.md`, `report.json` and a
//! standalone `report.html` (inline SVG charts, no external assets).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chart::{grouped_bars, Series, OBJECT_COLOR, PART_COLOR};
use super::knn::{knn, KnnOptions};
use super::linear::{classify, LinearOptions};
use super::retrieval::{retrieval, RetrievalOptions};
use super::segment::{segment, SegmentOptions, SegmentOutputs};
use super::Selection;
use crate::encoder::Feature;
use crate::error::{Error, IoContext, Result};
use crate::region::RegionKind;
use crate::store::dense::{LabelSet, GRIDS_FILE, IMAGES_FILE};
use crate::store::IndexDir;

/// The folder inside an index that holds cached evaluation results.
pub const EVALS_DIR: &str = "evals";

/// Part of every cache key: raised whenever a protocol's arithmetic or defaults change, so
/// results computed by an older partlens are not reused.
pub const PROTOCOL_VERSION: u32 = 2;

/// The three tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Retrieval mAP.
    Retrieval,
    /// Linear-probe top-1.
    Linear,
    /// k-NN top-1.
    Knn,
}

impl Task {
    /// All tasks, in report order.
    pub const ALL: [Task; 3] = [Task::Retrieval, Task::Linear, Task::Knn];

    /// Short name (file names, JSON).
    pub fn as_str(&self) -> &'static str {
        match self {
            Task::Retrieval => "retrieval",
            Task::Linear => "linear",
            Task::Knn => "knn",
        }
    }

    /// What the number is.
    pub fn metric(&self) -> &'static str {
        match self {
            Task::Retrieval => "retrieval mAP (%)",
            Task::Linear => "linear probe top-1 (%)",
            Task::Knn => "k-NN top-1 (%)",
        }
    }
}

/// Settings of a report (each task's own).
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Retrieval settings.
    pub retrieval: RetrievalOptions,
    /// Linear-probe settings.
    pub linear: LinearOptions,
    /// k-NN settings.
    pub knn: KnnOptions,
    /// Segmentation-probe settings (`labels` is ignored: every index with dense features is
    /// scored on its part and its object label maps).
    pub segment: SegmentOptions,
    /// Only these features (default: every feature each index has).
    pub features: Option<Vec<Feature>>,
    /// Recompute even when a cached result matches.
    pub refresh: bool,
}

/// One cell of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Index name (its folder name unless given).
    pub index: String,
    /// Encoder (the model file's name).
    pub encoder: String,
    /// Feature.
    pub feature: Feature,
    /// Task.
    pub task: Task,
    /// Parts or objects.
    pub kind: RegionKind,
    /// The number, percent (`None` when the task could not run: see `note`).
    pub value: Option<f64>,
    /// Why there is no value, or warnings from the run.
    pub note: Option<String>,
    /// Whether the value came from the index's cache.
    pub cached: bool,
    /// Where the full result is (the cache file).
    pub detail: Option<PathBuf>,
}

/// One index's segmentation mIoU for one label set. Per index, not per feature: the dense
/// grids come from the encoder's token grid whatever the feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentCell {
    /// Index name.
    pub index: String,
    /// Encoder (the model file's name).
    pub encoder: String,
    /// Part or object label maps.
    pub labels: LabelSet,
    /// mIoU, percent (`None` when the probe could not run: see `note`).
    pub value: Option<f64>,
    /// Why there is no value (no dense features, no label maps of this set, …), or warnings
    /// from the run.
    pub note: Option<String>,
    /// Whether the value came from the index's cache.
    pub cached: bool,
    /// Where the full result is (the cache file).
    pub detail: Option<PathBuf>,
}

/// A finished report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every cell.
    pub cells: Vec<Cell>,
    /// Segmentation mIoU per index: parts, then objects.
    #[serde(default)]
    pub segmentation: Vec<SegmentCell>,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Warnings about the run itself (a cache that could not be written, …).
    pub warnings: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    key: serde_json::Value,
    value: Option<f64>,
    note: Option<String>,
    result: serde_json::Value,
}

/// The SHA-256 recorded for file `rel` of every segment, in order (one for an index of
/// schema 2).
fn segment_shas(index: &IndexDir, rel: &str) -> Vec<Option<String>> {
    index
        .segments()
        .iter()
        .map(|s| s.files().get(rel).map(|r| r.sha256.clone()))
        .collect()
}

/// What identifies the data a result was computed from: the manifest's creation time and
/// counts, and the feature file's recorded SHA-256 in every segment.
fn identity(index: &IndexDir, f: Feature) -> serde_json::Value {
    let m = index.manifest();
    serde_json::json!({
        "created_unix": m.created_unix,
        "regions": m.counts.regions,
        "sha256": segment_shas(index, &format!("features/{}.npy", f.as_str())),
    })
}

/// What identifies the dense data a segmentation result was computed from: the manifest's
/// creation time, the grid's size, and the recorded SHA-256 of every segment's grid file and
/// image table (which names every image's label maps).
fn dense_identity(index: &IndexDir) -> serde_json::Value {
    let m = index.manifest();
    serde_json::json!({
        "created_unix": m.created_unix,
        "images": m.dense.as_ref().map(|d| d.images),
        "cells": m.dense.as_ref().map(|d| d.cells),
        "grids_sha256": segment_shas(index, GRIDS_FILE),
        "images_sha256": segment_shas(index, IMAGES_FILE),
    })
}

fn json_err(e: serde_json::Error) -> Error {
    Error::InvalidArgument(format!("JSON: {e}"))
}

/// The model file's name.
/// The model file's name, with its pretraining method and precision when the spec records them
/// (`dino.onnx (dino, fp16)`): rows of seven methods' indexes say which is which.
fn encoder_name(index: &IndexDir) -> String {
    let e = &index.manifest().encoder;
    let file = Path::new(&e.file)
        .file_name()
        .map_or_else(|| "?".into(), |s| s.to_string_lossy().into_owned());
    let mut tags: Vec<&str> = e.spec.method.iter().map(String::as_str).collect();
    if e.spec.precision == crate::encoder::Precision::Fp16 {
        tags.push("fp16");
    }
    if tags.is_empty() {
        file
    } else {
        format!("{file} ({})", tags.join(", "))
    }
}

/// The cached result in `file`, if its key is `key`.
/// A task's outcome as its cell's (value, note, cache file), cached: a task that cannot run on
/// this index (no object regions, one class, no labelled pixel, …) is a cell with its reason;
/// a damaged index stops the report.
fn settle(
    run: Result<(Option<f64>, Vec<String>, serde_json::Value)>,
    key: serde_json::Value,
    file: &Path,
    name: &str,
    warnings: &mut Vec<String>,
) -> Result<(Option<f64>, Option<String>, Option<PathBuf>)> {
    let (value, note, result) = match run {
        Ok((v, w, r)) => (v, (!w.is_empty()).then(|| w.join("; ")), r),
        Err(e @ Error::InvalidArgument(_)) => (None, Some(e.to_string()), serde_json::Value::Null),
        Err(e) => return Err(e),
    };
    let cached = Cached {
        key,
        value,
        note: note.clone(),
        result,
    };
    Ok((value, note, store(file, &cached, name, warnings)))
}

fn lookup(file: &Path, key: &serde_json::Value) -> Option<Cached> {
    crate::files::read_limited(file, 256 << 20)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
        .filter(|c| &c.key == key)
}

/// Writes `cached` to `file` (via a temporary file); a failure is a warning, not an error.
fn store(file: &Path, cached: &Cached, name: &str, warnings: &mut Vec<String>) -> Option<PathBuf> {
    let write = || -> Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).at(dir)?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(cached).map_err(json_err)?).at(&tmp)?;
        std::fs::rename(&tmp, file).at(file)
    };
    match write() {
        Ok(()) => Some(file.to_path_buf()),
        Err(e) => {
            warnings.push(format!("{name}: result not cached ({e})"));
            None
        }
    }
}

/// Runs one task (or takes it from the cache).
fn cell(
    index: &IndexDir,
    name: &str,
    task: Task,
    sel: &Selection,
    opts: &ReportOptions,
    warnings: &mut Vec<String>,
) -> Result<Cell> {
    let settings = match task {
        Task::Retrieval => serde_json::to_value(&opts.retrieval),
        Task::Linear => serde_json::to_value(&opts.linear),
        Task::Knn => serde_json::to_value(&opts.knn),
    }
    .map_err(json_err)?;
    let key = serde_json::json!({
        "partlens": env!("CARGO_PKG_VERSION"),
        "protocol": PROTOCOL_VERSION,
        "task": task.as_str(),
        "selection": sel,
        "settings": settings,
        "data": identity(index, sel.feature),
    });
    let dir = index.path().join(EVALS_DIR);
    let file = dir.join(format!(
        "{}-{}-{}.json",
        task.as_str(),
        sel.kind.as_str(),
        sel.feature.as_str()
    ));
    let mut out = Cell {
        index: name.into(),
        encoder: encoder_name(index),
        feature: sel.feature,
        task,
        kind: sel.kind,
        value: None,
        note: None,
        cached: false,
        detail: None,
    };
    if !opts.refresh {
        if let Some(c) = lookup(&file, &key) {
            out.value = c.value;
            out.note = c.note;
            out.cached = true;
            out.detail = Some(file);
            return Ok(out);
        }
    }
    tracing::info!(
        "{name}: {} of {}s, feature {}",
        task.as_str(),
        sel.kind.as_str(),
        sel.feature
    );
    let run: Result<(Option<f64>, Vec<String>, serde_json::Value)> = match task {
        Task::Retrieval => retrieval(index, sel, &opts.retrieval).and_then(|r| {
            Ok((
                r.map,
                r.warnings.clone(),
                serde_json::to_value(&r).map_err(json_err)?,
            ))
        }),
        Task::Linear => classify(index, sel, &opts.linear).and_then(|(r, _)| {
            Ok((
                Some(r.accuracy.top1),
                r.warnings.clone(),
                serde_json::to_value(&r).map_err(json_err)?,
            ))
        }),
        Task::Knn => knn(index, sel, &opts.knn).and_then(|r| {
            Ok((
                Some(r.accuracy.top1),
                r.warnings.clone(),
                serde_json::to_value(&r).map_err(json_err)?,
            ))
        }),
    };
    (out.value, out.note, out.detail) = settle(run, key, &file, name, warnings)?;
    Ok(out)
}

/// Runs the segmentation probe on one label set of an index (or takes it from the cache).
/// An index without dense features, or without label maps of this set, gets a note instead.
fn segment_cell(
    index: &IndexDir,
    name: &str,
    labels: LabelSet,
    opts: &ReportOptions,
    warnings: &mut Vec<String>,
) -> Result<SegmentCell> {
    let mut out = SegmentCell {
        index: name.into(),
        encoder: encoder_name(index),
        labels,
        value: None,
        note: None,
        cached: false,
        detail: None,
    };
    let Ok(dense) = index.dense() else {
        out.note = Some("no dense features (ingest --dense)".into());
        return Ok(out);
    };
    if dense.classes(labels).is_none() {
        out.note = Some(match labels {
            LabelSet::Parts => "no part label maps".into(),
            LabelSet::Objects => "no object label maps".into(),
        });
        return Ok(out);
    }
    let sopts = SegmentOptions {
        labels,
        ..opts.segment.clone()
    };
    let key = serde_json::json!({
        "partlens": env!("CARGO_PKG_VERSION"),
        "protocol": PROTOCOL_VERSION,
        "task": "segment",
        "settings": serde_json::to_value(&sopts).map_err(json_err)?,
        "data": dense_identity(index),
    });
    let file = index
        .path()
        .join(EVALS_DIR)
        .join(format!("segment-{}.json", labels.as_str()));
    if !opts.refresh {
        if let Some(c) = lookup(&file, &key) {
            out.value = c.value;
            out.note = c.note;
            out.cached = true;
            out.detail = Some(file);
            return Ok(out);
        }
    }
    tracing::info!("{name}: segmentation of {}", labels.as_str());
    let run = segment(index, &sopts, &SegmentOutputs::default()).and_then(|r| {
        Ok((
            r.metrics.miou,
            r.warnings.clone(),
            serde_json::to_value(&r).map_err(json_err)?,
        ))
    });
    (out.value, out.note, out.detail) = settle(run, key, &file, name, warnings)?;
    Ok(out)
}

/// Evaluates every (index, feature, task, kind) and writes the report into `out`.
/// `indexes` are (name, path) pairs; names must be unique.
pub fn report(indexes: &[(String, PathBuf)], opts: &ReportOptions, out: &Path) -> Result<Report> {
    if indexes.is_empty() {
        return Err(Error::InvalidArgument(
            "a report needs at least one --index".into(),
        ));
    }
    let mut names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!(
            "two indexes are named {:?}: name them with --index NAME=PATH",
            w[0]
        )));
    }
    let mut cells = Vec::new();
    let mut segmentation = Vec::new();
    let mut warnings = Vec::new();
    for (name, path) in indexes {
        let index = IndexDir::open(path)?;
        let features: Vec<Feature> = match &opts.features {
            Some(fs) => fs.clone(),
            None => index.feature_names(),
        };
        for &feature in &features {
            for task in Task::ALL {
                for kind in [RegionKind::Part, RegionKind::Object] {
                    let sel = Selection {
                        feature,
                        kind,
                        split: None,
                    };
                    cells.push(cell(&index, name, task, &sel, opts, &mut warnings)?);
                }
            }
        }
        for labels in LABEL_SETS {
            segmentation.push(segment_cell(&index, name, labels, opts, &mut warnings)?);
        }
    }
    std::fs::create_dir_all(out).at(out)?;
    let md = markdown(&cells, &segmentation);
    let html = html(&cells, &segmentation, &md)?;
    let mut files = Vec::new();
    let mut put = |file: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(file);
        let tmp = out.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).at(&tmp)?;
        std::fs::rename(&tmp, &p).at(&p)?;
        files.push(p);
        Ok(())
    };
    put("report.md", md.as_bytes())?;
    put("report.html", html.as_bytes())?;
    let report = Report {
        cells,
        segmentation,
        files: Vec::new(),
        warnings,
    };
    put(
        "report.json",
        &serde_json::to_vec_pretty(&report).map_err(json_err)?,
    )?;
    Ok(Report { files, ..report })
}

/// Rows: index × feature; columns: task × (parts, objects).
fn groups(cells: &[Cell]) -> Vec<(String, Feature)> {
    let mut g: Vec<(String, Feature)> = Vec::new();
    for c in cells {
        if !g.iter().any(|(i, f)| *i == c.index && *f == c.feature) {
            g.push((c.index.clone(), c.feature));
        }
    }
    g
}

fn value<'a>(
    cells: &'a [Cell],
    index: &str,
    f: Feature,
    task: Task,
    kind: RegionKind,
) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.index == index && c.feature == f && c.task == task && c.kind == kind)
}

/// The label sets of the segmentation table, in column order.
const LABEL_SETS: [LabelSet; 2] = [LabelSet::Parts, LabelSet::Objects];

/// Indexes that have segmentation cells, in report order.
fn seg_indexes(seg: &[SegmentCell]) -> Vec<(&str, &str)> {
    let mut g: Vec<(&str, &str)> = Vec::new();
    for c in seg {
        if !g.iter().any(|(i, _)| *i == c.index) {
            g.push((&c.index, &c.encoder));
        }
    }
    g
}

fn seg_value<'a>(seg: &'a [SegmentCell], index: &str, labels: LabelSet) -> Option<&'a SegmentCell> {
    seg.iter().find(|c| c.index == index && c.labels == labels)
}

/// The number of `note` in `notes` (1-based), added if new: one note shared by several cells
/// (an index without dense features) is listed once.
fn note_number(notes: &mut Vec<String>, note: String) -> usize {
    match notes.iter().position(|n| *n == note) {
        Some(i) => i + 1,
        None => {
            notes.push(note);
            notes.len()
        }
    }
}

/// "12.3" or "n/a".
fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1}"))
}

/// The Markdown report: the per-feature table, the per-index segmentation table, metrics and
/// notes (also embedded in the HTML page).
pub fn markdown(cells: &[Cell], segmentation: &[SegmentCell]) -> String {
    let mut s = String::from("# partlens report\n\n");
    s.push_str("| index | encoder | feature |");
    for t in Task::ALL {
        s.push_str(&format!(" {} parts | {} objects |", t.as_str(), t.as_str()));
    }
    s.push_str("\n|---|---|---|");
    for _ in Task::ALL {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    let mut notes = Vec::new();
    for (index, f) in groups(cells) {
        let enc = cells
            .iter()
            .find(|c| c.index == index)
            .map_or("", |c| c.encoder.as_str());
        s.push_str(&format!("| {index} | {enc} | {} |", f.as_str()));
        for t in Task::ALL {
            for k in [RegionKind::Part, RegionKind::Object] {
                let c = value(cells, &index, f, t, k);
                let mark = match c.and_then(|c| c.note.as_ref()) {
                    Some(n) => {
                        let text = format!("{index} / {f} / {} {}s: {n}", t.as_str(), k.as_str());
                        format!(" [{}]", note_number(&mut notes, text))
                    }
                    None => String::new(),
                };
                s.push_str(&format!(" {}{mark} |", number(c.and_then(|c| c.value))));
            }
        }
        s.push('\n');
    }
    let seg = seg_indexes(segmentation);
    if !seg.is_empty() {
        s.push_str(
            "\n## Segmentation\n\nOne result per index: the dense grids come from the \
             encoder's token grid, whatever the feature.\n\n\
             | index | encoder | segment mIoU parts | segment mIoU objects |\n\
             |---|---|---:|---:|\n",
        );
        for (index, enc) in seg {
            s.push_str(&format!("| {index} | {enc} |"));
            for labels in LABEL_SETS {
                let c = seg_value(segmentation, index, labels);
                let mark = match c.and_then(|c| c.note.as_ref()) {
                    Some(n) => {
                        let text = format!("{index} / segmentation: {n}");
                        format!(" [{}]", note_number(&mut notes, text))
                    }
                    None => String::new(),
                };
                s.push_str(&format!(" {}{mark} |", number(c.and_then(|c| c.value))));
            }
            s.push('\n');
        }
    }
    s.push_str(
        "\nMetrics: retrieval = mAP over classes (scikit-learn AP per query, each region \
                against all regions of its kind, itself included); linear = top-1 of the linear \
                probe's chosen head on the evaluation split; knn = top-1 of DINO's weighted \
                20-NN (T = 0.07); segment = mmseg's mIoU (background left out, classes never \
                labelled nor predicted skipped) of the segmentation probe's chosen linear 1×1 \
                head on the dense grid, upsampled bilinearly to the label maps, over the \
                evaluation images.\n",
    );
    if !notes.is_empty() {
        s.push_str("\nNotes:\n\n");
        for (i, n) in notes.iter().enumerate() {
            s.push_str(&format!("{}. {}\n", i + 1, n.replace('\n', " ")));
        }
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A table cell with its note as the hover text.
fn html_cell(value: Option<f64>, note: Option<&String>) -> String {
    let title = note.map_or("", |n| n.as_str());
    format!(
        "<td title=\"{}\">{}{}</td>",
        escape(title),
        number(value),
        if title.is_empty() { "" } else { " *" }
    )
}

/// The two series of a chart: parts, objects.
fn part_object_series(values: impl Fn(bool) -> Vec<Option<f64>>) -> Vec<Series> {
    vec![
        Series {
            name: "parts".into(),
            color: PART_COLOR,
            values: values(true),
        },
        Series {
            name: "objects".into(),
            color: OBJECT_COLOR,
            values: values(false),
        },
    ]
}

/// The standalone page: one chart per task (and one for segmentation when an index has a
/// result), then the tables.
fn html(cells: &[Cell], segmentation: &[SegmentCell], md: &str) -> Result<String> {
    let gs = groups(cells);
    let labels: Vec<String> = gs
        .iter()
        .map(|(i, f)| format!("{i} · {}", f.as_str()))
        .collect();
    let mut body = String::new();
    for t in Task::ALL {
        let series = part_object_series(|part| {
            let k = if part {
                RegionKind::Part
            } else {
                RegionKind::Object
            };
            gs.iter()
                .map(|(i, f)| value(cells, i, *f, t, k).and_then(|c| c.value))
                .collect()
        });
        body.push_str("<figure>");
        body.push_str(&grouped_bars(t.metric(), "%", &labels, &series)?);
        body.push_str("</figure>\n");
    }
    let seg = seg_indexes(segmentation);
    if segmentation.iter().any(|c| c.value.is_some()) {
        let names: Vec<String> = seg.iter().map(|(i, _)| i.to_string()).collect();
        let series = part_object_series(|part| {
            let labels = if part {
                LabelSet::Parts
            } else {
                LabelSet::Objects
            };
            seg.iter()
                .map(|(i, _)| seg_value(segmentation, i, labels).and_then(|c| c.value))
                .collect()
        });
        body.push_str("<figure>");
        body.push_str(&grouped_bars(
            "segmentation mIoU (%), per index",
            "%",
            &names,
            &series,
        )?);
        body.push_str("</figure>\n");
    }
    let mut table =
        String::from("<table><thead><tr><th>index</th><th>encoder</th><th>feature</th>");
    for t in Task::ALL {
        table.push_str(&format!(
            "<th>{0} parts</th><th>{0} objects</th>",
            escape(t.as_str())
        ));
    }
    table.push_str("</tr></thead><tbody>");
    for (index, f) in &gs {
        let enc = cells
            .iter()
            .find(|c| &c.index == index)
            .map_or("", |c| c.encoder.as_str());
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(index),
            escape(enc),
            f.as_str()
        ));
        for t in Task::ALL {
            for k in [RegionKind::Part, RegionKind::Object] {
                let c = value(cells, index, *f, t, k);
                table.push_str(&html_cell(
                    c.and_then(|c| c.value),
                    c.and_then(|c| c.note.as_ref()),
                ));
            }
        }
        table.push_str("</tr>");
    }
    table.push_str("</tbody></table>");
    if !seg.is_empty() {
        table.push_str(
            "<h2>Segmentation</h2><p>One result per index: the dense grids come from the \
             encoder's token grid, whatever the feature.</p>\
             <table class=\"seg\"><thead><tr><th>index</th><th>encoder</th>\
             <th>segment mIoU parts</th><th>segment mIoU objects</th></tr></thead><tbody>",
        );
        for (index, enc) in &seg {
            table.push_str(&format!(
                "<tr><td>{}</td><td>{}</td>",
                escape(index),
                escape(enc)
            ));
            for labels in LABEL_SETS {
                let c = seg_value(segmentation, index, labels);
                table.push_str(&html_cell(
                    c.and_then(|c| c.value),
                    c.and_then(|c| c.note.as_ref()),
                ));
            }
            table.push_str("</tr>");
        }
        table.push_str("</tbody></table>");
    }
    let notes: String = md
        .split_once("\nMetrics:")
        .map(|(_, rest)| format!("<pre>Metrics:{}</pre>", escape(rest)))
        .unwrap_or_default();
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>partlens report</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}\
         figure{{display:inline-block;margin:0 1em 1em 0}}\
         table{{border-collapse:collapse;margin-top:1em}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         td:nth-child(-n+3),th:nth-child(-n+3){{text-align:left}}\
         table.seg td:nth-child(3),table.seg th:nth-child(3){{text-align:right}}\
         h2{{font-size:1.2em;margin-top:1.5em}}\
         pre{{white-space:pre-wrap;max-width:70em}}\
         </style></head><body><h1>partlens report</h1>\
         <p>Does the encoder understand parts, or only whole objects? Parts (blue) next to \
         objects (orange), per encoder and feature; segmentation per encoder. Cells marked * \
         have notes (hover).</p>\n\
         {body}{table}{notes}</body></html>\n"
    ))
}
