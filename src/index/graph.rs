//! partlens's own HNSW graph file, `hnsw/<feature>.graph`: fixed-width neighbour lists per
//! layer, read in place from a memory map after every byte has been validated.
//!
//! Layout (all integers little-endian; the vectors are not in this file: the search reads
//! the unit rows of `features/<feature>.unit.npy`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PLGRAPH\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | byte-order mark `0x01020304` |
//! | 16 | 8 | N, points (= rows of the vector matrix) |
//! | 24 | 4 | D, dimensions of the vectors it was built on |
//! | 28 | 4 | M, list width on layers ≥ 1 |
//! | 32 | 4 | M0, list width on layer 0 |
//! | 36 | 4 | ef_construction |
//! | 40 | 4 | L, number of layers (1..=16) |
//! | 44 | 4 | entry point (a node of layer L − 1) |
//! | 48 | 8 | seed of the level draw |
//! | 56 | 8 | file length in bytes |
//! | 64 | 128 | nodes per layer, 16 × u64 (layer 0 = N; non-increasing; 0 from L on) |
//! | 192 | 56 | zero |
//! | 248 | 4 | CRC-32 of bytes 0..248 and 256..end |
//! | 252 | 4 | zero |
//! | 256 | N, padded to 8 | each node's top layer, u8 |
//! | … | N × (1 + M0) × 4 | layer 0: per node its neighbour count, then M0 ids, unused = `u32::MAX` |
//! | … | per layer l ≥ 1: n_l × 4, then n_l × (1 + M) × 4 | the layer's nodes (ascending ids), then their lists |
//!
//! [`GraphFile::open`] maps the file and checks, before any use: the magic, version and
//! byte order, every header value against its range, the length the header implies against
//! the file's (computed without overflow), the checksum, each node's level against the layer
//! counts, every layer's node list, and every neighbour count and id (< N, on its layer, the
//! padding `u32::MAX`). A file that fails any check is [`Error::DataCorruption`] naming it;
//! nothing is allocated from a length field before the length is checked against the file.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

/// File magic.
pub const MAGIC: &[u8; 8] = b"PLGRAPH\0";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Most layers a graph may have.
pub const MAX_LAYERS: usize = 16;
/// Header length in bytes.
pub const HEADER_LEN: usize = 256;
const BOM: u32 = 0x0102_0304;
const CRC_AT: usize = 248;
/// Unused slot of a neighbour list.
pub const EMPTY: u32 = u32::MAX;
/// Largest list width accepted (M0 = 2 M with M ≤ 4096).
const MAX_WIDTH: usize = 8192;

/// A graph's structure, borrowed from a built graph or a mapped file.
#[derive(Debug, Clone)]
pub struct GraphView<'a> {
    /// List width on layers ≥ 1.
    pub m: usize,
    /// List width on layer 0.
    pub m0: usize,
    /// Entry point (a node of the top layer).
    pub entry: u32,
    /// Each node's top layer.
    pub levels: &'a [u8],
    /// Layer 0: per node `1 + m0` values, the count first.
    pub layer0: &'a [u32],
    /// Layers ≥ 1: (ascending node ids, their lists of `1 + m` values each); the first
    /// `layers − 1` entries are used.
    upper: [(&'a [u32], &'a [u32]); MAX_LAYERS - 1],
    layers: usize,
}

impl<'a> GraphView<'a> {
    /// A view of these parts: `upper` holds layers 1, 2, … (at most 15; more are ignored).
    /// Nothing is allocated: a query builds one per search.
    pub fn new(
        m: usize,
        m0: usize,
        entry: u32,
        levels: &'a [u8],
        layer0: &'a [u32],
        upper: impl IntoIterator<Item = (&'a [u32], &'a [u32])>,
    ) -> GraphView<'a> {
        let mut fixed: [(&[u32], &[u32]); MAX_LAYERS - 1] = [(&[], &[]); MAX_LAYERS - 1];
        let mut layers = 1;
        for (f, u) in fixed.iter_mut().zip(upper) {
            *f = u;
            layers += 1;
        }
        GraphView {
            m,
            m0,
            entry,
            levels,
            layer0,
            upper: fixed,
            layers,
        }
    }

    /// Layer `l ≥ 1`: its ascending node ids and their lists.
    pub fn upper(&self, l: usize) -> (&'a [u32], &'a [u32]) {
        self.upper[l - 1]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The neighbours of `node` on `layer` (empty if the node is not on that layer).
    #[inline]
    pub fn neighbours(&self, layer: usize, node: u32) -> &[u32] {
        if layer == 0 {
            let w = self.m0 + 1;
            let s = &self.layer0[node as usize * w..(node as usize + 1) * w];
            return &s[1..1 + s[0] as usize];
        }
        let (ids, lists) = self.upper[layer - 1];
        match ids.binary_search(&node) {
            Ok(slot) => {
                let w = self.m + 1;
                let s = &lists[slot * w..(slot + 1) * w];
                &s[1..1 + s[0] as usize]
            }
            Err(_) => &[],
        }
    }
}

