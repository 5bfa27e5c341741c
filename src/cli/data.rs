//! Commands that read datasets or write files: setup, demo, ingest, synth, convert, stats.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{one_of, print};
use partlens::dataset::{
    Distance, Format, KeypointSettings, LabelResize, OpenOptions, RegionSettings,
};
use partlens::encoder::EncoderOptions;
use partlens::index::{GraphBuilder, HnswParams};
use partlens::ingest::IngestOptions;
use partlens::query::{QueryEngine, SearchOptions};
use partlens::region::RegionKind;
use partlens::setup::{self, SetupOptions};
use partlens::{Error, Result};

/// `partlens setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Also install the test suite's Python cross-check tools (Pillow, pyarrow, the reference
    /// photos).
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

/// Options every dataset-reading command shares.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Dataset format (default: detected from the path).
    #[arg(long, value_parser = one_of(&Format::ALL, Format::as_str))]
    pub format: Option<Format>,
    /// Keypoint classes to crop, comma-separated (coco-keypoints default:
    /// nose,right_wrist,left_ankle; cub default: the paper's four bird parts). Unknown names
    /// are refused with the list of valid ones.
    #[arg(long, value_delimiter = ',')]
    pub keypoints: Option<Vec<String>>,
    /// Read files that annotations or symbolic links place outside the dataset folder (by
    /// default they are skipped and reported).
    #[arg(long)]
    pub allow_outside_root: bool,
    /// Label maps of another size than their image: `never` skips the image and says so,
    /// `nearest` scales the map to the image (Pillow's NEAREST).
    #[arg(long, default_value = "never",
          value_parser = one_of(&LabelResize::ALL, LabelResize::as_str))]
    pub resize_labels: LabelResize,
    /// Smallest region kept, in pixels.
    #[arg(long, default_value_t = RegionSettings::default().min_area)]
    pub min_area: u64,
}

/// `partlens ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Dataset, any of the formats partlens reads (detected, or given with --format): an mmseg
    /// folder (img/ ann/ [obj/] or ADEChallengeData2016's images/ annotations/), a COCO-style
    /// keypoint .json, a CUB-200-2011 folder, the ADE20K full release, a Pascal-Part folder of
    /// .jpg + .mat, a .jsonl/.csv region listing, or a bare folder of images.
    #[arg(long)]
    pub dataset: PathBuf,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Keypoint distance: seed-quirk (over x, y, annotation id, as the paper's code; default)
    /// or plain (x, y).
    #[arg(long, default_value = "seed-quirk",
          value_parser = one_of(&Distance::ALL, Distance::as_str))]
    pub distance: Distance,
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
    /// Margin around each region before squaring, as a fraction of its longest side (0 to 4).
    #[arg(long, default_value_t = RegionSettings::default().margin, allow_negative_numbers = true)]
    pub margin: f32,
    /// Do not index object regions.
    #[arg(long)]
    pub no_objects: bool,
    /// Regions per inference batch (1 to 4096). Default: 32 on CPU, 256 on CUDA (where a
    /// batch must be large enough to keep the GPU busy).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Stop at the first unreadable input instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Replace an existing partlens index (never anything else).
    #[arg(long)]
    pub overwrite: bool,
    /// Also store every image's dense token grid (for `probe segment`): the image resized to
    /// --dense-size on its short side, encoded in sliding windows, tokens averaged per cell.
    #[arg(long)]
    pub dense: bool,
    /// Short side of the resized image for --dense, pixels: a multiple of the model's patch
    /// (or stride) and at least its input.
    #[arg(long, default_value_t = partlens::dense::DEFAULT_SIZE)]
    pub dense_size: usize,
    /// Step between --dense windows, pixels (default: half the model's input, in whole cells).
    #[arg(long)]
    pub dense_stride: Option<usize>,
    /// Also keep each region's own patch tokens, float16 (for `probe attentive`; the disk
    /// cost per region is tokens × dims × 2 bytes: 49 × 1280 × 2 = 125 KB for MobileNetV2).
    #[arg(long)]
    pub tokens: bool,
    /// HNSW links per node (M; 2 M on layer 0): more is better recall and a larger graph.
    #[arg(long = "hnsw-m", default_value_t = HnswParams::default().max_nb_connection)]
    pub hnsw_m: usize,
    /// HNSW candidate list while building: more is a better graph and a slower build.
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    /// What links the HNSW graph: partlens's own builder, or the hnsw_rs crate (slower; the
    /// file and the search are the same).
    #[arg(long, default_value = "partlens", value_parser = one_of(&GraphBuilder::ALL, GraphBuilder::as_str))]
    pub graph_builder: GraphBuilder,
    /// Regions per segment: a segment (its files, its graphs) is committed at the first
    /// image boundary at or past this many regions; a killed run resumes after the last one.
    #[arg(long, default_value_t = partlens::store::manifest::DEFAULT_SEGMENT_SIZE)]
    pub segment_size: usize,
    /// Continue an interrupted run (killed, power loss, full disk) after its last committed
    /// segment; the other arguments must be the same as the first run's.
    #[arg(long)]
    pub resume: bool,
    /// Take only share i of N of the dataset's images (the first 8 bytes of the SHA-256 of
    /// an image's relative path, little-endian, modulo N: stable when images are added);
    /// join the shards' indexes with `partlens merge`.
    #[arg(long, value_name = "i/N", value_parser = parse_shard)]
    pub shard: Option<partlens::ingest::Shard>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_shard(s: &str) -> std::result::Result<partlens::ingest::Shard, String> {
    partlens::ingest::Shard::parse(s).map_err(|e| e.to_string())
}

