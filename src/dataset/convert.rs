//! `partlens convert`: write a dataset's label maps in the mmseg layout (`img/`, `ann/`, `obj/`,
//! `classes.txt`, `object_classes.txt`) so other tools (mmseg, the paper's UperNet probes) can
//! read the same data. Images are copied byte for byte; maps are 8-bit greyscale PNGs, so a
//! conversion holds at most 254 classes per map (0 is background, 255 ignore).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::ade20k::{read_objects, short_name, top, Ade20kDataset};
use super::labelmap::{check_size, LabelResize};
use super::pascal_part::{PascalPartDataset, VOC_CLASSES};
use super::root::check_component;
use super::{Dataset, ImageItem, LabelMap, Skipped};
use crate::error::{Error, IoContext, Result};

/// What a conversion wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConvertSummary {
    /// Images written.
    pub images: usize,
    /// Part classes in `classes.txt`, without background.
    pub part_classes: usize,
    /// Object classes in `object_classes.txt`, without background.
    pub object_classes: usize,
    /// Images skipped, with reasons.
    pub skipped: Vec<Skipped>,
}

/// Most classes one 8-bit map holds: 1..=254 (0 background, 255 ignore).
pub const MAX_CLASSES: usize = 254;

pub(crate) fn save(map: &LabelMap, path: &Path) -> Result<()> {
    image::GrayImage::from_raw(map.width as u32, map.height as u32, map.data.clone())
        .ok_or_else(|| Error::InvalidArgument("label map size mismatch".into()))?
        .save(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

/// Writes `items` under `out` (which must not exist or be empty) in the mmseg layout: each
/// image's maps come from `maps`; an image whose maps fail is skipped and reported. `split`
/// overrides the items' own split names.
fn write_mmseg(
    out: &Path,
    items: &[ImageItem],
    split: Option<&str>,
    names: (&[String], &[String]),
    maps: &(dyn Fn(&ImageItem) -> Result<(LabelMap, LabelMap)> + Sync),
) -> Result<ConvertSummary> {
    // Written beside `out` and moved into place when complete: a failed or killed run leaves
    // no half-written dataset.
    let staged = crate::files::StagedDir::begin(out, "dataset")?;
    crate::files::check_absent_or_empty(staged.target())?;
    let final_out = out;
    let out = staged.path();
    // Split names become folder names: a name like `../../x` would write outside `out`.
    if let Some(s) = split {
        check_component(s, "split")?;
    }
    // Two images with one stem in one split would overwrite each other's files.
    let mut taken = std::collections::HashSet::new();
    let mut skipped = Vec::new();
    let mut unique = Vec::with_capacity(items.len());
    for item in items {
        let split = split.unwrap_or(&item.split);
        let stem = item.image_path.file_stem().unwrap_or_default().to_owned();
        let reason = match check_component(split, "split") {
            Err(e) => Some(e.to_string()),
            Ok(()) if !taken.insert((split.to_string(), stem.clone())) => Some(format!(
                "another image of split {split} is also named {}; it would be overwritten",
                stem.to_string_lossy()
            )),
            Ok(()) => None,
        };
        match reason {
            Some(r) => skipped.push(Skipped::new(&item.image, r)),
            None => unique.push(item),
        }
    }
    let write_list = |name: &str, lines: &[String]| {
        let p = out.join(name);
        std::fs::create_dir_all(out).at(out)?;
        std::fs::write(&p, lines.join("\n") + "\n").at(&p)
    };
    write_list("classes.txt", names.0)?;
    write_list("object_classes.txt", names.1)?;
    let mut summary = ConvertSummary {
        part_classes: names.0.len() - 1,
        object_classes: names.1.len() - 1,
        skipped,
        ..ConvertSummary::default()
    };
    for block in unique.chunks(32) {
        let results: Vec<Result<()>> = block
            .par_iter()
            .map(|item| {
                let split = split.unwrap_or(&item.split);
                let stem = item
                    .image_path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let (parts, objs) = maps(item)?;
                let ext = item.image_path.extension().unwrap_or_default();
                let target = |sub: &str, ext: &str| -> Result<PathBuf> {
                    let d = out.join(sub).join(split);
                    std::fs::create_dir_all(&d).at(&d)?;
                    Ok(d.join(format!("{stem}.{ext}")))
                };
                let img = target("img", &ext.to_string_lossy())?;
                std::fs::copy(&item.image_path, &img).at(&img)?;
                save(&parts, &target("ann", "png")?)?;
                save(&objs, &target("obj", "png")?)
            })
            .collect();
        for (item, r) in block.iter().zip(results) {
            match r {
                Ok(()) => summary.images += 1,
                Err(e) => summary
                    .skipped
                    .push(Skipped::new(&item.image, e.to_string())),
            }
        }
    }
    if summary.images == 0 {
        return Err(Error::InvalidArgument(format!(
            "no image could be converted to {} ({} skipped{})",
            final_out.display(),
            summary.skipped.len(),
            summary
                .skipped
                .first()
                .map(|s| format!("; the first: {}: {}", s.path, s.reason))
                .unwrap_or_default()
        )));
    }
    staged.commit(&crate::files::is_empty_dir)?;
    Ok(summary)
}

fn image_size(item: &ImageItem) -> Result<(usize, usize)> {
    let (w, h) = image::image_dimensions(&item.image_path).map_err(|e| Error::Image {
        path: item.image_path.clone(),
        message: e.to_string(),
    })?;
    Ok((w as usize, h as usize))
}

/// Converts a Pascal-Part release to the mmseg layout under `out` (must not exist or be empty),
/// every image filed under `split`.
pub fn pascal_part_to_mmseg(
    ds: &PascalPartDataset,
    out: &Path,
    split: &str,
) -> Result<ConvertSummary> {
    let objects: Vec<String> = std::iter::once("background")
        .chain(VOC_CLASSES)
        .map(str::to_string)
        .collect();
    let mut s = write_mmseg(
        out,
        ds.items(),
        Some(split),
        (ds.part_classes(), &objects),
        &|item| ds.label_maps(item, image_size(item)?, LabelResize::Never),
    )?;
    s.skipped
        .splice(0..0, ds.listing_problems().iter().cloned());
    Ok(s)
}

/// A class list given to `convert --classes` / `--part-classes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassList {
    /// `classes.txt` style: line k+1 names class k (line 1 is background).
    Names(Vec<String>),
    /// SceneParsing's `mapFromADE.txt` style: `target ade_id [name]` per line; several ADE ids
    /// may share a target. Targets must be 1..=254.
    AdeIds(Vec<(u8, u32, Option<String>)>),
}

impl ClassList {
    /// Names for the targets of an id map, from SceneParsing's `objectInfo150.csv` or a
    /// `classes.txt`-style list; a name list is returned unchanged.
    pub fn with_names(self, names: &Path) -> Result<ClassList> {
        let ClassList::AdeIds(map) = self else {
            return Err(Error::InvalidArgument(
                "class names go with an id map (`target ade_id` lines), not a name list".into(),
            ));
        };
        let list = if names.extension().is_some_and(|e| e == "csv") {
            super::mmseg::read_object_info(names)?
                .ok_or_else(|| Error::annotation(names, "no such file"))?
        } else {
            match ClassList::read(names)? {
                ClassList::Names(n) => n,
                ClassList::AdeIds(_) => {
                    return Err(Error::annotation(
                        names,
                        "expected class names, one per line",
                    ))
                }
            }
        };
        let map = map
            .into_iter()
            .map(|(t, id, name)| match list.get(t as usize) {
                Some(n) => Ok((t, id, Some(n.clone()))),
                None if name.is_some() => Ok((t, id, name)),
                None => Err(Error::annotation(
                    names,
                    format!("{} names, but the id map has class {t}", list.len() - 1),
                )),
            })
            .collect::<Result<_>>()?;
        Ok(ClassList::AdeIds(map))
    }

    /// Reads a class list: lines of two integers (and an optional name) make an id map;
    /// SceneParsing's `partInfo36.txt` (`-- 13 person --` sections of `1 head` lines) makes
    /// `object/part` names ("person/head"); anything else is a name list.
    pub fn read(path: &Path) -> Result<ClassList> {
        let text = crate::files::read_text_limited(path, crate::files::MAX_ANNOTATION_BYTES)?;
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        if lines
            .iter()
            .find(|l| !l.is_empty())
            .is_some_and(|l| l.starts_with("--"))
        {
            return Self::part_info(&lines, path);
        }
        let ints = |l: &str| {
            let mut f = l.split_whitespace();
            let t = f.next()?.parse::<u32>().ok()?;
            let a = f.next()?.parse::<u32>().ok()?;
            let rest: Vec<&str> = f.collect();
            Some((t, a, (!rest.is_empty()).then(|| rest.join(" "))))
        };
        let bad = |m: String| Error::annotation(path, m);
        if lines
            .iter()
            .filter(|l| !l.is_empty())
            .all(|l| ints(l).is_some())
        {
            let mut map = Vec::new();
            for (n, l) in lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
                let (t, a, name) = ints(l).expect("checked");
                if !(1..=MAX_CLASSES as u32).contains(&t) {
                    return Err(bad(format!(
                        "line {}: target class {t} is outside 1..={MAX_CLASSES}",
                        n + 1
                    )));
                }
                map.push((t as u8, a, name));
            }
            if map.is_empty() {
                return Err(bad("class list is empty".into()));
            }
            return Ok(ClassList::AdeIds(map));
        }
        let mut names: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        while names.last().is_some_and(String::is_empty) {
            names.pop();
        }
        if names.len() < 2 || names.len() > MAX_CLASSES + 1 {
            return Err(bad(format!(
                "{} lines; a class list has background on line 1, then 1 to {MAX_CLASSES} classes",
                names.len()
            )));
        }
        Ok(ClassList::Names(names))
    }

    /// `partInfo36.txt`: a `-- <object id> <object name> --` header, then `<k> <part name>`
    /// lines numbering the parts 1, 2, … across all sections.
    fn part_info(lines: &[&str], path: &Path) -> Result<ClassList> {
        let mut names = vec!["background".to_string()];
        let mut object = None;
        for (n, l) in lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            let bad = |m: &str| Error::annotation(path, format!("line {}: {m}", n + 1));
            if let Some(h) = l.strip_prefix("--") {
                let h = h.trim_end_matches('-').trim();
                let name = h.split_once(char::is_whitespace).map(|(_, n)| n.trim());
                object = Some(name.ok_or_else(|| bad("expected `-- <id> <object> --`"))?);
                continue;
            }
            let (k, part) = l
                .split_once(char::is_whitespace)
                .and_then(|(k, p)| Some((k.parse::<usize>().ok()?, p.trim())))
                .ok_or_else(|| bad("expected `<id> <part name>`"))?;
            let object = object.ok_or_else(|| bad("a part before any `-- <id> <object> --`"))?;
            if k != names.len() || k > MAX_CLASSES {
                return Err(bad(&format!(
                    "part {k} out of order (expected {})",
                    names.len()
                )));
            }
            names.push(format!("{object}/{part}"));
        }
        if names.len() < 2 {
            return Err(Error::annotation(path, "no parts listed"));
        }
        Ok(ClassList::Names(names))
    }
}

