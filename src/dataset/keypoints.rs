//! The paper's keypoint-centred part crops (Zhu et al. 2023, part retrieval) and the reader for
//! COCO-style keypoint files (COCO, CrowdPose, AI Challenger, OCHuman, AP-10K, Animal-Pose, …).
//!
//! Rule: keep the visible keypoints (v = 2) of the chosen classes; skip a person with fewer than
//! two; d = distance to the nearest other kept keypoint of the same image; keep 20 < d/2 < 1000;
//! crop the square of half side round(d/4) centred on the keypoint (black outside the image).
//! The seed code measures d over (x, y, annotation id), so other people's keypoints are pushed
//! away by the difference of annotation ids: [`Distance::SeedQuirk`] reproduces that (default),
//! [`Distance::Plain`] uses (x, y).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings, Skipped,
};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;
use crate::region::{PixelBox, Region, RegionKind};

/// The paper's default keypoint classes for people.
pub const PAPER_PERSON_KEYPOINTS: [&str; 3] = ["nose", "right_wrist", "left_ankle"];

/// How the distance to the nearest other keypoint is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    /// Over (x, y, annotation id), as the paper's code does (the default, to reproduce it).
    #[default]
    SeedQuirk,
    /// Over (x, y).
    Plain,
}

impl Distance {
    /// Both rules.
    pub const ALL: [Distance; 2] = [Distance::SeedQuirk, Distance::Plain];

    /// `seed-quirk` or `plain`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Distance::SeedQuirk => "seed-quirk",
            Distance::Plain => "plain",
        }
    }
}

/// One kept keypoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keypoint {
    /// Column, pixels.
    pub x: f64,
    /// Row, pixels.
    pub y: f64,
    /// The annotation (person) it belongs to.
    pub group: u64,
}

/// Most kept keypoints in one image: the distance rule compares every pair, so an image with
/// more (COCO images hold at most a few hundred) is an annotation error and is refused with
/// its count rather than computed for minutes.
pub const MAX_POINTS_PER_IMAGE: usize = 10_000;

/// Python's `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// For each keypoint of one image, its crop box if it passes the paper's distance rule. A
/// keypoint that is not finite or lies beyond [`MAX_COORD`] gets no box.
pub fn crop_boxes(points: &[Keypoint], distance: Distance) -> Vec<Option<PixelBox>> {
    let sane = |p: &Keypoint| {
        [p.x, p.y]
            .iter()
            .all(|v| v.is_finite() && v.abs() <= MAX_COORD)
    };
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if !sane(p) {
                return None;
            }
            let d = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, q)| {
                    let g = match distance {
                        Distance::SeedQuirk => p.group as f64 - q.group as f64,
                        Distance::Plain => 0.0,
                    };
                    ((p.x - q.x).powi(2) + (p.y - q.y).powi(2) + g * g).sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            if !(d / 2.0 > 20.0 && d / 2.0 < 1000.0) {
                return None;
            }
            let r = round_half_even(d / 4.0);
            // PIL's crop rounds each coordinate with Python's round.
            let c = |v: f64| round_half_even(v) as i64;
            PixelBox::new(c(p.x - r), c(p.y - r), c(p.x + r), c(p.y + r))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: Option<u32>,
    height: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    /// Optional when the file has a single category.
    #[serde(default)]
    category_id: Option<u64>,
    #[serde(default)]
    keypoints: Vec<f64>,
    #[serde(default)]
    bbox: Option<Vec<f64>>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Debug, Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
    #[serde(default)]
    keypoints: Vec<String>,
}

/// Which keypoints to crop and how.
#[derive(Debug, Clone, PartialEq)]
pub struct KeypointSettings {
    /// Keypoint class names to keep; empty = the reader's paper defaults
    /// ([`PAPER_PERSON_KEYPOINTS`] for COCO-style files, the bird parts for CUB).
    pub classes: Vec<String>,
    /// Distance variant.
    pub distance: Distance,
}

impl Default for KeypointSettings {
    fn default() -> Self {
        KeypointSettings {
            classes: Vec::new(),
            distance: Distance::SeedQuirk,
        }
    }
}

/// One image's regions and its declared `(width, height)`.
type ImageCrops = (Vec<Region>, Option<(u32, u32)>);

/// A COCO-style keypoint file and the images beside it.
#[derive(Debug)]
pub struct CocoKeypoints {
    listing: Listing,
    /// Per image: its regions and the size the file declares.
    regions: BTreeMap<String, ImageCrops>,
    settings: KeypointSettings,
}

