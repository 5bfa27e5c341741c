//! `partlens synth`: a deterministic synthetic dataset of objects made of parts, each part class
//! with its own shape and texture, written in the mmseg layout (`img/`, `ann/`, `obj/`,
//! `classes.txt`, `object_classes.txt`) plus a COCO-style keypoint file (`keypoints.json`, one
//! keypoint per part centre). Every image depends only on (seed, index), images are generated in
//! parallel and written as they are made, so memory stays flat at any size.
//!
//! At `variation` 0 (the default) every part class has a fixed colour and texture, which any
//! encoder, even one with random weights, separates perfectly. `variation` v in (0, 1] makes the
//! set harder, drawing every nuisance from a stream of its own (so a seed keeps its layout —
//! cells, classes, sizes — at every variation, and variation 0 draws nothing and writes exactly
//! the bytes it always did):
//! - each part's colour is the class colour mixed with a random one (weight v; at 1 colour says
//!   nothing about the class), and with probability v its texture is a random one;
//! - each object's frame is squeezed along one axis to as little as 1/(1 + 0.3 v) of its side, and
//!   each part is drawn in its box with every edge moved inward by up to 15 v % of the box's side
//!   (size, proportions and place vary; the gaps between parts only widen);
//! - the background takes a random colour (weight v) and its pixel noise grows to 1 + 3 v times;
//! - from v = 0.5, 0 to ⌊6 v⌋ + 2 unannotated distractor shapes (random shape, colour, texture)
//!   are drawn anywhere before the objects.
//!
//! At high variation a part's class shows only in its shape, its place in the object and its
//! neighbours, which a pretrained encoder knows and a random one does not. The invariants hold at
//! every variation: parts of one class never touch (nor do any two parts of an object from 128 px
//! on; in smaller images the 4 % gaps between parts of different classes can round away, at
//! variation 0 too), each part is one connected region, each object's map region is one
//! connected region inside its cell. Shrunk parts are smaller, so more of them fall under an
//! ingest's `--min-area`.

use std::io::Write;
use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthOptions {
    /// Number of images.
    pub images: usize,
    /// Seed; the same seed gives the same bytes.
    pub seed: u64,
    /// Image side in pixels (square images, 2 × 2 cells of one object at most each).
    pub size: u32,
    /// Nuisance from 0 (fixed colour and texture per part class, the original set) to 1 (colour
    /// and texture random, squeezed frames, coloured noisy background, distractors); see the
    /// module documentation.
    pub variation: f32,
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

const SHAPES: [Shape; 3] = [Shape::Rect, Shape::Disc, Shape::Triangle];

#[derive(Clone, Copy)]
enum Texture {
    Stripes,
    Checker,
    Dots,
    Solid,
}

const TEXTURES: [Texture; 4] = [
    Texture::Stripes,
    Texture::Checker,
    Texture::Dots,
    Texture::Solid,
];

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

    fn color(&mut self) -> [u8; 3] {
        [0; 3].map(|_: u8| self.below(256) as u8)
    }
}

/// Most each edge of a part's box moves inward at variation 1, as a share of the box's side.
const MAX_SHRINK: f32 = 0.15;

/// The `variation` nuisances, drawn from their own stream; at variation 0 nothing is drawn and
/// every method returns what the original set uses.
struct Nuisance {
    rng: Rng,
    v: f32,
}

impl Nuisance {
    fn new(opts: &SynthOptions, index: usize) -> Nuisance {
        // A stream no image's layout uses: seeded from the complement of the index.
        let rng = Rng(Rng::new(opts.seed, !(index as u64)).next());
        Nuisance {
            rng,
            v: opts.variation,
        }
    }

    fn active(&self) -> bool {
        self.v > 0.0
    }

    fn mix(a: [u8; 3], b: [u8; 3], w: f32) -> [u8; 3] {
        [0, 1, 2].map(|i| (a[i] as f32 * (1.0 - w) + b[i] as f32 * w).round() as u8)
    }

    /// The background's base colour.
    fn background(&mut self) -> [u8; 3] {
        match self.active() {
            true => Self::mix([125, 125, 135], self.rng.color(), self.v),
            false => [125, 125, 135],
        }
    }

    /// A part instance's colour: the class colour mixed with a random one.
    fn color(&mut self, class: [u8; 3]) -> [u8; 3] {
        match self.active() {
            true => Self::mix(class, self.rng.color(), self.v),
            false => class,
        }
    }

    /// A part instance's texture: a random one with probability `v`.
    fn texture(&mut self, class: Texture) -> Texture {
        if self.active() && self.rng.unit() < self.v {
            TEXTURES[self.rng.below(TEXTURES.len() as u64) as usize]
        } else {
            class
        }
    }

    /// Width and height factors of an object's frame (one is 1, the other down to 1/(1 + 0.3 v)).
    fn aspect(&mut self) -> (f32, f32) {
        if !self.active() {
            return (1.0, 1.0);
        }
        let squeeze = 1.0 / (1.0 + 0.3 * self.v * self.rng.unit());
        match self.rng.below(2) {
            0 => (squeeze, 1.0),
            _ => (1.0, squeeze),
        }
    }

