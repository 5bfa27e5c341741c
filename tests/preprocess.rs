//! The README's claim, checked as stated: partlens's preprocessing equals Pillow +
//! torchvision's bit for bit. Hundreds of random crops (inside, across and far outside the
//! image; square and not; 1 px to 2.5× the image) at several output sizes, and raw bicubic
//! resizes with very different scales per axis, against `tests/python/reference_tensors.py`.

mod common;

use std::path::Path;

use partlens::preprocess::resample::{resize_window, Window};
use partlens::preprocess::{decode_rgb, Preprocessor};
use partlens::region::PixelBox;

/// A small deterministic generator (the seed is printed so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// Runs `reference_tensors.py` on `cases` (images under `dir`) and returns its output bytes.
fn pillow(dir: &Path, cases: &[serde_json::Value]) -> Vec<u8> {
    let cases_path = dir.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(cases).unwrap()).unwrap();
    let out = dir.join("out.bin");
    common::run_python(
        "reference_tensors.py",
        &[
            "--cases".as_ref(),
            cases_path.as_os_str(),
            "--root".as_ref(),
            dir.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
    );
    std::fs::read(&out).unwrap()
}

enum Case {
    Tensor(Preprocessor),
    Resize(usize, usize),
}

#[test]
fn preprocessing_equals_pillow_bit_for_bit() {
    let seed = 7u64;
    println!("seed {seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    // A colour JPEG, a greyscale JPEG (LIP), and a PNG made from the first.
    let images = [
        (
            "colour.jpg",
            common::sample("pascal_part/img/val/2008_003228.jpg"),
        ),
        ("grey.jpg", common::sample("lip/img/val/684_2150041.jpg")),
    ];
    for (name, src) in &images {
        std::fs::copy(src, dir.path().join(name)).unwrap();
    }
    decode_rgb(&dir.path().join("colour.jpg"))
        .unwrap()
        .save(dir.path().join("colour.png"))
        .unwrap();
    let names = ["colour.jpg", "grey.jpg", "colour.png"];
    let decoded: Vec<_> = names
        .iter()
        .map(|n| decode_rgb(&dir.path().join(n)).unwrap())
        .collect();

    let sizes = [(224, 224), (32, 32), (48, 48), (24, 40), (40, 23), (17, 17)];
    let mut cases = Vec::new();
    let mut json = Vec::new();
    for i in 0..330 {
        let im = rng.below(3) as usize;
        let (w, h) = (decoded[im].width() as i64, decoded[im].height() as i64);
        let bw = rng.range(1, w * 5 / 2);
        let bh = if rng.below(2) == 0 {
            bw
        } else {
            rng.range(1, h * 5 / 2)
        };
        let x0 = rng.range(-bw, w);
        let y0 = rng.range(-bh, h);
        let b = PixelBox::new(x0, y0, x0 + bw, y0 + bh).unwrap();
        if i < 250 {
            // Full-size tensors are large: a few, the rest smaller.
            let (th, tw) = if i % 25 == 0 {
                sizes[0]
            } else {
                sizes[1 + rng.below(5) as usize]
            };
            let mean = [0.485, 0.456, 0.406];
            let std = [0.229, 0.224, 0.225];
            json.push(serde_json::json!({"image": names[im], "box": b.to_array(),
                "tensor": [th, tw], "mean": mean, "std": std}));
            cases.push((
                im,
                b,
                Case::Tensor(Preprocessor {
                    size: (th, tw),
                    mean,
                    std,
                }),
            ));
        } else {
            // Independent scales per axis, shrinking one and growing the other.
            let (ow, oh) = (rng.range(1, 300) as usize, rng.range(1, 300) as usize);
            json.push(serde_json::json!({"image": names[im], "box": b.to_array(),
                "resize": [ow, oh]}));
            cases.push((im, b, Case::Resize(ow, oh)));
        }
    }
    let reference = pillow(dir.path(), &json);
    let mut at = 0;
    let mut tensors = 0;
    for (i, (im, b, case)) in cases.iter().enumerate() {
        let img = &decoded[*im];
        match case {
            Case::Tensor(p) => {
                let mut mine = vec![0f32; p.tensor_len()];
                p.region_tensor(img, *b, &mut mine);
                let n = mine.len() * 4;
                let theirs: Vec<f32> = reference[at..at + n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                at += n;
                let diff = mine
                    .iter()
                    .zip(&theirs)
                    .filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    diff.count(),
                    0,
                    "case {i}: {} box {b:?} → {:?}",
                    names[*im],
                    p.size
                );
                tensors += 1;
            }
            Case::Resize(ow, oh) => {
                let win = Window {
                    src: img.as_raw(),
                    img_w: img.width() as usize,
                    img_h: img.height() as usize,
                    x0: b.x0,
                    y0: b.y0,
                    width: b.width() as usize,
                    height: b.height() as usize,
                };
                let mine = resize_window(&win, *ow, *oh);
                let n = mine.len();
                assert_eq!(
                    mine,
                    &reference[at..at + n],
                    "case {i}: {} box {b:?} resized to {ow}×{oh}",
                    names[*im]
                );
                at += n;
            }
        }
    }
    assert_eq!(at, reference.len());
    println!(
        "{tensors} tensors and {} resizes equal Pillow's, bit for bit",
        cases.len() - tensors
    );
}

#[test]
fn the_vertical_only_and_horizontal_only_passes_equal_pillow() {
    // One axis unchanged: Pillow runs a single pass; so must we.
    let dir = tempfile::tempdir().unwrap();
    let img = decode_rgb(&common::sample("lip/img/val/86_185913.jpg")).unwrap();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let cases = [
        (PixelBox::new(0, 0, w, h).unwrap(), w as usize, 7),
        (PixelBox::new(0, 0, w, h).unwrap(), 5, h as usize),
        (
            PixelBox::new(-10, 3, w - 4, h + 9).unwrap(),
            (w + 6) as usize,
            301,
        ),
    ];
    let json: Vec<_> = cases
        .iter()
        .map(|(b, ow, oh)| serde_json::json!({"image": "x.jpg", "box": b.to_array(), "resize": [ow, oh]}))
        .collect();
    std::fs::copy(
        common::sample("lip/img/val/86_185913.jpg"),
        dir.path().join("x.jpg"),
    )
    .unwrap();
    let reference = pillow(dir.path(), &json);
    let mut at = 0;
    for (b, ow, oh) in cases {
        let win = Window {
            src: img.as_raw(),
            img_w: w as usize,
            img_h: h as usize,
            x0: b.x0,
            y0: b.y0,
            width: b.width() as usize,
            height: b.height() as usize,
        };
        let mine = resize_window(&win, ow, oh);
        assert_eq!(mine, &reference[at..at + mine.len()], "{b:?} → {ow}×{oh}");
        at += mine.len();
    }
}
