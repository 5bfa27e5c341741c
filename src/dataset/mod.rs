//! Dataset readers. Each on-disk format lists its images ([`ImageItem`]) and turns one image into
//! its regions ([`ImageRegions`]); everything downstream is format-agnostic.

pub mod ade20k;
pub mod convert;
pub mod cub;
pub mod keypoints;
pub mod labelmap;
pub mod listing;
pub mod matfile;
pub mod mmseg;
pub mod pascal_part;
pub mod root;
pub mod stats;
pub mod synth;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::region::Region;

pub use ade20k::Ade20kDataset;
pub use cub::CubDataset;
pub use keypoints::{CocoKeypoints, Distance, KeypointSettings};
pub use labelmap::{components, Component, LabelMap, LabelResize};
pub use listing::ListingDataset;
pub use mmseg::MmsegDataset;
pub use pascal_part::PascalPartDataset;
pub use root::DatasetRoot;
pub use stats::{stats, ClassCount, DatasetStats};

/// How regions are cut from label maps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionSettings {
    /// Smallest region kept, in pixels of the original image. The default, 256 (a 16×16
    /// patch), drops slivers too small to carry a part's appearance once resized to 224 px.
    pub min_area: u64,
    /// Margin added on each side of the tight box before squaring, as a fraction of its longest
    /// side (0.1 = 10 %).
    pub margin: f32,
    /// Whether to emit object regions where the dataset has object labels.
    pub objects: bool,
    /// What to do with a label map whose size differs from its image's.
    #[serde(default)]
    pub resize_labels: LabelResize,
}

impl RegionSettings {
    /// Largest accepted margin: a crop 9× the region's longest side.
    pub const MAX_MARGIN: f32 = 4.0;

    /// Checks the settings can produce sensible crops. Settings read back from a manifest are
    /// checked again: a file can say anything.
    pub fn validate(&self) -> crate::Result<()> {
        if !self.margin.is_finite() || !(0.0..=Self::MAX_MARGIN).contains(&self.margin) {
            return Err(crate::Error::InvalidArgument(format!(
                "margin must be between 0 and {} (a fraction of the region's longest side), got {}",
                Self::MAX_MARGIN,
                self.margin
            )));
        }
        Ok(())
    }
}

impl Default for RegionSettings {
    fn default() -> Self {
        RegionSettings {
            min_area: 256,
            margin: 0.1,
            objects: true,
            resize_labels: LabelResize::default(),
        }
    }
}

/// An input (an image, an annotation file or one row of it) that was not ingested, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// File path relative to the dataset root where possible, `file:line` for a listing row.
    pub path: String,
    /// What was wrong.
    pub reason: String,
}

impl Skipped {
    /// A skipped input.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Skipped {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// One image of a dataset and where its annotations are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// Image path relative to the dataset root, `/`-separated (what the index stores).
    pub image: String,
    /// Split name.
    pub split: String,
    /// Absolute or root-joined image path.
    pub image_path: PathBuf,
    /// Part label map (or the reader's per-image annotation file), if the dataset has one.
    pub part_ann: Option<PathBuf>,
    /// Object label map, if the dataset has one.
    pub object_ann: Option<PathBuf>,
}

impl ImageItem {
    /// The per-image annotation file a reader needs (`part_ann`), or an error saying the item
    /// did not come from that reader's [`Dataset::items`].
    pub(crate) fn annotation(&self, what: &str) -> Result<&Path> {
        self.part_ann.as_deref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: this item has no {what}; pass items from the dataset's own items()",
                self.image
            ))
        })
    }
}

/// An image decoded once, with all the regions to embed from it (ids not yet assigned).
#[derive(Debug)]
pub struct ImageRegions {
    /// The decoded image.
    pub image: RgbImage,
    /// Its regions, in a stable order (parts then objects, each in raster order).
    pub regions: Vec<Region>,
    /// Regions of this image that were left out (a bad listing row, a box far outside the
    /// image), with reasons; the image's other regions are kept.
    pub skipped: Vec<Skipped>,
}

impl ImageRegions {
    /// An image with its regions and nothing skipped.
    pub fn new(image: RgbImage, regions: Vec<Region>) -> Self {
        ImageRegions {
            image,
            regions,
            skipped: Vec::new(),
        }
    }
}

/// What every reader knows once it has listed a dataset, before any image is read.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The root folder and the policy for files outside it.
    pub root: DatasetRoot,
    /// The images to ingest, in a deterministic order.
    pub items: Vec<ImageItem>,
    /// Problems found while listing (an annotation without its image, a link loop, …).
    pub problems: Vec<Skipped>,
}