impl CocoKeypoints {
    /// Reads `json` and computes every image's crops. Images are looked up beside the file, then
    /// in `images/`; both must stay inside that folder unless `opts.allow_outside_root`.
    pub fn open(json: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let json = json.as_ref();
        let margin = opts.margin;
        let mut settings = opts.keypoints.clone();
        if settings.classes.is_empty() {
            settings.classes = PAPER_PERSON_KEYPOINTS
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        let settings = &settings;
        // Parsed from a buffered reader, not a string: COCO files run to hundreds of MB and the
        // text would double the peak memory.
        let reader =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(json).at(json)?);
        let file: CocoFile = serde_json::from_reader(reader)
            .map_err(|e| Error::annotation(json, format!("not a COCO keypoint file: {e}")))?;
        let root: PathBuf = crate::files::parent_of(json);
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let split = json
            .file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .trim_start_matches("person_keypoints_")
                    .to_string()
            })
            .unwrap_or_default();
        let cats: BTreeMap<u64, &CocoCategory> =
            file.categories.iter().map(|c| (c.id, c)).collect();
        let mut known: Vec<&String> = file.categories.iter().flat_map(|c| &c.keypoints).collect();
        known.sort();
        known.dedup();
        let unknown: Vec<&String> = settings
            .classes
            .iter()
            .filter(|c| !known.contains(c))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::annotation(
                json,
                format!(
                    "keypoint classes {unknown:?} are not in this file; its keypoints are {known:?} \
                     (choose with --keypoints)"
                ),
            ));
        }
        let mut by_image: BTreeMap<u64, Vec<&CocoAnnotation>> = BTreeMap::new();
        let mut problems = Vec::new();
        for a in &file.annotations {
            by_image.entry(a.image_id).or_default().push(a);
        }
        let mut images: Vec<&CocoImage> = file.images.iter().collect();
        images.sort_by_key(|i| i.id);
        let mut items = Vec::new();
        let mut regions = BTreeMap::new();
        let mut seen_ids = std::collections::BTreeSet::new();
        for img in images {
            let rel = img.file_name.replace('\\', "/");
            // A second entry with an id or a file already listed would get no annotations, or
            // the first one's twice: reported, not indexed.
            if !seen_ids.insert(img.id) || regions.contains_key(&rel) {
                problems.push(Skipped::new(
                    &rel,
                    format!(
                        "image id {} or file {rel} is listed twice in the file; the later entry \
                         is left out",
                        img.id
                    ),
                ));
                continue;
            }
            let anns = by_image.remove(&img.id).unwrap_or_default();
            // Beside the file, else in `images/`; the first place's reason is the one reported.
            let path = match droot.existing_file(&root, &rel).or_else(|e| {
                droot
                    .existing_file(&root.join("images"), &rel)
                    .map_err(|_| e)
            }) {
                Ok(p) => p,
                Err(reason) => {
                    problems.push(Skipped::new(rel, reason));
                    continue;
                }
            };
            let rs = image_regions(
                &rel,
                &split,
                img,
                &anns,
                &cats,
                settings,
                margin,
                json,
                &mut problems,
            )?;
            items.push(ImageItem {
                image: rel.clone(),
                split: split.clone(),
                image_path: path,
                part_ann: None,
                object_ann: None,
            });
            regions.insert(rel, (rs, img.width.zip(img.height)));
        }
        for (id, anns) in by_image {
            problems.push(Skipped::new(
                format!("image id {id}"),
                format!(
                    "{} annotations refer to an image not in the file",
                    anns.len()
                ),
            ));
        }
        Ok(CocoKeypoints {
            listing: Listing {
                root: droot,
                items,
                problems,
            },
            regions,
            settings: settings.clone(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn image_regions(
    rel: &str,
    split: &str,
    img: &CocoImage,
    anns: &[&CocoAnnotation],
    cats: &BTreeMap<u64, &CocoCategory>,
    settings: &KeypointSettings,
    margin: f32,
    json: &Path,
    problems: &mut Vec<Skipped>,
) -> Result<Vec<Region>> {
    // Kept keypoints in annotation order, then keypoint-class order.
    let mut points = Vec::new();
    let mut meta = Vec::new();
    let mut objects = Vec::new();
    for (ai, a) in anns.iter().enumerate() {
        let cat_id = match (a.category_id, cats.len()) {
            (Some(id), _) => id,
            (None, 1) => *cats.keys().next().expect("one category"),
            (None, _) => {
                return Err(Error::annotation(
                    json,
                    format!(
                        "annotation {} has no category_id and the file has several categories",
                        a.id
                    ),
                ))
            }
        };
        let cat = cats.get(&cat_id).ok_or_else(|| {
            Error::annotation(
                json,
                format!("annotation {} has unknown category {cat_id}", a.id),
            )
        })?;
        if a.keypoints.len() != 3 * cat.keypoints.len() {
            return Err(Error::annotation(
                json,
                format!(
                    "annotation {} has {} keypoint values; category {:?} needs 3 × {}",
                    a.id,
                    a.keypoints.len(),
                    cat.name,
                    cat.keypoints.len()
                ),
            ));
        }
        let mut kept = Vec::new();
        // Keypoint-index order, whatever order the classes were asked in.
        let chosen = cat
            .keypoints
            .iter()
            .enumerate()
            .filter(|(_, n)| settings.classes.contains(n));
        for (k, want) in chosen {
            let (x, y, v) = (
                a.keypoints[3 * k],
                a.keypoints[3 * k + 1],
                a.keypoints[3 * k + 2],
            );
            if v != 2.0 {
                continue;
            }
            // Without a declared size, a keypoint is still bounded: images are at most
            // MAX_COORD pixels wide, and larger values would overflow the crop arithmetic.
            let (w, h) = img
                .width
                .zip(img.height)
                .map_or((MAX_COORD, MAX_COORD), |(w, h)| {
                    (f64::from(w), f64::from(h))
                });
            let outside = !(0.0..=w).contains(&x) || !(0.0..=h).contains(&y);
            if outside {
                problems.push(Skipped::new(
                    rel,
                    format!(
                        "annotation {}: keypoint {want} at ({x}, {y}) lies outside the image",
                        a.id
                    ),
                ));
                continue;
            }
            kept.push((Keypoint { x, y, group: a.id }, k, *cat));
        }
        if kept.len() >= 2 {
            for (p, k, c) in kept {
                points.push(p);
                meta.push((k, c, ai));
            }
        }
        let declared = img.width.zip(img.height);
        match a.bbox.as_deref() {
            // A box reaching far past the size the file declares is a wrong annotation.
            Some(&[x, y, w, h])
                if a.iscrowd == 0
                    && declared.is_some_and(|(iw, ih)| {
                        let reach = crate::ingest::MAX_CROP_FACTOR as f64 * f64::from(iw.max(ih));
                        !(x.abs() <= reach && y.abs() <= reach && w <= reach && h <= reach)
                    }) =>
            {
                let (iw, ih) = declared.unwrap_or_default();
                problems.push(Skipped::new(
                    rel,
                    format!(
                        "annotation {}: box [{x}, {y}, {w}, {h}] reaches far outside the \
                         {iw}×{ih} image",
                        a.id
                    ),
                ));
            }
            Some(&[x, y, w, h]) if a.iscrowd == 0 => objects.push(([x, y, w, h], *cat, ai)),
            Some(b) if a.iscrowd == 0 => problems.push(Skipped::new(
                rel,
                format!(
                    "annotation {}: bbox {b:?} is not [x, y, width, height]",
                    a.id
                ),
            )),
            _ => {}
        }
    }
    if points.len() > MAX_POINTS_PER_IMAGE {
        problems.push(Skipped::new(
            rel,
            format!(
                "{} keypoints in one image (at most {MAX_POINTS_PER_IMAGE}): its keypoint \
                 crops are left out",
                points.len()
            ),
        ));
        points.clear();
        meta.clear();
    }
    let boxes = crop_boxes(&points, settings.distance);
    let mut out = Vec::new();
    for (b, (k, cat, ai)) in boxes.into_iter().zip(meta) {
        let Some(b) = b else { continue };
        out.push(keypoint_region(
            rel,
            split,
            (k as u32, &cat.keypoints[k]),
            (cat.id as u32, &cat.name),
            ai as u32,
            b,
        ));
    }
    for (xywh, cat, ai) in objects {
        match object_box_region(
            rel,
            split,
            (cat.id as u32, &cat.name),
            ai as u32,
            xywh,
            margin,
        ) {
            Ok(r) => out.push(r),
            Err(reason) => problems.push(Skipped::new(
                rel,
                format!("annotation {}: {reason}", anns[ai].id),
            )),
        }
    }
    Ok(out)
}

/// Largest coordinate accepted from an annotation, in pixels: well past any image partlens can
/// decode (Pillow's limit allows at most ~179 M pixels), small enough that crop arithmetic on
/// it never overflows.
pub const MAX_COORD: f64 = (1u64 << 30) as f64;

/// Largest object box accepted, in pixels: 2^36, hundreds of times any image partlens can
/// decode (Pillow's limit is ~2^27.4 pixels), and small enough that its whole-box mask is a
/// handful of runs.
pub const MAX_BOX_AREA: u64 = 1 << 36;

/// An object region for a box given as `[x, y, w, h]` (COCO, CUB): pixels from floor(x) to
/// ceil(x + w), mask the whole box, crop the square around it with `margin`. A box that is
/// empty, not finite or beyond [`MAX_COORD`] is an error (the reason), never a crash.
pub(crate) fn object_box_region(
    image: &str,
    split: &str,
    (label, name): (u32, &str),
    instance: u32,
    [x, y, w, h]: [f64; 4],
    margin: f32,
) -> std::result::Result<Region, String> {
    let values = [x, y, x + w, y + h];
    if values.iter().any(|v| !v.is_finite() || v.abs() > MAX_COORD) {
        return Err(format!(
            "box [{x}, {y}, {w}, {h}] has coordinates beyond ±{MAX_COORD} pixels"
        ));
    }
    let bb = PixelBox::new(
        x.floor() as i64,
        y.floor() as i64,
        (x + w).ceil() as i64,
        (y + h).ceil() as i64,
    )
    .ok_or_else(|| format!("box [{x}, {y}, {w}, {h}] is empty or inverted"))?;
    let area = (bb.width() as u64).saturating_mul(bb.height() as u64);
    if area > MAX_BOX_AREA {
        return Err(format!(
            "box [{x}, {y}, {w}, {h}] covers {area} pixels, far more than any image partlens \
             reads"
        ));
    }
    Ok(Region {
        id: 0,
        image: image.to_string(),
        split: split.to_string(),
        kind: RegionKind::Object,
        label,
        label_name: name.to_string(),
        object_label: Some(label),
        object_name: Some(name.to_string()),
        instance,
        bbox: bb,
        crop_box: bb.square_crop(margin),
        area,
        mask_rle: whole_box_rle(area),
    })
}

/// The RLE mask of a whole box of `area` pixels (runs are `u32`: a larger box is split into
/// runs joined by empty outside runs).
fn whole_box_rle(area: u64) -> Vec<u32> {
    let mut rle = vec![0u32];
    let mut left = area;
    while left > 0 {
        let run = left.min(u64::from(u32::MAX));
        if rle.len() > 1 {
            rle.push(0);
        }
        rle.push(run as u32);
        left -= run;
    }
    rle
}

/// A part region for a keypoint crop `b`: its box is the crop, its mask the whole box.
pub(crate) fn keypoint_region(
    image: &str,
    split: &str,
    (label, label_name): (u32, &str),
    (object, object_name): (u32, &str),
    instance: u32,
    b: PixelBox,
) -> Region {
    let area = (b.width() * b.height()) as u64;
    Region {
        id: 0,
        image: image.to_string(),
        split: split.to_string(),
        kind: RegionKind::Part,
        label,
        label_name: label_name.to_string(),
        object_label: Some(object),
        object_name: Some(object_name.to_string()),
        instance,
        bbox: b,
        crop_box: b,
        area,
        mask_rle: whole_box_rle(area),
    }
}

impl Dataset for CocoKeypoints {
    fn format(&self) -> &'static str {
        "coco-keypoints"
    }

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn options(&self) -> serde_json::Value {
        serde_json::json!({"keypoint_classes": self.settings.classes, "distance": self.settings.distance})
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let (regions, size) = self.regions.get(&item.image).cloned().unwrap_or_default();
        if let Some((w, h)) = size {
            if (image.width(), image.height()) != (w, h) {
                return Err(Error::annotation(
                    &item.image_path,
                    format!(
                        "image is {}×{} but the keypoint file says {w}×{h}",
                        image.width(),
                        image.height()
                    ),
                ));
            }
        }
        let regions = regions
            .into_iter()
            .filter(|r| settings.objects || r.kind == RegionKind::Part)
            .collect();
        Ok(ImageRegions::new(image, regions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        assert_eq!(round_half_even(2.4), 2.0);
    }

    #[test]
    fn distance_rule_and_quirk() {
        // Two keypoints of one person 100 px apart: d/2 = 50 keeps both, half side 25.
        let a = Keypoint {
            x: 100.0,
            y: 100.0,
            group: 7,
        };
        let b = Keypoint {
            x: 200.0,
            y: 100.0,
            group: 7,
        };
        let boxes = crop_boxes(&[a, b], Distance::Plain);
        assert_eq!(boxes[0], PixelBox::new(75, 75, 125, 125));
        // Too close (d/2 = 10): dropped.
        let c = Keypoint {
            x: 120.0,
            y: 100.0,
            group: 7,
        };
        assert_eq!(crop_boxes(&[a, c], Distance::Plain), vec![None, None]);
        // Another person's keypoint 30 px away, annotation ids 1000 apart: plain finds it
        // (d/2 = 15 drops it), the seed's quirk pushes it 1000 away (d/2 ≈ 500 keeps it).
        let d = Keypoint {
            x: 130.0,
            y: 100.0,
            group: 1007,
        };
        assert_eq!(crop_boxes(&[a, d], Distance::Plain)[0], None);
        assert!(crop_boxes(&[a, d], Distance::SeedQuirk)[0].is_some());
    }
}
