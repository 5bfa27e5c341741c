//! Pascal-Part as released: `X.jpg` + `X.mat` (struct `anno.objects[].{class, class_ind, mask,
//! parts[].{part_name, mask}}`), read with our MAT-file reader. Part classes are
//! `object/part` with the `_N` instance suffix dropped (`aeroplane/wheel`, `person/head`); a
//! class-map file (`old new` per line, `-` to drop) merges or renames them, as the paper's
//! 193-class and the common 58/108-class groupings do. Parts are painted in file order (later
//! parts win where masks overlap) and regions are the 4-connected components, the same rule as
//! `scripts/data/pascal_part_to_mmseg.py`; objects come from their masks, VOC class ids 1–20.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::labelmap::LabelMap;
use super::matfile::{self, MatValue};
use super::mmseg::map_regions;
use super::{Dataset, ImageItem, ImageRegions, RegionSettings};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;

/// The 20 VOC classes; `class_ind` k names the (k-1)-th.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// One object of an annotation: VOC class id, mask, and `(part class name, mask)` in file order.
struct Object {
    class_ind: u8,
    mask: LabelMap,
    parts: Vec<(String, LabelMap)>,
}

/// A Pascal-Part folder (`*.mat` with their `*.jpg`, anywhere below it).
#[derive(Debug)]
pub struct PascalPartDataset {
    root: PathBuf,
    items: Vec<ImageItem>,
    problems: Vec<(String, String)>,
    part_classes: Vec<String>,
    class_map: BTreeMap<String, String>,
}

