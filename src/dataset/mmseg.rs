//! The mmseg folder layout, used by the paper's part datasets as their authors distribute them:
//!
//! ```text
//! img/<split>/<stem>.jpg|png     images
//! ann/<split>/<stem>.png         part (or class) label maps: 0 background, 255 ignore
//! classes.txt                    optional; line k+1 names class k (line 1 is background)
//! obj/<split>/<stem>.png         optional object label maps
//! object_classes.txt             optional object class names
//! ```
//!
//! ADEChallengeData2016 (SceneParsing, mmseg's `ADE20KDataset`) is read too: `images/[<split>/]`,
//! `annotations/[<split>/]` holding object classes, named by `objectInfo150.csv`.

use std::path::{Path, PathBuf};

use super::labelmap::{components, LabelMap, IGNORE};
use super::{
    Dataset, DatasetRoot, ImageItem, ImageRegions, Listing, OpenOptions, RegionSettings, Skipped,
};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// A dataset in the mmseg layout.
#[derive(Debug, Clone)]
pub struct MmsegDataset {
    listing: Listing,
    part_classes: Option<Vec<String>>,
    object_classes: Option<Vec<String>>,
}

fn read_names(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::files::read_text_limited(path, crate::files::MAX_ANNOTATION_BYTES)?;
    // Line k+1 names class k, so inner blank lines keep their place; only trailing ones go.
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(String::is_empty) {
        names.pop();
    }
    if names.is_empty() {
        return Err(Error::annotation(path, "class list is empty"));
    }
    if names.len() > 255 {
        return Err(Error::annotation(
            path,
            format!("{} classes; 8-bit label maps hold at most 255", names.len()),
        ));
    }
    Ok(Some(names))
}

fn sorted_dir(path: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .at(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .at(path)?;
    v.sort();
    Ok(v)
}

/// Where a layout keeps its folders.
struct Layout {
    img: &'static str,
    ann: &'static str,
    /// Object maps beside part maps; `None` when `ann` already holds object classes.
    obj: Option<&'static str>,
}

/// The mmseg layout proper: part maps in `ann/`, optional object maps in `obj/`.
const MMSEG: Layout = Layout {
    img: "img",
    ann: "ann",
    obj: Some("obj"),
};

/// ADEChallengeData2016 / SceneParsing: `images/`, `annotations/` holding object classes.
const SCENE_PARSING: Layout = Layout {
    img: "images",
    ann: "annotations",
    obj: None,
};

/// Class names from SceneParsing's `objectInfo150.csv` (`Idx,Ratio,Train,Val,Stuff,Name`):
/// entry k is class k's first synonym ("building;edifice" → "building"), entry 0 is "other".
pub(crate) fn read_object_info(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::files::read_text_limited(path, crate::files::MAX_ANNOTATION_BYTES)?;
    let mut names = vec!["other".to_string()];
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let idx = fields.first().and_then(|f| f.trim().parse::<usize>().ok());
        match (idx, fields.get(5)) {
            (Some(i), Some(name)) if i == names.len() && i < 255 => {
                names.push(name.split(';').next().unwrap_or(name).trim().to_string())
            }
            _ => {
                return Err(Error::annotation(
                    path,
                    format!(
                        "line {}: expected `{},<ratio>,<train>,<val>,<stuff>,<name>`",
                        n + 1,
                        names.len()
                    ),
                ))
            }
        }
    }
    Ok(Some(names))
}

fn is_image(f: &Path) -> bool {
    let ext = f
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    IMAGE_EXTENSIONS.contains(&ext.as_str()) && f.is_file()
}

/// The images of a folder; links leading outside the root are reported and left out.
fn image_files(
    dir: &Path,
    root: &DatasetRoot,
    problems: &mut Vec<Skipped>,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in sorted_dir(dir)?.into_iter().filter(|f| is_image(f)) {
        match root.check(&f) {
            Ok(()) => out.push(f),
            Err(reason) => problems.push(Skipped::new(root.relative(&f), reason)),
        }
    }
    Ok(out)
}