impl DatasetArgs {
    fn open_options(&self, margin: f32, part_level: u8, class_map: Option<PathBuf>) -> OpenOptions {
        OpenOptions {
            format: self.format,
            keypoints: KeypointSettings {
                classes: self.keypoints.clone().unwrap_or_default(),
                ..KeypointSettings::default()
            },
            margin,
            part_level,
            class_map,
            allow_outside_root: self.allow_outside_root,
        }
    }
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
        min_area: a.data.min_area,
        margin: a.margin,
        objects: !a.no_objects,
        resize_labels: a.data.resize_labels,
    };
    opts.strict = a.strict;
    opts.overwrite = a.overwrite;
    opts.tokens = a.tokens;
    opts.hnsw = HnswParams {
        max_nb_connection: a.hnsw_m,
        ef_construction: a.ef_construction,
    };
    opts.graph_builder = a.graph_builder;
    opts.segment_size = a.segment_size;
    opts.resume = a.resume;
    opts.shard = a.shard;
    opts.dense = a.dense.then_some(partlens::dense::DenseOptions {
        size: a.dense_size,
        stride: a.dense_stride,
    });
    opts.progress = !a.json && !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Settings are checked before the dataset is listed (which can take a while).
    opts.settings.validate()?;
    let mut enc = enc.clone();
    enc.spec_file = a.spec.clone();
    let mut open = a
        .data
        .open_options(a.margin, a.part_level, a.class_map.clone());
    open.keypoints.distance = a.distance;
    let dataset = partlens::dataset::open(&a.dataset, &open)?;
    let encoder = partlens::Encoder::load(&model, &enc)?;
    opts.batch_size = a
        .batch_size
        .unwrap_or_else(|| partlens::ingest::default_batch_size(encoder.provider()));
    let report = partlens::ingest::ingest_with_encoder(dataset.as_ref(), &encoder, &opts)?;
    if a.json {
        print::json(&serde_json::json!({
            "index": report.path,
            "seconds": report.seconds,
            "regions_per_second": report.regions_per_second(),
            "hnsw_seconds": report.hnsw_seconds,
            "segments": report.manifest.segments.len(),
            "resumed_after": report.resumed_after,
            "cleaned": report.cleaned,
            "manifest": report.manifest,
        }))
    } else {
        print::report(&report);
        Ok(())
    }
}

