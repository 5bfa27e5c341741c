//! `partlens upgrade INDEX`: converts an index of schema 1 (graphs as hnsw_rs dumps, which
//! cannot be validated and which the search no longer reads) in place to schema 2, without
//! re-embedding: each feature's unit-norm rows are written from its `.npy`, a graph in
//! partlens's format is built over them, and the manifest is replaced atomically.
//!
//! Crash safety: the new files get names schema 1 does not use (`features/<f>.unit.npy`,
//! `hnsw/<f>.graph`), so until the manifest is replaced the index is still a complete schema-1
//! index (a rerun overwrites the half-written files); after it, a complete schema-2 index. The
//! hnsw_rs dumps are deleted last. Existing files are never modified, so a process that has
//! the index open keeps reading what it mapped. The index's lock (the one ingest takes) is
//! held throughout.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::manifest::{FileRecord, SEARCHABLE_SCHEMA_VERSION as SCHEMA_VERSION};
use super::{unit_file, IndexDir};
use crate::error::{Error, Result};
use crate::files::PathLock;
use crate::index::{GraphBuilder, DEFAULT_SEED};

/// What `upgrade` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpgradeReport {
    /// Schema version found.
    pub from: u32,
    /// Schema version now.
    pub to: u32,
    /// Files written (relative to the index).
    pub written: Vec<String>,
    /// Files removed.
    pub removed: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Upgrades the index at `path` to the current schema; an index already current is left as
/// it is (`from == to`, nothing written).
pub fn upgrade(path: &Path) -> Result<UpgradeReport> {
    let start = Instant::now();
    let lock = PathLock::try_acquire(path)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is locked by another partlens process (an ingest or upgrade); try again when it \
             has finished",
            path.display()
        ))
    })?;
    let idx = IndexDir::open(path)?;
    let mut m = idx.manifest().clone();
    let from = m.schema_version;
    if !idx.needs_upgrade() {
        lock.release();
        return Ok(UpgradeReport {
            from,
            to: from,
            written: Vec::new(),
            removed: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let dims = m.feature_dims();
    // Keep the parameters the graphs were built with.
    let params = m.hnsw_params();
    drop(idx);
    let old_dumps: Vec<String> = m
        .hnsw
        .values()
        .flat_map(|h| ["graph", "data"].map(|e| format!("hnsw/{}.hnsw.{e}", h.basename)))
        .collect();
    let hnsw =
        crate::ingest::build_graphs(path, &dims, params, DEFAULT_SEED, GraphBuilder::Partlens)?;
    let mut written = Vec::new();
    for f in dims.keys() {
        let info = hnsw
            .get(f.as_str())
            .ok_or_else(|| Error::InvalidArgument(format!("no graph was built for {f}")))?;
        for rel in [unit_file(*f), info.graph_file()] {
            m.files
                .insert(rel.clone(), FileRecord::of(&path.join(&rel))?);
            written.push(rel);
        }
    }
    m.files.retain(|k, _| !old_dumps.contains(k));
    m.hnsw = hnsw;
    m.schema_version = SCHEMA_VERSION;
    m.write_atomic(path)?;
    let mut removed = Vec::new();
    for rel in old_dumps {
        if std::fs::remove_file(path.join(&rel)).is_ok() {
            removed.push(rel);
        }
    }
    crate::files::sync_dir(&path.join("hnsw"));
    lock.release();
    Ok(UpgradeReport {
        from,
        to: SCHEMA_VERSION,
        written,
        removed,
        seconds: start.elapsed().as_secs_f64(),
    })
}
