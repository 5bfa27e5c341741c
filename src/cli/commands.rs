//! One function per subcommand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::dataset::{Dataset, Distance, Format, KeypointSettings, RegionSettings};
use crate::encoder::{EncoderOptions, Feature};
use crate::error::{Error, Result};
use crate::ingest::{ingest_with_encoder, IngestOptions, IngestReport};
use crate::query::{QueryEngine, QueryHit, SearchOptions};
use crate::region::{PixelBox, RegionKind};
use crate::setup::{self, SetupOptions};
use crate::store::IndexDir;

/// `partlens setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Also install the test suite's Python cross-check tools (Pillow, pyarrow).
    #[arg(long)]
    pub test_tools: bool,
    /// Reinstall everything.
    #[arg(long)]
    pub force: bool,
}

/// `partlens demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the demo index.
    #[arg(long, default_value = "indexes/demo")]
    pub out: PathBuf,
}

/// `partlens ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Dataset: an mmseg folder (img/<split>/, ann/<split>/, optional classes.txt, obj/), or a
    /// COCO-style keypoint .json (or a folder holding one) with its images.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Dataset format (default: detected).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Keypoint classes to crop, comma-separated (keypoint datasets; default: the paper's
    /// nose,right_wrist,left_ankle).
    #[arg(long, value_delimiter = ',')]
    pub keypoints: Option<Vec<String>>,
    /// Distance to the nearest other keypoint: seed-quirk (over x, y, annotation id, as the
    /// paper's code; default) or plain (x, y).
    #[arg(long, value_enum, default_value_t = DistanceArg::SeedQuirk)]
    pub distance: DistanceArg,
    /// ADE20K: deepest part level to index, 1 (parts) or 2 (also parts of parts).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub part_level: u8,
    /// Pascal-Part: a class map merging or renaming part classes (`old new`, `-` drops).
    #[arg(long)]
    pub class_map: Option<PathBuf>,
    /// ONNX encoder with a partlens spec (default: the MobileNetV2 installed by setup).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Spec JSON overriding the one inside the model.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Index directory to create (default: indexes/<dataset folder name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Smallest region kept, in pixels.
    #[arg(long, default_value_t = RegionSettings::default().min_area)]
    pub min_area: u64,
    /// Margin around each region before squaring, as a fraction of its longest side.
    #[arg(long, default_value_t = RegionSettings::default().margin)]
    pub margin: f32,
    /// Do not index object regions.
    #[arg(long)]
    pub no_objects: bool,
    /// Regions per inference batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Stop at the first unreadable input instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Replace an existing index.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `partlens convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source format.
    #[arg(long, value_enum)]
    pub from: ConvertFrom,
    /// Target layout.
    #[arg(long, value_enum, default_value_t = ConvertTo::Mmseg)]
    pub to: ConvertTo,
    /// Source dataset.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Split name to file the images under (default: the dataset's own: `training` and
    /// `validation` for ADE20K, `all` for Pascal-Part).
    #[arg(long)]
    pub split: Option<String>,
    /// Pascal-Part class map (`old new`, `-` drops).
    #[arg(long)]
    pub class_map: Option<PathBuf>,
    /// ADE20K object classes: a `classes.txt`-style name list, or `target ade_id` lines
    /// (SceneParsing's `mapFromADE.txt`). Default: every object class in the images.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Names for an id map's classes: SceneParsing's `objectInfo150.csv` or a name per line.
    #[arg(long, requires = "classes")]
    pub class_names: Option<PathBuf>,
    /// ADE20K part classes: a `classes.txt`-style list of `object/part` names, or SceneParsing's
    /// `partInfo36.txt`. Default: every object/part pair in the images.
    #[arg(long)]
    pub part_classes: Option<PathBuf>,
}

/// `convert --from` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvertFrom {
    /// Pascal-Part `.mat` annotations.
    PascalPart,
    /// The ADE20K full release (`X.json`, `X_seg.png`, `X_parts_1.png`).
    Ade20k,
}

/// `convert --to` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvertTo {
    /// `img/`, `ann/`, `obj/`, `classes.txt`, `object_classes.txt`.
    Mmseg,
}

