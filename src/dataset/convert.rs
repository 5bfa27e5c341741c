//! `partlens convert`: write a dataset's label maps in the mmseg layout (`img/`, `ann/`, `obj/`,
//! `classes.txt`, `object_classes.txt`) so other tools (mmseg, the paper's UperNet probes) can
//! read the same data. Images are copied byte for byte; maps are 8-bit greyscale PNGs.

use std::path::Path;

use rayon::prelude::*;

use super::pascal_part::{PascalPartDataset, VOC_CLASSES};
use super::Dataset;
use crate::error::{Error, IoContext, Result};

/// What a conversion wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConvertSummary {
    /// Images written.
    pub images: usize,
    /// Images skipped, with reasons.
    pub skipped: Vec<(String, String)>,
}

fn save(map: &super::LabelMap, path: &Path) -> Result<()> {
    image::GrayImage::from_raw(map.width as u32, map.height as u32, map.data.clone())
        .ok_or_else(|| Error::InvalidArgument("label map size mismatch".into()))?
        .save(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

/// Converts a Pascal-Part release to the mmseg layout under `out` (must not exist or be empty),
/// every image in `split`.
pub fn pascal_part_to_mmseg(
    ds: &PascalPartDataset,
    out: &Path,
    split: &str,
) -> Result<ConvertSummary> {
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not empty",
            out.display()
        )));
    }
    for sub in ["img", "ann", "obj"] {
        let d = out.join(sub).join(split);
        std::fs::create_dir_all(&d).at(&d)?;
    }
    let write_list = |name: &str, lines: Vec<String>| {
        let p = out.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").at(&p)
    };
    write_list("classes.txt", ds.part_classes().to_vec())?;
    write_list(
        "object_classes.txt",
        std::iter::once("background")
            .chain(VOC_CLASSES)
            .map(str::to_string)
            .collect(),
    )?;
    let mut summary = ConvertSummary {
        skipped: ds.listing_problems().to_vec(),
        ..ConvertSummary::default()
    };
    for block in ds.items().chunks(32) {
        let results: Vec<Result<()>> = block
            .par_iter()
            .map(|item| {
                let stem = item
                    .image_path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let (w, h) =
                    image::image_dimensions(&item.image_path).map_err(|e| Error::Image {
                        path: item.image_path.clone(),
                        message: e.to_string(),
                    })?;
                let (parts, objs) = ds.label_maps(item, w as usize, h as usize)?;
                let img = out.join(format!("img/{split}/{stem}.jpg"));
                std::fs::copy(&item.image_path, &img).at(&img)?;
                save(&parts, &out.join(format!("ann/{split}/{stem}.png")))?;
                save(&objs, &out.join(format!("obj/{split}/{stem}.png")))
            })
            .collect();
        for (item, r) in block.iter().zip(results) {
            match r {
                Ok(()) => summary.images += 1,
                Err(e) => summary.skipped.push((item.image.clone(), e.to_string())),
            }
        }
    }
    Ok(summary)
}
