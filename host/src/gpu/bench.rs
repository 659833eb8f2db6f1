//! `zipserv gpu-test` and `zipserv bench`: the GPU correctness suite and the
//! benchmark against cuBLAS, run on the GPU machine over binaries built here.
use super::*;
use crate::synth::{random_bits, student_t_bf16, uniform_bf16, Rng};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Fewer shapes and runs.
    #[arg(long)]
    pub quick: bool,
    /// Timed runs per point (median reported).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Only layers whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Activation row counts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,16,32,64,128,256,1024"
    )]
    pub ns: Vec<usize>,
    /// Folder for the CSV files (zipgemm-*.csv, decompress-*.csv).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Suffix of the CSV names (e.g. h100); by default the card's model
    /// ("NVIDIA H200" -> h200).
    #[arg(long)]
    pub card: Option<String>,
    /// Also time the Llama-3.1-8B output head (128256 x 4096), the model's
    /// largest projection; reported, but kept out of the geometric means
    /// over the eight layer shapes.
    #[arg(long)]
    pub lm_head: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct TestArgs {
    /// Small shapes only.
    #[arg(long)]
    pub quick: bool,
    /// Tiny shapes only (for compute-sanitizer runs).
    #[arg(long)]
    pub tiny: bool,
}

/// The Llama-3.1 8B/70B layer shapes (M x K) of the benchmark.
pub const LAYERS: [(&str, usize, usize); 8] = [
    ("8b.qkv", 6144, 4096),
    ("8b.o", 4096, 4096),
    ("8b.gate_up", 28672, 4096),
    ("8b.down", 4096, 14336),
    ("70b.qkv", 10240, 8192),
    ("70b.o", 8192, 8192),
    ("70b.gate_up", 57344, 8192),
    ("70b.down", 8192, 28672),
];

/// The Llama-3.1-8B output head (`bench --lm-head`).
pub const LM_HEAD: (&str, usize, usize) = ("8b.lm_head", 128256, 4096);

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Realistic weights quickly: rows drawn at random offsets from a pool of
/// Student-t(5) values (std 0.02), so the exponent statistics are those of the
/// pool while every row differs.
pub fn pooled_weights(rows: usize, cols: usize, seed: u64) -> Vec<u16> {
    let pool = student_t_bf16(1 << 22, 0.02, seed);
    let mut out = vec![0u16; rows * cols];
    use rayon::prelude::*;
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let mut rng = Rng::new(seed ^ (r as u64).wrapping_mul(0x9E37_79B9));
        let start = (rng.next_u64() as usize) % pool.len();
        for (c, x) in row.iter_mut().enumerate() {
            *x = pool[(start + c * 7) % pool.len()];
        }
    });
    out
}

fn to_f64(b: u16) -> f64 {
    half::bf16::from_bits(b).to_f64()
}

/// Relative Frobenius error of `got` (BF16 `n x m`) against an FP64 reference
/// on the sampled output columns `ms`.
fn check_gemm(
    w: &[u16],
    x: &[u16],
    got: &[u16],
    m: usize,
    n: usize,
    k: usize,
    ms: &[usize],
) -> (f64, usize) {
    use rayon::prelude::*;
    let rows: Vec<(f64, f64)> = ms
        .par_iter()
        .map(|&mi| {
            let wr = &w[mi * k..(mi + 1) * k];
            let wf: Vec<f64> = wr.iter().map(|&b| to_f64(b)).collect();
            let (mut num, mut den) = (0.0, 0.0);
            for ni in 0..n {
                let xr = &x[ni * k..(ni + 1) * k];
                let r: f64 = xr.iter().zip(&wf).map(|(&a, &b)| to_f64(a) * b).sum();
                let g = to_f64(got[ni * m + mi]);
                num += (g - r) * (g - r);
                den += r * r;
            }
            (num, den)
        })
        .collect();
    let (num, den) = rows.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let bad = got
        .iter()
        .filter(|&&b| !half::bf16::from_bits(b).is_finite())
        .count();
    ((num / den.max(1e-300)).sqrt(), bad)
}

