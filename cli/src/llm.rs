//! `import-gguf`, `generate`, `compare` and `bench-e2e`: the candle side.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zipserv_candle::llama::{Config, Llama, Sampler, Synthetic, Weights};
use zipserv_candle::{tokenizer, Checkpoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    /// Compressed if the checkpoint is, else BF16.
    Auto,
    /// Compressed linear layers (compressed at load if the checkpoint is not).
    Zip,
    /// Plain BF16 linear layers (decompressed at load if the checkpoint is compressed).
    Bf16,
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model directory (config.json, *.safetensors compressed or not, tokenizer.json).
    pub model: PathBuf,
    /// cpu, cuda, or auto (CUDA when this build has it and a GPU is present).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Longest sequence (prompt + new tokens) the KV cache holds.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Wrap each prompt in the model's chat format (ChatML templates).
    #[arg(long)]
    pub chat: bool,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Prompt (repeatable: each is generated in turn).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "auto")]
    pub weights: WeightsArg,
    /// Tune the fused kernels for this model on this GPU first and save the
    /// plans for later runs (see `zipserv::gpu::plans`; saved plans are always
    /// used when present).
    #[arg(long)]
    pub tune: bool,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Prompt (repeatable).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 32)]
    pub max_new: usize,
    /// Write the per-prompt results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BenchE2eArgs {
    /// Model shape: llama31-8b, or tiny (a 2-layer model for smoke tests).
    #[arg(long, default_value = "llama31-8b")]
    pub shape: String,
    /// Override the number of layers.
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32")]
    pub batches: Vec<usize>,
    /// Prompt tokens per sequence before timing.
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 128)]
    pub new: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CSV to write (atomically).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(),
        "auto" => {
            if cfg!(feature = "cuda") && zipserv::gpu::unavailable().is_none() {
                cuda_device()
            } else {
                Ok(Device::Cpu)
            }
        }
        other => bail!("--device {other:?}: expected cpu, cuda or auto"),
    }
}

fn cuda_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if let Some(why) = zipserv::gpu::unavailable() {
            bail!("no GPU: {why}");
        }
        Ok(Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    bail!("this zipserv was built without CUDA support (build it with `cargo xtask build-cuda`)")
}

/// A progress bar over counted steps (layers, tensors); nothing when quiet.
struct Steps(Option<ProgressBar>);

impl Steps {
    fn new(quiet: bool, what: &str) -> Steps {
        if quiet {
            return Steps(None);
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap(),
        );
        b.set_message(what.to_string());
        Steps(Some(b))
    }
    fn update(&self, done: usize, total: usize) {
        if let Some(b) = &self.0 {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }
    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

fn load(
    m: &ModelArgs,
    weights: WeightsArg,
    dev: &Device,
    quiet: bool,
) -> Result<(Llama, zipserv_candle::tokenizers::Tokenizer)> {
    let cfg = Config::from_file(&m.model.join("config.json"))?;
    let tk = tokenizer::load(&m.model)?;
    let ck =
        Checkpoint::load(&m.model).with_context(|| format!("loading {}", m.model.display()))?;
    let mode = match weights {
        WeightsArg::Auto if ck.any_compressed() => Weights::Zip,
        WeightsArg::Auto | WeightsArg::Bf16 => Weights::Bf16,
        WeightsArg::Zip => Weights::Zip,
    };
    let max_len = cfg
        .max_position_embeddings
        .map_or(m.max_len, |p| p.min(m.max_len));
    let bar = Steps::new(quiet, &format!("loading ({mode:?} weights)"));
    let model = Llama::load(&ck, cfg, mode, max_len, dev, &|d, t| bar.update(d, t))?;
    bar.finish();
    Ok((model, tk))
}

/// On CUDA: use this card's saved kernel plans, and with `tune` tune the
/// model's shapes for batch 1 and save the plans.
fn plans(model: &Llama, dev: &Device, tune: bool, quiet: bool) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cd) = dev {
        let gpu = zipserv_candle::cuda::gpu_for(cd)?;
        let Some(path) = zipserv::gpu::plans::default_path(&gpu.name) else {
            return Ok(());
        };
        match gpu.load_plans(&path) {
            Ok(0) => {}
            Ok(n) if !quiet => eprintln!("using {n} tuned kernel plans from {}", path.display()),
            Ok(_) => {}
            Err(e) => eprintln!("zipserv: warning: ignoring saved plans: {e}"),
        }
        if tune {
            model.tune(1)?;
            let n = gpu.save_plans(&path)?;
            eprintln!("tuned; {n} kernel plans saved to {}", path.display());
        }
    }
    if tune && dev.is_cpu() {
        eprintln!("--tune: the CPU path has no kernel plans to tune");
    }
    let _ = (model, quiet);
    Ok(())
}