/// What a dataset reader offers the ingest pipeline.
pub trait Dataset: Sync {
    /// Short format name stored in the manifest, e.g. `mmseg`.
    fn format(&self) -> &'static str;
    /// The root, the images and the listing problems.
    fn listing(&self) -> &Listing;
    /// Decodes one image and cuts its regions. Errors name the offending file.
    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions>;
    /// Class names of the whole-image label maps [`Dataset::label_maps`] returns, indexed by
    /// map value (0 = background): `(parts, objects)`. `None` where the format has no such
    /// maps, or has them without names (values are then named `class_<k>`).
    fn map_classes(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        (None, None)
    }
    /// The image's whole part and object label maps, `size` = the image's `(width, height)`,
    /// checked (and, with `--resize-labels nearest`, resized) like the maps regions are cut
    /// from: what dense features are scored against. `None` where the format has none.
    fn label_maps(
        &self,
        _item: &ImageItem,
        _size: (usize, usize),
        _settings: &RegionSettings,
    ) -> Result<(Option<LabelMap>, Option<LabelMap>)> {
        Ok((None, None))
    }
    /// Reader options worth recording in the manifest (e.g. keypoint classes).
    fn options(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The dataset root.
    fn root(&self) -> &Path {
        self.listing().root.path()
    }
    /// The images to ingest, in a deterministic order.
    fn items(&self) -> &[ImageItem] {
        &self.listing().items
    }
    /// Problems found while listing.
    fn listing_problems(&self) -> &[Skipped] {
        &self.listing().problems
    }
    /// The distinct split names of the items, sorted.
    fn splits(&self) -> Vec<String> {
        let mut s: Vec<String> = self.items().iter().map(|i| i.split.clone()).collect();
        s.sort();
        s.dedup();
        s
    }
}

/// The on-disk formats partlens reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `img/<split>/`, `ann/<split>/`, `classes.txt`, optional `obj/` (ADE20K-Part, Pascal-Part,
    /// LIP as their authors distribute them).
    Mmseg,
    /// A COCO-style keypoint JSON with its images beside it (COCO, CrowdPose, AP-10K, …).
    CocoKeypoints,
    /// CUB-200-2011 (`images.txt`, `images/`, `parts/`).
    Cub,
    /// The ADE20K full release (`X.jpg`, `X.json`, instance masks).
    Ade20k,
    /// Pascal-Part as released: `X.jpg` + `X.mat`.
    PascalPart,
    /// Your own regions listed in a `.jsonl` or `.csv` file.
    Listing,
    /// A bare folder of images: each whole image is a region, labelled by its sub-folder.
    Folder,
}

impl Format {
    /// Every format, in the order the help lists them.
    pub const ALL: [Format; 7] = [
        Format::Mmseg,
        Format::CocoKeypoints,
        Format::Cub,
        Format::Ade20k,
        Format::PascalPart,
        Format::Listing,
        Format::Folder,
    ];

    /// The name used on the command line and in manifests (`coco-keypoints`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Mmseg => "mmseg",
            Format::CocoKeypoints => "coco-keypoints",
            Format::Cub => "cub",
            Format::Ade20k => "ade20k",
            Format::PascalPart => "pascal-part",
            Format::Listing => "listing",
            Format::Folder => "folder",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(Format::as_str).collect();
                format!("unknown format {s:?}; formats: {}", names.join(", "))
            })
    }
}

/// Whether a `.json` file looks like one ADE20K image's annotation (`{"annotation": …}`)
/// rather than a COCO-style file (`"images"`, `"annotations"`, …): only its start is read.
fn is_ade_json(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let ok = std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .is_ok();
    ok && String::from_utf8_lossy(&head).contains("\"annotation\"")
}

/// An ADE20K full-release image below `dir` (`X.json` beside `X.jpg` and `X_seg.png`), looked
/// for depth-first through at most `budget` directory entries.
fn find_ade_image(dir: &Path, budget: &mut usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut subdirs = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let p = e.path();
        if p.is_dir() {
            subdirs.push(p);
        } else if p.extension().is_some_and(|x| x == "json") {
            let stem = p.with_extension("");
            let seg = format!("{}_seg.png", stem.display());
            if p.with_extension("jpg").is_file() && Path::new(&seg).is_file() {
                return true;
            }
        }
    }
    subdirs.sort();
    subdirs.into_iter().any(|d| find_ade_image(&d, budget))
}

