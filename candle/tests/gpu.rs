//! The CUDA path (feature `cuda`, skipped with a message where no GPU is
//! present): the fused ops against their CPU implementations, ZipLinear
//! against an FP64 reference on fresh random data, the compressed row gather
//! bit for bit, and the whole decoder on CUDA against the CPU.
#![cfg(feature = "cuda")]
use candle_core::{DType, Device, Tensor};
use half::bf16;
use zipserv_candle::llama::{Config, Llama, Synthetic, Weights};
use zipserv_candle::ops::{self, AttnShape, Step};
use zipserv_candle::ZipLinear;

fn cuda() -> Option<Device> {
    if let Some(why) = zipserv::gpu::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Device::new_cuda(0).expect("CUDA device"))
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn rand_bf16(n: usize, a: f32, seed: u64) -> Vec<bf16> {
    zipserv::synth::uniform_bf16(n, a, seed)
        .into_iter()
        .map(bf16::from_bits)
        .collect()
}

fn host(t: &Tensor) -> Vec<bf16> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Elementwise: equal within `ulps` BF16 ulps (of the larger magnitude) or `abs`.
fn within(g: &[bf16], c: &[bf16], ulps: f32, abs: f32, what: &str) {
    assert_eq!(g.len(), c.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(c).enumerate() {
        let (a, b) = (a.to_f32(), b.to_f32());
        let ulp = a.abs().max(b.abs()) * 2f32.powi(-7);
        let d = (a - b).abs();
        worst = worst.max(d / ulp.max(f32::MIN_POSITIVE));
        assert!(
            d <= ulps * ulp || d <= abs,
            "{what}[{i}]: GPU {a} vs CPU {b}"
        );
    }
    eprintln!("{what}: {} values, worst {worst:.2} ulp", g.len());
}

#[test]
fn fused_ops_on_cuda_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let cpu = Device::Cpu;
    let s0 = seed();
    for (rows, cols) in [(1usize, 576usize), (7, 4096)] {
        let x = rand_bf16(rows * cols, 3.0, s0);
        let d = rand_bf16(rows * cols, 3.0, s0 + 1);
        let w = rand_bf16(cols, 1.5, s0 + 2);
        let on = |dev: &Device| {
            let t = |v: &[bf16], s: &[usize]| Tensor::from_vec(v.to_vec(), s, dev).unwrap();
            let (r, n) = ops::add_rms_norm(
                &t(&x, &[rows, cols]),
                Some(&t(&d, &[rows, cols])),
                &t(&w, &[cols]),
                1e-5,
            )
            .unwrap();
            let (_, n0) =
                ops::add_rms_norm(&t(&x, &[rows, cols]), None, &t(&w, &[cols]), 1e-5).unwrap();
            (host(&r), host(&n), host(&n0))
        };
        let (g, c) = (on(&gpu), on(&cpu));
        assert!(
            g.0.iter()
                .zip(&c.0)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "residual add differs"
        );
        // The GPU sums the squares in another order: the normalised value may
        // round the other way before the weight multiplies it (2 ulps).
        within(&g.1, &c.1, 2.0, 0.0, &format!("add+rmsnorm {rows}x{cols}"));
        within(&g.2, &c.2, 2.0, 0.0, &format!("rmsnorm {rows}x{cols}"));
    }
    // Greedy sampling: the same index as the CPU, ties to the first.
    let mut lg = rand_bf16(3 * 128256, 20.0, s0 + 4);
    lg[128256 + 5000] = bf16::from_f32(100.0);
    lg[128256 + 90000] = bf16::from_f32(100.0);
    lg[2 * 128256 + 128255] = bf16::from_f32(1e4);
    let am = |dev: &Device| -> Vec<u32> {
        ops::argmax(&Tensor::from_vec(lg.clone(), (3, 128256), dev).unwrap())
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (ga, ca) = (am(&gpu), am(&cpu));
    assert_eq!(ga, ca, "argmax");
    assert_eq!(&ca[1..], &[5000, 128255]);

    let gu = rand_bf16(5 * 2 * 1536, 8.0, s0 + 3);
    let f = |dev: &Device| {
        host(&ops::silu_mul(&Tensor::from_vec(gu.clone(), (5, 3072), dev).unwrap()).unwrap())
    };
    within(&f(&gpu), &f(&cpu), 1.0, 1e-6, "silu_mul");

    for (shape, b) in [
        (
            AttnShape {
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                max_len: 40,
            },
            2usize,
        ),
        (
            AttnShape {
                heads: 32,
                kv_heads: 8,
                head_dim: 128,
                max_len: 300,
            },
            3,
        ),
    ] {
        let inv: Vec<f32> = (0..shape.head_dim / 2)
            .map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / shape.head_dim as f32))
            .collect();
        let mut caches = Vec::new();
        let mut outs = Vec::new();
        for dev in [&gpu, &cpu] {
            let rope = ops::rope_table(&inv, shape.max_len, dev).unwrap();
            let cache = Tensor::zeros(
                (2, b, shape.kv_heads, shape.max_len, shape.head_dim),
                DType::BF16,
                dev,
            )
            .unwrap();
            let mut o = Vec::new();
            let mut pos = 0;
            for (i, t_len) in [shape.max_len - 4, 1, 1, 2].into_iter().enumerate() {
                let qkv = rand_bf16(b * t_len * shape.qkv_width(), 2.0, s0 + 10 + i as u64);
                let qt = Tensor::from_vec(qkv, (b * t_len, shape.qkv_width()), dev).unwrap();
                let st = Step {
                    shape,
                    batch: b,
                    pos0: pos,
                    t_len,
                };
                ops::rope_append(&cache, &qt, &rope, st).unwrap();
                o.push(host(
                    &ops::attention(&qt, &cache, &rope, st, 1.0 / (shape.head_dim as f32).sqrt())
                        .unwrap(),
                ));
                pos += t_len;
            }
            caches.push(host(&cache));
            outs.push(o);
        }
        within(
            &caches[0],
            &caches[1],
            1.0,
            0.0,
            &format!("rope+cache d={}", shape.head_dim),
        );
        for (i, (g, c)) in outs[0].iter().zip(&outs[1]).enumerate() {
            within(
                g,
                c,
                3.0,
                2e-3,
                &format!("attention d={} step {i}", shape.head_dim),
            );
        }
    }
}

