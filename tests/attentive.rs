//! The attentive probe at a realistic size (ignored by default: a timing run).
//! `cargo test --release --test attentive -- --ignored --nocapture`

use std::time::Instant;

use partlens::eval::attentive::{train, AttentiveOptions, TokenMatrix};
use partlens::eval::Rng;

#[test]
#[ignore]
fn timing_2000_regions_49_tokens_1280_dims_10_epochs() {
    let (n, t, d, c) = (2000, 49, 1280, 20);
    let mut r = Rng::new(1);
    let labels: Vec<u32> = (0..n).map(|_| r.below(c) as u32).collect();
    // Class-dependent mean on one token in four, noise elsewhere (cheap to generate).
    let mut data = Vec::with_capacity(n * t * d);
    for &y in &labels {
        for tok in 0..t {
            for j in 0..d {
                let noise = (r.next_f64() - 0.5) as f32;
                let signal = if tok % 4 == 0 && j % c == y as usize {
                    1.0
                } else {
                    0.0
                };
                data.push(noise + signal);
            }
        }
    }
    let rows = TokenMatrix::new(data, t, d, labels, c).unwrap();
    let fit: Vec<usize> = (0..1800).collect();
    let holdout: Vec<usize> = (1800..2000).collect();
    let opts = AttentiveOptions {
        epochs: 10,
        ..AttentiveOptions::default()
    };
    let start = Instant::now();
    let model = train(&rows, &fit, &holdout, &opts).unwrap();
    eprintln!(
        "{n} regions ({} fit) × {t} tokens × {d} dims, {} epochs, batch {}, {} threads: {:.1} s; \
         runs {:?}; state {} MB",
        fit.len(),
        opts.epochs,
        opts.batch_size,
        rayon::current_num_threads(),
        start.elapsed().as_secs_f64(),
        model.runs,
        model.state_bytes >> 20
    );
}