/// What the JSONs of the images to convert contain: class names by ADE id, and the object and
/// `object/part` names that occur.
#[derive(Default)]
struct AdeCensus {
    names: HashMap<u32, String>,
    objects: BTreeMap<String, BTreeSet<u32>>,
    pairs: BTreeMap<String, BTreeSet<(u32, u32)>>,
    /// Images whose JSON lists level-1 parts (so they must have `X_parts_1.png`).
    with_parts: BTreeSet<String>,
}

fn ade_census(ds: &Ade20kDataset) -> (AdeCensus, Vec<Skipped>) {
    let per_image: Vec<(&ImageItem, Result<_>)> = ds
        .items()
        .par_iter()
        .map(|item| {
            (
                item,
                item.annotation("ADE20K annotation (X.json)")
                    .and_then(read_objects),
            )
        })
        .collect();
    let mut c = AdeCensus::default();
    let mut problems = Vec::new();
    for (item, objs) in per_image {
        let objs = match objs {
            Ok(o) => o,
            Err(e) => {
                problems.push(Skipped::new(&item.image, e.to_string()));
                continue;
            }
        };
        let by_id = objs.iter().map(|o| (o.id, o)).collect();
        for o in &objs {
            let name = short_name(&o.name);
            c.names.entry(o.name_ndx).or_insert_with(|| name.clone());
            match o.parts.part_level {
                0 => {
                    c.objects.entry(name).or_default().insert(o.name_ndx);
                }
                1 => {
                    c.with_parts.insert(item.image.clone());
                    if let Some(p) = top(o, &by_id) {
                        let pair = format!("{}/{name}", short_name(&p.name));
                        c.pairs
                            .entry(pair)
                            .or_default()
                            .insert((p.name_ndx, o.name_ndx));
                    }
                }
                _ => {}
            }
        }
    }
    (c, problems)
}