/// Guesses the format of `path`:
/// - a `.json` file is COCO-style keypoints, a `.jsonl`/`.csv` file a listing;
/// - a folder with `img/`, or with `images/` and `annotations/`, is mmseg (the latter is
///   ADEChallengeData2016); one with `parts/part_locs.txt` is CUB; one with `.mat` files is
///   Pascal-Part;
/// - a folder with ADE20K images (`X.json` + `X.jpg` + `X_seg.png`) somewhere below is the ADE20K
///   full release;
/// - a folder holding one COCO-style `.json` is that file; otherwise it is a bare image folder.
pub fn detect(path: &Path) -> Result<(Format, PathBuf)> {
    let fail = |m: String| Error::Dataset {
        path: path.to_path_buf(),
        message: m,
    };
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("json") if is_ade_json(path) => Err(fail(
                "this is one ADE20K image's annotation; pass the folder that holds the images \
                 (or --format ade20k with that folder)"
                    .into(),
            )),
            Some("json") => Ok((Format::CocoKeypoints, path.to_path_buf())),
            Some("jsonl" | "csv") => Ok((Format::Listing, path.to_path_buf())),
            _ => Err(fail(
                "a dataset file must be a COCO keypoint .json or a .jsonl/.csv listing".into(),
            )),
        };
    }
    if !path.is_dir() {
        return Err(fail("no such file or folder".into()));
    }
    if path.join("img").is_dir()
        || (path.join("images").is_dir() && path.join("annotations").is_dir())
    {
        return Ok((Format::Mmseg, path.to_path_buf()));
    }
    if path.join("parts").join("part_locs.txt").is_file() {
        return Ok((Format::Cub, path.to_path_buf()));
    }
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    let has_ext = |p: &PathBuf, x: &str| p.extension().is_some_and(|e| e == x);
    if files.iter().any(|p| has_ext(p, "mat")) {
        return Ok((Format::PascalPart, path.to_path_buf()));
    }
    // The release's top folders, or its images anywhere below (checked within a budget, so a
    // huge plain image folder is not walked twice).
    if path.join("ADE20K_2021_17_01").is_dir()
        || path.join("images").join("ADE").is_dir()
        || path.join("dataset").join("ADE20K_2021_17_01").is_dir()
        || find_ade_image(path, &mut 20_000)
    {
        return Ok((Format::Ade20k, path.to_path_buf()));
    }
    let mut jsons: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| has_ext(p, "json") && !is_ade_json(p))
        .collect();
    match jsons.len() {
        1 => Ok((Format::CocoKeypoints, jsons.remove(0))),
        // Nothing else matched: treat it as a bare folder of images.
        0 => Ok((Format::Folder, path.to_path_buf())),
        _ => Err(fail(format!(
            "several .json files ({}); pass the one to read",
            jsons
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// How to open a dataset: the format (detected when `None`) and per-format choices.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Format; detected from the path when `None`.
    pub format: Option<Format>,
    /// Keypoint classes and distance rule (COCO-style keypoints, CUB).
    pub keypoints: KeypointSettings,
    /// Margin for object crops computed at listing time (keypoint readers).
    pub margin: f32,
    /// Deepest ADE20K part level to index: 1 (parts) or 2 (also parts of parts).
    pub part_level: u8,
    /// Pascal-Part class map (`old new` per line, `-` drops a class).
    pub class_map: Option<PathBuf>,
    /// Read files that annotations or links place outside the dataset folder.
    pub allow_outside_root: bool,
}

/// Opens the dataset at `path`.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn Dataset>> {
    let (format, path) = match opts.format {
        Some(f) => (f, path.to_path_buf()),
        None => detect(path)?,
    };
    Ok(match format {
        Format::Mmseg => Box::new(MmsegDataset::open_with(path, opts)?),
        Format::CocoKeypoints => {
            let json = if path.is_dir() {
                detect(&path)?.1
            } else {
                path
            };
            Box::new(CocoKeypoints::open(json, opts)?)
        }
        Format::Cub => Box::new(CubDataset::open(path, opts)?),
        Format::Ade20k => Box::new(Ade20kDataset::open(path, opts)?),
        Format::PascalPart => Box::new(PascalPartDataset::open(path, opts)?),
        Format::Listing => Box::new(ListingDataset::listing(path, opts)?),
        Format::Folder => Box::new(ListingDataset::folder(path, opts)?),
    })
}
