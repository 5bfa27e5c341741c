//! The paper's part-retrieval protocol: every selected region is a query against all of
//! them, itself included, ranked by cosine similarity; a region is relevant when it has the
//! query's label. Reported: the mean over queries of scikit-learn's average precision, mAP
//! (the mean over classes of each class's mean AP), per-class AP, and recall@1/5/10 — the
//! share of queries with a relevant region among their k nearest *others* (the query itself
//! excluded, as a hit on itself would say nothing).
//!
//! Exact and streaming: queries are grouped by class; a group's scores against its own class
//! are kept (they are the positives, which fix the thresholds), then every other region is
//! scored a tile at a time and only counted. Memory is the budget, whatever N is: no N × N
//! matrix, no copy of the feature matrix. `--approx` ranks with the HNSW graph instead, which
//! gives recall@k but not AP (that needs the full ranking), and measures the graph's recall
//! against the exact neighbours on a sample of queries.

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ap::Thresholds;
use super::kernel::{inv_norm, scan, unit_rows};
use super::{shorten, LabeledRows, Selection};
use crate::error::{Error, Result};
use crate::store::IndexDir;
use crate::store::Rows;

/// The recall cut-offs reported.
pub const RECALL_AT: [usize; 3] = [1, 5, 10];

/// Settings of a retrieval evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalOptions {
    /// Classes with fewer members are not used as queries (they stay in the gallery as
    /// distractors). With the default, 2, a class of one region — whose only query would find
    /// itself first, AP 1 by construction — is left out and named in a warning; 1 keeps it, as
    /// a literal reading of the protocol would.
    pub min_members: usize,
    /// Bytes of working memory for scores, all threads together (the mapped features aside).
    pub memory_budget: usize,
    /// Rank with the HNSW graph instead of exactly.
    pub approx: Option<ApproxOptions>,
}

impl Default for RetrievalOptions {
    fn default() -> Self {
        RetrievalOptions {
            min_members: 2,
            memory_budget: 256 << 20,
            approx: None,
        }
    }
}

/// Settings of `--approx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproxOptions {
    /// HNSW search width.
    pub ef: usize,
    /// Queries whose exact neighbours are computed to measure the graph's recall.
    pub check_queries: usize,
}

impl Default for ApproxOptions {
    fn default() -> Self {
        ApproxOptions {
            ef: 64,
            check_queries: 1000,
        }
    }
}

/// One class's retrieval result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    /// Label name.
    pub class: String,
    /// Regions of it (all used as queries when ≥ `min_members`).
    pub members: usize,
    /// Mean AP of its queries (`None` when it has too few members to be queried).
    pub ap: Option<f64>,
}

/// The result of `eval retrieval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// What was evaluated (`None` for a matrix given directly to [`exact`]).
    pub selection: Option<Selection>,
    /// The settings.
    pub options: RetrievalOptions,
    /// `exact` or `hnsw`.
    pub method: String,
    /// Regions ranked (the gallery).
    pub regions: usize,
    /// Queries run.
    pub queries: usize,
    /// Classes with at least `min_members` regions (those mAP averages over).
    pub classes: usize,
    /// Mean over queries of AP, in percent (`None` with `--approx`).
    pub mean_ap: Option<f64>,
    /// Mean over classes of the class's mean AP, in percent (`None` with `--approx`).
    pub map: Option<f64>,
    /// recall@1, @5, @10 in percent: queries with a region of their label among their k
    /// nearest others (the query itself excluded).
    pub recall: Vec<RecallAt>,
    /// Per class, by name.
    pub per_class: Vec<ClassAp>,
    /// With `--approx`: the graph's recall@10 against the exact ten nearest others.
    pub graph_recall_at_10: Option<f64>,
    /// Things a reader of the numbers should know (one-member classes, zero vectors, …).
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// recall@k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecallAt {
    /// The cut-off.
    pub k: usize,
    /// Percentage of queries.
    pub recall: f64,
}