    /// The box a part is drawn in: its frame box with each edge moved inward by up to
    /// `MAX_SHRINK` · v of the box's side, so the part's size, proportions and place vary while
    /// the gaps between parts only widen.
    fn shrink(&mut self, frame: [f32; 4]) -> [f32; 4] {
        if !self.active() {
            return frame;
        }
        let [x0, y0, x1, y1] = frame;
        let most = MAX_SHRINK * self.v;
        let (w, h) = (x1 - x0, y1 - y0);
        [
            x0 + most * w * self.rng.unit(),
            y0 + most * h * self.rng.unit(),
            x1 - most * w * self.rng.unit(),
            y1 - most * h * self.rng.unit(),
        ]
    }

    /// Unannotated distractors drawn under the objects (from variation 0.5 on).
    fn clutter(&mut self, image: &mut RgbImage) {
        if self.v < 0.5 {
            return;
        }
        let s = image.width();
        let n = self.rng.below((6.0 * self.v) as u64 + 3);
        for _ in 0..n {
            let shape = SHAPES[self.rng.below(SHAPES.len() as u64) as usize];
            let texture = TEXTURES[self.rng.below(TEXTURES.len() as u64) as usize];
            let color = self.rng.color();
            let w = (s as f32 * (0.05 + 0.15 * self.rng.unit())) as u32;
            let h = (s as f32 * (0.05 + 0.15 * self.rng.unit())) as u32;
            let x0 = self.rng.below(u64::from(s - w)) as u32;
            let y0 = self.rng.below(u64::from(s - h)) as u32;
            let phase = self.rng.below(8) as u32;
            for y in y0..y0 + h {
                for x in x0..x0 + w {
                    let (u, v) = ((x - x0) as f32 + 0.5, (y - y0) as f32 + 0.5);
                    if inside(shape, u / w as f32, v / h as f32) {
                        image.put_pixel(x, y, Rgb(texel(texture, x, y, phase, color)));
                    }
                }
            }
        }
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
    let mut nuisance = Nuisance::new(opts, index);
    let s = opts.size;
    let classes = part_classes();
    let base = nuisance.background();
    let gain = 1.0 + 3.0 * opts.variation;
    let mut image = RgbImage::from_fn(s, s, |_, _| {
        let g = 110 + (rng.below(30) as u8);
        if !nuisance.active() {
            return Rgb([g, g, g + 10]);
        }
        let noise = (f32::from(g) - 125.0) * gain;
        Rgb(base.map(|c| (f32::from(c) + noise).round().clamp(0.0, 255.0) as u8))
    });
    nuisance.clutter(&mut image);
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
        let (aw, ah) = nuisance.aspect();
        let (w, h) = (side * aw, side * ah);
        // A 2-px moat inside each cell keeps objects (and their object-map regions) in
        // neighbouring cells from touching.
        let ox = (c % 2) as f32 * cell as f32 + 2.0 + rng.unit() * (cell as f32 - w - 4.0);
        let oy = (c / 2) as f32 * cell as f32 + 2.0 + rng.unit() * (cell as f32 - h - 4.0);
        let phase = rng.below(8) as u32;
        let mut keypoints = Vec::new();
        for p in spec.parts {
            let pid = classes
                .iter()
                .position(|n| *n == format!("{}/{}", spec.name, p.name))
                .unwrap_or(0) as u8
                + 1;
            // Frame units to pixels: the part's frame box, and the box it is drawn in.
            let to_pixels = |[fx0, fy0, fx1, fy1]: [f32; 4]| {
                [(fx0, ox, w), (fy0, oy, h), (fx1, ox, w), (fy1, oy, h)]
                    .map(|(f, o, side)| (o + f * side / 100.0).round() as u32)
            };
            let [bx0, by0, bx1, by1] = to_pixels(p.frame);
            let [x0, y0, x1, y1] = to_pixels(nuisance.shrink(p.frame));
            let (color, texture) = (nuisance.color(p.color), nuisance.texture(p.texture));
            let (pw, ph) = ((x1 - x0).max(1), (y1 - y0).max(1));
            let mut drawn = false;
            for y in y0..y1.min(s) {
                for x in x0..x1.min(s) {
                    let (u, v) = ((x - x0) as f32 / pw as f32, (y - y0) as f32 / ph as f32);
                    if inside(p.shape, u + 0.5 / pw as f32, v + 0.5 / ph as f32) {
                        image.put_pixel(x, y, Rgb(texel(texture, x, y, phase, color)));
                        parts.put_pixel(x, y, Luma([pid]));
                        drawn = true;
                    }
                }
            }
            // The object map covers each part's frame box grown by 3 % of the object, which
            // bridges the 4 % gaps between parts: one connected region per object, inside its cell.
            let grow = (0.03 * w.max(h)).ceil() as u32;
            let (cx0, cy0) = ((c % 2) * cell, (c / 2) * cell);
            for y in by0.saturating_sub(grow).max(cy0 + 1)..(by1 + grow).min(cy0 + cell - 1).min(s)
            {
                for x in
                    bx0.saturating_sub(grow).max(cx0 + 1)..(bx1 + grow).min(cx0 + cell - 1).min(s)
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
        annotations.push((oi as u32 + 1, [ox, oy, w, h], keypoints));
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
    if !(0.0..=1.0).contains(&opts.variation) {
        return Err(Error::InvalidArgument(format!(
            "--variation must be between 0 and 1, got {}",
            opts.variation
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
