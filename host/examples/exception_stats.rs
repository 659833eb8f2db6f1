//! How the device layout's exceptions (high bytes outside the 8-entry table)
//! fall on a warp tile, for the design of a decode that patches them in
//! registers: per half tile (512 weights, one list) and per lane-half (a
//! lane's 16 weights of a half). Realistic weights (Student-t, std 0.02):
//! `cargo run --release -p zipserv --example exception_stats`.
use zipserv::device_layout::build;
use zipserv_kernels::geometry::{dev_exc_split, DT_HALF_SLOTS};

fn main() -> zipserv::Result<()> {
    let (m, k) = (4096usize, 4096usize);
    let bits = zipserv::synth::student_t_bf16(m * k, 0.02, 7);
    let d = build(&bits, m, k)?;
    let halves = d.exc_off.len() - 1;
    let mut per_half = [0usize; 66];
    let mut per_lane = [0usize; 17];
    let mut lane_max_per_half = [0usize; 17];
    for h in 0..halves {
        let (s, e) = (d.exc_off[h] as usize, d.exc_off[h + 1] as usize);
        per_half[(e - s).min(65)] += 1;
        let mut lanes = [0usize; 32];
        for &x in &d.exc[s..e] {
            let (off, _) = dev_exc_split(x);
            lanes[off / DT_HALF_SLOTS] += 1;
        }
        for &c in &lanes {
            per_lane[c.min(16)] += 1;
        }
        lane_max_per_half[*lanes.iter().max().unwrap()] += 1;
    }
    let total: usize = d.exc.len();
    println!(
        "{m}x{k} Student-t: {} exceptions in {} weights ({:.2} %), {halves} half tiles",
        total,
        m * k,
        100.0 * total as f64 / (m * k) as f64
    );
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of as f64;
    let mean = total as f64 / halves as f64;
    let over32: usize = per_half[33..].iter().sum();
    println!(
        "per half tile: mean {mean:.1}, > 32 (a second round) {:.3} %",
        pct(over32, halves)
    );
    println!("per lane-half (16 weights):");
    for (c, &n) in per_lane.iter().enumerate().take(6) {
        println!("  {c}: {:.3} %", pct(n, halves * 32));
    }
    println!("most exceptions on one lane of a half:");
    for (c, &n) in lane_max_per_half.iter().enumerate().take(7) {
        println!("  {c}: {:.3} %", pct(n, halves));
    }
    Ok(())
}