fn prompt_ids(
    m: &ModelArgs,
    model: &Llama,
    tk: &zipserv_candle::tokenizers::Tokenizer,
    p: &str,
) -> Result<Vec<u32>> {
    let text = if m.chat {
        let tpl = tokenizer::chat_template(&m.model)?.unwrap_or_default();
        if !tpl.contains("<|im_start|>") {
            bail!("--chat: this model's chat template is not ChatML; give the formatted prompt instead");
        }
        format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n")
    } else {
        p.to_string()
    };
    let mut ids = tokenizer::encode(tk, &text)?;
    if ids.is_empty() {
        if let Some(b) = model.cfg.bos_token_id {
            ids.push(b);
        } else {
            bail!("the prompt is empty");
        }
    }
    Ok(ids)
}

pub fn import_gguf(gguf: &Path, out: &Path, quiet: bool) -> Result<()> {
    let bar = Steps::new(quiet, "tensors");
    let r = zipserv_candle::gguf::import(gguf, out, &|d, t| bar.update(d, t))?;
    bar.finish();
    let c = &r.config;
    println!(
        "wrote {}: {} tensors, {:.1} M parameters (BF16), {} layers, hidden {}, {} heads / {} kv heads, vocab {}",
        out.display(),
        r.tensors,
        r.params as f64 / 1e6,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.kv_heads(),
        c.vocab_size
    );
    Ok(())
}