/// The classes of an ADE20K conversion: names (line k = class k) and how ADE ids map to them.
struct AdeClasses {
    object_names: Vec<String>,
    part_names: Vec<String>,
    objects: HashMap<u32, u8>,
    parts: HashMap<(u32, u32), u8>,
}

fn too_many(n: usize, what: &str, flag: &str, example: &str) -> Error {
    Error::InvalidArgument(format!(
        "{n} {what} classes occur in these images; 8-bit label maps hold {MAX_CLASSES}. Pass \
         {flag} FILE to choose them (e.g. SceneParsing's {example})"
    ))
}

fn ade_classes(
    c: &AdeCensus,
    objects: Option<&ClassList>,
    parts: Option<&ClassList>,
) -> Result<AdeClasses> {
    let bg = || vec!["background".to_string()];
    // Objects: every name that occurs, or the given list.
    let (object_names, object_ids) = match objects {
        None => {
            if c.objects.len() > MAX_CLASSES {
                return Err(too_many(
                    c.objects.len(),
                    "object",
                    "--classes",
                    "mapFromADE.txt for its 150 objects",
                ));
            }
            let names: Vec<String> = bg().into_iter().chain(c.objects.keys().cloned()).collect();
            let ids = c
                .objects
                .values()
                .enumerate()
                .flat_map(|(k, ids)| ids.iter().map(move |&id| (id, k as u8 + 1)));
            (names, ids.collect())
        }
        Some(ClassList::Names(names)) => {
            let ids = names.iter().enumerate().skip(1).flat_map(|(k, n)| {
                c.objects
                    .get(n)
                    .into_iter()
                    .flatten()
                    .map(move |&id| (id, k as u8))
            });
            (names.clone(), ids.collect())
        }
        Some(ClassList::AdeIds(map)) => {
            let top = map.iter().map(|m| m.0).max().unwrap_or(0) as usize;
            let mut names = bg();
            names.extend((1..=top).map(|k| format!("class_{k}")));
            // A name from the file, else the first mapped ADE class seen in these images.
            for (t, id, name) in map.iter().rev() {
                if let Some(n) = name.clone().or_else(|| c.names.get(id).cloned()) {
                    names[*t as usize] = n;
                }
            }
            (names, map.iter().map(|&(t, id, _)| (id, t)).collect())
        }
    };
    // Parts: `object/part` names, every pair that occurs or the given list.
    let part_names = match parts {
        None if c.pairs.len() > MAX_CLASSES => {
            return Err(too_many(
                c.pairs.len(),
                "part",
                "--part-classes",
                "partInfo36.txt",
            ))
        }
        None => bg().into_iter().chain(c.pairs.keys().cloned()).collect(),
        Some(ClassList::Names(names)) => names.clone(),
        Some(ClassList::AdeIds(_)) => {
            return Err(Error::InvalidArgument(
                "--part-classes takes a list of object/part names (classes.txt style), not an \
                 id map"
                    .into(),
            ))
        }
    };
    let part_ids = part_names
        .iter()
        .enumerate()
        .skip(1)
        .flat_map(|(k, n)| {
            c.pairs
                .get(n)
                .into_iter()
                .flatten()
                .map(move |&p| (p, k as u8))
        })
        .collect();
    Ok(AdeClasses {
        object_names,
        part_names,
        objects: object_ids,
        parts: part_ids,
    })
}

