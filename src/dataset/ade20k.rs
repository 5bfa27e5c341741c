//! The ADE20K full release (`ADE20K_2021_17_01`): `X.jpg` + `X.json` + `X/instance_NNN_X.png`
//! (+ `X_seg.png`, `X_parts_N.png`). Every annotated instance is one region: objects are
//! `part_level` 0, parts level 1 (and 2, parts of parts, with `max_part_level` 2). A part knows
//! its object through `ispartof`, so a region is "wheel" of "car". Pixels are the instance mask's
//! 255 values (128 marks occluded, amodal pixels, which are not visible).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::labelmap::{whole_region, LabelMap};
use super::{Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings};
use crate::error::{Error, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

#[derive(Debug, Deserialize)]
struct AdeFile {
    annotation: AdeAnnotation,
}

#[derive(Debug, Deserialize)]
struct AdeAnnotation {
    object: Vec<AdeObject>,
}

/// One annotated instance of an ADE20K image's JSON.
#[derive(Debug, Deserialize)]
pub(crate) struct AdeObject {
    /// Instance id within the image.
    pub id: u64,
    /// WordNet-style synonym list, e.g. "car, auto, automobile".
    pub name: String,
    /// Class id (= R/10·256 + G in the RGB maps).
    pub name_ndx: u32,
    /// Level and parent.
    pub parts: AdeParts,
    instance_mask: String,
}

/// Where an instance sits in the part hierarchy.
#[derive(Debug, Deserialize)]
pub(crate) struct AdeParts {
    /// 0 object, 1 part, 2 part of a part.
    pub part_level: u8,
    /// The parent's id for parts; `[]` for objects.
    #[serde(default)]
    ispartof: serde_json::Value,
}

/// A folder holding ADE20K full-format images anywhere below it.
#[derive(Debug)]
pub struct Ade20kDataset {
    listing: Listing,
    max_part_level: u8,
}

/// The first of a WordNet-style synonym list: "car, auto, automobile" → "car".
pub(crate) fn short_name(name: &str) -> String {
    name.split(',').next().unwrap_or(name).trim().to_string()
}

impl Ade20kDataset {
    /// Finds every `X.json` with its `X.jpg` below `root`. `opts.part_level` is 1 (parts) or 2
    /// (also parts of parts).
    pub fn open(root: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let root: PathBuf = root.as_ref().to_path_buf();
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let mut problems = Vec::new();
        let jsons = droot.walk(
            &root,
            &|p| p.extension().is_some_and(|e| e == "json") && p.with_extension("jpg").is_file(),
            &mut problems,
        )?;
        if jsons.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "no ADE20K X.json + X.jpg pairs found below this folder".into(),
            });
        }
        let mut items = Vec::new();
        for j in &jsons {
            let img = j.with_extension("jpg");
            // The walk checked the JSON; its image is another file, maybe a link leading out.
            let rel = droot.relative(&img);
            if let Err(reason) = droot.check(&img) {
                problems.push(crate::dataset::Skipped::new(rel, reason));
                continue;
            }
            // ADE/training/… and ADE/validation/… name the split.
            let split = rel
                .split('/')
                .find(|c| *c == "training" || *c == "validation")
                .unwrap_or("all")
                .to_string();
            items.push(ImageItem {
                image: rel,
                split,
                image_path: img,
                part_ann: Some(j.clone()),
                object_ann: None,
            });
        }
        Ok(Ade20kDataset {
            listing: Listing {
                root: droot,
                items,
                problems,
            },
            max_part_level: opts.part_level.clamp(1, 2),
        })
    }
}

impl Dataset for Ade20kDataset {
    fn format(&self) -> &'static str {
        "ade20k"
    }

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn options(&self) -> serde_json::Value {
        serde_json::json!({ "max_part_level": self.max_part_level })
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let json = item.annotation("ADE20K annotation (X.json)")?;
        let objects = read_objects(json)?;
        let image = decode_rgb(&item.image_path)?;
        let size = (image.width() as usize, image.height() as usize);
        let folder = json.parent().unwrap_or(Path::new("."));
        let by_id: BTreeMap<u64, &AdeObject> = objects.iter().map(|o| (o.id, o)).collect();
        let mut regions = Vec::new();
        for o in &objects {
            let level = o.parts.part_level;
            let kind = match level {
                0 if settings.objects => RegionKind::Object,
                1 => RegionKind::Part,
                2 if self.max_part_level >= 2 => RegionKind::Part,
                _ => continue,
            };
            let mask_path = self
                .listing
                .root
                .join(folder, &o.instance_mask)
                .map_err(|reason| {
                    Error::annotation(json, format!("instance {} mask: {reason}", o.id))
                })?;
            let mask =
                LabelMap::read_png_for(&mask_path, size, settings.resize_labels, "instance mask")?;
            // One region per instance: its visible pixels (255), all pieces together.
            let visible = LabelMap {
                width: mask.width,
                height: mask.height,
                data: mask.data.iter().map(|&v| u8::from(v == 255)).collect(),
            };
            let Some(region) = whole_region(&visible) else {
                continue;
            };
            if region.area < settings.min_area {
                continue;
            }
            let parent = if kind == RegionKind::Part {
                top(o, &by_id)
            } else {
                Some(o)
            };
            regions.push(Region {
                id: 0,
                image: item.image.clone(),
                split: item.split.clone(),
                kind,
                label: o.name_ndx,
                label_name: short_name(&o.name),
                object_label: parent.map(|p| p.name_ndx),
                object_name: parent.map(|p| short_name(&p.name)),
                instance: o.id as u32,
                bbox: region.bbox,
                crop_box: region.bbox.square_crop(settings.margin),
                area: region.area,
                mask_rle: region.mask_rle,
            });
        }
        Ok(ImageRegions::new(image, regions))
    }
}

/// The instances listed in one image's `X.json`.
pub(crate) fn read_objects(json: &Path) -> Result<Vec<AdeObject>> {
    let text = crate::files::read_text_limited(json, crate::files::MAX_ANNOTATION_BYTES)?;
    let file: AdeFile = serde_json::from_str(&text)
        .map_err(|e| Error::annotation(json, format!("not an ADE20K annotation: {e}")))?;
    Ok(file.annotation.object)
}

/// The top-level object above a part (following `ispartof` up through level 2).
pub(crate) fn top<'a>(
    o: &'a AdeObject,
    by_id: &BTreeMap<u64, &'a AdeObject>,
) -> Option<&'a AdeObject> {
    let mut cur = o;
    for _ in 0..4 {
        if cur.parts.part_level == 0 {
            return Some(cur);
        }
        cur = by_id.get(&cur.parts.ispartof.as_u64()?)?;
    }
    None
}