/// The `k` best (score, id, label) seen so far: score descending, then id ascending.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    best: Vec<(f32, usize, u32)>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    pub(crate) fn offer(&mut self, score: f32, id: usize, label: u32) {
        let better = |a: (f32, usize), b: (f32, usize)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        if self.k == 0 {
            return;
        }
        if self.best.len() == self.k {
            let w = self.best[self.k - 1];
            if !better((score, id), (w.0, w.1)) {
                return;
            }
            self.best.pop();
        }
        let at = self
            .best
            .partition_point(|e| better((e.0, e.1), (score, id)));
        self.best.insert(at, (score, id, label));
    }

    pub(crate) fn items(&self) -> &[(f32, usize, u32)] {
        &self.best
    }

    /// A score below this cannot enter (−∞ until k are held).
    #[inline]
    pub(crate) fn floor(&self) -> f32 {
        if self.k == 0 {
            f32::INFINITY
        } else if self.best.len() == self.k {
            self.best[self.k - 1].0
        } else {
            f32::NEG_INFINITY
        }
    }
}

/// Per-query outcome.
struct QueryResult {
    ap: f64,
    /// For each cut-off in [`RECALL_AT`]: a relevant region among the k nearest others.
    hits: [bool; 3],
}

/// Runs the protocol on `index`.
pub fn retrieval(
    index: &IndexDir,
    sel: &Selection,
    opts: &RetrievalOptions,
) -> Result<RetrievalReport> {
    let rows = LabeledRows::select(index, sel)?;
    let mut report = match &opts.approx {
        None => exact(&rows, opts)?,
        Some(a) => approx(index, sel, &rows, opts, a)?,
    };
    report.selection = Some(sel.clone());
    Ok(report)
}

/// Checks common to both methods; returns the warnings.
fn prepare(rows: &LabeledRows<'_>, opts: &RetrievalOptions) -> Result<Vec<String>> {
    if opts.min_members == 0 {
        return Err(Error::InvalidArgument(
            "--min-members must be at least 1".into(),
        ));
    }
    let sizes = rows.class_sizes();
    let mut warnings = Vec::new();
    let need = opts.min_members.max(2);
    if !sizes.iter().any(|&n| n >= need) {
        return Err(Error::InvalidArgument(format!(
            "no class has {need} or more regions among the {} selected: retrieval needs \
             regions that share a label{}",
            rows.len(),
            if need > 2 {
                " (lower --min-members)"
            } else {
                ""
            }
        )));
    }
    if sizes.len() == 1 {
        return Err(Error::InvalidArgument(format!(
            "one class only ({}): every region is relevant to every query, so AP is 100 % by \
             construction and says nothing; retrieval needs two classes or more",
            rows.classes[0]
        )));
    }
    let small: Vec<&str> = (0..sizes.len())
        .filter(|&c| sizes[c] < opts.min_members)
        .map(|c| rows.classes[c].as_str())
        .collect();
    if !small.is_empty() {
        warnings.push(format!(
            "{} classes have fewer than {} regions and are not queried (they remain in the \
             ranking): {}",
            small.len(),
            opts.min_members,
            shorten(&small)
        ));
    }
    let singles = sizes.iter().filter(|&&n| n == 1).count();
    if opts.min_members == 1 && singles > 0 {
        warnings.push(format!(
            "{singles} classes have one region: its query finds itself first (AP 100 % by \
             construction) and has no other relevant region for recall@k"
        ));
    }
    warnings.extend(rows.zero_rows_warning());
    Ok(warnings)
}