struct Outcome {
    passed: usize,
    failed: usize,
}

impl Outcome {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
            println!("ok      {what}");
        } else {
            self.failed += 1;
            println!("FAILED  {what}");
        }
    }
}

/// Run the GPU correctness tests; error if any fails.
pub fn gpu_test(a: &TestArgs) -> Result<()> {
    let mut gpu = Gpu::new(0)?;
    // Everything below runs on a stream of the caller's (not the default).
    let own = gpu.ctx.new_stream().map_err(gpu_err)?;
    gpu.set_stream(own)?;
    println!("device: {} (sm_{}, {} SMs)", gpu.name, gpu.sm, gpu.sms);
    let mut out = Outcome {
        passed: 0,
        failed: 0,
    };
    let s = seed();
    println!("seed {s}");

    // --- The SM clock probe: a plausible clock (it warns benchmarks of a
    // throttled card). ---
    let max = gpu.max_clock_mhz()?;
    match gpu.sm_clock_mhz()? {
        Some(f) => out.check(
            f > 100.0 && f < 1.2 * max,
            &format!("SM clock probe: {f:.0} MHz, maximum {max:.0} MHz"),
        ),
        // A PTX from ZIPSERV_PTX may predate the probe; the embedded one has it.
        None if std::env::var_os("ZIPSERV_PTX").is_some_and(|v| !v.is_empty()) => {
            println!("SM clock probe: skipped (the PTX from ZIPSERV_PTX has no zs_clock_probe)")
        }
        None => out.check(false, "SM clock probe: the embedded PTX has zs_clock_probe"),
    }

    // --- Decompressor: bit-exact against the CPU decoder. ---
    let mut cases: Vec<(String, Vec<u16>, usize, usize)> = vec![
        (
            "student-t 64x64".into(),
            student_t_bf16(64 * 64, 0.02, s),
            64,
            64,
        ),
        (
            "random bits 128x192 (NaN, Inf, subnormal; ~97% exceptions)".into(),
            random_bits(128 * 192, s + 1),
            128,
            192,
        ),
        (
            "all in window 256x256".into(),
            uniform_bf16(256 * 256, 1.0, s + 2)
                .iter()
                .map(|&b| (b & 0x807f) | 0x3f80)
                .collect(),
            256,
            256,
        ),
        (
            "all fallback 64x128 (zeros and huge values)".into(),
            (0..64 * 128)
                .map(|i| {
                    if i % 2 == 0 {
                        0x0000
                    } else {
                        0x7f00 | (i as u16 & 0x7f)
                    }
                })
                .collect(),
            64,
            128,
        ),
    ];
    {
        let mut mixed = student_t_bf16(512 * 1024, 0.02, s + 3);
        let mut rng = Rng::new(s + 4);
        for _ in 0..20000 {
            let i = (rng.next_u64() as usize) % mixed.len();
            mixed[i] = [0x7f80, 0xff80, 0x7fc1, 0x0001, 0x8000, 0x0000, 0xffff]
                [(rng.next_u64() % 7) as usize];
        }
        cases.push((
            "student-t with NaN/Inf/subnormal/zeros 512x1024".into(),
            mixed,
            512,
            1024,
        ));
    }
    if a.tiny {
        cases.truncate(4);
    }
    if !a.quick && !a.tiny {
        cases.push((
            "student-t 28672x4096".into(),
            pooled_weights(28672, 4096, s + 5),
            28672,
            4096,
        ));
    }
    for (name, bits, r, c) in &cases {
        let v1 = crate::encode::encode(bits, *r, *c)?;
        let back = crate::decode::decode(&v1)?;
        out.check(&back == bits, &format!("cpu v1 round trip: {name}"));
        let d = crate::device_layout::build(&back, *r, *c)?;
        let gm = gpu.upload(&d)?;
        let mut ok = true;
        for poison in [0xffffu16, 0x7fbf] {
            let buf = gpu
                .stream
                .clone_htod(&vec![poison; r * c])
                .map_err(gpu_err)?;
            gpu.decompress(&gm, &buf)?;
            let got = gpu.stream.clone_dtoh(&buf).map_err(gpu_err)?;
            ok &= &got == bits;
        }
        out.check(ok, &format!("gpu decompress bit-exact: {name}"));
    }

    // --- Corrupted but plausible device data: any record bytes and exception
    // entries pass validation, so the kernels must stay in bounds on them
    // (run under compute-sanitizer memcheck by scripts/gpu-run.sh). ---
    {
        let (r, c) = (128usize, 256usize);
        let mut d = crate::device_layout::build(&random_bits(r * c, s + 9), r, c)?;
        let mut rng = Rng::new(s + 10);
        for b in d.records.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for e in d.exc.iter_mut() {
            *e = rng.next_u64() as u16;
        }
        d.validate()?;
        let gm = gpu.upload(&d)?;
        let buf = gpu.stream.alloc_zeros::<u16>(r * c).map_err(gpu_err)?;
        gpu.decompress(&gm, &buf)?;
        let x = gpu
            .stream
            .clone_htod(&uniform_bf16(32 * c, 1.0, s + 11))
            .map_err(gpu_err)?;
        let y = gpu.stream.alloc_zeros::<u16>(32 * r).map_err(gpu_err)?;
        let mut ok = true;
        for rs in FAMILIES {
            if let Some(&v) = gpu.variants(rs, 32).first() {
                let p = Plan {
                    variant: v,
                    split: split_for((c / 64) as u32, 2),
                };
                ok &= gpu
                    .gemm_fused(&gm, gpu.ptr(&x), gpu.ptr(&y), 32, Some(p))
                    .is_ok();
            }
        }
        ok &= gpu.sync().is_ok();
        out.check(
            ok,
            "corrupted device data: decompress and every GEMM family run to completion",
        );
    }

    // --- ZipGEMM and the dispatched path against an FP64 reference. ---
    let shapes: Vec<(usize, usize)> = if a.tiny {
        vec![(64, 64), (256, 512)]
    } else if a.quick {
        vec![(64, 64), (256, 512), (4096, 4096)]
    } else {
        vec![
            (64, 64),
            (256, 512),
            (4096, 4096),
            (6144, 4096),
            (4096, 14336),
            (28672, 4096),
        ]
    };
    let ns = [1usize, 3, 8, 12, 17, 32, 50, 100, 128, 300, 1024];
    for &(m, k) in &shapes {
        let w = pooled_weights(m, k, s + m as u64 + k as u64);
        let d = crate::device_layout::build(&w, m, k)?;
        let mut lin = ZipLinear::new(gpu.upload(&d)?);
        if !a.tiny {
            // Measured crossover and tuned plans, as a user's load would set them.
            lin.calibrate(&gpu, &[])?;
            println!("calibrated {m}x{k}: fused up to n = {}", lin.crossover);
        }
        let dense = gpu.stream.clone_htod(&w).map_err(gpu_err)?;
        let mut rng = Rng::new(s ^ (m * k) as u64);
        let ms: Vec<usize> = (0..m.min(48))
            .map(|_| (rng.next_u64() as usize) % m)
            .collect();
        for &n in &ns {
            let x = uniform_bf16(n * k, 1.0, rng.next_u64());
            let xd = gpu.stream.clone_htod(&x).map_err(gpu_err)?;
            // The dispatched path (named by the plan it takes), four times:
            // launches that leave any output unwritten show as poison.
            let how = if n <= lin.crossover.min(FUSED_MAX_N) {
                gpu.plan(m, k, n).describe()
            } else {
                "decompress + cuBLAS".into()
            };
            let mut variants: Vec<(String, Option<Plan>)> = (0..4)
                .map(|i| (format!("dispatched ({how}) #{i}"), None))
                .collect();
            if n <= FUSED_MAX_N {
                let kt = (k / 64) as u32;
                for rs in FAMILIES {
                    for v in gpu.variants(rs, n) {
                        let mut splits = vec![split_for(kt, 1), split_for(kt, 3)];
                        // An odd split and the largest, of at least 2.
                        let odd_and_most = |most: u32| {
                            [3, most]
                                .map(|sk| split_for(kt, sk))
                                .into_iter()
                                .filter(|s| s.sk >= 2)
                        };
                        // Summed inside a block (warp-independent kernel).
                        if rs == 0 {
                            splits.extend(odd_and_most(MAX_BLOCK_SPLIT).map(|s| s.in_block()));
                        }
                        // The on-chip (cluster) reduction.
                        if clusterable(rs) && gpu.sm >= 90 {
                            splits.extend(odd_and_most(MAX_CLUSTER).map(|s| s.clustered()));
                        }
                        for split in splits {
                            let p = Plan { variant: v, split };
                            // (16 warps of a build over 128 registers cannot
                            // share a block: the tuner skips those too.)
                            if gpu.plan_fits(p) {
                                variants.push((format!("fused {}", p.describe()), Some(p)));
                            }
                        }
                    }
                }
            }
            for (vname, sp) in variants {
                let y = gpu
                    .stream
                    .clone_htod(&vec![0xffffu16; n * m])
                    .map_err(gpu_err)?;
                match sp {
                    None => lin.forward(&gpu, &xd, &y, n)?,
                    Some(sp) => {
                        gpu.gemm_fused(&lin.weight, gpu.ptr(&xd), gpu.ptr(&y), n, Some(sp))?
                    }
                }
                let got = gpu.stream.clone_dtoh(&y).map_err(gpu_err)?;
                // The on-chip reductions (a cluster's, a block's) sum in a
                // fixed order: a second run gives the same bits.
                if let Some(sp) = sp.filter(|p| p.split.cluster || p.split.block) {
                    let y2 = gpu.stream.alloc_zeros::<u16>(n * m).map_err(gpu_err)?;
                    gpu.gemm_fused(&lin.weight, gpu.ptr(&xd), gpu.ptr(&y2), n, Some(sp))?;
                    let again = gpu.stream.clone_dtoh(&y2).map_err(gpu_err)?;
                    out.check(
                        again == got,
                        &format!("gemm {m}x{k} n={n} {vname}: a second run gives the same bits"),
                    );
                }
                let (err, bad) = check_gemm(&w, &x, &got, m, n, k, &ms);
                // Outputs still holding the poison (y is n x m): how many, and
                // the first one's (row, column).
                let poison: Vec<usize> = (0..got.len()).filter(|&i| got[i] == 0xffff).collect();
                let first = poison.first().map(|&i| (i % m, i / m));
                out.check(
                    err < 1e-2 && bad == 0 && poison.is_empty(),
                    &format!(
                        "gemm {m}x{k} n={n} {vname}: rel err {err:.2e} vs fp64, {bad} non-finite, \
                         {} unwritten{}",
                        poison.len(),
                        first
                            .map(|(r, c)| format!(" (first at row {r}, column {c})"))
                            .unwrap_or_default()
                    ),
                );
            }
            // The whole output against cuBLAS on the dense weights.
            let y1 = gpu
                .stream
                .clone_htod(&vec![0xffffu16; n * m])
                .map_err(gpu_err)?;
            let y2 = gpu.stream.alloc_zeros::<u16>(n * m).map_err(gpu_err)?;
            lin.forward(&gpu, &xd, &y1, n)?;
            gpu.cublas_gemm(gpu.ptr(&dense), gpu.ptr(&xd), gpu.ptr(&y2), m, n, k)?;
            let (g1, g2) = (
                gpu.stream.clone_dtoh(&y1).map_err(gpu_err)?,
                gpu.stream.clone_dtoh(&y2).map_err(gpu_err)?,
            );
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (a, b) in g1.iter().zip(&g2) {
                let (a, b) = (to_f64(*a), to_f64(*b));
                num += (a - b) * (a - b);
                den += b * b;
            }
            let e = (num / den).sqrt();
            out.check(
                e < 1e-2,
                &format!("gemm {m}x{k} n={n}: whole output vs cuBLAS rel err {e:.2e}"),
            );
        }
    }

    // --- The plan cache (`--tune`): tune, save, load into a fresh context. ---
    {
        let (m, k, n) = (256usize, 512usize, 32usize);
        let w = pooled_weights(m, k, s ^ 0x9e37);
        let gm = gpu.upload(&crate::device_layout::build(&w, m, k)?)?;
        let xd = gpu
            .stream
            .clone_htod(&uniform_bf16(n * k, 1.0, s ^ 0x7f4a))
            .map_err(gpu_err)?;
        let y = gpu.stream.alloc_zeros::<u16>(n * m).map_err(gpu_err)?;
        let tuned = gpu.tune(&[&gm], gpu.ptr(&xd), gpu.ptr(&y), n)?;
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("(temp dir)"), e))?;
        let path = dir.path().join("plans.json");
        let saved = gpu.save_plans(&path)?;
        let fresh = Gpu::new(0)?;
        let loaded = fresh.load_plans(&path)?;
        let got = fresh.plan(m, k, n);
        out.check(
            saved >= 1 && loaded == saved && got == tuned,
            &format!(
                "plan cache: {saved} plans saved, {loaded} loaded into a fresh context; \
                 {m}x{k} n={n}: tuned {}, loaded {}",
                tuned.describe(),
                got.describe()
            ),
        );
    }
    println!("{} passed, {} failed", out.passed, out.failed);
    if out.failed > 0 {
        return Err(Error::Mismatch(format!(
            "{} GPU test(s) failed",
            out.failed
        )));
    }
    Ok(())
}