fn strip_instance(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// A MATLAB H × W uint8 mask (column-major) as a row-major label map of 0/1.
fn mask(v: Option<&MatValue>, path: &Path, what: &str) -> Result<LabelMap> {
    match v {
        Some(MatValue::Numeric { dims, data }) if dims.len() == 2 => {
            let (h, w) = (dims[0], dims[1]);
            let mut out = vec![0u8; w * h];
            for j in 0..w {
                for i in 0..h {
                    out[i * w + j] = u8::from(data[j * h + i] != 0.0);
                }
            }
            Ok(LabelMap {
                width: w,
                height: h,
                data: out,
            })
        }
        _ => Err(Error::annotation(
            path,
            format!("{what}: missing or not a 2-D mask"),
        )),
    }
}

fn text(v: Option<&MatValue>, path: &Path, what: &str) -> Result<String> {
    match v {
        Some(MatValue::Char(s)) => Ok(s.clone()),
        _ => Err(Error::annotation(
            path,
            format!("{what}: missing or not text"),
        )),
    }
}

fn read_objects(path: &Path) -> Result<Vec<Object>> {
    let bytes = std::fs::read(path).at(path)?;
    let vars = matfile::read(&bytes, path)?;
    let anno = vars
        .get("anno")
        .ok_or_else(|| Error::annotation(path, "no variable `anno`"))?;
    let objs = anno
        .field(0, "objects")
        .ok_or_else(|| Error::annotation(path, "anno has no `objects`"))?;
    let mut out = Vec::new();
    for i in 0..objs.len() {
        let class = text(objs.field(i, "class"), path, &format!("objects({})", i + 1))?;
        let class_ind = match objs.field(i, "class_ind") {
            Some(MatValue::Numeric { data, .. })
                if data.len() == 1 && (1.0..=20.0).contains(&data[0]) =>
            {
                data[0] as u8
            }
            _ => {
                return Err(Error::annotation(
                    path,
                    format!("objects({}).class_ind is not a VOC class id 1–20", i + 1),
                ))
            }
        };
        let object = mask(
            objs.field(i, "mask"),
            path,
            &format!("objects({}).mask", i + 1),
        )?;
        let mut parts = Vec::new();
        if let Some(ps) = objs.field(i, "parts") {
            for j in 0..ps.len() {
                let name = text(
                    ps.field(j, "part_name"),
                    path,
                    &format!("objects({}).parts({})", i + 1, j + 1),
                )?;
                let m = mask(
                    ps.field(j, "mask"),
                    path,
                    &format!("objects({}).parts({}).mask", i + 1, j + 1),
                )?;
                parts.push((format!("{class}/{}", strip_instance(&name)), m));
            }
        }
        out.push(Object {
            class_ind,
            mask: object,
            parts,
        });
    }
    Ok(out)
}

impl PascalPartDataset {
    /// Lists `root` and reads every annotation once to fix the part class list (sorted names,
    /// after the optional class map), so class ids do not depend on reading order.
    pub fn open(root: impl AsRef<Path>, class_map: Option<&Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mats = super::find_files(&root, &|p| p.extension().is_some_and(|e| e == "mat"))?;
        if mats.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "no Pascal-Part .mat files below this folder".into(),
            });
        }
        let class_map = match class_map {
            Some(p) => std::fs::read_to_string(p)
                .at(p)?
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let mut it = l.split_whitespace();
                    match (it.next(), it.next()) {
                        (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                        _ => Err(Error::annotation(
                            p,
                            format!("expected `old new` or `old -`: {l:?}"),
                        )),
                    }
                })
                .collect::<Result<_>>()?,
            None => BTreeMap::new(),
        };
        let mut problems = Vec::new();
        let mut items = Vec::new();
        for m in &mats {
            let img = m.with_extension("jpg");
            let rel = img
                .strip_prefix(&root)
                .unwrap_or(&img)
                .to_string_lossy()
                .replace('\\', "/");
            if !img.is_file() {
                problems.push((rel, "image file missing".into()));
                continue;
            }
            items.push(ImageItem {
                image: rel,
                split: "all".into(),
                image_path: img,
                part_ann: Some(m.clone()),
                object_ann: None,
            });
        }
        let names: Vec<std::result::Result<Vec<String>, (String, String)>> = items
            .par_iter()
            .map(|it| {
                let p = it.part_ann.as_ref().expect("set above");
                read_objects(p)
                    .map(|objs| {
                        objs.into_iter()
                            .flat_map(|o| o.parts.into_iter().map(|(n, _)| n))
                            .collect()
                    })
                    .map_err(|e| (it.image.clone(), e.to_string()))
            })
            .collect();
        // An unreadable annotation is reported here once and its image left out, rather than
        // failing again (and being reported twice) when the image is loaded.
        let mut classes = Vec::new();
        let mut keep = Vec::with_capacity(items.len());
        for n in names {
            match n {
                Ok(v) => {
                    classes.extend(v);
                    keep.push(true);
                }
                Err(p) => {
                    problems.push(p);
                    keep.push(false);
                }
            }
        }
        let mut keep = keep.into_iter();
        items.retain(|_| keep.next().expect("one flag per item"));
        let mapped = |n: &String| class_map.get(n).cloned().unwrap_or_else(|| n.clone());
        let mut part_classes: Vec<String> =
            classes.iter().map(mapped).filter(|n| n != "-").collect();
        part_classes.sort();
        part_classes.dedup();
        if part_classes.len() > 254 {
            return Err(Error::Dataset {
                path: root,
                message: format!(
                    "{} part classes; at most 254 fit 8-bit maps (merge some with a class map)",
                    part_classes.len()
                ),
            });
        }
        part_classes.insert(0, "background".into());
        Ok(PascalPartDataset {
            root,
            items,
            problems,
            part_classes,
            class_map,
        })
    }

    /// Part class names, id order (0 = background).
    pub fn part_classes(&self) -> &[String] {
        &self.part_classes
    }

    /// The part and object label maps of one image of `w × h` pixels (part ids index
    /// [`Self::part_classes`], object ids are VOC class ids).
    pub fn label_maps(&self, item: &ImageItem, w: usize, h: usize) -> Result<(LabelMap, LabelMap)> {
        let path = item.part_ann.as_ref().expect("set by open");
        let objects = read_objects(path)?;
        let mut parts = LabelMap {
            width: w,
            height: h,
            data: vec![0; w * h],
        };
        let mut objs = LabelMap {
            width: w,
            height: h,
            data: vec![0; w * h],
        };
        for o in &objects {
            for m in std::iter::once(&o.mask).chain(o.parts.iter().map(|p| &p.1)) {
                if (m.width, m.height) != (w, h) {
                    return Err(Error::annotation(
                        path,
                        format!(
                            "a mask is {}×{} but the image is {w}×{h}",
                            m.width, m.height
                        ),
                    ));
                }
            }
            for (i, v) in o.mask.data.iter().enumerate() {
                if *v != 0 {
                    objs.data[i] = o.class_ind;
                }
            }
            for (name, m) in &o.parts {
                let name = self.class_map.get(name).unwrap_or(name);
                let Some(id) = self.part_classes.iter().position(|c| c == name) else {
                    continue;
                };
                for (i, v) in m.data.iter().enumerate() {
                    if *v != 0 {
                        parts.data[i] = id as u8;
                    }
                }
            }
        }
        Ok((parts, objs))
    }
}

impl Dataset for PascalPartDataset {
    fn format(&self) -> &'static str {
        "pascal-part"
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn splits(&self) -> Vec<String> {
        vec!["all".into()]
    }

    fn items(&self) -> &[ImageItem] {
        &self.items
    }

    fn listing_problems(&self) -> &[(String, String)] {
        &self.problems
    }

    fn options(&self) -> serde_json::Value {
        serde_json::json!({ "part_classes": self.part_classes.len() - 1, "class_map": self.class_map })
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let (parts, objs) =
            self.label_maps(item, image.width() as usize, image.height() as usize)?;
        let voc: Vec<String> = std::iter::once("background")
            .chain(VOC_CLASSES)
            .map(str::to_string)
            .collect();
        let regions = map_regions(
            item,
            Some((&parts, Some(&self.part_classes))),
            Some((&objs, Some(&voc))),
            settings,
        );
        Ok(ImageRegions { image, regions })
    }
}