/// Exact retrieval over every selected region.
pub fn exact(rows: &LabeledRows<'_>, opts: &RetrievalOptions) -> Result<RetrievalReport> {
    let start = Instant::now();
    let warnings = prepare(rows, opts)?;
    let (dim, data) = (rows.dim, &rows.data);
    let n = rows.len();
    // Positions (into rows.rows) grouped by class, ids ascending within a class.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&p| (rows.labels[p], rows.rows[p]));
    let ids: Vec<usize> = order.iter().map(|&p| rows.rows[p]).collect();
    let labels: Vec<u32> = order.iter().map(|&p| rows.labels[p]).collect();
    let inv: Vec<f32> = ids.par_iter().map(|&i| inv_norm(rows.row(i))).collect();
    let sizes = rows.class_sizes();
    let mut starts = vec![0usize; sizes.len() + 1];
    for c in 0..sizes.len() {
        starts[c + 1] = starts[c] + sizes[c];
    }
    // Tasks: a block of one class's queries each, sized so that its positives' scores fit
    // the budget's share of one thread.
    let per_task = (opts.memory_budget / rayon::current_num_threads().max(1)).max(1 << 16);
    let mut tasks: Vec<(u32, usize, usize)> = Vec::new();
    for c in 0..sizes.len() {
        if sizes[c] < opts.min_members {
            continue;
        }
        // Up to 256 queries (1.3 MB of 1280-d unit rows: L2-sized): each item row is read
        // from memory once per block (the bench: 64 → 256 took 10.4 s to 8.2 s).
        // A class too large for a thread's share runs alone (below), with the whole budget.
        let share = if cost_of(sizes[c], dim) > per_task {
            opts.memory_budget
        } else {
            per_task
        };
        let block = (share / cost_of(sizes[c], dim)).clamp(1, 256);
        let mut s = starts[c];
        while s < starts[c + 1] {
            let e = (s + block).min(starts[c + 1]);
            tasks.push((c as u32, s, e));
            s = e;
        }
    }
    let ctx = Ctx {
        data,
        dim,
        ids: &ids,
        labels: &labels,
        inv: &inv,
        starts: &starts,
    };
    // A task over a class so large that even one query's positives exceed a thread's share
    // of the budget runs alone, so the budget holds whatever the thread count.
    let big = |c: u32| cost_of(sizes[c as usize], dim) > per_task;
    let mut results: Vec<Vec<QueryResult>> = tasks
        .par_iter()
        .map(|&(c, s, e)| {
            if big(c) {
                Vec::new()
            } else {
                ctx.run_block(c as usize, s, e)
            }
        })
        .collect();
    for (r, &(c, s, e)) in results.iter_mut().zip(&tasks) {
        if big(c) {
            *r = ctx.run_block(c as usize, s, e);
        }
    }
    // Sums in query order: the same result whatever the thread count.
    let mut class_sum = vec![0.0f64; sizes.len()];
    let mut class_n = vec![0usize; sizes.len()];
    let (mut ap_sum, mut queries) = (0.0f64, 0usize);
    let mut hits = [0usize; 3];
    let mut recall_queries = 0usize;
    for ((c, _, _), block) in tasks.iter().zip(&results) {
        for r in block {
            ap_sum += r.ap;
            queries += 1;
            class_sum[*c as usize] += r.ap;
            class_n[*c as usize] += 1;
            if sizes[*c as usize] > 1 {
                recall_queries += 1;
                for (h, &got) in hits.iter_mut().zip(&r.hits) {
                    *h += usize::from(got);
                }
            }
        }
    }
    let per_class: Vec<ClassAp> = (0..sizes.len())
        .map(|c| ClassAp {
            class: rows.classes[c].clone(),
            members: sizes[c],
            ap: (class_n[c] > 0).then(|| 100.0 * class_sum[c] / class_n[c] as f64),
        })
        .collect();
    let queried: Vec<f64> = per_class.iter().filter_map(|c| c.ap).collect();
    let map = queried.iter().sum::<f64>() / queried.len() as f64;
    Ok(RetrievalReport {
        selection: None,
        options: opts.clone(),
        method: "exact".into(),
        regions: n,
        queries,
        classes: queried.len(),
        mean_ap: Some(100.0 * ap_sum / queries as f64),
        map: Some(map),
        recall: recall_table(&hits, recall_queries),
        per_class,
        graph_recall_at_10: None,
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Bytes one query of a class of `members` regions needs: its positives' scores and
/// thresholds (16 bytes each at the peak), its unit vector and a row of the tile.
fn cost_of(members: usize, dim: usize) -> usize {
    16 * members + 4 * (dim + super::kernel::TILE_ITEMS) + 64
}

fn recall_table(hits: &[usize; 3], queries: usize) -> Vec<RecallAt> {
    RECALL_AT
        .iter()
        .zip(hits)
        .map(|(&k, &h)| RecallAt {
            k,
            recall: 100.0 * h as f64 / queries.max(1) as f64,
        })
        .collect()
}

/// What every query block reads: the selection in class order.
struct Ctx<'a> {
    data: &'a Rows<'a>,
    dim: usize,
    ids: &'a [usize],
    labels: &'a [u32],
    inv: &'a [f32],
    starts: &'a [usize],
}

impl Ctx<'_> {
    /// Scores the queries at class-ordered positions s..e (all of class c) against everything.
    fn run_block(&self, c: usize, s: usize, e: usize) -> Vec<QueryResult> {
        let dim = self.dim;
        let nq = e - s;
        let q = unit_rows(self.data, dim, &self.ids[s..e]);
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(10)).collect();
        // Pass 1: the class's own regions, the positives.
        let (cs, ce) = (self.starts[c], self.starts[c + 1]);
        let mut pos: Vec<Vec<f32>> = (0..nq).map(|_| Vec::with_capacity(ce - cs)).collect();
        let (ids, inv) = (&self.ids[cs..ce], &self.inv[cs..ce]);
        scan(&q, dim, self.data, ids, inv, |t, tile| {
            let w = tile.len() / nq;
            for (qi, (p, top)) in pos.iter_mut().zip(tops.iter_mut()).enumerate() {
                let qid = self.ids[s + qi];
                for (j, &sc) in tile[qi * w..(qi + 1) * w].iter().enumerate() {
                    p.push(sc);
                    if ids[t + j] != qid {
                        top.offer(sc, ids[t + j], c as u32);
                    }
                }
            }
        });
        let mut thr: Vec<Thresholds> = pos.into_iter().map(Thresholds::new).collect();
        // Pass 2: everything else, the negatives, counted against the thresholds.
        for (a, b) in [(0, cs), (ce, self.ids.len())] {
            let (ids, inv, labels) = (&self.ids[a..b], &self.inv[a..b], &self.labels[a..b]);
            scan(&q, dim, self.data, ids, inv, |t, tile| {
                let w = tile.len() / nq;
                for (qi, (th, top)) in thr.iter_mut().zip(tops.iter_mut()).enumerate() {
                    // Most scores change neither the counts nor the top 10: one comparison.
                    let low = th.lowest();
                    let mut floor = top.floor();
                    for (j, &sc) in tile[qi * w..(qi + 1) * w].iter().enumerate() {
                        if sc < low && sc < floor {
                            continue;
                        }
                        th.count(sc);
                        if sc >= floor {
                            top.offer(sc, ids[t + j], labels[t + j]);
                            floor = top.floor();
                        }
                    }
                }
            });
        }
        thr.iter()
            .zip(&tops)
            .map(|(th, top)| QueryResult {
                ap: th.ap(),
                hits: hits_at(top.items(), c as u32),
            })
            .collect()
    }
}

