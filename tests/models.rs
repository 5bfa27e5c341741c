//! The model scripts, checked the way a broken conversion cannot pass: MobileNetV2's ImageNet
//! predictions on real photos (scikit-image's, fetched from PyPI once by `setup --test-tools`)
//! and against a numpy forward
//! pass; the ViT writer against a numpy forward pass; the torch-free checkpoint reader.

mod common;

use std::path::Path;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/models")
        .join(name)
}

#[test]
fn mobilenet_predicts_imagenet_classes_on_real_photos() {
    // Fetched once per machine by `partlens setup --test-tools` (common::ensure_setup).
    common::ensure_setup();
    let photos = partlens::setup::test_photos_dir();
    let out = common::python_ok(&[
        script("check_imagenet.py").as_os_str(),
        "--model".as_ref(),
        common::mobilenet().as_os_str(),
        "--photos".as_ref(),
        photos.as_os_str(),
    ]);
    println!("{out}");
    assert!(out.contains("chelsea.png"), "{out}");
    let out = common::python_ok(&[
        script("check_imagenet.py").as_os_str(),
        "--model".as_ref(),
        common::mobilenet().as_os_str(),
        "--selftest".as_ref(),
    ]);
    println!("{out}");
}

#[test]
fn vit_writer_matches_numpy() {
    println!(
        "{}",
        common::python_ok(&[script("vit.py").as_os_str(), "--selftest".as_ref()])
    );
}

#[test]
fn checkpoint_reader_tests_pass() {
    let out = common::python_ok(&[script("test_pth.py").as_os_str()]);
    assert!(out.contains("0 failed"), "{out}");
}
