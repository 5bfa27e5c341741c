//! Commands that evaluate an encoder on an index: `eval retrieval`, `probe classify`,
//! `probe knn`, `report`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{one_of, print};
use partlens::encoder::Feature;
use partlens::eval::knn::{knn, KnnOptions};
use partlens::eval::linear::{classify, LinearOptions, Trained};
use partlens::eval::npz::{write_npz, Array};
use partlens::eval::report::{report, ReportOptions};
use partlens::eval::retrieval::{retrieval, ApproxOptions, RetrievalOptions};
use partlens::eval::segment::SegmentOptions;
use partlens::eval::{Accuracy, Selection};
use partlens::region::RegionKind;
use partlens::{Error, IndexDir, Result};

/// `partlens eval …`.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// The paper's retrieval protocol: every region queries all regions of its kind (itself
    /// included) by cosine; AP per query as scikit-learn, mAP over classes, recall@1/5/10.
    Retrieval(RetrievalArgs),
}

/// `partlens probe …`.
#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    /// Linear softmax probe on the frozen, standardised feature (SGD, momentum, cosine
    /// schedule; several learning rates at once, chosen on 10 % of train).
    Classify(ClassifyArgs),
    /// DINO's weighted k-NN classifier (cosine, votes exp(sim / T)).
    Knn(KnnArgs),
    /// Segmentation probe on the dense grids (ingest --dense): BatchNorm + linear 1×1 head,
    /// logits upsampled bilinearly, mmseg's mIoU / aAcc / mAcc.
    Segment(super::probe_dense::SegmentArgs),
    /// Attentive probe on the regions' own patch tokens (ingest --tokens): one learned query
    /// cross-attends over them, BatchNorm, linear; AdamW on the CPU.
    Attentive(super::probe_dense::AttentiveArgs),
}

/// What every evaluation reads.
#[derive(Debug, Args)]
pub struct Common {
    /// Index directory.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Feature to evaluate (default: the index's first of mean, cls, projection).
    #[arg(long, value_parser = one_of(&Feature::ALL, Feature::as_str))]
    pub feature: Option<Feature>,
    /// Parts or objects.
    #[arg(long, default_value = "part", value_parser = one_of(&RegionKind::ALL, RegionKind::as_str))]
    pub kind: RegionKind,
    /// Print the full result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    pub(super) fn open(&self, split: Option<String>) -> Result<(IndexDir, Selection)> {
        let index = IndexDir::open(&self.index)?;
        let feature = match self.feature {
            Some(f) => f,
            None => *index
                .feature_names()
                .first()
                .ok_or_else(|| Error::corrupt(&self.index, "the index has no feature matrix"))?,
        };
        let sel = Selection {
            feature,
            kind: self.kind,
            split,
        };
        Ok((index, sel))
    }
}

/// `partlens eval retrieval`.
#[derive(Debug, Args)]
pub struct RetrievalArgs {
    #[command(flatten)]
    common: Common,
    /// Only regions of this split (default: all).
    #[arg(long)]
    split: Option<String>,
    /// Classes with fewer regions are not queried (they stay in the ranking). 1 queries
    /// one-member classes too (AP 100 % by construction: the query finds itself).
    #[arg(long, default_value_t = 2, value_name = "N")]
    min_members: usize,
    /// Rank with the HNSW graph: recall@k only (no AP), with the graph's recall@10 against
    /// exact search on a sample of queries.
    #[arg(long)]
    approx: bool,
    /// HNSW search width with --approx.
    #[arg(long, default_value_t = 64)]
    ef: usize,
    /// Working memory for scores, MB (the mapped features aside).
    #[arg(long, default_value_t = 256, value_name = "MB")]
    memory_mb: usize,
}

/// The probes' shared flags.
#[derive(Debug, Args)]
pub struct ProbeSplitArgs {
    /// Training split (default: train or training, or the only split when there is one).
    #[arg(long)]
    pub(super) train: Option<String>,
    /// Evaluation split (default: val, validation or test). When the index has none, or
    /// --eval names the training split, a stratified, seeded share of the training split is
    /// held out instead (printed).
    #[arg(long)]
    pub(super) eval: Option<String>,
    /// Share of train used for evaluation when the split is derived (between 0 and 1).
    #[arg(long, default_value_t = 0.2)]
    pub(super) eval_fraction: f64,
    /// Seed (splits, shuffles, initial weights).
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
}