/// Device-to-device copy ceiling in GB/s (bytes read + written).
pub fn copy_ceiling(gpu: &Gpu) -> Result<f64> {
    let n = 1usize << 29; // 1 GiB of u16
    let a = gpu.stream.alloc_zeros::<u16>(n).map_err(gpu_err)?;
    let mut b = gpu.stream.alloc_zeros::<u16>(n).map_err(gpu_err)?;
    let ms = gpu.time_ms(3, 20, |_| {
        gpu.stream.memcpy_dtod(&a, &mut b).map_err(gpu_err)
    })?;
    Ok(2.0 * (n * 2) as f64 / (ms * 1e-3) / 1e9)
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let gpu = Gpu::new(0)?;
    let runs = if a.quick { a.runs.min(30) } else { a.runs };
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("device: {} (sm_{}, {} SMs), {date}, median of {runs} runs, weights rotated over copies >= 256 MB", gpu.name, gpu.sm, gpu.sms);
    report_clock(&gpu, "before the bench")?;
    let ceiling = copy_ceiling(&gpu)?;
    println!("copy ceiling: {:.0} GB/s (read + write)", ceiling);
    let layers: Vec<_> = LAYERS
        .iter()
        .chain(a.lm_head.then_some(&LM_HEAD))
        .filter(|(n, _, _)| a.only.as_ref().is_none_or(|o| n.contains(o.as_str())))
        .filter(|(n, _, _)| !a.quick || ["8b.o", "8b.gate_up", LM_HEAD.0].contains(n))
        .collect();
    let mut gemm_rows = Vec::new();
    let mut dec_rows = Vec::new();
    let s = seed();
    for &&(name, m, k) in &layers {
        let w = pooled_weights(m, k, s ^ (m * k) as u64);
        let v1 = crate::encode::encode(&w, m, k)?;
        let v1_bits = v1.stats().bits_per_weight();
        let d = crate::device_layout::build(&w, m, k)?;
        let dev_bits = d.device_bytes() as f64 * 8.0 / (m * k) as f64;
        let copies = (256usize << 20).div_ceil(d.device_bytes()).max(2);
        let dcopies = (256usize << 20).div_ceil(m * k * 2).max(2);
        let gms: Vec<GpuMatrix> = (0..copies).map(|_| gpu.upload(&d)).collect::<Result<_>>()?;
        let dense: Vec<CudaSlice<u16>> = (0..dcopies)
            .map(|_| gpu.stream.clone_htod(&w).map_err(gpu_err))
            .collect::<Result<_>>()?;
        drop(w);
        gpu.reserve(m, k)?;
        // Decompressor throughput.
        let outbuf = gpu.stream.alloc_zeros::<u16>(m * k).map_err(gpu_err)?;
        let ms = gpu.time_ms(5, runs, |i| gpu.decompress(&gms[i % copies], &outbuf))?;
        let tbps = (d.device_bytes() + m * k * 2) as f64 / (ms * 1e-3) / 1e12;
        println!(
            "{name} {m}x{k}: v1 {v1_bits:.3} bits/w, device layout {dev_bits:.3} bits/w; decompress {:.1} us = {:.2} TB/s r+w ({:.0}% of copy)",
            ms * 1e3,
            tbps,
            100.0 * tbps * 1e3 / ceiling
        );
        dec_rows.push(format!(
            "{m},{k},{:.2},{:.4},{:.4}",
            ms * 1e3,
            tbps,
            tbps * 1e3 / ceiling
        ));
        let gm_refs: Vec<&GpuMatrix> = gms.iter().collect();
        let mut lin = ZipLinear::new(gpu.upload(&d)?);
        let mut per_n = Vec::new();
        for &n in &a.ns {
            let x = uniform_bf16(n * k, 1.0, s + n as u64);
            let xd = gpu.stream.clone_htod(&x).map_err(gpu_err)?;
            let y = gpu.stream.alloc_zeros::<u16>(n * m).map_err(gpu_err)?;
            let (xp, yp) = (gpu.ptr(&xd), gpu.ptr(&y));
            let cublas = |i: usize| gpu.cublas_gemm(gpu.ptr(&dense[i % dcopies]), xp, yp, m, n, k);
            // Three timings of the same plan: back to back (each kernel after
            // itself, every launch from an idle GPU: the method of the
            // earlier tables, which also counts the host's launch latency),
            // interleaved (cuBLAS and the fused kernel alternate launch by
            // launch: each runs after the other's traffic, as layers do in a
            // model) and queued (back to back with no host synchronisation
            // in between: GPU time only, as a model that enqueues ahead sees;
            // per-call events, and as spans of calls with nothing between
            // them, where a chained launch overlaps the call before it).
            let (cub, fused, plan, inter, queued, span) = if n <= FUSED_MAX_N {
                // Tuned as the library tunes.
                let sp = gpu.tune(&gm_refs, xp, yp, n)?;
                let fz = |i: usize| gpu.gemm_fused(&gms[i % copies], xp, yp, n, Some(sp));
                let c = gpu.time_ms(10, runs, cublas)?;
                let f = gpu.time_ms(10, runs, fz)?;
                let (ci, fi) = gpu.time_pair_ms(10, runs, cublas, fz)?;
                let cq = gpu.time_queued_ms(10, runs, cublas)?;
                let fq = gpu.time_queued_ms(10, runs, fz)?;
                let spans = (runs / 20).max(3);
                let cs = gpu.time_span_ms(10, spans, 20, cublas)?;
                let fs = gpu.time_span_ms(10, spans, 20, fz)?;
                (
                    c,
                    Some(f),
                    Some(sp),
                    Some((ci, fi)),
                    Some((cq, fq)),
                    Some((cs, fs)),
                )
            } else {
                (gpu.time_ms(10, runs, cublas)?, None, None, None, None, None)
            };
            let dec = if n >= 64 {
                Some(gpu.time_ms(5, runs.min(100), |i| {
                    gpu.gemm_decoupled(&gms[i % copies], xp, yp, n)
                })?)
            } else {
                None
            };
            per_n.push((n, cub, fused, dec, plan, inter, queued, span));
        }
        // Crossover measured on this card.
        let points: Vec<_> = per_n
            .iter()
            .map(|&(n, _, f, d, _, _, _, _)| (n, f, d))
            .collect();
        lin.set_crossover(&points);
        for (n, cub, fused, dec, plan, inter, queued, span) in per_n {
            let (zip, path) = if n <= lin.crossover {
                (fused.unwrap(), "fused")
            } else {
                (dec.unwrap_or(f64::NAN), "decompress+cublas")
            };
            let zip_tbps = d.device_bytes() as f64 / (zip * 1e-3) / 1e12;
            let cub_tbps = (m * k * 2) as f64 / (cub * 1e-3) / 1e12;
            gemm_rows.push((
                name.to_string(),
                m,
                k,
                n,
                zip * 1e3,
                cub * 1e3,
                fused.map(|f| f * 1e3),
                dec.map(|f| f * 1e3),
                path,
                plan.map(|p| p.describe()).unwrap_or_default(),
                zip_tbps,
                cub_tbps,
                // (zipserv, cuBLAS) interleaved, where the dispatched path is fused.
                inter
                    .filter(|_| path == "fused")
                    .map(|(c, f)| (f * 1e3, c * 1e3)),
                // The same, queued (per-call events), and in spans.
                queued
                    .filter(|_| path == "fused")
                    .map(|(c, f)| (f * 1e3, c * 1e3)),
                span.filter(|_| path == "fused")
                    .map(|(c, f)| (f * 1e3, c * 1e3)),
            ));
            println!(
                "  n={n:>5}  zipserv {:>8.1} us ({path}{})  cublas {:>8.1} us  speedup {:.3}x  [{:.2} TB/s compressed, cublas {:.2} TB/s]",
                zip * 1e3,
                plan.map(|p| format!(", {}", p.describe())).unwrap_or_default(),
                cub * 1e3,
                cub / zip,
                zip_tbps,
                cub_tbps
            );
        }
    }
    // Summary table.
    println!("\nlayer          M      K      N   zipserv_us  cublas_us  speedup   interleaved: zipserv_us cublas_us speedup   queued: zipserv_us cublas_us speedup   span: zipserv_us cublas_us speedup");
    // (log sum, count, min) back to back, interleaved, queued and span.
    let mut stats = [(0.0, 0usize, f64::MAX); 4];
    for r in &gemm_rows {
        let sp = r.5 / r.4;
        let alt = r.12.map(|(z, c)| (z, c, c / z));
        let q = r.13.map(|(z, c)| (z, c, c / z));
        let sq = r.14.map(|(z, c)| (z, c, c / z));
        let cols = |a: Option<(f64, f64, f64)>| {
            a.map(|(z, c, s)| format!("{z:>11.1} {c:>9.1} {s:>7.3}"))
                .unwrap_or_default()
        };
        println!(
            "{:<12} {:>6} {:>6} {:>5} {:>11.1} {:>10.1} {:>8.3}   {}   {}   {}",
            r.0,
            r.1,
            r.2,
            r.3,
            r.4,
            r.5,
            sp,
            cols(alt),
            cols(q),
            cols(sq)
        );
        if [1, 8, 16, 32].contains(&r.3) && r.0 != LM_HEAD.0 {
            for (st, v) in
                stats
                    .iter_mut()
                    .zip([Some(sp), alt.map(|a| a.2), q.map(|a| a.2), sq.map(|a| a.2)])
            {
                if let Some(v) = v {
                    st.0 += v.ln();
                    st.1 += 1;
                    st.2 = st.2.min(v);
                }
            }
        }
    }
    for (st, how) in stats
        .iter()
        .zip(["back to back", "interleaved", "queued", "span"])
    {
        if st.1 > 0 {
            println!(
                "geometric-mean speedup over N in {{1,8,16,32}} ({how}): {:.3}x (min {:.3}x, {} points)",
                (st.0 / st.1 as f64).exp(),
                st.2,
                st.1
            );
        }
    }
    report_clock(&gpu, "after the bench")?;
    if let Some(dir) = &a.out {
        let card = a.card.clone().unwrap_or_else(|| card_label(&gpu.name));
        // Written whole and renamed into place: a run cut short leaves the
        // previous CSVs, never half of one.
        let mut f = Vec::new();
        writeln!(f, "layer,M,K,N,zipgemm_us,cublas_us,fused_us,decoupled_us,path,plan,zipgemm_tbps,cublas_tbps,speedup,zipgemm_interleaved_us,cublas_interleaved_us,speedup_interleaved,zipgemm_queued_us,cublas_queued_us,speedup_queued,zipgemm_span_us,cublas_span_us,speedup_span").unwrap();
        for r in &gemm_rows {
            let o = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_default();
            writeln!(
                f,
                "{},{},{},{},{:.2},{:.2},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{}",
                r.0,
                r.1,
                r.2,
                r.3,
                r.4,
                r.5,
                o(r.6),
                o(r.7),
                r.8,
                r.9,
                r.10,
                r.11,
                r.5 / r.4,
                o(r.12.map(|a| a.0)),
                o(r.12.map(|a| a.1)),
                r.12.map(|(z, c)| format!("{:.4}", c / z))
                    .unwrap_or_default(),
                o(r.13.map(|a| a.0)),
                o(r.13.map(|a| a.1)),
                r.13.map(|(z, c)| format!("{:.4}", c / z))
                    .unwrap_or_default(),
                o(r.14.map(|a| a.0)),
                o(r.14.map(|a| a.1)),
                r.14.map(|(z, c)| format!("{:.4}", c / z))
                    .unwrap_or_default()
            )
            .unwrap();
        }
        crate::container::write_bytes_atomic(&dir.join(format!("zipgemm-{card}.csv")), &f)?;
        let mut f = Vec::new();
        writeln!(f, "M,K,us,tbps_rw,fraction_of_copy").unwrap();
        for r in &dec_rows {
            writeln!(f, "{r}").unwrap();
        }
        crate::container::write_bytes_atomic(&dir.join(format!("decompress-{card}.csv")), &f)?;
        println!(
            "wrote CSVs to {} (device {}, copy ceiling {ceiling:.0} GB/s)",
            dir.display(),
            gpu.name
        );
    }
    Ok(())
}

