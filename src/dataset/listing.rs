//! Your own data: a bare folder of images (each whole image is a region, labelled by its
//! sub-folder, for plain image search), or a listing of regions in JSON Lines or CSV.
//!
//! JSON Lines, one region per line (paths relative to the listing's folder):
//! `{"image": "a.jpg", "box": [x0, y0, x1, y1], "label": "wheel", "object": "car", "split": "train", "kind": "part"}`
//! with `polygon: [[x, y], …]` or `mask: "masks/a.png"` (non-zero = inside) instead of `box`.
//! CSV (RFC 4180 quoting, optional UTF-8 byte-order mark) with a header:
//! `image,x0,y0,x1,y1,label` and optionally `object`, `split`, `kind`.
//!
//! A row that cannot become a region (malformed, an inverted box, a polygon of fewer than three
//! points, a box or polygon outside its image, a missing or mis-sized mask) is skipped and
//! reported as `listing.jsonl:LINE`; the image's other rows are kept.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::keypoints::MAX_COORD;
use super::labelmap::{whole_region, LabelMap};
use super::{
    Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings, Skipped,
};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// Most points of one listed polygon (rasterising costs rows × points).
pub const MAX_POLYGON_POINTS: usize = 100_000;

/// One line of a JSON Lines listing, as written.
#[derive(Debug, Deserialize)]
struct RawRow {
    image: String,
    #[serde(rename = "box", default)]
    bbox: Option<Vec<f64>>,
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

/// Where a listed region's pixels are.
#[derive(Debug, Clone)]
enum Shape {
    /// `[x0, y0, x1, y1]`, checked finite, bounded and not inverted.
    Box([f64; 4]),
    /// At least three finite, bounded points.
    Polygon(Vec<[f64; 2]>),
    /// A mask file inside the root (unless allowed outside).
    Mask(PathBuf),
    /// The whole image (bare folders).
    Whole,
}

/// One listed region, checked, before its image is read.
#[derive(Debug, Clone)]
struct Row {
    /// `listing.jsonl:LINE`, for reports.
    source: String,
    shape: Shape,
    label: String,
    object: Option<String>,
    split: Option<String>,
    kind: RegionKind,
}

/// A folder of images or a region listing.
#[derive(Debug)]
pub struct ListingDataset {
    listing: Listing,
    format: &'static str,
    rows: BTreeMap<String, Vec<Row>>,
    labels: BTreeMap<String, u32>,
    objects: BTreeMap<String, u32>,
}

fn ids(names: impl Iterator<Item = String>) -> BTreeMap<String, u32> {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.dedup();
    v.into_iter().zip(1..).collect()
}

fn bounded(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_COORD
}

/// Checks a row's shape and kind; the error is the reason it is skipped.
fn check_row(
    raw: RawRow,
    source: String,
    root: &DatasetRoot,
    dir: &Path,
) -> std::result::Result<(String, Row), String> {
    let shape = match (raw.bbox, raw.polygon, raw.mask) {
        (Some(b), None, None) => {
            let [x0, y0, x1, y1] = <[f64; 4]>::try_from(b.as_slice())
                .map_err(|_| format!("box has {} values, expected x0, y0, x1, y1", b.len()))?;
            if ![x0, y0, x1, y1].into_iter().all(bounded) {
                return Err(format!(
                    "box {b:?} has coordinates that are not numbers or beyond ±{MAX_COORD}"
                ));
            }
            if x1 <= x0 || y1 <= y0 {
                return Err(format!(
                    "box {b:?} is inverted or empty (needs x1 > x0 and y1 > y0)"
                ));
            }
            Shape::Box([x0, y0, x1, y1])
        }
        (None, Some(p), None) => {
            if p.len() < 3 {
                return Err(format!(
                    "polygon has {} point(s); a region needs at least 3",
                    p.len()
                ));
            }
            if p.len() > MAX_POLYGON_POINTS {
                return Err(format!(
                    "polygon has {} points; at most {MAX_POLYGON_POINTS} are read (use a mask)",
                    p.len()
                ));
            }
            if !p.iter().flatten().copied().all(bounded) {
                return Err(format!(
                    "polygon has coordinates that are not numbers or beyond ±{MAX_COORD}"
                ));
            }
            Shape::Polygon(p)
        }
        (None, None, Some(m)) => Shape::Mask(root.join(dir, &m).map_err(|r| format!("mask: {r}"))?),
        _ => return Err("a region needs exactly one of box, polygon, mask".into()),
    };
    let kind = match raw.kind.as_deref() {
        None => RegionKind::Part,
        Some(k) => {
            RegionKind::parse(k).ok_or_else(|| format!("kind {k:?} is not part or object"))?
        }
    };
    if raw.label.is_empty() {
        return Err("empty label".into());
    }
    Ok((
        raw.image,
        Row {
            source,
            shape,
            label: raw.label,
            object: raw.object.filter(|o| !o.is_empty()),
            split: raw.split.filter(|s| !s.is_empty()),
            kind,
        },
    ))
}

/// serde_json's message without its own " at line 1 column N" (the line is ours, the column
/// is kept once).
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let msg = s.rsplit_once(" at line ").map_or(s.as_str(), |(m, _)| m);
    format!("column {}: {msg}", e.column())
}

