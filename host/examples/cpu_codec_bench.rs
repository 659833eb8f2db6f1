//! CPU codec throughput on a 28672x4096 matrix of realistic weights:
//! `cargo run --release -p zipserv --example cpu_codec_bench`.
use std::time::Instant;

fn main() -> zipserv::Result<()> {
    let (m, k) = (28672usize, 4096usize);
    let bits = zipserv::synth::student_t_bf16(m * k, 0.02, 42);
    let gb = (m * k * 2) as f64 / 1e9;
    let threads = rayon::current_num_threads();
    let mut enc = Vec::new();
    let mut dec = Vec::new();
    let mut c = None;
    for _ in 0..5 {
        let t = Instant::now();
        let cm = zipserv::encode::encode(&bits, m, k)?;
        enc.push(t.elapsed().as_secs_f64());
        c = Some(cm);
    }
    let cm = c.unwrap();
    let mut out = vec![0u16; m * k];
    for _ in 0..5 {
        let t = Instant::now();
        zipserv::decode::decode_into(&cm, &mut out)?;
        dec.push(t.elapsed().as_secs_f64());
    }
    assert!(out == bits, "round trip differs");
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (e, d) = (med(&mut enc), med(&mut dec));
    let s = cm.stats();
    println!("matrix {m}x{k} BF16 ({gb:.3} GB), {threads} threads, median of 5");
    println!("encode: {:.3} s = {:.2} GB/s of BF16 input", e, gb / e);
    println!("decode: {:.3} s = {:.2} GB/s of BF16 output", d, gb / d);
    println!(
        "{:.3} bits/weight, coverage {:.2}%",
        s.bits_per_weight(),
        100.0 * s.coverage()
    );
    Ok(())
}