/// For each cut-off, whether a region of `label` is among the first k.
fn hits_at(items: &[(f32, usize, u32)], label: u32) -> [bool; 3] {
    RECALL_AT.map(|k| items.iter().take(k).any(|e| e.2 == label))
}

/// `--approx`: recall@k from the HNSW graph, and the graph's recall against exact search on
/// a sample of queries.
fn approx(
    index: &IndexDir,
    sel: &Selection,
    rows: &LabeledRows<'_>,
    opts: &RetrievalOptions,
    a: &ApproxOptions,
) -> Result<RetrievalReport> {
    let start = Instant::now();
    let mut warnings = prepare(rows, opts)?;
    if !index.manifest().hnsw.contains_key(sel.feature.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "index {} has no HNSW graph for {}; run without --approx",
            index.path().display(),
            sel.feature
        )));
    }
    let n_all = index.len();
    let graph = index.segment_graphs(sel.feature)?;
    let sizes = rows.class_sizes();
    let queried: Vec<usize> = (0..rows.len())
        .filter(|&p| sizes[rows.labels[p] as usize] >= opts.min_members.max(2))
        .collect();
    let member = crate::index::IdSet::new(&rows.rows, n_all);
    let keep = |i: usize| member.contains(i as u32);
    let filter: Option<&(dyn Fn(usize) -> bool + Sync)> =
        (rows.rows.len() < n_all).then_some(&keep);
    let label_of = |id: usize| -> u32 {
        let p = rows
            .rows
            .binary_search(&id)
            .expect("filtered to the selection");
        rows.labels[p]
    };
    // Wider than the graph is pointless, and a huge --ef would size huge buffers.
    let ef = a.ef.clamp(11, n_all.max(11));
    let results: Vec<[bool; 3]> = queried
        .par_iter()
        .map(|&p| {
            let id = rows.rows[p];
            let q = unit_rows(&rows.data, rows.dim, &[id]);
            let hits = graph.search(&q, 11, ef, filter);
            let others: Vec<(f32, usize, u32)> = hits
                .iter()
                .filter(|h| h.id != id)
                .take(10)
                .map(|h| (h.score, h.id, label_of(h.id)))
                .collect();
            hits_at(&others, rows.labels[p])
        })
        .collect();
    let mut hits = [0usize; 3];
    for r in &results {
        for (h, &got) in hits.iter_mut().zip(r) {
            *h += usize::from(got);
        }
    }
    // The graph's recall@10 against the exact ten nearest others, on evenly spaced queries.
    let step = queried.len().div_ceil(a.check_queries.max(1)).max(1);
    let sample: Vec<usize> = queried.iter().step_by(step).copied().collect();
    let inv: Vec<f32> = rows.rows.iter().map(|&i| inv_norm(rows.row(i))).collect();
    let overlap: Vec<f64> = sample
        .par_iter()
        .map(|&p| {
            let id = rows.rows[p];
            let q = unit_rows(&rows.data, rows.dim, &[id]);
            let mut top = TopK::new(10);
            scan(&q, rows.dim, &rows.data, &rows.rows, &inv, |t, tile| {
                for (j, &sc) in tile.iter().enumerate() {
                    if rows.rows[t + j] != id {
                        top.offer(sc, rows.rows[t + j], 0);
                    }
                }
            });
            let found = graph.search(&q, 11, ef, filter);
            let got: Vec<usize> = found
                .iter()
                .filter(|h| h.id != id)
                .take(10)
                .map(|h| h.id)
                .collect();
            let want = top.items();
            want.iter().filter(|e| got.contains(&e.1)).count() as f64 / want.len().max(1) as f64
        })
        .collect();
    let graph_recall = 100.0 * overlap.iter().sum::<f64>() / overlap.len().max(1) as f64;
    warnings.push(format!(
        "--approx ranks with the HNSW graph (ef {}): recall@k only; AP and mAP need the exact \
         ranking (run without --approx)",
        ef
    ));
    let per_class = (0..sizes.len())
        .map(|c| ClassAp {
            class: rows.classes[c].clone(),
            members: sizes[c],
            ap: None,
        })
        .collect();
    Ok(RetrievalReport {
        selection: Some(sel.clone()),
        options: opts.clone(),
        method: "hnsw".into(),
        regions: rows.len(),
        queries: queried.len(),
        classes: sizes
            .iter()
            .filter(|&&s| s >= opts.min_members.max(2))
            .count(),
        mean_ap: None,
        map: None,
        recall: recall_table(&hits, queried.len()),
        per_class,
        graph_recall_at_10: Some(graph_recall),
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::ap::average_precision;
    use crate::eval::kernel::score_tile;
    use crate::eval::Rng;

    #[test]
    fn top_k_of_zero_holds_nothing() {
        let mut t = TopK::new(0);
        t.offer(1.0, 3, 0);
        assert!(t.items().is_empty());
        assert_eq!(t.floor(), f32::INFINITY);
        let mut t = TopK::new(2);
        for (s, id) in [(0.5, 4), (0.9, 2), (0.5, 1), (0.1, 0)] {
            t.offer(s, id, 0);
        }
        let ids: Vec<usize> = t.items().iter().map(|e| e.1).collect();
        assert_eq!(ids, vec![2, 1], "ties to the smaller id");
    }

    /// The streaming computation equals a direct one: each query's scores against all rows,
    /// then [`average_precision`] — on data with exact duplicates (ties across classes).
    #[test]
    fn streaming_equals_direct() {
        let (n, dim) = (150, 20);
        let mut r = Rng::new(11);
        let labels: Vec<u32> = (0..n).map(|_| r.below(6) as u32).collect();
        let mut data: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        // Row 7 duplicates row 3 (maybe of another class): tied scores.
        let dup: Vec<f32> = data[3 * dim..4 * dim].to_vec();
        data[7 * dim..8 * dim].copy_from_slice(&dup);
        let rows = LabeledRows::from_matrix(&data, dim, labels.clone()).unwrap();
        for budget in [1usize, 256 << 20] {
            let opts = RetrievalOptions {
                min_members: 1,
                memory_budget: budget,
                approx: None,
            };
            let rep = exact(&rows, &opts).unwrap();
            let all: Vec<usize> = (0..n).collect();
            let inv: Vec<f32> = all
                .iter()
                .map(|&i| inv_norm(&data[i * dim..][..dim]))
                .collect();
            let mut sum = 0.0;
            for qi in 0..n {
                let rows = Rows::contiguous(&data, dim);
                let q = unit_rows(&rows, dim, &[qi]);
                let mut s = Vec::new();
                score_tile(&q, dim, &rows, &all, &inv, &mut s);
                let rel: Vec<bool> = labels.iter().map(|&l| l == labels[qi]).collect();
                sum += average_precision(&rel, &s);
            }
            let want = 100.0 * sum / n as f64;
            assert!(
                (rep.mean_ap.unwrap() - want).abs() < 1e-9,
                "{:?} vs {want}",
                rep.mean_ap
            );
            assert_eq!(rep.queries, n);
        }
    }
}