pub(super) fn convert(a: &ConvertArgs) -> Result<()> {
    use crate::dataset::convert::{ade20k_to_mmseg, pascal_part_to_mmseg, ClassList};
    let ConvertTo::Mmseg = a.to;
    let list = |p: &Option<PathBuf>| p.as_deref().map(ClassList::read).transpose();
    let s = match a.from {
        ConvertFrom::PascalPart => {
            if a.classes.is_some() || a.part_classes.is_some() {
                return Err(Error::InvalidArgument(
                    "--classes and --part-classes are for ADE20K; Pascal-Part takes --class-map"
                        .into(),
                ));
            }
            let ds = crate::dataset::PascalPartDataset::open(&a.dataset, a.class_map.as_deref())?;
            pascal_part_to_mmseg(&ds, &a.out, a.split.as_deref().unwrap_or("all"))?
        }
        ConvertFrom::Ade20k => {
            if a.class_map.is_some() {
                return Err(Error::InvalidArgument(
                    "--class-map is for Pascal-Part; ADE20K takes --classes and --part-classes"
                        .into(),
                ));
            }
            let ds = crate::dataset::Ade20kDataset::open(&a.dataset, 1)?;
            let mut objects = list(&a.classes)?;
            if let Some(names) = &a.class_names {
                objects = objects.map(|o| o.with_names(names)).transpose()?;
            }
            let parts = list(&a.part_classes)?;
            ade20k_to_mmseg(
                &ds,
                &a.out,
                a.split.as_deref(),
                objects.as_ref(),
                parts.as_ref(),
            )?
        }
    };
    println!(
        "wrote {} images ({} part classes, {} object classes) to {} in the mmseg layout",
        s.images,
        s.part_classes,
        s.object_classes,
        a.out.display()
    );
    for (p, r) in &s.skipped {
        println!("skipped  {p}: {r}");
    }
    Ok(())
}

/// `partlens dataset …`.
#[derive(Debug, clap::Subcommand)]
pub enum DatasetCommand {
    /// Images, regions per class, and skipped files with reasons.
    Stats(StatsArgs),
}

