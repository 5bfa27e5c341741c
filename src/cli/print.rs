//! Printing results for people (tables) and programs (`--json`).

use partlens::ingest::IngestReport;
use partlens::query::QueryHit;
use partlens::{Error, Result};

/// Pretty JSON on stdout.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// One line per hit.
pub(crate) fn hits(hits: &[QueryHit]) {
    println!(
        "{:>4}  {:>6}  {:<6} {:<24} {:<14} {:<40} box",
        "rank", "score", "kind", "label", "object", "image"
    );
    for (i, h) in hits.iter().enumerate() {
        println!(
            "{:>4}  {:>6.3}  {:<6} {:<24} {:<14} {:<40} {:?}",
            i + 1,
            h.score,
            h.kind.as_str(),
            h.label,
            h.object.as_deref().unwrap_or("-"),
            h.image,
            h.bbox
        );
    }
}

/// What an ingest did.
pub(crate) fn report(r: &IngestReport) {
    let c = &r.manifest.counts;
    for c in &r.cleaned {
        println!("cleaned up: {c}");
    }
    println!(
        "indexed {} regions ({} parts, {} objects) from {} images in {:.1} s ({:.1} regions/s; encoder {:.1} s, waiting for input {:.1} s, HNSW {:.1} s)",
        c.regions,
        c.parts,
        c.objects,
        c.images,
        r.seconds,
        r.regions_per_second(),
        r.encode_seconds,
        r.wait_seconds,
        r.hnsw_seconds
    );
    if r.encoder_sessions > 0 {
        let busy = r.encode_seconds / (r.encode_seconds + r.wait_seconds).max(1e-9);
        println!(
            "encoder: {} on {}, {}, batches of {}, {} session{}; busy {:.0}% of its time, idle waiting for input {:.0}%",
            r.manifest.encoder.spec.name,
            r.manifest.encoder.provider,
            r.manifest.encoder.spec.precision.as_str(),
            r.batch_size,
            r.encoder_sessions,
            if r.encoder_sessions == 1 { "" } else { "s" },
            100.0 * busy,
            100.0 * (1.0 - busy)
        );
    }
    if let Some(d) = &r.manifest.dense {
        println!(
            "dense: {} images, {} cells of {} values ({} windows of {}×{} px, stride {}, short side {}) in {:.1} s ({:.2} images/s; encoder {:.1} s)",
            d.images,
            d.cells,
            d.dim,
            r.dense_windows,
            d.window[1],
            d.window[0],
            d.stride,
            d.size,
            r.dense_seconds,
            d.images as f64 / r.dense_seconds.max(1e-9),
            r.dense_encode_seconds
        );
    }
    if let Some(t) = &r.manifest.tokens {
        println!(
            "tokens: {} per region × {} values, float16 ({:.0} KB per region)",
            t.tokens,
            t.dim,
            (t.tokens * t.dim * 2) as f64 / 1000.0
        );
    }
    if !r.manifest.skipped.is_empty() {
        println!("skipped {} inputs:", r.manifest.skipped.len());
        for s in &r.manifest.skipped {
            println!("  {}: {}", s.path, s.reason);
        }
    }
    println!("index: {}", r.path.display());
}
