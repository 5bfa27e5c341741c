//! `partlens dataset stats`: what a dataset holds, read without embedding anything.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use super::{Dataset, RegionSettings, Skipped};
use crate::region::RegionKind;

/// Regions of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    /// Part or object.
    pub kind: RegionKind,
    /// Class name.
    pub label: String,
    /// Regions of that class.
    pub regions: u64,
}

/// Images, regions per class and skipped inputs of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetStats {
    /// Reader name.
    pub format: String,
    /// Split names.
    pub splits: Vec<String>,
    /// Images read without error.
    pub images: u64,
    /// Regions of at least the minimum area.
    pub regions: u64,
    /// Regions per class, sorted by kind then name.
    pub classes: Vec<ClassCount>,
    /// Inputs that could not be read, with reasons.
    pub skipped: Vec<Skipped>,
}

/// Reads every image of `ds` and counts its regions. Images are read in parallel blocks and
/// dropped after counting, so memory stays flat whatever the dataset's size.
pub fn stats(ds: &dyn Dataset, settings: &RegionSettings) -> DatasetStats {
    let mut per_class: BTreeMap<(RegionKind, String), u64> = BTreeMap::new();
    let mut skipped: Vec<Skipped> = ds.listing_problems().to_vec();
    let mut images = 0u64;
    for block in ds.items().chunks(64) {
        let counted: Vec<_> = block
            .par_iter()
            .map(|item| {
                ds.load(item, settings).map(|r| {
                    let labels: Vec<_> = r
                        .regions
                        .into_iter()
                        .map(|r| (r.kind, r.label_name))
                        .collect();
                    (labels, r.skipped)
                })
            })
            .collect();
        for (item, c) in block.iter().zip(counted) {
            match c {
                Ok((labels, s)) => {
                    images += 1;
                    skipped.extend(s);
                    for l in labels {
                        *per_class.entry(l).or_default() += 1;
                    }
                }
                Err(e) => skipped.push(Skipped::new(&item.image, e.to_string())),
            }
        }
    }
    DatasetStats {
        format: ds.format().to_string(),
        splits: ds.splits(),
        images,
        regions: per_class.values().sum(),
        classes: per_class
            .into_iter()
            .map(|((kind, label), regions)| ClassCount {
                kind,
                label,
                regions,
            })
            .collect(),
        skipped,
    }
}