/// Construction parameters and provenance, as recorded in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphHeader {
    /// Points.
    pub n: usize,
    /// Dimensions of the vectors.
    pub dim: usize,
    /// List width on layers ≥ 1 (M).
    pub m: usize,
    /// List width on layer 0 (M0).
    pub m0: usize,
    /// ef_construction.
    pub ef_construction: usize,
    /// Layers.
    pub layers: usize,
    /// Entry point.
    pub entry: u32,
    /// Seed of the level draw.
    pub seed: u64,
    /// Nodes per layer.
    pub layer_nodes: [u64; MAX_LAYERS],
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Byte offsets of the sections, and the file length, for a header (None on overflow).
struct Sections {
    levels: usize,
    layer0: usize,
    upper: Vec<(usize, usize)>,
    end: usize,
}

fn sections(h: &GraphHeader) -> Option<Sections> {
    let levels = HEADER_LEN;
    let layer0 = levels.checked_add(pad8(h.n))?;
    let mut at =
        h.n.checked_mul(h.m0.checked_add(1)?)?
            .checked_mul(4)?
            .checked_add(layer0)?;
    let mut upper = Vec::with_capacity(h.layers.saturating_sub(1));
    for l in 1..h.layers {
        let nl = usize::try_from(h.layer_nodes[l]).ok()?;
        let ids = at;
        let lists = ids.checked_add(nl.checked_mul(4)?)?;
        at = lists.checked_add(nl.checked_mul(h.m.checked_add(1)?)?.checked_mul(4)?)?;
        upper.push((ids, lists));
    }
    Some(Sections {
        levels,
        layer0,
        upper,
        end: at,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn encode_header(h: &GraphHeader, file_len: u64) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&BOM.to_le_bytes());
    b[16..24].copy_from_slice(&(h.n as u64).to_le_bytes());
    for (at, v) in [
        (24, h.dim),
        (28, h.m),
        (32, h.m0),
        (36, h.ef_construction),
        (40, h.layers),
    ] {
        b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
    }
    b[44..48].copy_from_slice(&h.entry.to_le_bytes());
    b[48..56].copy_from_slice(&h.seed.to_le_bytes());
    b[56..64].copy_from_slice(&file_len.to_le_bytes());
    for (l, c) in h.layer_nodes.iter().enumerate() {
        b[64 + 8 * l..72 + 8 * l].copy_from_slice(&c.to_le_bytes());
    }
    b
}

/// Writes a graph file: `view` must hold `h.n` nodes. Written to `path` directly (the caller
/// stages the index folder), then fsynced.
pub fn write(path: &Path, h: &GraphHeader, view: &GraphView<'_>) -> Result<()> {
    let s = sections(h).ok_or_else(|| Error::InvalidArgument("graph too large".into()))?;
    let mut crc = crc32fast::Hasher::new();
    let header = encode_header(h, s.end as u64);
    crc.update(&header[..CRC_AT]);
    let file = std::fs::File::create(path).at(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut put = |w: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8]| -> Result<()> {
        crc.update(bytes);
        w.write_all(bytes).at(path)
    };
    w.write_all(&header).at(path)?;
    put(&mut w, view.levels)?;
    put(&mut w, &vec![0u8; s.layer0 - s.levels - view.levels.len()])?;
    put(&mut w, bytemuck::cast_slice(view.layer0))?;
    for l in 1..view.layers() {
        let (ids, lists) = view.upper(l);
        put(&mut w, bytemuck::cast_slice(ids))?;
        put(&mut w, bytemuck::cast_slice(lists))?;
    }
    let sum = crc.finalize();
    let mut file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.seek(SeekFrom::Start(CRC_AT as u64)).at(path)?;
    file.write_all(&sum.to_le_bytes()).at(path)?;
    let len = file.seek(SeekFrom::End(0)).at(path)?;
    if len != s.end as u64 {
        return Err(Error::InvalidArgument(format!(
            "{}: wrote {len} bytes, the header says {}",
            path.display(),
            s.end
        )));
    }
    file.sync_all().at(path)
}

/// The bytes of a graph: a map of its file, or an aligned copy in memory.
enum Backing {
    Map(Mmap),
    Heap(Vec<u64>, usize),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap(words, len) => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// A validated graph file, mapped.
pub struct GraphFile {
    path: PathBuf,
    map: Backing,
    header: GraphHeader,
    layer0: (usize, usize),
    upper: Vec<(usize, usize, usize)>,
}

impl std::fmt::Debug for GraphFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphFile({}, {:?})", self.path.display(), self.header)
    }
}