/// Print the SM clock under load (see [`Gpu::sm_clock_mhz`]) against the
/// card's maximum, with a warning below 90 % of it: the fused kernels decode
/// with integer instructions and slow down with the SM clock, cuBLAS waits on
/// HBM, so a hot or power-capped card understates zipserv (session 8: an H100
/// at 1365 MHz gave 0.83x where a cool one gives 1.3x).
fn report_clock(gpu: &Gpu, when: &str) -> Result<()> {
    let max = gpu.max_clock_mhz()?;
    let Some(f) = gpu.sm_clock_mhz()? else {
        println!("SM clock {when}: not measured (this PTX has no probe); maximum {max:.0} MHz");
        return Ok(());
    };
    println!(
        "SM clock under load {when}: {f:.0} MHz ({:.0} % of the maximum, {max:.0} MHz)",
        100.0 * f / max
    );
    if f < 0.9 * max {
        println!(
            "WARNING: the SM clock is below 90 % of its maximum (a hot or power-capped card): \
             the fused kernels' decode slows with it and cuBLAS hardly does, so these ratios \
             understate zipserv on a card that runs at its clock"
        );
    }
    Ok(())
}

/// A short file-name label for a card: the first word of its name that
/// starts with a letter and holds a digit, lower case ("NVIDIA H100 80GB HBM3"
/// -> "h100", "NVIDIA H200" -> "h200"); "gpu" if none does.
pub fn card_label(name: &str) -> String {
    name.split_whitespace()
        .find(|w| {
            w.starts_with(|c: char| c.is_ascii_alphabetic())
                && w.chars().any(|c| c.is_ascii_digit())
        })
        .map(|w| w.to_ascii_lowercase())
        .unwrap_or_else(|| "gpu".into())
}

#[cfg(test)]
mod tests {
    use super::card_label;

    #[test]
    fn card_labels() {
        assert_eq!(card_label("NVIDIA H100 80GB HBM3"), "h100");
        assert_eq!(card_label("NVIDIA H200"), "h200");
        assert_eq!(card_label("NVIDIA A100-SXM4-40GB"), "a100-sxm4-40gb");
        assert_eq!(card_label("Some GPU"), "gpu");
    }
}
