//! The mmseg folder layout, used by the paper's part datasets as their authors distribute them:
//!
//! ```text
//! img/<split>/<stem>.jpg|png     images
//! ann/<split>/<stem>.png         part (or class) label maps: 0 background, 255 ignore
//! classes.txt                    optional; line k+1 names class k (line 1 is background)
//! obj/<split>/<stem>.png         optional object label maps
//! object_classes.txt             optional object class names
//! ```

use std::path::{Path, PathBuf};

use super::labelmap::{components, LabelMap, IGNORE};
use super::{Dataset, ImageItem, ImageRegions, RegionSettings};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::decode_rgb;
use crate::region::{Region, RegionKind};

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// A dataset in the mmseg layout.
#[derive(Debug, Clone)]
pub struct MmsegDataset {
    root: PathBuf,
    splits: Vec<String>,
    items: Vec<ImageItem>,
    part_classes: Option<Vec<String>>,
    object_classes: Option<Vec<String>>,
    problems: Vec<(String, String)>,
}

fn read_names(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).at(path)?;
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

impl MmsegDataset {
    /// Lists the dataset at `root`. Fails if `img/` is missing or holds no split folders.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let img_dir = root.join("img");
        if !img_dir.is_dir() {
            return Err(Error::Dataset {
                path: root,
                message: "no img/ folder: expected img/<split>/*.jpg and ann/<split>/*.png \
                          (the mmseg layout)"
                    .into(),
            });
        }
        let part_classes = read_names(&root.join("classes.txt"))?;
        let object_classes = read_names(&root.join("object_classes.txt"))?;
        let has_obj = root.join("obj").is_dir();
        let mut splits = Vec::new();
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for split_dir in sorted_dir(&img_dir)? {
            if !split_dir.is_dir() {
                continue;
            }
            let split = split_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut stems = std::collections::BTreeSet::new();
            for f in sorted_dir(&split_dir)? {
                let ext = f
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                if !IMAGE_EXTENSIONS.contains(&ext.as_str()) || !f.is_file() {
                    continue;
                }
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                stems.insert(stem.clone());
                let ann = root.join("ann").join(&split).join(format!("{stem}.png"));
                let obj = root.join("obj").join(&split).join(format!("{stem}.png"));
                // A missing object map costs only that image's object regions, not its parts.
                let object_ann = if has_obj && obj.is_file() {
                    Some(obj)
                } else {
                    if has_obj {
                        problems.push((
                            format!("obj/{split}/{stem}.png"),
                            "object map missing: parts only for this image".to_string(),
                        ));
                    }
                    None
                };
                items.push(ImageItem {
                    image: format!("img/{split}/{name}"),
                    split: split.clone(),
                    image_path: f.clone(),
                    part_ann: Some(ann),
                    object_ann,
                });
            }
            let ann_dir = root.join("ann").join(&split);
            if ann_dir.is_dir() {
                for a in sorted_dir(&ann_dir)? {
                    let stem = a.file_stem().unwrap_or_default().to_string_lossy();
                    if a.extension().is_some_and(|e| e == "png") && !stems.contains(stem.as_ref()) {
                        problems.push((
                            format!("ann/{split}/{stem}.png"),
                            "annotation has no image".to_string(),
                        ));
                    }
                }
            }
            splits.push(split);
        }
        if splits.is_empty() {
            return Err(Error::Dataset {
                path: root,
                message: "img/ has no split folders (expected e.g. img/train, img/val)".into(),
            });
        }
        Ok(MmsegDataset {
            root,
            splits,
            items,
            part_classes,
            object_classes,
            problems,
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
        image: &image::RgbImage,
        names: Option<&[String]>,
    ) -> Result<LabelMap> {
        if !path.exists() {
            return Err(Error::annotation(path, "annotation missing"));
        }
        let map = LabelMap::read_png(path)?;
        if (map.width, map.height) != (image.width() as usize, image.height() as usize) {
            return Err(Error::annotation(
                path,
                format!(
                    "label map is {}×{} but its image is {}×{}",
                    map.width,
                    map.height,
                    image.width(),
                    image.height()
                ),
            ));
        }
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

    fn root(&self) -> &Path {
        &self.root
    }

    fn splits(&self) -> Vec<String> {
        self.splits.clone()
    }

    fn items(&self) -> &[ImageItem] {
        &self.items
    }

    fn listing_problems(&self) -> &[(String, String)] {
        &self.problems
    }

    fn load(&self, item: &ImageItem, settings: &RegionSettings) -> Result<ImageRegions> {
        let image = decode_rgb(&item.image_path)?;
        let part_names = self.part_classes.as_deref();
        let object_names = self.object_classes.as_deref();
        let parts = match &item.part_ann {
            Some(p) => Some(self.read_map(p, &image, part_names)?),
            None => None,
        };
        // The object map is read even when object regions are off: parts learn their object.
        let objects = match &item.object_ann {
            Some(p) => Some(self.read_map(p, &image, object_names)?),
            None => None,
        };
        let regions = map_regions(
            item,
            parts.as_ref().map(|m| (m, part_names)),
            objects.as_ref().map(|m| (m, object_names)),
            settings,
        );
        Ok(ImageRegions { image, regions })
    }
}