impl GraphFile {
    /// Maps and validates the graph at `path` (see the module doc for every check).
    pub fn open(path: impl AsRef<Path>) -> Result<GraphFile> {
        let path = path.as_ref().to_path_buf();
        let file = crate::files::open_regular(&path)?;
        // SAFETY: partlens never modifies a finished index file (a new ingest builds a new
        // folder and swaps it in), and every length is checked below before use; a file
        // truncated by another program while mapped raises SIGBUS, as with any mmap.
        let map = Backing::Map(unsafe { Mmap::map(&file) }.at(&path)?);
        Self::checked(path, map)
    }

    /// Validates `map`; errors name `path`.
    fn checked(path: PathBuf, map: Backing) -> Result<GraphFile> {
        let (header, layer0, upper) = validate(&map).map_err(|m| Error::corrupt(&path, m))?;
        Ok(GraphFile {
            path,
            map,
            header,
            layer0,
            upper,
        })
    }

    /// Validates a graph held in memory (`name` stands for its path in errors); the bytes
    /// are copied once, aligned. For tests and fuzzing: indexes map their files.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: &[u8]) -> Result<GraphFile> {
        let path = name.as_ref().to_path_buf();
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::checked(path, Backing::Heap(words, bytes.len()))
    }

    /// The header.
    pub fn header(&self) -> &GraphHeader {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The structure, borrowed from the map.
    pub fn view(&self) -> GraphView<'_> {
        let h = &self.header;
        let words =
            |at: usize, len: usize| -> &[u32] { bytemuck::cast_slice(&self.map[at..at + 4 * len]) };
        GraphView::new(
            h.m,
            h.m0,
            h.entry,
            &self.map[HEADER_LEN..HEADER_LEN + h.n],
            words(self.layer0.0, self.layer0.1),
            self.upper
                .iter()
                .map(|&(ids, lists, nl)| (words(ids, nl), words(lists, nl * (h.m + 1)))),
        )
    }
}

type Validated = (GraphHeader, (usize, usize), Vec<(usize, usize, usize)>);

