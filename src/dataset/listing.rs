//! Your own data: a bare folder of images (each whole image is a region, labelled by its
//! sub-folder, for plain image search), or a listing of regions in JSON Lines or CSV.
//!
//! JSON Lines, one region per line (paths relative to the listing's folder):
//! `{"image": "a.jpg", "box": [x0, y0, x1, y1], "label": "wheel", "object": "car", "split": "train", "kind": "part"}`
//! with `polygon: [[x, y], …]` or `mask: "masks/a.png"` (non-zero = inside) instead of `box`.
//! CSV with a header: `image,x0,y0,x1,y1,label` and optionally `object`, `split`, `kind`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::labelmap::{whole_region, LabelMap};
use super::{Dataset, ImageItem, ImageRegions, RegionSettings};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// One listed region before its image is read.
#[derive(Debug, Clone, Deserialize)]
struct Row {
    image: String,
    #[serde(rename = "box", default)]
    bbox: Option<[f64; 4]>,
    #[serde(default)]
    polygon: Option<Vec<[f64; 2]>>,
    #[serde(default)]
    mask: Option<String>,
    label: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// A folder of images or a region listing.
#[derive(Debug)]
pub struct ListingDataset {
    root: PathBuf,
    format: &'static str,
    items: Vec<ImageItem>,
    rows: BTreeMap<String, Vec<Row>>,
    labels: BTreeMap<String, u32>,
    objects: BTreeMap<String, u32>,
    problems: Vec<(String, String)>,
}

fn ids(names: impl Iterator<Item = String>) -> BTreeMap<String, u32> {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.dedup();
    v.into_iter().zip(1..).collect()
}

impl ListingDataset {
    /// Every image below `root`; each whole image is one region labelled by its sub-folder
    /// (`image` at the top level).
    pub fn folder(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let files = super::find_files(&root, &|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })?;
        if files.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "no .jpg/.jpeg/.png images below this folder".into(),
            });
        }
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for f in &files {
            let rel = f
                .strip_prefix(&root)
                .unwrap_or(f)
                .to_string_lossy()
                .replace('\\', "/");
            let label = rel
                .rsplit_once('/')
                .map_or("image", |(dir, _)| dir)
                .to_string();
            rows.entry(rel.clone()).or_default().push(Row {
                image: rel,
                bbox: None,
                polygon: None,
                mask: None,
                label,
                object: None,
                split: None,
                kind: Some("object".into()),
            });
        }
        Self::build(root, "folder", rows, Vec::new())
    }

    /// Reads a `.jsonl` or `.csv` listing; image and mask paths are relative to its folder.
    pub fn listing(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let text = std::fs::read_to_string(path).at(path)?;
        let is_csv = path.extension().is_some_and(|e| e == "csv");
        let parsed = if is_csv {
            parse_csv(&text, path)?
        } else {
            parse_jsonl(&text, path)?
        };
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        let mut problems = Vec::new();
        for (line, row) in parsed {
            let shapes = [
                row.bbox.is_some(),
                row.polygon.is_some(),
                row.mask.is_some(),
            ];
            if shapes.iter().filter(|s| **s).count() != 1 {
                problems.push((
                    format!("{}:{line}", path.display()),
                    "a region needs exactly one of box, polygon, mask".into(),
                ));
                continue;
            }
            if let Some(k) = row
                .kind
                .as_deref()
                .filter(|k| RegionKind::parse(k).is_none())
            {
                problems.push((
                    format!("{}:{line}", path.display()),
                    format!("kind {k:?} is not part or object"),
                ));
                continue;
            }
            rows.entry(row.image.clone()).or_default().push(row);
        }
        Self::build(root, if is_csv { "csv" } else { "jsonl" }, rows, problems)
    }

    fn build(
        root: PathBuf,
        format: &'static str,
        rows: BTreeMap<String, Vec<Row>>,
        mut problems: Vec<(String, String)>,
    ) -> Result<Self> {
        let labels = ids(rows.values().flatten().map(|r| r.label.clone()));
        let objects = ids(rows.values().flatten().filter_map(|r| r.object.clone()));
        let mut items = Vec::new();
        for (image, rs) in &rows {
            let path = root.join(image);
            if !path.is_file() {
                problems.push((image.clone(), "image file missing".into()));
                continue;
            }
            let split = rs
                .iter()
                .find_map(|r| r.split.clone())
                .unwrap_or_else(|| "all".into());
            items.push(ImageItem {
                image: image.clone(),
                split,
                image_path: path,
                part_ann: None,
                object_ann: None,
            });
        }
        Ok(ListingDataset {
            root,
            format,
            items,
            rows,
            labels,
            objects,
            problems,
        })
    }
}

fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<(usize, Row)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|r| (i + 1, r))
                .map_err(|e| Error::annotation(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

fn parse_csv(text: &str, path: &Path) -> Result<Vec<(usize, Row)>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').map(str::trim).collect())
        .ok_or_else(|| Error::annotation(path, "empty CSV"))?;
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = ["image", "x0", "y0", "x1", "y1", "label"];
    let missing: Vec<&str> = need.iter().copied().filter(|n| col(n).is_none()).collect();
    if !missing.is_empty() {
        return Err(Error::annotation(
            path,
            format!("CSV header lacks {}", missing.join(", ")),
        ));
    }
    lines
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = |m: &str| Error::annotation(path, format!("line {}: {m}", i + 1));
            let get = |n: &str| {
                col(n)
                    .and_then(|c| f.get(c).copied())
                    .filter(|s| !s.is_empty())
            };
            let num = |n: &str| -> Result<f64> {
                get(n)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&format!("{n} is not a number")))
            };
            Ok((
                i + 1,
                Row {
                    image: get("image").ok_or_else(|| bad("no image"))?.to_string(),
                    bbox: Some([num("x0")?, num("y0")?, num("x1")?, num("y1")?]),
                    polygon: None,
                    mask: None,
                    label: get("label").ok_or_else(|| bad("no label"))?.to_string(),
                    object: get("object").map(str::to_string),
                    split: get("split").map(str::to_string),
                    kind: get("kind").map(str::to_string),
                },
            ))
        })
        .collect()
}

/// Pixels whose centres lie inside or on the polygon (even-odd rule).
fn rasterize(poly: &[[f64; 2]], w: usize, h: usize) -> LabelMap {
    let mut data = vec![0u8; w * h];
    for (y, row) in data.chunks_exact_mut(w).enumerate() {
        let cy = y as f64 + 0.5;
        let mut xs: Vec<f64> = Vec::new();
        for i in 0..poly.len() {
            let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
            if (a[1] <= cy) != (b[1] <= cy) {
                xs.push(a[0] + (cy - a[1]) / (b[1] - a[1]) * (b[0] - a[0]));
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks_exact(2) {
            let x0 = (pair[0] - 0.5).ceil().max(0.0) as usize;
            let x1 = ((pair[1] - 0.5).floor() + 1.0).clamp(0.0, w as f64) as usize;
            for v in row.iter_mut().take(x1).skip(x0) {
                *v = 1;
            }
        }
    }
    LabelMap {
        width: w,
        height: h,
        data,
    }
}

impl Dataset for ListingDataset {
    fn format(&self) -> &'static str {
        self.format
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn splits(&self) -> Vec<String> {
        super::splits_of(&self.items)
    }

    fn items(&self) -> &[ImageItem] {
        &self.items
    }

    fn listing_problems(&self) -> &[(String, String)] {
        &self.problems
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut regions = Vec::new();
        for (instance, row) in self.rows.get(&item.image).into_iter().flatten().enumerate() {
            let kind = row
                .kind
                .as_deref()
                .and_then(RegionKind::parse)
                .unwrap_or(RegionKind::Part);
            if kind == RegionKind::Object && !settings.objects && self.format != "folder" {
                continue;
            }
            let map = match (&row.bbox, &row.polygon, &row.mask) {
                (Some(b), _, _) => {
                    let poly = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]];
                    if self.format == "folder" {
                        LabelMap {
                            width: w,
                            height: h,
                            data: vec![1; w * h],
                        }
                    } else {
                        rasterize(&poly, w, h)
                    }
                }
                (_, Some(p), _) => rasterize(p, w, h),
                (_, _, Some(m)) => {
                    let p = self.root.join(m);
                    let mut map = LabelMap::read_png(&p)?;
                    if (map.width, map.height) != (w, h) {
                        return Err(Error::annotation(
                            &p,
                            format!(
                                "mask is {}×{} but its image is {w}×{h}",
                                map.width, map.height
                            ),
                        ));
                    }
                    map.data.iter_mut().for_each(|v| *v = u8::from(*v != 0));
                    map
                }
                _ => LabelMap {
                    width: w,
                    height: h,
                    data: vec![1; w * h],
                },
            };
            // All pieces of a listed region form one region.
            let Some(region) = whole_region(&map) else {
                continue;
            };
            if region.area < settings.min_area && self.format != "folder" {
                continue;
            }
            let (bbox, area, mask_rle) = (region.bbox, region.area, region.mask_rle);
            let margin = if self.format == "folder" {
                0.0
            } else {
                settings.margin
            };
            regions.push(Region {
                id: 0,
                image: item.image.clone(),
                split: item.split.clone(),
                kind,
                label: self.labels[&row.label],
                label_name: row.label.clone(),
                object_label: row.object.as_ref().map(|o| self.objects[o]),
                object_name: row.object.clone(),
                instance: instance as u32,
                bbox,
                crop_box: bbox.square_crop(margin),
                area,
                mask_rle,
            });
        }
        Ok(ImageRegions { image, regions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_rasterization_counts_pixel_centres() {
        // A 4×2 axis-aligned rectangle from (1,1) to (5,3): 8 pixels.
        let m = rasterize(&[[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]], 8, 5);
        assert_eq!(m.data.iter().filter(|&&v| v == 1).count(), 8);
        assert_eq!(m.data[8 + 1], 1);
        assert_eq!(m.data[8], 0);
        // A triangle (0,0) (4,0) (0,4): pixel centres on or inside the hypotenuse,
        // x + 0.5 + y + 0.5 ≤ 4, i.e. x + y ≤ 3: 4 + 3 + 2 + 1 pixels.
        let t = rasterize(&[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], 4, 4);
        assert_eq!(t.data.iter().filter(|&&v| v == 1).count(), 10);
    }
}
