//! `partlens synth`: a deterministic synthetic dataset of objects made of parts, each part class
//! with its own shape and texture, written in the mmseg layout (`img/`, `ann/`, `obj/`,
//! `classes.txt`, `object_classes.txt`) plus a COCO-style keypoint file (`keypoints.json`, one
//! keypoint per part centre). Every image depends only on (seed, index), images are generated in
//! parallel and written as they are made, so memory stays flat at any size.

use std::io::Write;
use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of images.
    pub images: usize,
    /// Seed; the same seed gives the same bytes.
    pub seed: u64,
    /// Image side in pixels (square images, 2 × 2 cells of one object at most each).
    pub size: u32,
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SynthSummary {
    /// Images written.
    pub images: usize,
    /// Objects drawn.
    pub objects: usize,
    /// Parts drawn (each one connected region, none touching another of its class).
    pub parts: usize,
}

#[derive(Clone, Copy)]
enum Shape {
    Rect,
    Disc,
    Triangle,
}

#[derive(Clone, Copy)]
enum Texture {
    Stripes,
    Checker,
    Dots,
    Solid,
}

/// A part: class name, shape, texture, colour, box in a 100 × 100 object frame.
struct PartSpec {
    name: &'static str,
    shape: Shape,
    texture: Texture,
    color: [u8; 3],
    frame: [f32; 4],
}

struct ObjectSpec {
    name: &'static str,
    parts: &'static [PartSpec],
}

const fn part(
    name: &'static str,
    shape: Shape,
    texture: Texture,
    color: [u8; 3],
    frame: [f32; 4],
) -> PartSpec {
    PartSpec {
        name,
        shape,
        texture,
        color,
        frame,
    }
}

/// Parts of one object never touch each other (gaps in the frames), so each is one component.
static OBJECTS: [ObjectSpec; 4] = [
    ObjectSpec {
        name: "figure",
        parts: &[
            part(
                "head",
                Shape::Disc,
                Texture::Dots,
                [230, 190, 150],
                [38.0, 0.0, 62.0, 24.0],
            ),
            part(
                "body",
                Shape::Rect,
                Texture::Stripes,
                [40, 90, 200],
                [30.0, 28.0, 70.0, 64.0],
            ),
            part(
                "leg",
                Shape::Rect,
                Texture::Solid,
                [60, 60, 60],
                [32.0, 68.0, 46.0, 100.0],
            ),
            part(
                "leg",
                Shape::Rect,
                Texture::Solid,
                [60, 60, 60],
                [54.0, 68.0, 68.0, 100.0],
            ),
        ],
    },
    ObjectSpec {
        name: "car",
        parts: &[
            part(
                "window",
                Shape::Triangle,
                Texture::Solid,
                [170, 220, 240],
                [25.0, 20.0, 75.0, 44.0],
            ),
            part(
                "body",
                Shape::Rect,
                Texture::Checker,
                [200, 30, 40],
                [0.0, 48.0, 100.0, 74.0],
            ),
            part(
                "wheel",
                Shape::Disc,
                Texture::Dots,
                [20, 20, 20],
                [8.0, 78.0, 30.0, 100.0],
            ),
            part(
                "wheel",
                Shape::Disc,
                Texture::Dots,
                [20, 20, 20],
                [70.0, 78.0, 92.0, 100.0],
            ),
        ],
    },
    ObjectSpec {
        name: "tree",
        parts: &[
            part(
                "crown",
                Shape::Disc,
                Texture::Checker,
                [40, 150, 50],
                [10.0, 0.0, 90.0, 62.0],
            ),
            part(
                "trunk",
                Shape::Rect,
                Texture::Stripes,
                [110, 70, 30],
                [42.0, 66.0, 58.0, 100.0],
            ),
        ],
    },
    ObjectSpec {
        name: "lamp",
        parts: &[
            part(
                "shade",
                Shape::Triangle,
                Texture::Stripes,
                [240, 220, 60],
                [20.0, 0.0, 80.0, 30.0],
            ),
            part(
                "pole",
                Shape::Rect,
                Texture::Solid,
                [150, 150, 160],
                [46.0, 34.0, 54.0, 84.0],
            ),
            part(
                "base",
                Shape::Rect,
                Texture::Checker,
                [90, 90, 100],
                [25.0, 88.0, 75.0, 100.0],
            ),
        ],
    },
];

