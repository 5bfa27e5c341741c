//! COCO-style keypoint files: parsing and the crop rule on arbitrary JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("partlens-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("k.json");
    if std::fs::write(&path, data).is_ok() {
        let _ = partlens::dataset::CocoKeypoints::open(
            &path,
            &partlens::dataset::OpenOptions {
                margin: 0.1,
                ..Default::default()
            },
        );
    }
});