#[test]
fn zip_linear_on_cuda_matches_fp64_and_gathers_rows_exactly() {
    let Some(gpu) = cuda() else { return };
    let s0 = seed();
    for (m, k) in [(256usize, 512usize), (1536, 576)] {
        let w = zipserv::synth::student_t_bf16(m * k, 0.02, s0);
        let lin = ZipLinear::from_bits(&w, m, k, None, &gpu).unwrap();
        assert!(lin.weight_bytes() < m * k * 2 * 3 / 4);
        for n in [1usize, 8, 33, 128, 300] {
            let x = rand_bf16(n * k, 1.0, s0 + n as u64);
            let xt = Tensor::from_vec(x.clone(), (n, k), &gpu).unwrap();
            let y = host(&candle_core::Module::forward(&lin, &xt).unwrap());
            for r in 0..n {
                for c in 0..m {
                    let (mut acc, mut mag) = (0f64, 0f64);
                    for j in 0..k {
                        let p = x[r * k + j].to_f64() * bf16::from_bits(w[c * k + j]).to_f64();
                        acc += p;
                        mag += p.abs();
                    }
                    let g = y[r * m + c].to_f64();
                    assert!(
                        (g - acc).abs() <= 8e-3 * acc.abs() + 1e-5 * mag + 1e-7,
                        "{m}x{k} n={n} y[{r}][{c}] = {g}, FP64 {acc}"
                    );
                }
            }
        }
        let ids: Vec<u32> = vec![0, (m - 1) as u32, 17, 17, (m / 2) as u32];
        let rows = host(&lin.gather_rows(&ids, &gpu).unwrap());
        for (i, &r) in ids.iter().enumerate() {
            let want = &w[r as usize * k..(r as usize + 1) * k];
            assert!(
                rows[i * k..(i + 1) * k]
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == *b),
                "row {r}"
            );
        }
        assert!(
            lin.gather_rows(&[m as u32], &gpu).is_err(),
            "out-of-range id accepted"
        );
    }
}

#[test]
fn decoder_on_cuda_matches_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let cfg = Config {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 3,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        head_dim: Some(64),
        vocab_size: 2048,
        tie_word_embeddings: true,
        ..Config::llama31_8b()
    };
    let src = Synthetic {
        cfg: cfg.clone(),
        seed: seed(),
    };
    let none = |_: usize, _: usize| {};
    let zg = Llama::load(&src, cfg.clone(), Weights::Zip, 64, &gpu, &none).unwrap();
    let bg = Llama::load(&src, cfg.clone(), Weights::Bf16, 64, &gpu, &none).unwrap();
    let bc = Llama::load(&src, cfg, Weights::Bf16, 64, &Device::Cpu, &none).unwrap();
    let prompt: Vec<u32> = vec![3, 1000, 77, 2047, 5, 5, 9];
    let mut caches = [
        zg.new_cache(2).unwrap(),
        bg.new_cache(2).unwrap(),
        bc.new_cache(2).unwrap(),
    ];
    let models = [&zg, &bg, &bc];
    // Teacher-forced: the same tokens into all three; batch 2.
    let mut ids: Vec<u32> = [
        prompt.clone(),
        prompt.iter().map(|x| (x * 7) % 2048).collect(),
    ]
    .concat();
    let mut t_len = prompt.len();
    for step in 0..6 {
        let l: Vec<Vec<Vec<f32>>> = models
            .iter()
            .zip(caches.iter_mut())
            .map(|(m, c)| {
                m.forward(c, &ids, t_len)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec2()
                    .unwrap()
            })
            .collect();
        for (name, g) in [("compressed on CUDA", &l[0]), ("BF16 on CUDA", &l[1])] {
            for b in 0..2 {
                let scale = l[2][b].iter().fold(0f32, |a, x| a.max(x.abs()));
                let diff = g[b]
                    .iter()
                    .zip(&l[2][b])
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(
                    diff <= 0.03 * scale,
                    "step {step}, seq {b}: {name} vs CPU differ by {diff} (scale {scale})"
                );
            }
        }
        ids = (0..2)
            .map(|b| ((step * 131 + b * 17 + 5) % 2048) as u32)
            .collect();
        t_len = 1;
    }
}
