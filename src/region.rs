//! The unit partlens indexes: a part or object region of one image.

use serde::{Deserialize, Serialize};

/// An axis-aligned pixel box, half-open: columns `x0..x1`, rows `y0..y1`. Coordinates may lie
/// outside the image (a crop box padded with black, as PIL's `crop` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelBox {
    /// First column.
    pub x0: i64,
    /// First row.
    pub y0: i64,
    /// One past the last column.
    pub x1: i64,
    /// One past the last row.
    pub y1: i64,
}

impl PixelBox {
    /// Largest coordinate magnitude [`PixelBox::new`] accepts (2^40 pixels): far past any
    /// image, small enough that widths, areas of crops and centres never overflow `i64`.
    pub const MAX_COORD: i64 = 1 << 40;

    /// A box from its corners; `None` unless `x1 > x0`, `y1 > y0` and every coordinate is
    /// within ±[`PixelBox::MAX_COORD`].
    pub fn new(x0: i64, y0: i64, x1: i64, y1: i64) -> Option<Self> {
        let sane = [x0, y0, x1, y1]
            .iter()
            .all(|v| v.unsigned_abs() <= Self::MAX_COORD as u64);
        (sane && x1 > x0 && y1 > y0).then_some(PixelBox { x0, y0, x1, y1 })
    }

    /// Width in pixels.
    pub fn width(&self) -> i64 {
        self.x1 - self.x0
    }

    /// Height in pixels.
    pub fn height(&self) -> i64 {
        self.y1 - self.y0
    }

    /// `[x0, y0, x1, y1]`.
    pub fn to_array(&self) -> [i64; 4] {
        [self.x0, self.y0, self.x1, self.y1]
    }

    /// The square crop partlens embeds for a region with this tight box: centred on the box,
    /// side = longest side × (1 + 2 × `margin`), rounded to whole pixels. Square crops keep the
    /// whole part in view after the short-side resize and centre crop (a rectangular crop would
    /// lose its ends), and match the paper's square keypoint crops.
    pub fn square_crop(&self, margin: f32) -> PixelBox {
        let side = (self.width().max(self.height()) as f64 * (1.0 + 2.0 * margin as f64))
            .round()
            .max(1.0) as i64;
        // Centre in doubled coordinates to stay in integers.
        let cx2 = self.x0 + self.x1;
        let cy2 = self.y0 + self.y1;
        let x0 = (cx2 - side).div_euclid(2);
        let y0 = (cy2 - side).div_euclid(2);
        PixelBox {
            x0,
            y0,
            x1: x0 + side,
            y1: y0 + side,
        }
    }

    /// Parses `x0,y0,x1,y1`.
    pub fn parse(s: &str) -> Option<PixelBox> {
        let v: Vec<i64> = s
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [x0, y0, x1, y1] => PixelBox::new(x0, y0, x1, y1),
            _ => None,
        }
    }
}

/// Whether a region is an object part or a whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    /// A part of an object (a wheel, a head, a left arm).
    Part,
    /// A whole object (a car, a person).
    Object,
}

impl RegionKind {
    /// Both kinds.
    pub const ALL: [RegionKind; 2] = [RegionKind::Part, RegionKind::Object];

    /// `"part"` or `"object"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RegionKind::Part => "part",
            RegionKind::Object => "object",
        }
    }

    /// Parses `part` / `object`.
    pub fn parse(s: &str) -> Option<RegionKind> {
        match s {
            "part" => Some(RegionKind::Part),
            "object" => Some(RegionKind::Object),
            _ => None,
        }
    }
}

/// A region's metadata: everything partlens stores about it except its features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Row number in the index (`features/<feature>.npy` row), assigned at ingest.
    pub id: u64,
    /// Image path relative to the dataset root, with `/` separators.
    pub image: String,
    /// Dataset split, e.g. `train` or `val`.
    pub split: String,
    /// Part or object.
    pub kind: RegionKind,
    /// Class id in the dataset's label space (part classes for parts, object classes for objects).
    pub label: u32,
    /// Class name.
    pub label_name: String,
    /// Object class the region belongs to, when the dataset has object labels: for an object,
    /// its own class; for a part, the class of the object it is annotated as part of (formats
    /// with instances) or the object class under most of its pixels (label maps).
    pub object_label: Option<u32>,
    /// Name of `object_label`.
    pub object_name: Option<String>,
    /// Which instance the region is. For formats that annotate instances, the annotated
    /// instance number: Pascal-Part, the object's index in the annotation (from 0, file order),
    /// shared by its parts; ADE20K, the instance id; COCO keypoints, the annotation's index
    /// among the image's; listings, the row's index among the image's rows. For label maps, the
    /// connected-component number of this class in this image, from 0, in raster order.
    pub instance: u32,
    /// Tight bounding box of the region's pixels.
    pub bbox: PixelBox,
    /// The square box that was cropped and embedded (may extend past the image: black there).
    pub crop_box: PixelBox,
    /// Number of pixels in the region.
    pub area: u64,
    /// The region's pixel mask inside `bbox`, run-length encoded in row-major order: alternating
    /// runs of outside / inside pixels, starting with an outside run (possibly 0).
    pub mask_rle: Vec<u32>,
}