/// Reads an ADE20K RGB class map (`X_seg.png`, `X_parts_N.png`) as ADE class ids per pixel:
/// class = R/10·256 + G (0 = unlabelled). Must be 8-bit RGB(A) of the image's size.
fn read_class_map(path: &Path, (w, h): (usize, usize)) -> Result<Vec<u32>> {
    let unreadable =
        |e: image::ImageError| Error::annotation(path, format!("unreadable class map: {e}"));
    // One open: the header's size first (a map of another size is refused before it is
    // decoded), then the pixels from the same decoder.
    let decoder = image::ImageReader::open(path)
        .at(path)?
        .with_guessed_format()
        .at(path)?
        .into_decoder()
        .map_err(unreadable)?;
    let (mw, mh) = image::ImageDecoder::dimensions(&decoder);
    check_size(
        path,
        "class map",
        (mw as usize, mh as usize),
        (w, h),
        LabelResize::Never,
    )?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    let rgb = match img {
        image::DynamicImage::ImageRgb8(i) => i,
        image::DynamicImage::ImageRgba8(_) => img.to_rgb8(),
        other => {
            return Err(Error::annotation(
                path,
                format!(
                    "class maps must be 8-bit RGB (class = R/10·256 + G), this one is {:?}",
                    other.color()
                ),
            ))
        }
    };
    Ok(rgb
        .pixels()
        .map(|p| u32::from(p[0]) / 10 * 256 + u32::from(p[1]))
        .collect())
}

