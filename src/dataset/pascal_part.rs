//! Pascal-Part as released: `X.jpg` + `X.mat` (struct `anno.objects[].{class, class_ind, mask,
//! parts[].{part_name, mask}}`), read with our MAT-file reader. Part classes are
//! `object/part` with the `_N` instance suffix dropped (`aeroplane/wheel`, `person/head`); a
//! class-map file (`old new` per line, `-` to drop) merges or renames them, as the paper's
//! 193-class and the common 58/108-class groupings do.
//!
//! A region is one annotated instance: each object is one object region (its mask, VOC class
//! ids 1–20) and each of its part masks one part region of its class, whatever other masks
//! cover and however many pieces the mask has (an arm cut by an occluder stays one region, two
//! touching people stay two). Parts and their object share the object's index in the file as
//! `instance`. [`PascalPartDataset::label_maps`] paints the masks into part and object label
//! maps instead (`convert`): objects and their parts in file order, later masks winning where
//! they overlap, the same rule as `scripts/data/pascal_part_to_mmseg.py`.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::labelmap::{whole_region, LabelMap};
use super::matfile::{self, MatValue};
use super::{
    Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings, Skipped,
};
use crate::error::{Error, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

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
    listing: Listing,
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
    let bytes = crate::files::read_limited(path, crate::files::MAX_ANNOTATION_BYTES)?;
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
    pub fn open(root: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let class_map = opts.class_map.as_deref();
        let mut problems = Vec::new();
        let mats = droot.walk(
            &root,
            &|p| p.extension().is_some_and(|e| e == "mat"),
            &mut problems,
        )?;
        if mats.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "no Pascal-Part .mat files below this folder".into(),
            });
        }
        let class_map = match class_map {
            Some(p) => crate::files::read_text_limited(p, crate::files::MAX_ANNOTATION_BYTES)?
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
        let mut items = Vec::new();
        for m in &mats {
            let img = m.with_extension("jpg");
            let rel = droot.relative(&img);
            if !img.is_file() {
                problems.push(Skipped::new(rel, "image file missing"));
                continue;
            }
            if let Err(reason) = droot.check(&img) {
                problems.push(Skipped::new(rel, reason));
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
        let names: Vec<std::result::Result<Vec<String>, Skipped>> = items
            .par_iter()
            .map(|it| {
                it.annotation("Pascal-Part annotation (.mat)")
                    .and_then(read_objects)
                    .map(|objs| {
                        objs.into_iter()
                            .flat_map(|o| o.parts.into_iter().map(|(n, _)| n))
                            .collect()
                    })
                    .map_err(|e| Skipped::new(&it.image, e.to_string()))
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
            listing: Listing {
                root: droot,
                items,
                problems,
            },
            part_classes,
            class_map,
        })
    }

    /// Part class names, id order (0 = background).
    pub fn part_classes(&self) -> &[String] {
        &self.part_classes
    }

    /// The part and object label maps of one image of `w × h` pixels (part ids index
    /// [`Self::part_classes`], object ids are VOC class ids). Masks of another size are an
    /// error unless `resize` scales them.
    pub fn label_maps(
        &self,
        item: &ImageItem,
        (w, h): (usize, usize),
        resize: super::LabelResize,
    ) -> Result<(LabelMap, LabelMap)> {
        let path = item.annotation("Pascal-Part annotation (.mat)")?;
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
        for o in objects {
            let mask = o.mask.fit((w, h), resize, path, "an object mask")?;
            for (i, v) in mask.data.iter().enumerate() {
                if *v != 0 {
                    objs.data[i] = o.class_ind;
                }
            }
            for (name, m) in o.parts {
                let m = m.fit((w, h), resize, path, "a part mask")?;
                let name = self.class_map.get(&name).unwrap_or(&name);
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

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn map_classes(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        let objects = std::iter::once("background")
            .chain(VOC_CLASSES)
            .map(String::from)
            .collect();
        (Some(self.part_classes.clone()), Some(objects))
    }

    fn label_maps(
        &self,
        item: &ImageItem,
        size: (usize, usize),
        settings: &RegionSettings,
    ) -> Result<(Option<LabelMap>, Option<LabelMap>)> {
        let (p, o) = PascalPartDataset::label_maps(self, item, size, settings.resize_labels)?;
        Ok((Some(p), Some(o)))
    }

    fn options(&self) -> serde_json::Value {
        serde_json::json!({ "part_classes": self.part_classes.len() - 1, "class_map": self.class_map })
    }

    /// One region per annotated instance: every part region (objects in file order, each
    /// object's parts in file order), then every object region (when `settings.objects`).
    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let size = (image.width() as usize, image.height() as usize);
        let path = item.annotation("Pascal-Part annotation (.mat)")?;
        let resize = settings.resize_labels;
        let (mut parts, mut objects) = (Vec::new(), Vec::new());
        for (i, o) in read_objects(path)?.into_iter().enumerate() {
            let voc = VOC_CLASSES[usize::from(o.class_ind) - 1];
            let object = (u32::from(o.class_ind), voc);
            // One region for all of a mask's pixels, however many pieces; none below min_area.
            let region = |kind: RegionKind, (label, name): (u32, &str), mask: &LabelMap| {
                let c = whole_region(mask).filter(|c| c.area >= settings.min_area)?;
                Some(Region {
                    id: 0,
                    image: item.image.clone(),
                    split: item.split.clone(),
                    kind,
                    label,
                    label_name: name.to_string(),
                    object_label: Some(object.0),
                    object_name: Some(voc.to_string()),
                    instance: i as u32,
                    bbox: c.bbox,
                    crop_box: c.bbox.square_crop(settings.margin),
                    area: c.area,
                    mask_rle: c.mask_rle,
                })
            };
            // Every mask is fitted, used or not: a mask of the wrong size fails the image, as
            // it does when the masks are painted into label maps.
            let mask = o.mask.fit(size, resize, path, "an object mask")?;
            for (name, m) in o.parts {
                let m = m.fit(size, resize, path, "a part mask")?;
                let name = self.class_map.get(&name).unwrap_or(&name);
                let Some(id) = self.part_classes.iter().position(|c| c == name) else {
                    continue;
                };
                parts.extend(region(RegionKind::Part, (id as u32, name), &m));
            }
            if settings.objects {
                objects.extend(region(RegionKind::Object, object, &mask));
            }
        }
        parts.append(&mut objects);
        Ok(ImageRegions::new(image, parts))
    }
}