impl MmsegDataset {
    /// Lists the dataset at `root`: `img/<split>/` with `ann/<split>/` (the mmseg layout), or
    /// `images/[<split>/]` with `annotations/[<split>/]` (ADEChallengeData2016, whose maps are
    /// object classes named by `objectInfo150.csv`). Fails if neither holds any images.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, &OpenOptions::default())
    }

    /// [`MmsegDataset::open`] with options (the policy for files outside the root).
    pub fn open_with(root: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let droot = DatasetRoot::new(&root, opts.allow_outside_root)?;
        let layout = if root.join(MMSEG.img).is_dir() {
            &MMSEG
        } else if root.join(SCENE_PARSING.img).is_dir() && root.join(SCENE_PARSING.ann).is_dir() {
            &SCENE_PARSING
        } else {
            return Err(Error::Dataset {
                path: root,
                message: "no img/ folder: expected img/<split>/*.jpg and ann/<split>/*.png \
                          (the mmseg layout) or images/ and annotations/ (ADEChallengeData2016)"
                    .into(),
            });
        };
        let mut part_classes = read_names(&droot.file("classes.txt")?)?;
        let mut object_classes = read_names(&droot.file("object_classes.txt")?)?;
        if layout.obj.is_none() {
            // Its label maps are object classes.
            object_classes = match part_classes.take() {
                Some(names) => Some(names),
                None => read_object_info(&droot.file("objectInfo150.csv")?)?,
            };
        }
        let img_dir = root.join(layout.img);
        // Split folders, or the images directly inside (one split, "all").
        let mut split_dirs: Vec<(String, PathBuf)> = sorted_dir(&img_dir)?
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| {
                (
                    d.file_name().unwrap_or_default().to_string_lossy().into(),
                    d,
                )
            })
            .collect();
        if split_dirs.is_empty() && sorted_dir(&img_dir)?.iter().any(|f| is_image(f)) {
            split_dirs.push((String::new(), img_dir.clone()));
        }
        if split_dirs.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: format!(
                    "{}/ has no split folders (expected e.g. {0}/train, {0}/val) and no images",
                    layout.img
                ),
            });
        }
        let has_obj = layout.obj.is_some_and(|o| root.join(o).is_dir());
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for (split, split_dir) in split_dirs {
            // Paths relative to the root: `img/val/x.jpg`, or `images/x.jpg` without splits.
            let rel = |top: &str, file: &str| {
                if split.is_empty() {
                    format!("{top}/{file}")
                } else {
                    format!("{top}/{split}/{file}")
                }
            };
            let split_name = if split.is_empty() { "all" } else { &split };
            let mut stems = std::collections::BTreeSet::new();
            for f in image_files(&split_dir, &droot, &mut problems)? {
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                // x.jpg and x.png would share one label map: the second is not indexed.
                if !stems.insert(stem.clone()) {
                    problems.push(Skipped::new(
                        rel(layout.img, &name),
                        format!(
                            "another image of this split is also named {stem}.*; both would \
                             use the same label map, so this one is left out"
                        ),
                    ));
                    continue;
                }
                // Label maps are read only from inside the dataset, like the images.
                let ann_rel = rel(layout.ann, &format!("{stem}.png"));
                let ann = match droot.join(&root, &ann_rel) {
                    Ok(p) => p,
                    Err(reason) => {
                        problems.push(Skipped::new(ann_rel, reason));
                        continue;
                    }
                };
                let mut object_ann = None;
                if let (Some(o), true) = (layout.obj, has_obj) {
                    let obj = rel(o, &format!("{stem}.png"));
                    // A missing object map costs only that image's object regions, not its parts.
                    match droot.join(&root, &obj) {
                        Ok(p) if p.is_file() => object_ann = Some(p),
                        Ok(_) => problems.push(Skipped::new(
                            obj,
                            "object map missing: parts only for this image",
                        )),
                        Err(reason) => problems.push(Skipped::new(
                            obj,
                            format!("{reason}: parts only for this image"),
                        )),
                    }
                }
                let (part_ann, object_ann) = match layout.obj {
                    Some(_) => (Some(ann), object_ann),
                    None => (None, Some(ann)),
                };
                items.push(ImageItem {
                    image: rel(layout.img, &name),
                    split: split_name.to_string(),
                    image_path: f.clone(),
                    part_ann,
                    object_ann,
                });
            }
            let ann_dir = root.join(rel(layout.ann, ""));
            if ann_dir.is_dir() {
                for a in sorted_dir(&ann_dir)? {
                    let stem = a.file_stem().unwrap_or_default().to_string_lossy();
                    if a.extension().is_some_and(|e| e == "png") && !stems.contains(stem.as_ref()) {
                        problems.push(Skipped::new(
                            rel(layout.ann, &format!("{stem}.png")),
                            "annotation has no image",
                        ));
                    }
                }
            }
        }
        Ok(MmsegDataset {
            listing: Listing {
                root: droot,
                items,
                problems,
            },
            part_classes,
            object_classes,
        })
    }

    /// Part class names from `classes.txt`, if present.
    pub fn part_classes(&self) -> Option<&[String]> {
        self.part_classes.as_deref()
    }

    /// Object class names from `object_classes.txt`, if present.
    pub fn object_classes(&self) -> Option<&[String]> {
        self.object_classes.as_deref()
    }

    fn read_map(
        &self,
        path: &Path,
        size: (usize, usize),
        names: Option<&[String]>,
        settings: &RegionSettings,
    ) -> Result<LabelMap> {
        if !path.exists() {
            return Err(Error::annotation(path, "annotation missing"));
        }
        let map = LabelMap::read_png_for(path, size, settings.resize_labels, "label map")?;
        if let (Some(names), Some(max)) = (names, map.max_label()) {
            if max as usize >= names.len() {
                return Err(Error::annotation(
                    path,
                    format!(
                        "label value {max} has no class: the class list has {} entries (0..{}) \
                         and {IGNORE} means ignore",
                        names.len(),
                        names.len() - 1
                    ),
                ));
            }
        }
        Ok(map)
    }
}