impl ListingDataset {
    /// Every image below `root`; each whole image is one region labelled by its sub-folder
    /// (`image` at the top level).
    pub fn folder(root: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let mut problems = Vec::new();
        let files = droot.walk(
            &root,
            &|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            },
            &mut problems,
        )?;
        if files.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "no .jpg/.jpeg/.png images below this folder".into(),
            });
        }
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for f in &files {
            let rel = droot.relative(f);
            let label = rel
                .rsplit_once('/')
                .map_or("image", |(dir, _)| dir)
                .to_string();
            rows.entry(rel.clone()).or_default().push(Row {
                source: rel,
                shape: Shape::Whole,
                label,
                object: None,
                split: None,
                kind: RegionKind::Object,
            });
        }
        Self::build(droot, "folder", rows, problems)
    }

    /// Reads a `.jsonl` or `.csv` listing; image and mask paths are relative to its folder.
    /// A malformed row is reported and skipped; a CSV without the needed columns is an error.
    pub fn listing(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let dir = crate::files::parent_of(path);
        let droot = DatasetRoot::new(&dir, opts.allow_outside_root)?;
        let len = std::fs::metadata(path).at(path)?.len();
        if len > crate::files::MAX_ANNOTATION_BYTES {
            return Err(Error::annotation(
                path,
                format!(
                    "listing of {len} bytes is over the {} limit",
                    crate::files::MAX_ANNOTATION_BYTES
                ),
            ));
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let raw = if is_csv {
            read_csv(path)?
        } else {
            read_jsonl(path)?
        };
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        let mut problems = Vec::new();
        for (line, r) in raw {
            let source = format!("{name}:{line}");
            match r.and_then(|raw| check_row(raw, source.clone(), &droot, &dir)) {
                Ok((image, row)) => rows.entry(image).or_default().push(row),
                Err(reason) => problems.push(Skipped::new(source, reason)),
            }
        }
        Self::build(droot, if is_csv { "csv" } else { "jsonl" }, rows, problems)
    }

    fn build(
        root: DatasetRoot,
        format: &'static str,
        rows: BTreeMap<String, Vec<Row>>,
        mut problems: Vec<Skipped>,
    ) -> Result<Self> {
        let labels = ids(rows.values().flatten().map(|r| r.label.clone()));
        let objects = ids(rows.values().flatten().filter_map(|r| r.object.clone()));
        let base = root.path().to_path_buf();
        let mut items = Vec::new();
        for (image, rs) in &rows {
            let path = match root.existing_file(&base, image) {
                Ok(p) => p,
                Err(reason) => {
                    problems.push(Skipped::new(image, reason));
                    continue;
                }
            };
            let split = rs
                .iter()
                .find_map(|r| r.split.clone())
                .unwrap_or_else(|| "all".into());
            // An image is in one split; a row that says otherwise is told where it went.
            for r in rs
                .iter()
                .filter(|r| r.split.as_ref().is_some_and(|s| *s != split))
            {
                problems.push(Skipped::new(
                    &r.source,
                    format!(
                        "split {:?} differs from {split:?}, given by an earlier row of {image}; \
                         the region is indexed under {split:?}",
                        r.split.as_deref().unwrap_or_default()
                    ),
                ));
            }
            items.push(ImageItem {
                image: image.clone(),
                split,
                image_path: path,
                part_ann: None,
                object_ann: None,
            });
        }
        Ok(ListingDataset {
            listing: Listing {
                root,
                items,
                problems,
            },
            format,
            rows,
            labels,
            objects,
        })
    }

    /// The pixels of one row in an image of `w × h`, or why it has none.
    fn row_map(
        &self,
        row: &Row,
        (w, h): (usize, usize),
        settings: &RegionSettings,
    ) -> std::result::Result<LabelMap, String> {
        let full = || LabelMap {
            width: w,
            height: h,
            data: vec![1; w * h],
        };
        Ok(match &row.shape {
            Shape::Whole => full(),
            Shape::Box(b) => {
                let poly = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]];
                rasterize(&poly, w, h)
            }
            Shape::Polygon(p) => rasterize(p, w, h),
            Shape::Mask(p) => {
                let mut map = LabelMap::read_png_for(p, (w, h), settings.resize_labels, "mask")
                    .map_err(|e| e.to_string())?;
                map.data.iter_mut().for_each(|v| *v = u8::from(*v != 0));
                map
            }
        })
    }
}