/// `partlens probe classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    split: ProbeSplitArgs,
    /// Learning rates, one head each (all trained in the same pass).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.03,0.1,0.3,1.0")]
    lr: Vec<f64>,
    /// Weight decays (× every learning rate).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    weight_decay: Vec<f64>,
    /// Epochs.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Memory for the probe's own state (weights, momenta, gradients, a batch), MB; the
    /// features are read from the memory map a batch at a time whatever their size.
    #[arg(long, default_value_t = 1024, value_name = "MB")]
    memory_mb: usize,
    /// Write the chosen head (weight, bias, mean, inv_std, classes) as a NumPy .npz.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
}

/// `partlens probe knn`.
#[derive(Debug, Args)]
pub struct KnnArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    split: ProbeSplitArgs,
    /// Neighbours.
    #[arg(short, default_value_t = 20)]
    k: usize,
    /// Temperature of the vote weights.
    #[arg(long, default_value_t = 0.07)]
    temperature: f32,
}

/// `partlens report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// An index to compare, as PATH or NAME=PATH (repeat; the name defaults to the folder's).
    #[arg(long = "index", required = true, value_name = "[NAME=]DIR")]
    indexes: Vec<String>,
    /// Output folder (report.md, report.json, report.html).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Only these features (default: every feature each index has; segmentation, which is
    /// per index, runs regardless).
    #[arg(long, value_delimiter = ',', value_parser = one_of(&Feature::ALL, Feature::as_str))]
    feature: Vec<Feature>,
    /// Linear-probe epochs.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// Segmentation-probe epochs (over the training images' labelled grid cells; indexes
    /// ingested with --dense only).
    #[arg(long, default_value_t = SegmentOptions::default().train.epochs)]
    segment_epochs: usize,
    /// The probes' training split (default: train or training, or the only split).
    #[arg(long)]
    train: Option<String>,
    /// The probes' evaluation split (default: val, validation or test; else a stratified
    /// share of train).
    #[arg(long)]
    eval: Option<String>,
    /// Recompute every result even when the index has it cached.
    #[arg(long)]
    refresh: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn eval(c: &EvalCommand) -> Result<()> {
    let EvalCommand::Retrieval(a) = c;
    let (index, sel) = a.common.open(a.split.clone())?;
    let opts = RetrievalOptions {
        min_members: a.min_members,
        memory_budget: megabytes(a.memory_mb)?,
        approx: a.approx.then_some(ApproxOptions {
            ef: a.ef,
            ..ApproxOptions::default()
        }),
    };
    let r = retrieval(&index, &sel, &opts)?;
    if a.common.json {
        return print::json(&r);
    }
    println!(
        "{} retrieval, {} of {} ({}), feature {}: {} regions, {} queries, {} classes, {:.2} s",
        r.method,
        sel.kind.as_str(),
        index.path().display(),
        sel.split.as_deref().unwrap_or("all splits"),
        sel.feature,
        r.regions,
        r.queries,
        r.classes,
        r.seconds
    );
    if let (Some(map), Some(mean)) = (r.map, r.mean_ap) {
        println!("mAP          {map:.2} %  (mean over classes of per-class mean AP)");
        println!("mean AP      {mean:.2} %  (mean over queries)");
    }
    for rk in &r.recall {
        println!(
            "recall@{:<5} {:.2} %  (query itself excluded)",
            rk.k, rk.recall
        );
    }
    if let Some(g) = r.graph_recall_at_10 {
        println!("HNSW recall@10 against exact: {g:.2} %");
    }
    if r.map.is_some() {
        println!("per class (AP %, members):");
        let mut pc = r.per_class.clone();
        pc.sort_by(|a, b| b.ap.unwrap_or(-1.0).total_cmp(&a.ap.unwrap_or(-1.0)));
        for c in &pc {
            match c.ap {
                Some(ap) => println!("  {:>6.2}  {:>6}  {}", ap, c.members, c.class),
                None => println!("  {:>6}  {:>6}  {} (not queried)", "-", c.members, c.class),
            }
        }
    }
    warnings(&r.warnings);
    Ok(())
}

