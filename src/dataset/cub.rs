//! CUB-200-2011: `images.txt`, `images/`, `parts/parts.txt`, `parts/part_locs.txt`, and
//! optionally `bounding_boxes.txt`, `image_class_labels.txt`, `classes.txt`,
//! `train_test_split.txt`. Part crops follow the paper's keypoint rule with its default parts
//! (right eye, right leg, left wing, tail) over (x, y): each image holds one bird.

use std::collections::BTreeMap;
use std::path::Path;

use super::keypoints::{
    crop_boxes, keypoint_region, object_box_region, Distance, Keypoint, KeypointSettings,
    MAX_POINTS_PER_IMAGE,
};
use super::{
    Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings, Skipped,
};
use crate::error::{Error, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

/// The paper's CUB parts.
pub const PAPER_BIRD_PARTS: [&str; 4] = ["right eye", "right leg", "left wing", "tail"];

/// A CUB-200-2011 folder.
#[derive(Debug)]
pub struct CubDataset {
    listing: Listing,
    regions: BTreeMap<String, Vec<Region>>,
    classes: Vec<String>,
}

/// Reads `id rest…` lines into `(id, fields)`; errors name the file and line.
fn table(path: &Path, fields: usize) -> Result<Vec<(u64, Vec<String>)>> {
    let text = crate::files::read_text_limited(path, crate::files::MAX_ANNOTATION_BYTES)?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut it = line.split_whitespace();
        let bad = || {
            Error::annotation(
                path,
                format!(
                    "line {}: expected an id and {fields} fields: {line:?}",
                    n + 1
                ),
            )
        };
        let id = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let rest: Vec<String> = if fields == 1 {
            // Names may contain spaces ("left wing").
            vec![it.collect::<Vec<_>>().join(" ")]
        } else {
            it.map(str::to_string).collect()
        };
        if rest.len() != fields || rest.iter().any(String::is_empty) {
            return Err(bad());
        }
        out.push((id, rest));
    }
    Ok(out)
}

fn number(path: &Path, s: &str) -> Result<f64> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::annotation(path, format!("{s:?} is not a number")))
}