/// Regions of a part label map and an object label map (either may be absent): one per
/// 4-connected component of a class; parts take the object class under most of their pixels.
/// Object regions are emitted when `settings.objects`.
pub(crate) fn map_regions(
    item: &ImageItem,
    parts: Option<(&LabelMap, Option<&[String]>)>,
    objects: Option<(&LabelMap, Option<&[String]>)>,
    settings: &RegionSettings,
) -> Vec<Region> {
    let obj_names = objects.and_then(|(_, n)| n);
    let mut maps = Vec::new();
    if let Some((m, names)) = parts {
        maps.push((RegionKind::Part, m, names));
    }
    if let Some((m, names)) = objects.filter(|_| settings.objects) {
        maps.push((RegionKind::Object, m, names));
    }
    let mut regions = Vec::new();
    for (kind, map, names) in maps {
        for c in components(map, settings.min_area) {
            let object_label = match kind {
                RegionKind::Object => Some(c.label),
                RegionKind::Part => objects.and_then(|(m, _)| majority_label(m, &c)),
            };
            regions.push(Region {
                id: 0,
                image: item.image.clone(),
                split: item.split.clone(),
                kind,
                label: u32::from(c.label),
                label_name: class_name(names, c.label),
                object_label: object_label.map(u32::from),
                object_name: object_label.map(|l| class_name(obj_names, l)),
                instance: c.instance,
                bbox: c.bbox,
                crop_box: c.bbox.square_crop(settings.margin),
                area: c.area,
                mask_rle: c.mask_rle,
            });
        }
    }
    regions
}

/// The most frequent labelled value of `map` under component `c`'s pixels.
fn majority_label(map: &LabelMap, c: &super::Component) -> Option<u8> {
    let mask = super::labelmap::decode_rle(
        &c.mask_rle,
        c.bbox.width() as usize,
        c.bbox.height() as usize,
    );
    let mut counts = [0u64; 256];
    let bw = c.bbox.width() as usize;
    for (i, inside) in mask.iter().enumerate() {
        if *inside {
            let (x, y) = (c.bbox.x0 as usize + i % bw, c.bbox.y0 as usize + i / bw);
            counts[map.data[y * map.width + x] as usize] += 1;
        }
    }
    counts[0] = 0;
    counts[IGNORE as usize] = 0;
    let (label, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(l, n)| (**n, std::cmp::Reverse(*l)))?;
    (*n > 0).then_some(label as u8)
}

fn class_name(names: Option<&[String]>, label: u8) -> String {
    names
        .and_then(|n| n.get(label as usize).cloned())
        .unwrap_or_else(|| format!("class_{label}"))
}

impl Dataset for MmsegDataset {
    fn format(&self) -> &'static str {
        "mmseg"
    }

    fn map_classes(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        (self.part_classes.clone(), self.object_classes.clone())
    }

    fn label_maps(
        &self,
        item: &ImageItem,
        size: (usize, usize),
        settings: &RegionSettings,
    ) -> Result<(Option<LabelMap>, Option<LabelMap>)> {
        let read = |p: &Option<std::path::PathBuf>, names: Option<&[String]>| {
            p.as_ref()
                .map(|p| self.read_map(p, size, names, settings))
                .transpose()
        };
        Ok((
            read(&item.part_ann, self.part_classes.as_deref())?,
            read(&item.object_ann, self.object_classes.as_deref())?,
        ))
    }

    fn listing(&self) -> &Listing {
        &self.listing
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let part_names = self.part_classes.as_deref();
        let object_names = self.object_classes.as_deref();
        let size = (image.width() as usize, image.height() as usize);
        // The object map is read even when object regions are off: parts learn their object.
        let (parts, objects) = self.label_maps(item, size, settings)?;
        let regions = map_regions(
            item,
            parts.as_ref().map(|m| (m, part_names)),
            objects.as_ref().map(|m| (m, object_names)),
            settings,
        );
        Ok(ImageRegions::new(image, regions))
    }
}