/// `--memory-mb` in bytes (at least 1 MB; a value past the address space is refused).
fn megabytes(mb: usize) -> Result<usize> {
    mb.max(1).checked_mul(1 << 20).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "--memory-mb {mb} is more memory than can be addressed"
        ))
    })
}

fn warnings(w: &[String]) {
    for w in w {
        println!("warning: {w}");
    }
}

/// Prints a probe's heads (or learning rates): its setting, last-epoch loss (`None`:
/// diverged) and held-out score, the chosen one starred.
pub(super) fn print_heads(
    title: &str,
    heads: impl Iterator<Item = (String, Option<f64>, Option<f64>)>,
    chosen: usize,
) {
    println!("{title}:");
    for (i, (setting, loss, held)) in heads.enumerate() {
        println!(
            "  {} {setting} → {}  {}",
            if i == chosen { "*" } else { " " },
            loss.map_or("diverged".into(), |l| format!("{l:.4}")),
            held.map_or("-".into(), |t| format!("{t:.2} %"))
        );
    }
}

pub(super) fn print_accuracy(a: &Accuracy) {
    println!("top-1        {:.2} %", a.top1);
    println!("top-5        {:.2} %", a.top5);
    println!(
        "balanced     {:.2} %  (mean per-class accuracy)",
        a.balanced
    );
    println!("per class (accuracy %, evaluation regions):");
    for c in &a.per_class {
        println!("  {:>6.2}  {:>6}  {}", c.accuracy, c.regions, c.class);
    }
}

pub(super) fn probe(c: &ProbeCommand) -> Result<()> {
    match c {
        ProbeCommand::Classify(a) => probe_classify(a),
        ProbeCommand::Knn(a) => probe_knn(a),
        ProbeCommand::Segment(a) => super::probe_dense::probe_segment(a),
        ProbeCommand::Attentive(a) => super::probe_dense::probe_attentive(a),
    }
}

fn probe_classify(a: &ClassifyArgs) -> Result<()> {
    let (index, sel) = a.common.open(None)?;
    let opts = LinearOptions {
        lrs: a.lr.clone(),
        weight_decays: a.weight_decay.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.split.seed,
        train: a.split.train.clone(),
        eval: a.split.eval.clone(),
        eval_fraction: a.split.eval_fraction,
        memory_budget: megabytes(a.memory_mb)?,
        ..LinearOptions::default()
    };
    if let Some(path) = &a.save {
        // Checked before training, not after minutes of it.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let trailing = path.as_os_str().to_string_lossy().ends_with('/');
        if path.is_dir() || trailing || !parent.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "--save {}: {}",
                path.display(),
                if path.is_dir() || trailing {
                    "is a folder; give a file name such as head.npz".to_string()
                } else {
                    format!("the folder {} does not exist", parent.display())
                }
            )));
        }
        // A folder we cannot write to is found now too.
        let probe = path.with_extension("npz.tmp");
        std::fs::write(&probe, b"")
            .map_err(|e| Error::InvalidArgument(format!("--save {}: {e}", path.display())))?;
        let _ = std::fs::remove_file(&probe);
    }
    let (r, trained) = classify(&index, &sel, &opts)?;
    if let Some(path) = &a.save {
        save_head(path, &trained, r.chosen, &r.classes, &sel, &index)?;
    }
    if a.common.json {
        return print::json(&r);
    }
    println!(
        "linear probe, {}s of {}, feature {}: train {} ({} fit + {} held out), eval {} ({} regions), {} classes, {:.1} s",
        sel.kind.as_str(),
        index.path().display(),
        sel.feature,
        r.split.train,
        r.fit_regions,
        r.holdout_regions,
        r.split.eval,
        r.eval_regions,
        r.classes.len(),
        r.seconds
    );
    print_heads(
        "heads (lr, weight decay → last-epoch loss, held-out top-1)",
        r.heads.iter().map(|h| {
            let setting = format!("lr {:<6} wd {:<8}", h.lr, h.weight_decay);
            (setting, h.final_loss, h.holdout_top1)
        }),
        r.chosen,
    );
    print_accuracy(&r.accuracy);
    if let Some(p) = &a.save {
        println!("head written to {}", p.display());
    }
    warnings(&r.warnings);
    Ok(())
}

