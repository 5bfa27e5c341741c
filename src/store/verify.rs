//! `partlens verify INDEX`: every segment checked against the manifest, everything damaged
//! named. Unlike [`IndexDir::open`](super::IndexDir::open), which stops at the first problem,
//! this reads the manifest and then checks each segment on its own: each listed file's
//! presence, length and SHA-256 (recorded at commit), the row counts of its Parquet file and
//! matrices against the manifest, its graphs (every byte validated), and the rows of its raw
//! features holding NaN or infinity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::{FileRecord, Manifest, SegmentInfo};
use super::{feature_path, unit_path, NpyMatrix, SEGMENT_REGIONS};
use crate::encoder::Feature;
use crate::error::Result;

/// What `verify` found in one segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentCheck {
    /// Segment name (`""` for an index of schema 1 or 2, which is one segment).
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Regions the manifest lists for it.
    pub regions: u64,
    /// Files checked.
    pub files: usize,
    /// What is damaged, each naming the file (empty: the segment is sound).
    pub problems: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The index.
    pub path: PathBuf,
    /// Per segment.
    pub segments: Vec<SegmentCheck>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn ok(&self) -> bool {
        self.segments.iter().all(|s| s.problems.is_empty())
    }
}

/// Checks every segment of the index at `path` (see the module doc). An unreadable manifest
/// is an error (nothing can be checked without it); damage inside segments is reported.
pub fn verify(path: &Path) -> Result<VerifyReport> {
    let m = Manifest::read(path)?;
    let mut segments = Vec::new();
    if m.schema_version >= 3 {
        for s in &m.segments {
            segments.push(check_segment(
                &m,
                s,
                &path.join(s.dir()),
                &[SEGMENT_REGIONS],
            ));
        }
    } else {
        let one = super::legacy_segment(&m);
        let shards: Vec<&str> = m.shards.iter().map(String::as_str).collect();
        segments.push(check_segment(&m, &one, path, &shards));
    }
    Ok(VerifyReport {
        path: path.to_path_buf(),
        segments,
    })
}

/// Each file of `files` (relative to `dir`) that is missing, has another length or another
/// SHA-256 than recorded at commit, as `shown(name): what`.
pub(crate) fn check_files(
    dir: &Path,
    files: &BTreeMap<String, FileRecord>,
    shown: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, rec) in files {
        let p = dir.join(rel);
        match std::fs::metadata(&p) {
            Err(_) => problems.push(format!("{}: missing", shown(rel))),
            Ok(md) if md.len() != rec.bytes => problems.push(format!(
                "{}: {} bytes, {} recorded at commit (truncated or replaced)",
                shown(rel),
                md.len(),
                rec.bytes
            )),
            Ok(_) => match crate::encoder::sha256_file(&p) {
                Ok(h) if h == rec.sha256 => {}
                Ok(h) => problems.push(format!(
                    "{}: SHA-256 {h} ≠ {} recorded at commit (the file changed)",
                    shown(rel),
                    rec.sha256
                )),
                Err(e) => problems.push(format!("{}: {e}", shown(rel))),
            },
        }
    }
    problems
}

fn check_segment(m: &Manifest, s: &SegmentInfo, dir: &Path, parquet: &[&str]) -> SegmentCheck {
    let mut problems = Vec::new();
    let shown = |rel: &str| {
        if s.name.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", s.dir())
        }
    };
    problems.extend(check_files(dir, &s.files, &shown));
    let n = s.counts.regions as usize;
    let mut rows = 0usize;
    for rel in parquet {
        match super::parquet::count_rows(&dir.join(rel)) {
            Ok(r) => rows += r as usize,
            Err(e) => problems.push(format!("{}: {e}", shown(rel))),
        }
    }
    if rows != n && problems.is_empty() {
        problems.push(format!(
            "{}: {rows} rows, the manifest lists {n} regions",
            shown(parquet.first().copied().unwrap_or(SEGMENT_REGIONS))
        ));
    }
    for name in &m.features {
        let Some(f) = Feature::parse(name) else {
            continue;
        };
        let dim = m.encoder.dims.get(name).copied().unwrap_or(0);
        let mut paths = vec![feature_path(dir, f)];
        if m.schema_version >= 2 {
            paths.push(unit_path(dir, f));
        }
        for (i, p) in paths.iter().enumerate() {
            let rel = p.strip_prefix(dir).unwrap_or(p).display().to_string();
            match NpyMatrix::open(p) {
                Ok(x) if x.rows() != n || x.cols() != dim => problems.push(format!(
                    "{}: {} × {} matrix, the manifest says {n} × {dim}",
                    shown(&rel),
                    x.rows(),
                    x.cols()
                )),
                Ok(x) if i == 0 => {
                    let bad = crate::index::nonfinite_rows(x.as_slice(), x.cols());
                    if !bad.is_empty() {
                        problems.push(format!(
                            "{}: {} rows hold NaN or infinity (first: region {})",
                            shown(&rel),
                            bad.len(),
                            s.first_id as usize + bad[0]
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: {e}", shown(&rel))),
            }
        }
        if m.schema_version >= 2 {
            if let Some(h) = m.hnsw.get(name) {
                let rel = h.graph_file();
                match crate::index::GraphFile::open(dir.join(&rel)) {
                    Ok(g) if g.header().n != n || g.header().dim != dim => problems.push(format!(
                        "{}: a graph of {} × {}, the segment holds {n} × {dim}",
                        shown(&rel),
                        g.header().n,
                        g.header().dim
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{}: {e}", shown(&rel))),
                }
            }
        }
    }
    problems.dedup();
    SegmentCheck {
        name: s.name.clone(),
        dir: dir.to_path_buf(),
        regions: s.counts.regions,
        files: s.files.len(),
        problems,
    }
}
