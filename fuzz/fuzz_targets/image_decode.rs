//! Image decoding (libjpeg for JPEGs, `image` for the rest): any bytes give an image or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = partlens::preprocess::decode_rgb_bytes(data, std::path::Path::new("f.jpg")) {
        assert_eq!(img.as_raw().len(), img.width() as usize * img.height() as usize * 3);
        assert!(img.width() as u64 * img.height() as u64 <= partlens::preprocess::MAX_IMAGE_PIXELS);
    }
});