/// The chosen head as `.npz`: logits = ((x − mean) · inv_std) @ weight.T + bias.
fn save_head(
    path: &std::path::Path,
    t: &Trained,
    head: usize,
    classes: &[String],
    sel: &Selection,
    index: &IndexDir,
) -> Result<()> {
    let (w, b) = t.head(head);
    let (lr, wd) = t.heads[head];
    let meta = vec![serde_json::json!({
        "index": index.path(),
        "feature": sel.feature,
        "kind": sel.kind,
        "lr": lr,
        "weight_decay": wd,
        "logits": "((x - mean) * inv_std) @ weight.T + bias",
    })
    .to_string()];
    write_npz(
        path,
        &[
            ("weight", Array::F32(&w, vec![t.nclass, t.dim])),
            ("bias", Array::F32(&b, vec![t.nclass])),
            ("mean", Array::F32(&t.mean, vec![t.dim])),
            ("inv_std", Array::F32(&t.inv_std, vec![t.dim])),
            ("classes", Array::Str(classes)),
            ("meta", Array::Str(&meta)),
        ],
    )
}

fn probe_knn(a: &KnnArgs) -> Result<()> {
    let (index, sel) = a.common.open(None)?;
    let opts = KnnOptions {
        k: a.k,
        temperature: a.temperature,
        train: a.split.train.clone(),
        eval: a.split.eval.clone(),
        seed: a.split.seed,
        eval_fraction: a.split.eval_fraction,
    };
    let r = knn(&index, &sel, &opts)?;
    if a.common.json {
        return print::json(&r);
    }
    println!(
        "{}-NN (T {}), {}s of {}, feature {}: memory {} ({} regions), eval {} ({} regions), {} classes, {:.2} s",
        opts.k.min(r.train_regions),
        opts.temperature,
        sel.kind.as_str(),
        index.path().display(),
        sel.feature,
        r.split.train,
        r.train_regions,
        r.split.eval,
        r.eval_regions,
        r.classes.len(),
        r.seconds
    );
    print_accuracy(&r.accuracy);
    warnings(&r.warnings);
    Ok(())
}

/// `--index [NAME=]PATH`: NAME=PATH, unless the whole argument is a path (`/data/run=3/idx`)
/// or what precedes '=' could not be a name; the name defaults to the folder's.
pub(super) fn named_index(s: &str) -> (String, PathBuf) {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') && !Path::new(s).exists() => {
            (n.to_string(), PathBuf::from(p))
        }
        _ => {
            let p = PathBuf::from(s);
            let name = p
                .file_name()
                .map_or_else(|| s.to_string(), |n| n.to_string_lossy().into_owned());
            (name, p)
        }
    }
}

pub(super) fn run_report(a: &ReportArgs) -> Result<()> {
    let indexes: Vec<(String, PathBuf)> = a.indexes.iter().map(|s| named_index(s)).collect();
    let opts = ReportOptions {
        features: (!a.feature.is_empty()).then(|| a.feature.clone()),
        refresh: a.refresh,
        linear: LinearOptions {
            epochs: a.epochs,
            train: a.train.clone(),
            eval: a.eval.clone(),
            ..LinearOptions::default()
        },
        knn: KnnOptions {
            train: a.train.clone(),
            eval: a.eval.clone(),
            ..KnnOptions::default()
        },
        segment: {
            let d = SegmentOptions::default();
            SegmentOptions {
                train: LinearOptions {
                    epochs: a.segment_epochs,
                    train: a.train.clone(),
                    eval: a.eval.clone(),
                    ..d.train
                },
                ..d
            }
        },
        ..ReportOptions::default()
    };
    let r = report(&indexes, &opts, &a.out)?;
    if a.json {
        return print::json(&r);
    }
    print!(
        "{}",
        partlens::eval::report::markdown(&r.cells, &r.segmentation)
    );
    let cached = r.cells.iter().filter(|c| c.cached).count()
        + r.segmentation.iter().filter(|c| c.cached).count();
    println!(
        "\n{} results ({} from the indexes' caches); written: {}",
        r.cells.len() + r.segmentation.len(),
        cached,
        r.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    warnings(&r.warnings);
    Ok(())
}