/// `partlens encode-bench`.
#[derive(Debug, Args)]
pub struct EncodeBenchArgs {
    /// ONNX model (default: the one `partlens setup` installed).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Regions per batch (default: 32 on CPU, 256 on CUDA, as ingest).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Regions to embed (rounded up to whole batches).
    #[arg(long, default_value_t = 10_000)]
    pub regions: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn encode_bench(a: &EncodeBenchArgs, enc: &EncoderOptions) -> Result<()> {
    let model = default_model(&a.model)?;
    let encoder = partlens::Encoder::load(&model, enc)?;
    let batch = a
        .batch_size
        .unwrap_or_else(|| partlens::ingest::default_batch_size(encoder.provider()));
    partlens::ingest::check_batch_size(batch, encoder.preprocessor().tensor_len())?;
    let t = partlens::encoder::throughput::measure(&encoder, batch, a.regions)?;
    if a.json {
        return print::json(&serde_json::json!({
            "model": encoder.spec().name,
            "provider": encoder.provider(),
            "precision": encoder.precision().as_str(),
            "io_binding": encoder.io_binding(),
            "throughput": t,
        }));
    }
    println!(
        "encoder alone: {} on {}, {}: {} regions in {:.2} s = {:.1} regions/s (batches of {}, {} session{}, {:.1} ms per batch p50, I/O binding {})",
        encoder.spec().name,
        encoder.provider(),
        encoder.precision().as_str(),
        t.regions,
        t.seconds,
        t.regions_per_second,
        t.batch_size,
        t.sessions,
        if t.sessions == 1 { "" } else { "s" },
        1e3 * t.batch_seconds_p50,
        if encoder.io_binding() { "on" } else { "off" }
    );
    Ok(())
}

/// `partlens convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source format: pascal-part or ade20k.
    #[arg(long, value_parser = ["pascal-part", "ade20k"])]
    pub from: String,
    /// Target layout (only mmseg).
    #[arg(long, default_value = "mmseg", value_parser = ["mmseg"])]
    pub to: String,
    /// Source dataset.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Split name to file the images under (default: the dataset's own: `training` and
    /// `validation` for ADE20K, `all` for Pascal-Part). A plain name: it becomes a folder.
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
    /// Read files that annotations or links place outside the dataset folder.
    #[arg(long)]
    pub allow_outside_root: bool,
}

