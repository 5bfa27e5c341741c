//! `probe segment` (the segmentation probe on dense grids) and `probe attentive` (the
//! attentive probe on region tokens).

use std::path::PathBuf;

use clap::Args;

use super::print;
use partlens::eval::attentive::{AttentiveOptions, Optimizer};
use partlens::eval::attentive_probe::{attentive, AttentiveProbeOptions};
use partlens::eval::linear::LinearOptions;
use partlens::eval::segment::{segment, SegmentOptions, SegmentOutputs};
use partlens::store::dense::LabelSet;
use partlens::{IndexDir, Result};

/// `partlens probe segment`.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Index directory (ingested with --dense).
    #[arg(long, value_name = "DIR")]
    index: PathBuf,
    /// Which label maps: parts or objects.
    #[arg(long, default_value = "parts", value_parser = ["parts", "objects"])]
    labels: String,
    #[command(flatten)]
    split: super::eval::ProbeSplitArgs,
    /// Learning rates, one head each (all trained in the same pass).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.03,0.1,0.3,1.0")]
    lr: Vec<f64>,
    /// Weight decays (× every learning rate).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    weight_decay: Vec<f64>,
    /// Epochs over the training images' labelled cells.
    #[arg(long, default_value_t = SegmentOptions::default().train.epochs)]
    epochs: usize,
    /// Cells per mini-batch.
    #[arg(long, default_value_t = SegmentOptions::default().train.batch_size)]
    batch_size: usize,
    /// Write every evaluated image's predicted label map here (8-bit PNG named like its
    /// annotation, the dataset's numbering); the folder must be new or empty.
    #[arg(long, value_name = "DIR")]
    predictions: Option<PathBuf>,
    /// Write image | truth | prediction overlays of the first evaluation images here.
    #[arg(long, value_name = "DIR")]
    overlays: Option<PathBuf>,
    /// How many overlays.
    #[arg(long, default_value_t = 8, value_name = "N")]
    overlay_count: usize,
    /// Print the full result as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn probe_segment(a: &SegmentArgs) -> Result<()> {
    let index = IndexDir::open(&a.index)?;
    let labels = if a.labels == "objects" {
        LabelSet::Objects
    } else {
        LabelSet::Parts
    };
    let defaults = SegmentOptions::default();
    let opts = SegmentOptions {
        labels,
        train: LinearOptions {
            lrs: a.lr.clone(),
            weight_decays: a.weight_decay.clone(),
            epochs: a.epochs,
            batch_size: a.batch_size,
            seed: a.split.seed,
            train: a.split.train.clone(),
            eval: a.split.eval.clone(),
            eval_fraction: a.split.eval_fraction,
            ..defaults.train
        },
    };
    let outputs = SegmentOutputs {
        predictions: a.predictions.clone(),
        overlays: a.overlays.clone(),
        overlay_count: a.overlay_count,
        dataset_root: PathBuf::new(),
    };
    let r = segment(&index, &opts, &outputs)?;
    if a.json {
        return print::json(&r);
    }
    let d = index.dense()?;
    println!(
        "segmentation probe, {} of {} (cells of {} px at short side {}, {} values): train {} ({} images, {} labelled cells; {} held out), eval {} ({} images), {} classes, {:.1} s",
        labels.as_str(),
        index.path().display(),
        d.info.cell,
        d.info.size,
        d.info.dim,
        r.split.train,
        r.fit_images,
        r.fit_cells,
        r.holdout_images,
        r.split.eval,
        r.eval_images,
        r.classes.len(),
        r.seconds
    );
    super::eval::print_heads(
        "heads (lr, weight decay → last-epoch loss, held-out mIoU)",
        r.heads.iter().map(|h| {
            let setting = format!("lr {:<6} wd {:<6}", h.lr, h.weight_decay);
            (setting, h.final_loss, h.holdout_top1)
        }),
        r.chosen,
    );
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2} %"));
    let m = &r.metrics;
    println!(
        "mIoU         {}  (mmseg: classes with no union left out)",
        pct(m.miou)
    );
    println!("aAcc         {}", pct(m.aacc));
    println!("mAcc         {}", pct(m.macc));
    println!("per class (IoU %, Acc %, labelled pixels):");
    for c in &m.classes {
        println!(
            "  {:>6}  {:>6}  {:>9}  {}",
            c.iou.map_or("-".into(), |v| format!("{v:.2}")),
            c.acc.map_or("-".into(), |v| format!("{v:.2}")),
            c.label_pixels,
            c.name
        );
    }
    if let Some(p) = &a.predictions {
        println!("predictions: {}", p.display());
    }
    if let Some(p) = &a.overlays {
        println!("overlays:    {}", p.display());
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// `partlens probe attentive`.
#[derive(Debug, Args)]
pub struct AttentiveArgs {
    #[command(flatten)]
    common: super::eval::Common,
    #[command(flatten)]
    split: super::eval::ProbeSplitArgs,
    /// Learning rates, trained one after another; the best on 10 % of train is kept.
    #[arg(long, value_delimiter = ',', default_value = "0.001")]
    lr: Vec<f64>,
    /// Weight decay of the attention and linear weights.
    #[arg(long, default_value_t = AttentiveOptions::default().weight_decay)]
    weight_decay: f64,
    /// Epochs.
    #[arg(long, default_value_t = AttentiveOptions::default().epochs)]
    epochs: usize,
    /// Regions per mini-batch (2 or more: BatchNorm uses batch statistics).
    #[arg(long, default_value_t = AttentiveOptions::default().batch_size)]
    batch_size: usize,
    /// Optimiser: adamw or sgd (momentum 0.9).
    #[arg(long, default_value = "adamw", value_parser = ["adamw", "sgd"])]
    optimizer: String,
}

pub(super) fn probe_attentive(a: &AttentiveArgs) -> Result<()> {
    let (index, sel) = a.common.open(None)?;
    let opts = AttentiveProbeOptions {
        model: AttentiveOptions {
            lrs: a.lr.clone(),
            weight_decay: a.weight_decay,
            epochs: a.epochs,
            batch_size: a.batch_size,
            optimizer: if a.optimizer == "sgd" {
                Optimizer::Sgd
            } else {
                Optimizer::AdamW
            },
            seed: a.split.seed,
            ..AttentiveOptions::default()
        },
        train: a.split.train.clone(),
        eval: a.split.eval.clone(),
        eval_fraction: a.split.eval_fraction,
        ..AttentiveProbeOptions::default()
    };
    let r = attentive(&index, &sel, &opts)?;
    if a.common.json {
        return print::json(&r);
    }
    println!(
        "attentive probe, {}s of {} ({} tokens × {}): train {} ({} fit + {} held out), eval {} ({} regions), {} classes, {:.1} s",
        sel.kind.as_str(),
        index.path().display(),
        r.tokens,
        r.dim,
        r.split.train,
        r.fit_regions,
        r.holdout_regions,
        r.split.eval,
        r.eval_regions,
        r.classes.len(),
        r.seconds
    );
    super::eval::print_heads(
        "learning rates (→ last-epoch loss, held-out top-1)",
        r.runs.iter().map(|run| {
            (
                format!("lr {:<8}", run.lr),
                run.final_loss,
                run.holdout_top1,
            )
        }),
        r.chosen,
    );
    super::eval::print_accuracy(&r.accuracy);
    for w in &r.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