pub fn generate(a: &GenerateArgs, quiet: bool) -> Result<()> {
    let dev = device(&a.m.device)?;
    let (model, tk) = load(&a.m, a.weights, &dev, quiet)?;
    plans(&model, &dev, a.tune, quiet)?;
    let (lin, all) = model.weight_bytes();
    eprintln!(
        "{:?} weights on {:?}: linear layers {:.1} MB, all weights {:.1} MB",
        model.mode,
        dev,
        lin as f64 / 1e6,
        all as f64 / 1e6
    );
    let mut sampler = if a.temperature > 0.0 {
        Sampler::Sample {
            temperature: a.temperature,
            top_p: a.top_p,
            rng: zipserv::synth::Rng::new(a.seed),
        }
    } else {
        Sampler::Greedy
    };
    for p in &a.prompt {
        let ids = prompt_ids(&a.m, &model, &tk, p)?;
        let t0 = Instant::now();
        let mut first: Option<f64> = None;
        let mut stream: Vec<u32> = Vec::new();
        let mut printed = 0usize;
        // The prompt, then the answer as it comes (on its own line in chat form).
        print!("{p}{}", if a.m.chat { "\n" } else { "" });
        let out = model.generate(
            std::slice::from_ref(&ids),
            a.max_new,
            &mut sampler,
            &mut |next, _| {
                first.get_or_insert(t0.elapsed().as_secs_f64());
                stream.push(next[0]);
                // Print the text as it grows (decoding the whole stream keeps
                // multi-byte characters whole).
                if let Ok(s) = tokenizer::decode(&tk, &stream) {
                    if s.len() > printed && s.is_char_boundary(printed) {
                        print!("{}", &s[printed..]);
                        printed = s.len();
                        let _ = std::io::stdout().flush();
                    }
                }
            },
        )?;
        println!();
        let secs = t0.elapsed().as_secs_f64();
        let n = out[0].len();
        let ttft = first.unwrap_or(secs);
        eprintln!(
            "[{} prompt tokens, {n} new; first token {:.0} ms, then {:.1} tokens/s]",
            ids.len(),
            ttft * 1e3,
            if n > 1 {
                (n - 1) as f64 / (secs - ttft)
            } else {
                0.0
            }
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct PromptResult {
    prompt: String,
    zip_tokens: Vec<u32>,
    bf16_tokens: Vec<u32>,
    zip_text: String,
    bf16_text: String,
    /// Tokens equal before the first difference (all when none).
    matching: usize,
    /// At the first difference: logit(BF16's token) - logit(compressed run's
    /// token) in the BF16 run, and the other way round in the compressed run.
    margin_bf16: Option<f32>,
    margin_zip: Option<f32>,
    /// Largest |logit difference| between the runs at that step (same prefix).
    logit_diff: Option<f32>,
    /// Largest |logit difference| over the matching steps.
    max_logit_diff: f32,
    explained: bool,
}

fn greedy_with_logits(model: &Llama, ids: &[u32], n: usize) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut logits = Vec::new();
    let out = model.generate(
        &[ids.to_vec()],
        n,
        &mut Sampler::Greedy,
        &mut |_, l: &Tensor| {
            if let Ok(v) = l
                .to_dtype(DType::F32)
                .and_then(|x| x.get(0))
                .and_then(|x| x.to_vec1::<f32>())
            {
                logits.push(v);
            }
        },
    )?;
    if logits.len() != out[0].len() {
        bail!("could not read the logits back");
    }
    Ok((out.into_iter().next().unwrap(), logits))
}

pub fn compare(a: &CompareArgs, quiet: bool) -> Result<()> {
    let dev = device(&a.m.device)?;
    let (zm, tk) = load(&a.m, WeightsArg::Zip, &dev, quiet)?;
    let (bm, _) = load(&a.m, WeightsArg::Bf16, &dev, quiet)?;
    let (zl, za) = zm.weight_bytes();
    let (bl, ba) = bm.weight_bytes();
    println!(
        "weights on {dev:?}: compressed linear layers {:.2} MB ({:.1} % of BF16), all weights {:.2} MB vs {:.2} MB",
        zl as f64 / 1e6,
        100.0 * zl as f64 / bl as f64,
        za as f64 / 1e6,
        ba as f64 / 1e6
    );
    let mut results = Vec::new();
    for p in &a.prompt {
        let ids = prompt_ids(&a.m, &zm, &tk, p)?;
        let (zt, zlg) = greedy_with_logits(&zm, &ids, a.max_new)?;
        let (bt, blg) = greedy_with_logits(&bm, &ids, a.max_new)?;
        let n = zt.len().min(bt.len());
        let matching = (0..n).find(|&i| zt[i] != bt[i]).unwrap_or(n);
        let diff = |i: usize| -> f32 {
            zlg[i]
                .iter()
                .zip(&blg[i])
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        let max_logit_diff = (0..matching.min(n)).map(diff).fold(0.0, f32::max);
        let (mb, mz, ld) = if matching < n {
            let (x, y) = (bt[matching] as usize, zt[matching] as usize);
            (
                Some(blg[matching][x] - blg[matching][y]),
                Some(zlg[matching][y] - zlg[matching][x]),
                Some(diff(matching)),
            )
        } else {
            (None, None, None)
        };
        // A divergence is explained when the runs' logits at that step differ
        // by more than the winner's lead in either run.
        let explained = match (mb, mz, ld) {
            (Some(b), Some(z), Some(d)) => b <= d && z <= d,
            _ => true,
        };
        let r = PromptResult {
            prompt: p.clone(),
            zip_text: tokenizer::decode(&tk, &zt)?,
            bf16_text: tokenizer::decode(&tk, &bt)?,
            zip_tokens: zt,
            bf16_tokens: bt,
            matching,
            margin_bf16: mb,
            margin_zip: mz,
            logit_diff: ld,
            max_logit_diff,
            explained,
        };
        println!(
            "{:<48} {:>3}/{:<3} tokens match{}",
            format!("{:?}", p.chars().take(44).collect::<String>()),
            r.matching,
            n,
            match (mb, ld) {
                (Some(m), Some(d)) => format!(
                    "; first difference: BF16 lead {m:.4}, logit difference {d:.4} -> {}",
                    if explained {
                        "explained by rounding"
                    } else {
                        "NOT explained"
                    }
                ),
                _ => String::new(),
            }
        );
        println!("    compressed: {:?}", r.zip_text);
        results.push(r);
    }
    let all_match = results
        .iter()
        .all(|r| r.matching == r.zip_tokens.len().min(r.bf16_tokens.len()));
    let all_explained = results.iter().all(|r| r.explained);
    println!(
        "{} of {} prompts identical for {} tokens; {}",
        results
            .iter()
            .filter(|r| r.matching == r.zip_tokens.len().min(r.bf16_tokens.len()))
            .count(),
        results.len(),
        a.max_new,
        if all_match {
            "PASS".to_string()
        } else if all_explained {
            "PASS (every divergence within the GEMMs' rounding difference)".to_string()
        } else {
            "FAIL".to_string()
        }
    );
    if let Some(j) = &a.json {
        zipserv::container::write_bytes_atomic(
            j,
            serde_json::to_string_pretty(&results)?.as_bytes(),
        )?;
    }
    if !all_explained {
        bail!("generation from compressed weights diverged beyond rounding");
    }
    Ok(())
}

/// Free device memory (bytes), where it can be read.
fn free_memory(dev: &Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(_) = dev {
        dev.synchronize().ok()?;
        return candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
            .ok()
            .map(|(f, _)| f);
    }
    let _ = dev;
    None
}

struct E2eRow {
    batch: usize,
    tok_s: f64,
    step_ms: f64,
    linear_ms: f64,
    attn_ms: f64,
    /// Host time to enqueue a step (forward() returning, before the sync).
    enqueue_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_mode(model: &Llama, a: &BenchE2eArgs, quiet: bool) -> Result<Vec<E2eRow>> {
    let dev = model.device().clone();
    let mut rows = Vec::new();
    let mut rng = zipserv::synth::Rng::new(a.seed);
    for &b in &a.batches {
        model.tune(b)?;
        let ids: Vec<u32> = (0..b * a.context)
            .map(|_| (rng.next_u64() % model.cfg.vocab_size as u64) as u32)
            .collect();
        let mut cache = model.new_cache(b)?;
        let logits = model.forward(&mut cache, &ids, a.context)?;
        let mut next = Sampler::Greedy.sample(&logits)?;
        // Warm up (allocator, plans), then time each decode step to the
        // sampled token on the host, as a serving loop sees it.
        for _ in 0..3 {
            next = Sampler::Greedy.sample(&model.forward(&mut cache, &next, 1)?)?;
        }
        let mut steps = Vec::with_capacity(a.new);
        let mut enq = Vec::with_capacity(a.new);
        let t0 = Instant::now();
        for _ in 0..a.new {
            let t = Instant::now();
            let logits = model.forward(&mut cache, &next, 1)?;
            enq.push(t.elapsed().as_secs_f64());
            next = Sampler::Greedy.sample(&logits)?;
            steps.push(t.elapsed().as_secs_f64());
        }
        let total = t0.elapsed().as_secs_f64();
        // The parts alone at this batch (same kernels, same shapes).
        let lin = model.linears_only(b, 3, 20)?;
        let attn = model.attention_only(&cache, 3, 20)?;
        let r = E2eRow {
            batch: b,
            tok_s: (b * a.new) as f64 / total,
            step_ms: median(steps) * 1e3,
            linear_ms: lin * 1e3,
            attn_ms: attn * 1e3,
            enqueue_ms: median(enq) * 1e3,
        };
        if !quiet {
            eprintln!(
                "  {:?} batch {b}: {:.1} tokens/s, step {:.3} ms (linear layers {:.3} ms, attention {:.3} ms, host enqueue {:.3} ms)",
                model.mode, r.tok_s, r.step_ms, r.linear_ms, r.attn_ms, r.enqueue_ms
            );
        }
        rows.push(r);
        drop(cache);
        let _ = dev.synchronize();
    }
    Ok(rows)
}

pub fn bench_e2e(a: &BenchE2eArgs, quiet: bool) -> Result<()> {
    let dev = device(&a.device)?;
    let mut cfg = match a.shape.as_str() {
        "llama31-8b" => Config::llama31_8b(),
        "tiny" => Config::tiny(),
        other => bail!("--shape {other:?}: expected llama31-8b or tiny"),
    };
    if let Some(l) = a.layers {
        cfg.num_hidden_layers = l;
    }
    if a.batches.is_empty() || a.batches.contains(&0) || a.new == 0 || a.context == 0 {
        bail!("--batches, --context and --new must be positive");
    }
    let max_len = a.context + a.new + 8;
    let src = Synthetic {
        cfg: cfg.clone(),
        seed: a.seed,
    };
    let card = dev_name(&dev)?;
    let mut res = Vec::new();
    for mode in [Weights::Zip, Weights::Bf16] {
        let free0 = free_memory(&dev);
        let t = Instant::now();
        let bar = Steps::new(quiet, &format!("building the {mode:?} model"));
        let model = Llama::load(&src, cfg.clone(), mode, max_len, &dev, &|d, n| {
            bar.update(d, n)
        })?;
        bar.finish();
        let used = free0
            .zip(free_memory(&dev))
            .map(|(a, b)| a.saturating_sub(b));
        let (lin, all) = model.weight_bytes();
        if !quiet {
            eprintln!(
                "{mode:?}: weights {:.3} GiB (linear {:.3} GiB; device memory taken {}), built in {:.0} s",
                all as f64 / (1u64 << 30) as f64,
                lin as f64 / (1u64 << 30) as f64,
                used.map_or("n/a".into(), |u| format!("{:.3} GiB", u as f64 / (1u64 << 30) as f64)),
                t.elapsed().as_secs_f64()
            );
        }
        let rows = bench_mode(&model, a, quiet)?;
        res.push((mode, all, lin, rows));
        drop(model);
    }
    let (_, zall, zlin, zr) = &res[0];
    let (_, ball, blin, br) = &res[1];
    let name = format!("{}-synthetic-{}L", a.shape, cfg.num_hidden_layers);
    let mut csv = String::from(
        "model,batch,compressed_tok_s,bf16_tok_s,speedup,compressed_weight_gib,bf16_weight_gib,weight_ratio,compressed_linear_gib,bf16_linear_gib,compressed_step_ms,bf16_step_ms,compressed_linear_ms,bf16_linear_ms,attention_ms,compressed_enqueue_ms,bf16_enqueue_ms,context,new_tokens,card\n",
    );
    let gib = |x: usize| x as f64 / (1u64 << 30) as f64;
    println!(
        "{:>5} {:>12} {:>12} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "batch",
        "zip tok/s",
        "bf16 tok/s",
        "speedup",
        "zip step",
        "bf16 step",
        "zip lin",
        "bf16 lin"
    );
    for (z, b) in zr.iter().zip(br) {
        csv.push_str(&format!(
            "{name},{},{:.2},{:.2},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{card}\n",
            z.batch,
            z.tok_s,
            b.tok_s,
            z.tok_s / b.tok_s,
            gib(*zall),
            gib(*ball),
            *zall as f64 / *ball as f64,
            gib(*zlin),
            gib(*blin),
            z.step_ms,
            b.step_ms,
            z.linear_ms,
            b.linear_ms,
            z.attn_ms,
            z.enqueue_ms,
            b.enqueue_ms,
            a.context,
            a.new
        ));
        println!(
            "{:>5} {:>12.1} {:>12.1} {:>7.3}x {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.3}ms",
            z.batch,
            z.tok_s,
            b.tok_s,
            z.tok_s / b.tok_s,
            z.step_ms,
            b.step_ms,
            z.linear_ms,
            b.linear_ms
        );
    }
    println!(
        "weights: compressed {:.3} GiB, BF16 {:.3} GiB ({:.1} %); linear layers {:.1} %",
        gib(*zall),
        gib(*ball),
        100.0 * *zall as f64 / *ball as f64,
        100.0 * *zlin as f64 / *blin as f64
    );
    if let Some(p) = &a.csv {
        zipserv::container::write_bytes_atomic(p, csv.as_bytes())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn dev_name(dev: &Device) -> Result<String> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cd) = dev {
        return Ok(zipserv_candle::cuda::gpu_for(cd)?.name.clone());
    }
    let _ = dev;
    Ok("cpu".into())
}