/// Converts the ADE20K full release to the mmseg layout under `out`: object maps from each
/// `X_seg.png`, part maps from `X_parts_1.png` with classes `object/part` (the object is the
/// one under the pixel in `X_seg.png`). Classes are those occurring in the images unless
/// `objects` / `parts` choose them; ADE classes not chosen become 0. Files go under the
/// release's own split (`training`, `validation`) unless `split` is given.
pub fn ade20k_to_mmseg(
    ds: &Ade20kDataset,
    out: &Path,
    split: Option<&str>,
    objects: Option<&ClassList>,
    parts: Option<&ClassList>,
) -> Result<ConvertSummary> {
    let (census, problems) = ade_census(ds);
    let classes = ade_classes(&census, objects, parts)?;
    let bad: BTreeSet<&String> = problems.iter().map(|p| &p.path).collect();
    let items: Vec<ImageItem> = ds
        .items()
        .iter()
        .filter(|i| !bad.contains(&i.image))
        .cloned()
        .collect();
    let mut s = write_mmseg(
        out,
        &items,
        split,
        (&classes.part_names, &classes.object_names),
        &|item| ade_maps(item, &classes, census.with_parts.contains(&item.image)),
    )?;
    s.skipped.splice(0..0, problems);
    Ok(s)
}

fn ade_maps(
    item: &ImageItem,
    classes: &AdeClasses,
    has_parts: bool,
) -> Result<(LabelMap, LabelMap)> {
    let size = image_size(item)?;
    let stem = item.image_path.with_extension("");
    let stem = stem.to_string_lossy();
    let seg = read_class_map(Path::new(&format!("{stem}_seg.png")), size)?;
    let parts_path = PathBuf::from(format!("{stem}_parts_1.png"));
    // Images without parts have no `_parts_1.png`; one whose JSON lists parts must.
    let part_ids = if parts_path.exists() || has_parts {
        Some(read_class_map(&parts_path, size)?)
    } else {
        None
    };
    let obj = seg
        .iter()
        .map(|id| classes.objects.get(id).copied().unwrap_or(0))
        .collect();
    let part = match part_ids {
        Some(p) => seg
            .iter()
            .zip(&p)
            .map(|(&o, &p)| {
                if p == 0 {
                    0
                } else {
                    classes.parts.get(&(o, p)).copied().unwrap_or(0)
                }
            })
            .collect(),
        None => vec![0; seg.len()],
    };
    let map = |data| LabelMap {
        width: size.0,
        height: size.1,
        data,
    };
    Ok((map(part), map(obj)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Result<ClassList> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, text).unwrap();
        ClassList::read(&p)
    }

    #[test]
    fn class_lists_are_id_maps_or_names() {
        let ids = list("1\t2978\n15 774\n15 783 door\n").unwrap();
        assert_eq!(
            ids,
            ClassList::AdeIds(vec![
                (1, 2978, None),
                (15, 774, None),
                (15, 783, Some("door".into()))
            ])
        );
        let names = list("background\ncar/wheel\n\n").unwrap();
        assert_eq!(
            names,
            ClassList::Names(vec!["background".into(), "car/wheel".into()])
        );
        let err = list("0 12\n").unwrap_err().to_string();
        assert!(
            err.contains("outside 1..=254") && err.contains("c.txt"),
            "{err}"
        );
        let err = list("background\n").unwrap_err().to_string();
        assert!(err.contains("1 lines"), "{err}");
        let many: String = (0..300).map(|i| format!("c{i}\n")).collect();
        assert!(list(&many).is_err());
        let parts = list("-- 13 person --\n1\thead\t\n2\tbody\n\n-- 21 car --\n3\tcar body\n");
        assert_eq!(
            parts.unwrap(),
            ClassList::Names(
                ["background", "person/head", "person/body", "car/car body"]
                    .map(String::from)
                    .to_vec()
            )
        );
        let err = list("-- 13 person --\n2\thead\n").unwrap_err().to_string();
        assert!(err.contains("line 2: part 2 out of order"), "{err}");
    }

    #[test]
    fn more_classes_than_a_byte_holds_is_refused_with_a_way_out() {
        let mut c = AdeCensus::default();
        for i in 0..300u32 {
            c.objects.entry(format!("o{i}")).or_default().insert(i);
        }
        let err = ade_classes(&c, None, None).err().unwrap().to_string();
        assert!(
            err.contains("300 object classes") && err.contains("--classes"),
            "{err}"
        );
        let keep = ClassList::Names(vec!["background".into(), "o7".into()]);
        let k = ade_classes(&c, Some(&keep), None).unwrap();
        assert_eq!((k.objects.len(), k.objects[&7]), (1, 1));
    }
}
