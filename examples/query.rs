//! Using partlens as a library: ingest the bundled sample (if needed) and search it with a crop.
//!
//! ```text
//! cargo run --release --example query -- [INDEX] [IMAGE] [x0,y0,x1,y1]
//! ```
//! Defaults: `indexes/example`, a Pascal-Part validation image and the box of a person's torso.

use std::path::PathBuf;

use partlens::ingest::{ingest, IngestOptions};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::setup::{self, SetupOptions};
use partlens::{EncoderOptions, MmsegDataset, PixelBox, RegionKind};

fn main() -> partlens::Result<()> {
    let mut args = std::env::args().skip(1);
    let index = PathBuf::from(args.next().unwrap_or_else(|| "indexes/example".into()));
    let image = PathBuf::from(args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/samples/pascal_part/img/val/2008_003228.jpg"
        )
        .into()
    }));
    let bbox = PixelBox::parse(&args.next().unwrap_or_else(|| "140,120,402,372".into()));

    // ONNX Runtime and the default model, installed once per user.
    setup::ensure(&SetupOptions::default())?;
    let enc = EncoderOptions::default();
    if !index.join("manifest.json").exists() {
        let dataset = MmsegDataset::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/samples/pascal_part"
        ))?;
        let report = ingest(
            &dataset,
            &setup::default_model_path(),
            &enc,
            &IngestOptions::new(&index),
        )?;
        println!(
            "built {} with {} regions",
            index.display(),
            report.manifest.counts.regions
        );
    }

    let engine = QueryEngine::open(&index, &enc)?;
    let opts = SearchOptions {
        k: 5,
        kind: Some(RegionKind::Part),
        ..SearchOptions::default()
    };
    for hit in engine.search_image_file(&image, bbox, &opts)? {
        println!(
            "{:.3}  {:<20} {:<10} {} {:?}",
            hit.score,
            hit.label,
            hit.object.as_deref().unwrap_or("-"),
            hit.image,
            hit.bbox
        );
    }
    Ok(())
}