pub(super) fn convert(a: &ConvertArgs) -> Result<()> {
    use partlens::dataset::convert::{ade20k_to_mmseg, pascal_part_to_mmseg, ClassList};
    let list = |p: &Option<PathBuf>| p.as_deref().map(ClassList::read).transpose();
    if let Some(s) = &a.split {
        partlens::dataset::root::check_component(s, "--split")?;
    }
    let open = OpenOptions {
        class_map: a.class_map.clone(),
        part_level: 1,
        allow_outside_root: a.allow_outside_root,
        ..OpenOptions::default()
    };
    let s = if a.from == "pascal-part" {
        if a.classes.is_some() || a.part_classes.is_some() {
            return Err(Error::InvalidArgument(
                "--classes and --part-classes are for ADE20K; Pascal-Part takes --class-map".into(),
            ));
        }
        let ds = partlens::dataset::PascalPartDataset::open(&a.dataset, &open)?;
        pascal_part_to_mmseg(&ds, &a.out, a.split.as_deref().unwrap_or("all"))?
    } else {
        if a.class_map.is_some() {
            return Err(Error::InvalidArgument(
                "--class-map is for Pascal-Part; ADE20K takes --classes and --part-classes".into(),
            ));
        }
        let ds = partlens::dataset::Ade20kDataset::open(&a.dataset, &open)?;
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
    };
    println!(
        "wrote {} images ({} part classes, {} object classes) to {} in the mmseg layout",
        s.images,
        s.part_classes,
        s.object_classes,
        a.out.display()
    );
    for p in &s.skipped {
        println!("skipped  {}: {}", p.path, p.reason);
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
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn dataset_stats(a: &StatsArgs) -> Result<()> {
    let settings = RegionSettings {
        min_area: a.data.min_area,
        resize_labels: a.data.resize_labels,
        ..RegionSettings::default()
    };
    let ds = partlens::dataset::open(&a.dataset, &a.data.open_options(settings.margin, 1, None))?;
    let st = partlens::dataset::stats(ds.as_ref(), &settings);
    if a.json {
        return print::json(&st);
    }
    println!(
        "{} ({}): {} images read, {} regions of ≥ {} px, splits {}",
        a.dataset.display(),
        st.format,
        st.images,
        st.regions,
        a.data.min_area,
        st.splits.join(", ")
    );
    for c in &st.classes {
        println!("  {:>7}  {:<6} {}", c.regions, c.kind.as_str(), c.label);
    }
    for s in &st.skipped {
        println!("skipped  {}: {}", s.path, s.reason);
    }
    Ok(())
}

/// `partlens synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (1 to 10,000,000).
    #[arg(long, default_value_t = 100)]
    pub images: usize,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels (64 to 8192).
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Nuisance, 0 to 1: 0 gives every part class a fixed colour and texture (any encoder
    /// separates them); higher mixes in random colours (weight F) and textures (probability F),
    /// squeezes object frames (to 1/(1 + 0.3 F)), shrinks and shifts parts in their boxes, colours
    /// and noises the background, and from 0.5 adds unannotated distractor shapes, so that
    /// classes show only in shape, layout and context. 1.0 is the hard setting.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub variation: f32,
}

pub(super) fn synth(a: &SynthArgs) -> Result<()> {
    let t = std::time::Instant::now();
    let s = partlens::dataset::synth::generate(
        &a.out,
        &partlens::dataset::synth::SynthOptions {
            images: a.images,
            seed: a.seed,
            size: a.size,
            variation: a.variation,
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

pub(super) fn default_model(model: &Option<PathBuf>) -> Result<PathBuf> {
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
    let ds = partlens::MmsegDataset::open(&dataset)?;
    let encoder = partlens::Encoder::load(&model, enc)?;
    opts.batch_size = partlens::ingest::default_batch_size(encoder.provider());
    let report = partlens::ingest::ingest_with_encoder(&ds, &encoder, &opts)?;
    print::report(&report);

    // Query with the largest part of the validation split, searching the training split.
    let engine = QueryEngine::open(&a.out, enc)?;
    let probe = engine
        .index()
        .read_all_regions()?
        .into_iter()
        .filter(|r| r.split == "val" && r.kind == RegionKind::Part)
        .max_by_key(|r| (r.area, std::cmp::Reverse(r.id)))
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
    print::hits(&engine.search_image_file(&image, Some(b), &opts)?);

    // The paper's retrieval protocol on the same index, parts next to objects.
    println!("\nretrieval (every region queries all of its kind; scikit-learn AP):");
    for kind in RegionKind::ALL {
        let sel = partlens::eval::Selection {
            feature: partlens::Feature::Mean,
            kind,
            split: None,
        };
        let opts = partlens::eval::retrieval::RetrievalOptions::default();
        let r = partlens::eval::retrieval::retrieval(engine.index(), &sel, &opts)?;
        println!(
            "  {:<7} mAP {:5.1} %  recall@1 {:5.1} %  ({} regions, {} classes queried)",
            kind.as_str(),
            r.map.unwrap_or(f64::NAN),
            r.recall[0].recall,
            r.regions,
            r.classes
        );
    }
    println!(
        "\nindex written to {} — try:\n  partlens info {}\n  partlens query --index {} --image {} --box {},{},{},{} -k 10\n  partlens probe knn --index {} --kind object\n  partlens report --index {} --out reports/demo",
        a.out.display(),
        a.out.display(),
        a.out.display(),
        image.display(),
        b.x0,
        b.y0,
        b.x1,
        b.y1,
        a.out.display(),
        a.out.display()
    );
    println!(
        "segmentation (dense grids of whole images, mmseg's mIoU):\n  partlens ingest --dataset {} --dense --tokens --out {}-dense --overwrite\n  partlens probe segment --index {}-dense --labels objects --overlays overlays/demo\n  partlens probe attentive --index {}-dense --kind object",
        dataset.display(),
        a.out.display(),
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
