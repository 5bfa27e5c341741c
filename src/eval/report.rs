//! The paper's comparison at a glance: for each index (one encoder each), part and object
//! retrieval mAP, linear-probe top-1 and k-NN top-1, per feature the index has. Each result
//! is cached as JSON inside its index (`evals/<task>-<kind>-<feature>.json`, keyed by the
//! settings and the feature file that made it), so a report re-runs only what is missing.
//! Output: `report.md`, `report.json` and a standalone `report.html` (inline SVG charts, no
//! external assets).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chart::{grouped_bars, Series, OBJECT_COLOR, PART_COLOR};
use super::knn::{knn, KnnOptions};
use super::linear::{classify, LinearOptions};
use super::retrieval::{retrieval, RetrievalOptions};
use super::Selection;
use crate::encoder::Feature;
use crate::error::{Error, IoContext, Result};
use crate::region::RegionKind;
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

/// A finished report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every cell.
    pub cells: Vec<Cell>,
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

/// What identifies the data a result was computed from: the manifest's creation time and
/// counts, and the feature file's recorded SHA-256.
fn identity(index: &IndexDir, f: Feature) -> serde_json::Value {
    let m = index.manifest();
    let file = format!("features/{}.npy", f.as_str());
    serde_json::json!({
        "created_unix": m.created_unix,
        "regions": m.counts.regions,
        "sha256": m.files.get(&file).map(|r| r.sha256.clone()),
    })
}

fn json_err(e: serde_json::Error) -> Error {
    Error::InvalidArgument(format!("JSON: {e}"))
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
    let encoder = Path::new(&index.manifest().encoder.file)
        .file_name()
        .map_or_else(|| "?".into(), |s| s.to_string_lossy().into_owned());
    let mut out = Cell {
        index: name.into(),
        encoder,
        feature: sel.feature,
        task,
        kind: sel.kind,
        value: None,
        note: None,
        cached: false,
        detail: None,
    };
    if !opts.refresh {
        let hit = crate::files::read_limited(&file, 256 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.key == key);
        if let Some(c) = hit {
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
    let (value, note, result) = match run {
        Ok((v, w, r)) => (v, (!w.is_empty()).then(|| w.join("; ")), r),
        // A task that cannot run on this index (no object regions, one class, …) is a cell
        // with its reason; a damaged index stops the report.
        Err(e @ Error::InvalidArgument(_)) => (None, Some(e.to_string()), serde_json::Value::Null),
        Err(e) => return Err(e),
    };
    out.value = value;
    out.note = note.clone();
    let cached = Cached {
        key,
        value,
        note,
        result,
    };
    let write = || -> Result<()> {
        std::fs::create_dir_all(&dir).at(&dir)?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cached).map_err(json_err)?).at(&tmp)?;
        std::fs::rename(&tmp, &file).at(&file)
    };
    match write() {
        Ok(()) => out.detail = Some(file),
        Err(e) => warnings.push(format!("{name}: result not cached ({e})")),
    }
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
    }
    std::fs::create_dir_all(out).at(out)?;
    let md = markdown(&cells);
    let html = html(&cells, &md)?;
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

/// The Markdown table (also embedded in the HTML page).
pub fn markdown(cells: &[Cell]) -> String {
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
                let text = match c.and_then(|c| c.value) {
                    Some(v) => format!("{v:.1}"),
                    None => "n/a".into(),
                };
                let mark = match c.and_then(|c| c.note.as_ref()) {
                    Some(n) => {
                        notes.push(format!(
                            "{index} / {f} / {} {}s: {n}",
                            t.as_str(),
                            k.as_str()
                        ));
                        format!(" [{}]", notes.len())
                    }
                    None => String::new(),
                };
                s.push_str(&format!(" {text}{mark} |"));
            }
        }
        s.push('\n');
    }
    s.push_str(
        "\nMetrics: retrieval = mAP over classes (scikit-learn AP per query, each region \
                against all regions of its kind, itself included); linear = top-1 of the linear \
                probe's chosen head on the evaluation split; knn = top-1 of DINO's weighted \
                20-NN (T = 0.07).\n",
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

/// The standalone page: one chart per task, then the table.
fn html(cells: &[Cell], md: &str) -> Result<String> {
    let gs = groups(cells);
    let labels: Vec<String> = gs
        .iter()
        .map(|(i, f)| format!("{i} · {}", f.as_str()))
        .collect();
    let mut body = String::new();
    for t in Task::ALL {
        let series: Vec<Series> = [
            (RegionKind::Part, "parts", PART_COLOR),
            (RegionKind::Object, "objects", OBJECT_COLOR),
        ]
        .into_iter()
        .map(|(k, name, color)| Series {
            name: name.into(),
            color,
            values: gs
                .iter()
                .map(|(i, f)| value(cells, i, *f, t, k).and_then(|c| c.value))
                .collect(),
        })
        .collect();
        body.push_str("<figure>");
        body.push_str(&grouped_bars(t.metric(), "%", &labels, &series)?);
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
                let text = c
                    .and_then(|c| c.value)
                    .map_or("n/a".to_string(), |v| format!("{v:.1}"));
                let title = c.and_then(|c| c.note.clone()).unwrap_or_default();
                table.push_str(&format!(
                    "<td title=\"{}\">{}{}</td>",
                    escape(&title),
                    text,
                    if title.is_empty() { "" } else { " *" }
                ));
            }
        }
        table.push_str("</tr>");
    }
    table.push_str("</tbody></table>");
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
         pre{{white-space:pre-wrap;max-width:70em}}\
         </style></head><body><h1>partlens report</h1>\
         <p>Does the encoder understand parts, or only whole objects? Parts (blue) next to \
         objects (orange), per encoder and feature. Cells marked * have notes (hover).</p>\n\
         {body}{table}{notes}</body></html>\n"
    ))
}
