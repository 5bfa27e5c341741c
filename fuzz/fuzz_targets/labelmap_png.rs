//! Label-map PNG reader (8-bit and packed 1/2/4-bit palettes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = partlens::dataset::LabelMap::from_png_bytes(data, std::path::Path::new("f.png")) {
        assert_eq!(m.data.len(), m.width * m.height);
        let _ = partlens::dataset::components(&m, 1);
    }
});