/// `partlens dataset stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Dataset folder or file (any format `ingest` reads).
    pub dataset: PathBuf,
    /// Dataset format (default: detected).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Smallest region counted, in pixels.
    #[arg(long, default_value_t = RegionSettings::default().min_area)]
    pub min_area: u64,
    /// Keypoint classes (keypoint datasets), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub keypoints: Option<Vec<String>>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn dataset_stats(a: &StatsArgs) -> Result<()> {
    use rayon::prelude::*;
    let settings = RegionSettings {
        min_area: a.min_area,
        ..RegionSettings::default()
    };
    let ds = crate::dataset::open(
        &a.dataset,
        &crate::dataset::OpenOptions {
            format: a.format,
            keypoints: KeypointSettings {
                classes: a.keypoints.clone().unwrap_or_default(),
                ..KeypointSettings::default()
            },
            margin: settings.margin,
            part_level: 1,
            class_map: None,
        },
    )?;
    // Images are read in parallel blocks and dropped after counting: memory stays flat.
    let mut per_class: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut skipped: Vec<(String, String)> = ds.listing_problems().to_vec();
    let mut images = 0u64;
    for block in ds.items().chunks(64) {
        let counted: Vec<_> = block
            .par_iter()
            .map(|item| {
                ds.load(item, &settings).map(|r| {
                    r.regions
                        .into_iter()
                        .map(|r| (r.kind.as_str().to_string(), r.label_name))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (item, c) in block.iter().zip(counted) {
            match c {
                Ok(labels) => {
                    images += 1;
                    for l in labels {
                        *per_class.entry(l).or_default() += 1;
                    }
                }
                Err(e) => skipped.push((item.image.clone(), e.to_string())),
            }
        }
    }
    let regions: u64 = per_class.values().sum();
    if a.json {
        let classes: Vec<_> = per_class
            .iter()
            .map(|((k, n), c)| serde_json::json!({"kind": k, "label": n, "regions": c}))
            .collect();
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(p, r)| serde_json::json!({"path": p, "reason": r}))
            .collect();
        return print_json(&serde_json::json!({
            "format": ds.format(), "splits": ds.splits(), "images": images,
            "regions": regions, "classes": classes, "skipped": skipped,
        }));
    }
    println!(
        "{} ({}): {images} images read, {regions} regions of ≥ {} px, splits {}",
        a.dataset.display(),
        ds.format(),
        a.min_area,
        ds.splits().join(", ")
    );
    for ((kind, name), n) in &per_class {
        println!("  {n:>7}  {kind:<6} {name}");
    }
    for (p, r) in &skipped {
        println!("skipped  {p}: {r}");
    }
    Ok(())
}

/// `partlens synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 100)]
    pub images: usize,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
}

pub(super) fn synth(a: &SynthArgs) -> Result<()> {
    let t = std::time::Instant::now();
    let s = crate::dataset::synth::generate(
        &a.out,
        &crate::dataset::synth::SynthOptions {
            images: a.images,
            seed: a.seed,
            size: a.size,
        },
    )?;
    println!(
        "wrote {} images, {} objects, {} parts to {} in {:.1} s (mmseg layout + keypoints.json)",
        s.images,
        s.objects,
        s.parts,
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `partlens info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Index directory.
    pub index: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Region of the image, x0,y0,x1,y1 in pixels (default: the whole image).
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box)]
    pub bbox: Option<PixelBox>,
    /// Number of results.
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Feature to compare: mean, cls or projection.
    #[arg(long, default_value = "mean", value_parser = parse_feature)]
    pub feature: Feature,
    /// Only regions with this label (name or id).
    #[arg(long)]
    pub label: Option<String>,
    /// Only regions of this object class (name or id).
    #[arg(long)]
    pub object: Option<String>,
    /// Only `part` or `object` regions.
    #[arg(long, value_parser = parse_kind)]
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

/// `--distance` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistanceArg {
    /// Over (x, y, annotation id), reproducing the paper's code.
    SeedQuirk,
    /// Over (x, y).
    Plain,
}

fn parse_box(s: &str) -> std::result::Result<PixelBox, String> {
    PixelBox::parse(s).ok_or_else(|| format!("{s:?} is not x0,y0,x1,y1 with x1 > x0 and y1 > y0"))
}

fn parse_feature(s: &str) -> std::result::Result<Feature, String> {
    Feature::parse(s).ok_or_else(|| format!("{s:?}: expected mean, cls or projection"))
}

fn parse_kind(s: &str) -> std::result::Result<RegionKind, String> {
    RegionKind::parse(s).ok_or_else(|| format!("{s:?}: expected part or object"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    println!("{s}");
    Ok(())
}

pub(super) fn setup(a: &SetupArgs) -> Result<()> {
    let lib = setup::ensure(&SetupOptions {
        test_tools: a.test_tools,
        force: a.force,
    })?;
    println!("data folder:   {}", setup::data_dir().display());
    println!("onnxruntime:   {}", lib.display());
    println!("default model: {}", setup::default_model_path().display());
    println!("tiny ViT:      {}", setup::vit_tiny_path().display());
    Ok(())
}

fn default_model(model: &Option<PathBuf>) -> Result<PathBuf> {
    match model {
        Some(m) => Ok(m.clone()),
        None => {
            let p = setup::default_model_path();
            if !p.is_file() {
                return Err(Error::InvalidArgument(format!(
                    "no --model given and the default model {} is not installed: run `partlens setup`",
                    p.display()
                )));
            }
            Ok(p)
        }
    }
}

fn run_ingest(
    dataset: &dyn Dataset,
    model: &Path,
    enc: &EncoderOptions,
    opts: &IngestOptions,
) -> Result<IngestReport> {
    let encoder = crate::encoder::Encoder::load(model, enc)?;
    tracing::info!(
        "ingesting {} images from {} ({}) with {} ({}) on {}",
        dataset.items().len(),
        dataset.root().display(),
        dataset.format(),
        encoder.spec().name,
        model.display(),
        encoder.provider()
    );
    ingest_with_encoder(dataset, &encoder, opts)
}

fn print_report(r: &IngestReport) {
    let c = &r.manifest.counts;
    println!(
        "indexed {} regions ({} parts, {} objects) from {} images in {:.1} s ({:.1} regions/s; encoder {:.1} s, waiting for input {:.1} s, HNSW {:.1} s)",
        c.regions,
        c.parts,
        c.objects,
        c.images,
        r.seconds,
        r.regions_per_second(),
        r.encode_seconds,
        r.wait_seconds,
        r.hnsw_seconds
    );
    if !r.manifest.skipped.is_empty() {
        println!("skipped {} inputs:", r.manifest.skipped.len());
        for s in &r.manifest.skipped {
            println!("  {}: {}", s.path, s.reason);
        }
    }
    println!("index: {}", r.path.display());
}

pub(super) fn ingest(a: &IngestArgs, enc: &EncoderOptions, quiet: bool) -> Result<()> {
    let model = default_model(&a.model)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let name = a
            .dataset
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "index".into());
        PathBuf::from("indexes").join(name)
    });
    let mut opts = IngestOptions::new(out);
    opts.settings = RegionSettings {
        min_area: a.min_area,
        margin: a.margin,
        objects: !a.no_objects,
    };
    opts.batch_size = a.batch_size;
    opts.strict = a.strict;
    opts.overwrite = a.overwrite;
    opts.progress = !a.json && !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut enc = enc.clone();
    enc.spec_file = a.spec.clone();
    let keypoints = KeypointSettings {
        classes: a
            .keypoints
            .clone()
            .unwrap_or_else(|| KeypointSettings::default().classes),
        distance: match a.distance {
            DistanceArg::SeedQuirk => Distance::SeedQuirk,
            DistanceArg::Plain => Distance::Plain,
        },
    };
    let dataset = crate::dataset::open(
        &a.dataset,
        &crate::dataset::OpenOptions {
            format: a.format,
            keypoints,
            margin: a.margin,
            part_level: a.part_level,
            class_map: a.class_map.clone(),
        },
    )?;
    let report = run_ingest(dataset.as_ref(), &model, &enc, &opts)?;
    if a.json {
        print_json(&serde_json::json!({
            "index": report.path,
            "seconds": report.seconds,
            "regions_per_second": report.regions_per_second(),
            "manifest": report.manifest,
        }))
    } else {
        print_report(&report);
        Ok(())
    }
}

pub(super) fn info(a: &InfoArgs) -> Result<()> {
    let idx = IndexDir::open(&a.index)?;
    let m = idx.manifest();
    if a.json {
        return print_json(m);
    }
    println!("index        {}", a.index.display());
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
        "settings     min area {} px, margin {}, objects {}",
        m.settings.min_area, m.settings.margin, m.settings.objects
    );
    let mut per_label: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in idx.regions() {
        *per_label
            .entry((r.kind.as_str(), r.label_name.as_str()))
            .or_default() += 1;
    }
    let mut top: Vec<_> = per_label.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("labels       {} distinct; most frequent:", top.len());
    for ((kind, name), n) in top.iter().take(12) {
        println!("  {n:>6}  {kind:<6} {name}");
    }
    for s in m.skipped.iter().take(20) {
        println!("skipped      {}: {}", s.path, s.reason);
    }
    Ok(())
}

fn print_hits(hits: &[QueryHit]) {
    println!(
        "{:>4}  {:>6}  {:<6} {:<24} {:<14} {:<40} box",
        "rank", "score", "kind", "label", "object", "image"
    );
    for (i, h) in hits.iter().enumerate() {
        println!(
            "{:>4}  {:>6.3}  {:<6} {:<24} {:<14} {:<40} {:?}",
            i + 1,
            h.score,
            h.kind.as_str(),
            h.label,
            h.object.as_deref().unwrap_or("-"),
            h.image,
            h.bbox
        );
    }
}

pub(super) fn query(a: &QueryArgs, enc: &EncoderOptions) -> Result<()> {
    let engine = QueryEngine::open_with_model(&a.index, a.model.as_deref(), enc)?;
    let opts = SearchOptions {
        k: a.k,
        feature: a.feature,
        exact: a.exact,
        ef: a.ef,
        exact_below: crate::query::EXACT_BELOW,
        label: a.label.clone(),
        kind: a.kind,
        split: a.split.clone(),
        object: a.object.clone(),
    };
    let hits = engine.search_image_file(&a.image, a.bbox, &opts)?;
    if a.json {
        print_json(&hits)
    } else {
        print_hits(&hits);
        Ok(())
    }
}

/// The bundled sample dataset: `data/samples/pascal_part` under the working directory, else
/// under the source tree this binary was built from.
fn sample_dataset() -> Result<PathBuf> {
    let rel = Path::new("data/samples/pascal_part");
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    [rel.to_path_buf(), built]
        .into_iter()
        .find(|p| p.join("img").is_dir())
        .ok_or_else(|| {
            Error::InvalidArgument(
                "bundled sample data/samples/pascal_part not found; run the demo from the \
                 repository root"
                    .into(),
            )
        })
}

pub(super) fn demo(a: &DemoArgs, enc: &EncoderOptions) -> Result<()> {
    setup::ensure(&SetupOptions::default())?;
    let dataset = sample_dataset()?;
    let model = setup::default_model_path();
    let mut opts = IngestOptions::new(&a.out);
    opts.overwrite = true;
    opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ds = crate::dataset::MmsegDataset::open(&dataset)?;
    let report = run_ingest(&ds, &model, enc, &opts)?;
    print_report(&report);

    // Query with the largest part of the validation split, searching the training split.
    let engine = QueryEngine::open(&a.out, enc)?;
    let probe = engine
        .index()
        .regions()
        .iter()
        .filter(|r| r.split == "val" && r.kind == RegionKind::Part)
        .max_by_key(|r| (r.area, std::cmp::Reverse(r.id)))
        .cloned()
        .ok_or_else(|| Error::InvalidArgument("the sample index has no val parts".into()))?;
    let image = dataset.join(&probe.image);
    let b = probe.bbox;
    println!(
        "\nquery: the {:?} region of {} (box {},{},{},{}), searching train parts:",
        probe.label_name,
        image.display(),
        b.x0,
        b.y0,
        b.x1,
        b.y1
    );
    let opts = SearchOptions {
        k: 5,
        split: Some("train".into()),
        kind: Some(RegionKind::Part),
        ..SearchOptions::default()
    };
    print_hits(&engine.search_image_file(&image, Some(b), &opts)?);
    println!(
        "\nindex written to {} — try:\n  partlens info {}\n  partlens query --index {} --image {} --box {},{},{},{} -k 10",
        a.out.display(),
        a.out.display(),
        a.out.display(),
        image.display(),
        b.x0,
        b.y0,
        b.x1,
        b.y1
    );
    Ok(())
}