/// Every check of the module doc, on the file's bytes; the message says what is wrong.
fn validate(b: &[u8]) -> std::result::Result<Validated, String> {
    if b.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header: truncated or not a partlens graph",
            b.len()
        ));
    }
    if &b[0..8] != MAGIC {
        return Err("not a partlens graph file (bad magic)".into());
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(format!(
            "graph format version {version}; this build reads version {VERSION}"
        ));
    }
    if u32_at(b, 12) != BOM {
        return Err("byte-order mark is wrong: damaged, or written on another byte order".into());
    }
    if b[192..CRC_AT].iter().chain(&b[252..256]).any(|&x| x != 0) {
        return Err("reserved header bytes are not zero".into());
    }
    let n = u64_at(b, 16);
    let dim = u32_at(b, 24) as usize;
    let m = u32_at(b, 28) as usize;
    let m0 = u32_at(b, 32) as usize;
    let layers = u32_at(b, 40) as usize;
    let entry = u32_at(b, 44);
    let file_len = u64_at(b, 56);
    if n == 0 || n > u64::from(u32::MAX) {
        return Err(format!("{n} points (1..2^32 allowed)"));
    }
    let n = n as usize;
    if !(1..=crate::store::manifest::MAX_DIM).contains(&dim)
        || !(1..=MAX_WIDTH).contains(&m)
        || !(1..=MAX_WIDTH).contains(&m0)
        || !(1..=MAX_LAYERS).contains(&layers)
    {
        return Err(format!(
            "header out of range: D {dim}, M {m}, M0 {m0}, {layers} layers"
        ));
    }
    if entry as usize >= n {
        return Err(format!("entry point {entry} of {n} points"));
    }
    let mut layer_nodes = [0u64; MAX_LAYERS];
    for (l, c) in layer_nodes.iter_mut().enumerate() {
        *c = u64_at(b, 64 + 8 * l);
    }
    if layer_nodes[0] != n as u64
        || layer_nodes.windows(2).any(|w| w[1] > w[0])
        || layer_nodes[layers - 1] == 0
        || layer_nodes[layers..].iter().any(|&c| c != 0)
    {
        return Err(format!(
            "layer sizes {:?} do not fit {n} points on {layers} layers",
            &layer_nodes[..layers]
        ));
    }
    let header = GraphHeader {
        n,
        dim,
        m,
        m0,
        ef_construction: u32_at(b, 36) as usize,
        layers,
        entry,
        seed: u64_at(b, 48),
        layer_nodes,
    };
    let s = sections(&header).ok_or("header sizes overflow")?;
    if file_len != b.len() as u64 || s.end != b.len() {
        return Err(format!(
            "file is {} bytes, its header says {file_len} and its sizes need {}: truncated?",
            b.len(),
            s.end
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[..CRC_AT]);
    crc.update(&b[HEADER_LEN..]);
    if crc.finalize() != u32_at(b, CRC_AT) {
        return Err("checksum mismatch: the file is damaged".into());
    }
    // Levels against the layer counts.
    let levels = &b[HEADER_LEN..HEADER_LEN + n];
    if b[HEADER_LEN + n..s.layer0].iter().any(|&x| x != 0) {
        return Err("padding after the levels is not zero".into());
    }
    let mut per_level = [0u64; MAX_LAYERS];
    for (i, &lv) in levels.iter().enumerate() {
        if lv as usize >= layers {
            return Err(format!("node {i} has level {lv} on a {layers}-layer graph"));
        }
        per_level[lv as usize] += 1;
    }
    let mut at_or_above = 0;
    for l in (0..layers).rev() {
        at_or_above += per_level[l];
        if at_or_above != layer_nodes[l] {
            return Err(format!(
                "{at_or_above} nodes reach layer {l}, the header says {}",
                layer_nodes[l]
            ));
        }
    }
    if levels[entry as usize] as usize != layers - 1 {
        return Err(format!("entry point {entry} is not on the top layer"));
    }
    let words = |at: usize, len: usize| -> &[u32] { bytemuck::cast_slice(&b[at..at + 4 * len]) };
    let check_lists =
        |lists: &[u32], width: usize, layer: usize, owner: &dyn Fn(usize) -> usize| {
            for (slot, s) in lists.chunks_exact(width + 1).enumerate() {
                let c = s[0] as usize;
                let node = owner(slot);
                if c > width {
                    return Err(format!(
                        "node {node}: {c} neighbours on layer {layer}, the width is {width}"
                    ));
                }
                for &id in &s[1..1 + c] {
                    if id as usize >= n || (levels[id as usize] as usize) < layer {
                        return Err(format!(
                        "node {node}: neighbour {id} on layer {layer} is not a node of that layer"
                    ));
                    }
                }
                if s[1 + c..].iter().any(|&x| x != EMPTY) {
                    return Err(format!(
                        "node {node}: unused slots on layer {layer} are not empty"
                    ));
                }
            }
            Ok(())
        };
    check_lists(words(s.layer0, n * (m0 + 1)), m0, 0, &|i| i)?;
    let mut upper = Vec::with_capacity(layers - 1);
    for (l, &(ids_at, lists_at)) in s.upper.iter().enumerate() {
        let layer = l + 1;
        let nl = layer_nodes[layer] as usize;
        let ids = words(ids_at, nl);
        for (j, &id) in ids.iter().enumerate() {
            if id as usize >= n
                || (levels[id as usize] as usize) < layer
                || (j > 0 && ids[j - 1] >= id)
            {
                return Err(format!(
                    "layer {layer}'s node list is damaged at position {j} (id {id})"
                ));
            }
        }
        check_lists(words(lists_at, nl * (m + 1)), m, layer, &|j| {
            ids[j] as usize
        })?;
        upper.push((ids_at, lists_at, nl));
    }
    Ok((header, (s.layer0, n * (m0 + 1)), upper))
}