impl CubDataset {
    /// Lists the dataset; names every required file that is missing.
    pub fn open(root: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let settings: &KeypointSettings = &opts.keypoints;
        let margin = opts.margin;
        let required = [
            "images.txt",
            "images",
            "parts/parts.txt",
            "parts/part_locs.txt",
        ];
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|f| !root.join(f).exists())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: format!(
                    "CUB-200-2011 layout incomplete, missing: {} (images.txt maps image ids to files \
                     under images/; both come with the CUB_200_2011 archive)",
                    missing.join(", ")
                ),
            });
        }
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let classes: Vec<String> = if settings.classes.is_empty() {
            PAPER_BIRD_PARTS.iter().map(|s| s.to_string()).collect()
        } else {
            settings.classes.clone()
        };
        let parts_path = droot.file("parts/parts.txt")?;
        let parts: BTreeMap<u64, String> = table(&parts_path, 1)?
            .into_iter()
            .map(|(id, f)| (id, f[0].clone()))
            .collect();
        let unknown: Vec<&String> = classes
            .iter()
            .filter(|c| !parts.values().any(|p| p == *c))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::annotation(
                &parts_path,
                format!(
                    "no part named {unknown:?}; parts are {:?} (choose with --keypoints)",
                    parts.values().collect::<Vec<_>>()
                ),
            ));
        }
        let images = table(&droot.file("images.txt")?, 1)?;
        let optional = |name: &str, fields| -> Result<BTreeMap<u64, Vec<String>>> {
            let p = droot.file(name)?;
            Ok(if p.is_file() {
                table(&p, fields)?.into_iter().collect()
            } else {
                BTreeMap::new()
            })
        };
        let species = optional("image_class_labels.txt", 1)?;
        let class_names = optional("classes.txt", 1)?;
        let boxes = optional("bounding_boxes.txt", 4)?;
        let split = optional("train_test_split.txt", 1)?;

        let locs_path = droot.file("parts/part_locs.txt")?;
        let mut locs: BTreeMap<u64, Vec<(u64, f64, f64)>> = BTreeMap::new();
        for (img, f) in table(&locs_path, 4)? {
            let part: u64 = f[0]
                .parse()
                .map_err(|_| Error::annotation(&locs_path, format!("bad part id {:?}", f[0])))?;
            let visible = number(&locs_path, &f[3])?;
            if visible == 1.0 && parts.get(&part).is_some_and(|n| classes.contains(n)) {
                locs.entry(img).or_default().push((
                    part,
                    number(&locs_path, &f[1])?,
                    number(&locs_path, &f[2])?,
                ));
            }
        }

        let mut items = Vec::new();
        let mut regions = BTreeMap::new();
        let mut problems = Vec::new();
        let mut sorted = images;
        sorted.sort_by_key(|(id, _)| *id);
        let mut seen = std::collections::BTreeSet::new();
        for (id, f) in sorted {
            let rel = format!("images/{}", f[0]);
            if !seen.insert(id) || regions.contains_key(&rel) {
                problems.push(Skipped::new(
                    &rel,
                    format!(
                        "images.txt lists image {id} or {rel} twice; the later row is left out"
                    ),
                ));
                continue;
            }
            let path = match droot.existing_file(&root.join("images"), &f[0]) {
                Ok(p) => p,
                Err(reason) => {
                    problems.push(Skipped::new(rel, reason));
                    continue;
                }
            };
            let split_name = match split.get(&id).map(|s| s[0].as_str()) {
                Some("1") => "train",
                Some("0") => "test",
                _ => "all",
            }
            .to_string();
            let object = species
                .get(&id)
                .and_then(|s| s[0].parse::<u32>().ok())
                .unwrap_or(0);
            let object_name = class_names
                .get(&u64::from(object))
                .map_or_else(|| "bird".to_string(), |n| n[0].clone());
            let mut pts = locs.remove(&id).unwrap_or_default();
            pts.sort_by_key(|p| p.0);
            if pts.len() > MAX_POINTS_PER_IMAGE {
                problems.push(Skipped::new(
                    &rel,
                    format!(
                        "{} part locations for one image (at most {MAX_POINTS_PER_IMAGE}): its \
                         part crops are left out",
                        pts.len()
                    ),
                ));
                pts.clear();
            }
            let mut rs = Vec::new();
            if pts.len() >= 2 {
                let kps: Vec<Keypoint> = pts
                    .iter()
                    .map(|&(_, x, y)| Keypoint { x, y, group: id })
                    .collect();
                for (b, (part, _, _)) in crop_boxes(&kps, Distance::Plain).into_iter().zip(&pts) {
                    if let Some(b) = b {
                        rs.push(keypoint_region(
                            &rel,
                            &split_name,
                            (*part as u32, &parts[part]),
                            (object, &object_name),
                            0,
                            b,
                        ));
                    }
                }
            }
            if let Some(b) = boxes.get(&id) {
                let v: Vec<f64> = b
                    .iter()
                    .map(|s| number(&root.join("bounding_boxes.txt"), s))
                    .collect::<Result<_>>()?;
                let xywh = [v[0], v[1], v[2], v[3]];
                match object_box_region(&rel, &split_name, (object, &object_name), 0, xywh, margin)
                {
                    Ok(r) => rs.push(r),
                    Err(reason) => problems.push(Skipped::new(
                        format!("bounding_boxes.txt: image {id}"),
                        reason,
                    )),
                }
            }
            items.push(ImageItem {
                image: rel.clone(),
                split: split_name,
                image_path: path,
                part_ann: None,
                object_ann: None,
            });
            regions.insert(rel, rs);
        }
        Ok(CubDataset {
            listing: Listing {
                root: droot,
                items,
                problems,
            },
            regions,
            classes,
        })
    }
}

impl Dataset for CubDataset {
    fn format(&self) -> &'static str {
        "cub"
    }

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn options(&self) -> serde_json::Value {
        serde_json::json!({"keypoint_classes": self.classes, "distance": Distance::Plain})
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let regions = self
            .regions
            .get(&item.image)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| settings.objects || r.kind == RegionKind::Part)
            .collect();
        Ok(ImageRegions::new(image, regions))
    }
}