/// Part class names in id order (id = position + 1): `object/part`, deduplicated.
pub fn part_classes() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for o in &OBJECTS {
        for p in o.parts {
            let n = format!("{}/{}", o.name, p.name);
            if !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

/// SplitMix64: tiny, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, index: u64) -> Rng {
        Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn inside(shape: Shape, u: f32, v: f32) -> bool {
    // (u, v) in [0, 1]² of the part's box.
    match shape {
        Shape::Rect => true,
        Shape::Disc => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
        Shape::Triangle => (u - 0.5).abs() <= v / 2.0,
    }
}

fn texel(t: Texture, x: u32, y: u32, phase: u32, c: [u8; 3]) -> [u8; 3] {
    let dark = |c: [u8; 3]| c.map(|v| v / 2);
    let on = match t {
        Texture::Stripes => ((y + phase) / 4).is_multiple_of(2),
        Texture::Checker => ((x + phase) / 5 + y / 5).is_multiple_of(2),
        Texture::Dots => (x + phase) % 6 < 3 && y % 6 < 3,
        Texture::Solid => true,
    };
    if on {
        c
    } else {
        dark(c)
    }
}

/// Object class id, box `[x, y, w, h]`, keypoints `(part name, x, y)`.
type ObjectAnnotation = (u32, [f32; 4], Vec<(String, f32, f32)>);

struct Drawn {
    image: RgbImage,
    parts: GrayImage,
    objects: GrayImage,
    annotations: Vec<ObjectAnnotation>,
    part_count: usize,
}

fn draw(opts: &SynthOptions, index: usize) -> Drawn {
    let mut rng = Rng::new(opts.seed, index as u64);
    let s = opts.size;
    let classes = part_classes();
    let mut image = RgbImage::from_fn(s, s, |_, _| {
        let g = 110 + (rng.below(30) as u8);
        Rgb([g, g, g + 10])
    });
    let mut parts = GrayImage::new(s, s);
    let mut objects = GrayImage::new(s, s);
    let mut annotations = Vec::new();
    let mut part_count = 0;
    let cell = s / 2;
    let n_objects = 1 + rng.below(3) as usize;
    let mut cells = [0u32, 1, 2, 3];
    for i in (1..4).rev() {
        cells.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &c in cells.iter().take(n_objects) {
        let oi = rng.below(OBJECTS.len() as u64) as usize;
        let spec = &OBJECTS[oi];
        let side = cell as f32 * (0.55 + 0.35 * rng.unit());
        // A 2-px moat inside each cell keeps objects (and their object-map regions) in
        // neighbouring cells from touching.
        let free = cell as f32 - side - 4.0;
        let ox = (c % 2) as f32 * cell as f32 + 2.0 + rng.unit() * free;
        let oy = (c / 2) as f32 * cell as f32 + 2.0 + rng.unit() * free;
        let phase = rng.below(8) as u32;
        let mut keypoints = Vec::new();
        for p in spec.parts {
            let pid = classes
                .iter()
                .position(|n| *n == format!("{}/{}", spec.name, p.name))
                .unwrap_or(0) as u8
                + 1;
            let [fx0, fy0, fx1, fy1] = p.frame.map(|f| f * side / 100.0);
            let (x0, y0) = ((ox + fx0).round() as u32, (oy + fy0).round() as u32);
            let (x1, y1) = ((ox + fx1).round() as u32, (oy + fy1).round() as u32);
            let (w, h) = ((x1 - x0).max(1), (y1 - y0).max(1));
            let mut drawn = false;
            for y in y0..y1.min(s) {
                for x in x0..x1.min(s) {
                    let (u, v) = ((x - x0) as f32 / w as f32, (y - y0) as f32 / h as f32);
                    if inside(p.shape, u + 0.5 / w as f32, v + 0.5 / h as f32) {
                        image.put_pixel(x, y, Rgb(texel(p.texture, x, y, phase, p.color)));
                        parts.put_pixel(x, y, Luma([pid]));
                        drawn = true;
                    }
                }
            }
            // The object map covers each part's box grown by 3 % of the object, which bridges
            // the 4 % gaps between parts: one connected region per object, inside its cell.
            let grow = (0.03 * side).ceil() as u32;
            let (cx0, cy0) = ((c % 2) * cell, (c / 2) * cell);
            for y in y0.saturating_sub(grow).max(cy0 + 1)..(y1 + grow).min(cy0 + cell - 1).min(s) {
                for x in
                    x0.saturating_sub(grow).max(cx0 + 1)..(x1 + grow).min(cx0 + cell - 1).min(s)
                {
                    objects.put_pixel(x, y, Luma([oi as u8 + 1]));
                }
            }
            if drawn {
                part_count += 1;
                keypoints.push((
                    p.name.to_string(),
                    (x0 + x1) as f32 / 2.0,
                    (y0 + y1) as f32 / 2.0,
                ));
            }
        }
        annotations.push((oi as u32 + 1, [ox, oy, side, side], keypoints));
    }
    Drawn {
        image,
        parts,
        objects,
        annotations,
        part_count,
    }
}

/// Largest image side accepted, in pixels (an 8192² image is 200 MB decoded).
pub const MAX_SIZE: u32 = 8192;

/// Most images accepted in one run.
pub const MAX_IMAGES: usize = 10_000_000;

/// Writes `opts.images` images and their annotations to `out` (which must not exist or be
/// empty). They are written to a staging folder beside `out` and moved into place when
/// complete, so a failed or killed run leaves no half-written dataset. Returns what was drawn.
pub fn generate(out: &Path, opts: &SynthOptions) -> Result<SynthSummary> {
    if !(64..=MAX_SIZE).contains(&opts.size) {
        return Err(Error::InvalidArgument(format!(
            "synthetic images must be 64 to {MAX_SIZE} px on a side, got {}",
            opts.size
        )));
    }
    if opts.images == 0 || opts.images > MAX_IMAGES {
        return Err(Error::InvalidArgument(format!(
            "--images must be between 1 and {MAX_IMAGES}, got {}",
            opts.images
        )));
    }
    let staged = crate::files::StagedDir::begin(out, "dataset")?;
    crate::files::check_absent_or_empty(staged.target())?;
    let summary = write_all(staged.path(), opts)?;
    staged.commit(&crate::files::is_empty_dir)?;
    Ok(summary)
}

fn write_all(out: &Path, opts: &SynthOptions) -> Result<SynthSummary> {
    for sub in [
        "img/train",
        "img/val",
        "ann/train",
        "ann/val",
        "obj/train",
        "obj/val",
    ] {
        std::fs::create_dir_all(out.join(sub)).at(out.join(sub))?;
    }
    let classes = part_classes();
    std::fs::write(
        out.join("classes.txt"),
        format!("background\n{}\n", classes.join("\n")),
    )
    .at(out.join("classes.txt"))?;
    let objects: Vec<&str> = OBJECTS.iter().map(|o| o.name).collect();
    std::fs::write(
        out.join("object_classes.txt"),
        format!("background\n{}\n", objects.join("\n")),
    )
    .at(out.join("object_classes.txt"))?;

    // Images in parallel blocks; keypoint annotations streamed to one JSON file in order.
    let kp_path = out.join("keypoints.json");
    let mut kp = std::io::BufWriter::new(std::fs::File::create(&kp_path).at(&kp_path)?);
    let cats: Vec<serde_json::Value> = OBJECTS
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut names: Vec<&str> = o.parts.iter().map(|p| p.name).collect();
            names.dedup();
            serde_json::json!({"id": i + 1, "name": o.name, "keypoints": names})
        })
        .collect();
    write!(
        kp,
        "{{\"categories\": {}, \"images\": [",
        serde_json::Value::from(cats)
    )
    .at(&kp_path)?;
    let mut summary = SynthSummary::default();
    // Annotations go to a side file while images are listed, then are appended: flat memory.
    let tmp_path = out.join("keypoints.annotations.tmp");
    let mut tmp = std::io::BufWriter::new(std::fs::File::create(&tmp_path).at(&tmp_path)?);
    let mut n_annotations = 0usize;
    let block = 256;
    for start in (0..opts.images).step_by(block) {
        let end = (start + block).min(opts.images);
        let drawn: Vec<Result<Drawn>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let d = draw(opts, i);
                let split = if i % 5 == 4 { "val" } else { "train" };
                let name = format!("{i:07}");
                let img = out.join(format!("img/{split}/{name}.jpg"));
                d.image
                    .save(&img)
                    .map_err(|e| Error::io(&img, std::io::Error::other(e)))?;
                for (dir, map) in [("ann", &d.parts), ("obj", &d.objects)] {
                    let p = out.join(format!("{dir}/{split}/{name}.png"));
                    map.save(&p)
                        .map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
                }
                Ok(d)
            })
            .collect();
        for (i, d) in (start..end).zip(drawn) {
            let d = d?;
            let split = if i % 5 == 4 { "val" } else { "train" };
            if i > 0 {
                write!(kp, ",").at(&kp_path)?;
            }
            write!(
                kp,
                "{}",
                serde_json::json!({"id": i + 1, "file_name": format!("img/{split}/{i:07}.jpg"), "width": opts.size, "height": opts.size})
            )
            .at(&kp_path)?;
            summary.images += 1;
            summary.objects += d.annotations.len();
            summary.parts += d.part_count;
            for (cat, bbox, kps) in d.annotations {
                let spec = &OBJECTS[cat as usize - 1];
                let mut names: Vec<&str> = spec.parts.iter().map(|p| p.name).collect();
                names.dedup();
                // One keypoint per part class: the first drawn part of that class.
                let flat: Vec<f32> = names
                    .iter()
                    .flat_map(|n| match kps.iter().find(|k| k.0 == *n) {
                        Some((_, x, y)) => [*x, *y, 2.0],
                        None => [0.0, 0.0, 0.0],
                    })
                    .collect();
                n_annotations += 1;
                let a = serde_json::json!({
                    "id": n_annotations, "image_id": i + 1, "category_id": cat,
                    "bbox": bbox, "iscrowd": 0, "keypoints": flat,
                });
                let sep = if n_annotations > 1 { "," } else { "" };
                write!(tmp, "{sep}{a}").at(&tmp_path)?;
            }
        }
    }
    tmp.flush().at(&tmp_path)?;
    drop(tmp);
    write!(kp, "], \"annotations\": [").at(&kp_path)?;
    std::io::copy(&mut std::fs::File::open(&tmp_path).at(&tmp_path)?, &mut kp).at(&kp_path)?;
    write!(kp, "]}}").at(&kp_path)?;
    kp.flush().at(&kp_path)?;
    std::fs::remove_file(&tmp_path).at(&tmp_path)?;
    Ok(summary)
}