/// JSON Lines, streamed: `(line number, row or reason)` per non-blank line.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, std::result::Result<RawRow, String>)>> {
    let f = std::io::BufReader::new(std::fs::File::open(path).at(path)?);
    let mut out = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let line = line.at(path)?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        out.push((
            i + 1,
            serde_json::from_str(line).map_err(|e| json_reason(&e)),
        ));
    }
    Ok(out)
}

/// CSV with a header (quoting and a byte-order mark handled by the `csv` crate).
fn read_csv(path: &Path) -> Result<Vec<(usize, std::result::Result<RawRow, String>)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| Error::annotation(path, format!("not a readable CSV file: {e}")))?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::annotation(path, format!("unreadable CSV header: {e}")))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let need = ["image", "x0", "y0", "x1", "y1", "label"];
    let missing: Vec<&str> = need.iter().copied().filter(|n| col(n).is_none()).collect();
    if missing.is_empty() && header.len() == 1 && header[0].is_empty() {
        return Err(Error::annotation(path, "empty CSV"));
    }
    if !missing.is_empty() {
        return Err(Error::annotation(
            path,
            format!(
                "CSV header lacks {} (it has: {})",
                missing.join(", "),
                header.join(", ")
            ),
        ));
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let (line, row) = match rec {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line() as usize);
                let get = |n: &str| col(n).and_then(|c| r.get(c)).filter(|s| !s.is_empty());
                let num = |n: &str| -> std::result::Result<f64, String> {
                    let s = get(n).ok_or_else(|| format!("no {n}"))?;
                    s.parse().map_err(|_| format!("{n} {s:?} is not a number"))
                };
                let row = (|| {
                    Ok(RawRow {
                        image: get("image").ok_or("no image")?.to_string(),
                        bbox: Some(vec![num("x0")?, num("y0")?, num("x1")?, num("y1")?]),
                        polygon: None,
                        mask: None,
                        label: get("label").ok_or("no label")?.to_string(),
                        object: get("object").map(str::to_string),
                        split: get("split").map(str::to_string),
                        kind: get("kind").map(str::to_string),
                    })
                })();
                (line, row)
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                (line, Err(format!("unreadable CSV row: {e}")))
            }
        };
        out.push((line, row));
    }
    Ok(out)
}

/// Pixels whose centres lie inside or on the polygon (even-odd rule).
fn rasterize(poly: &[[f64; 2]], w: usize, h: usize) -> LabelMap {
    let mut data = vec![0u8; w * h];
    for (y, row) in data.chunks_exact_mut(w.max(1)).enumerate() {
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
            let x0 = (pair[0] - 0.5).ceil().clamp(0.0, w as f64) as usize;
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

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let folder = self.format == "folder";
        let mut regions = Vec::new();
        let mut skipped = Vec::new();
        for (instance, row) in self.rows.get(&item.image).into_iter().flatten().enumerate() {
            if row.kind == RegionKind::Object && !settings.objects && !folder {
                continue;
            }
            let map = match self.row_map(row, (w, h), settings) {
                Ok(m) => m,
                Err(reason) => {
                    skipped.push(Skipped::new(&row.source, reason));
                    continue;
                }
            };
            // All pieces of a listed region form one region.
            let Some(region) = whole_region(&map) else {
                let what = match row.shape {
                    Shape::Mask(_) => "mask has no pixel set",
                    _ => "region covers no pixel centre",
                };
                skipped.push(Skipped::new(
                    &row.source,
                    format!("{what} of the {w}×{h} image {}", item.image),
                ));
                continue;
            };
            if region.area < settings.min_area && !folder {
                continue;
            }
            let margin = if folder { 0.0 } else { settings.margin };
            regions.push(Region {
                id: 0,
                image: item.image.clone(),
                split: item.split.clone(),
                kind: row.kind,
                label: self.labels[&row.label],
                label_name: row.label.clone(),
                object_label: row.object.as_ref().map(|o| self.objects[o]),
                object_name: row.object.clone(),
                instance: instance as u32,
                bbox: region.bbox,
                crop_box: region.bbox.square_crop(margin),
                area: region.area,
                mask_rle: region.mask_rle,
            });
        }
        Ok(ImageRegions {
            image,
            regions,
            skipped,
        })
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
        // Wholly outside: nothing.
        let o = rasterize(&[[10.0, 10.0], [20.0, 10.0], [20.0, 20.0]], 4, 4);
        assert!(o.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn json_errors_name_one_position() {
        let e = serde_json::from_str::<RawRow>(r#"{"image": "a.jpg", "label": 3}"#).unwrap_err();
        let r = json_reason(&e);
        assert!(r.starts_with("column ") && !r.contains("line"), "{r}");
    }
}
