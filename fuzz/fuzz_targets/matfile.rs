//! MAT-file parser: any bytes must give Ok or Err, never a panic, hang or huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = partlens::dataset::matfile::read(data, std::path::Path::new("fuzz.mat"));
});
