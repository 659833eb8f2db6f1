//! A Llama-family decoder (Llama 2/3, SmolLM, Qwen2: RMSNorm, RoPE,
//! grouped-query attention with a KV cache, SwiGLU) over candle tensors,
//! where every linear layer is a [`Linear`]: compressed ([`ZipLinear`]) or
//! plain BF16, the rest of the code being the same. q/k/v and gate/up are
//! merged into one matrix each, as serving engines do, so a layer is eight
//! launches on CUDA (see [`crate::ops`]).
use crate::ops::{self, AttnShape, Step};
use crate::{bits_tensor, err, Checkpoint, ZipLinear};
use candle_core::{DType, Device, Module, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The fields of a Hugging Face `config.json` this decoder reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub vocab_size: usize,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}

/// `rope_scaling` of Llama 3.1 (`rope_type: llama3`); other types are refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: f64,
    #[serde(default)]
    pub high_freq_factor: f64,
    #[serde(default)]
    pub original_max_position_embeddings: usize,
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Config> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// End-of-sequence tokens.
    pub fn eos(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|x| x as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    }
    /// RoPE frequencies, Llama 3 scaling applied.
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        let d = self.head_dim();
        let mut f: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        if let Some(s) = &self.rope_scaling {
            if s.rope_type != "llama3" {
                return Err(err(format!(
                    "rope_scaling type {:?} is not supported",
                    s.rope_type
                )));
            }
            let old = s.original_max_position_embeddings as f64;
            let (low_wl, high_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
            for x in f.iter_mut() {
                let wl = 2.0 * std::f64::consts::PI / *x;
                if wl > low_wl {
                    *x /= s.factor;
                } else if wl >= high_wl {
                    let smooth =
                        (old / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
                }
            }
        }
        Ok(f.into_iter().map(|x| x as f32).collect())
    }
    /// A 2-layer model of the same kind (tests, smoke runs): hidden 256, 4/2
    /// heads of 64, vocabulary 1024, tied head.
    pub fn tiny() -> Config {
        Config {
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: Some(64),
            vocab_size: 1024,
            tie_word_embeddings: true,
            ..Config::llama31_8b()
        }
    }
    /// The Llama-3.1-8B shape (for benchmarks on synthetic weights).
    pub fn llama31_8b() -> Config {
        Config {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(8),
            head_dim: Some(128),
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            vocab_size: 128256,
            max_position_embeddings: Some(131072),
            tie_word_embeddings: false,
            rope_scaling: Some(RopeScaling {
                rope_type: "llama3".into(),
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            model_type: Some("llama".into()),
            bos_token_id: Some(128000),
            eos_token_id: None,
        }
    }
}

/// How the linear layers hold their weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// Compressed ([`ZipLinear`]).
    Zip,
    /// Plain BF16 (candle's matmul: cuBLAS on CUDA).
    Bf16,
}

/// A linear layer, compressed or plain (clones share the weight).
#[derive(Clone)]
pub enum Linear {
    Dense { w: Tensor, b: Option<Tensor> },
    Zip(ZipLinear),
}

impl Linear {
    pub fn new(
        bits: &[u16],
        rows: usize,
        cols: usize,
        bias: Option<Tensor>,
        mode: Weights,
        dev: &Device,
    ) -> Result<Linear> {
        Ok(match mode {
            Weights::Zip => Linear::Zip(ZipLinear::from_bits(bits, rows, cols, bias, dev)?),
            Weights::Bf16 => Linear::Dense {
                w: bits_tensor(bits, &[rows, cols], dev)?,
                b: bias,
            },
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // The same call as ZipLinear's CPU path, so that on the CPU the two
            // give bit-identical results.
            Linear::Dense { w, b } => {
                let y = x.broadcast_matmul(&w.t()?)?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Linear::Zip(z) => z.forward(x),
        }
    }
    /// Rows `ids` of the weight (an embedding lookup), `[n, in]` BF16.
    pub fn gather_rows(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        match self {
            Linear::Dense { w, .. } => w.index_select(&Tensor::from_slice(ids, ids.len(), dev)?, 0),
            Linear::Zip(z) => z.gather_rows(ids, dev),
        }
    }
    /// Bytes of the weight where it lives.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Dense { w, .. } => w.elem_count() * 2,
            Linear::Zip(z) => z.weight_bytes(),
        }
    }
    /// Tune the fused kernel for `n` rows (compressed layers on CUDA).
    pub fn tune(&self, n: usize) -> Result<()> {
        match self {
            Linear::Zip(z) => z.tune(n),
            Linear::Dense { .. } => Ok(()),
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

/// The decoder.
pub struct Llama {
    pub cfg: Config,
    pub mode: Weights,
    embed: Linear,
    /// Whether `lm_head` is `embed` (one matrix, counted once).
    tied: bool,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Tensor,
    shape: AttnShape,
    dev: Device,
}

/// Where weights come from: a checkpoint, or a generator of synthetic ones.
pub trait WeightSource {
    /// BF16 bit patterns of a tensor and its shape (HF names).
    fn bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)>;
    fn has(&self, name: &str) -> bool;
}

impl WeightSource for Checkpoint {
    fn bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        Checkpoint::bits(self, name)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Synthetic weights of a configuration: Student-t(5) matrices with standard
/// deviation 0.02 (the exponent statistics of real LLM weights), norms of 1.
pub struct Synthetic {
    pub cfg: Config,
    pub seed: u64,
}

impl WeightSource for Synthetic {
    fn bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        let c = &self.cfg;
        let (h, kv, d) = (c.hidden_size, c.kv_heads(), c.head_dim());
        let shape: Vec<usize> = if name.ends_with("norm.weight") {
            vec![h]
        } else if name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight") {
            vec![c.vocab_size, h]
        } else if name.ends_with("q_proj.weight") {
            vec![c.num_attention_heads * d, h]
        } else if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            vec![kv * d, h]
        } else if name.ends_with("o_proj.weight") {
            vec![h, c.num_attention_heads * d]
        } else if name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight") {
            vec![c.intermediate_size, h]
        } else if name.ends_with("down_proj.weight") {
            vec![h, c.intermediate_size]
        } else {
            return Err(err(format!("synthetic model: no tensor {name}")));
        };
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok((vec![half::bf16::ONE.to_bits(); n], shape));
        }
        let seed = self.seed ^ xxhash_seed(name);
        Ok((zipserv::synth::student_t_fast_bf16(n, 0.02, seed), shape))
    }
    fn has(&self, name: &str) -> bool {
        !(name.ends_with(".bias") || self.cfg.tie_word_embeddings && name == "lm_head.weight")
    }
}

impl Synthetic {
    /// The Hugging Face tensor names of the configuration.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![
            "model.embed_tokens.weight".to_string(),
            "model.norm.weight".to_string(),
        ];
        if !self.cfg.tie_word_embeddings {
            v.push("lm_head.weight".into());
        }
        for i in 0..self.cfg.num_hidden_layers {
            for t in [
                "input_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "post_attention_layernorm",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.layers.{i}.{t}.weight"));
            }
        }
        v
    }

    /// Write the model as a BF16 checkpoint directory (`model.safetensors`,
    /// `config.json`); `dir` must not exist or be empty.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let mut tensors = Vec::new();
        for n in self.names() {
            let (b, s) = self.bits(&n)?;
            tensors.push((n, s, b));
        }
        zipserv::ops::with_output_dir(dir, |d| {
            crate::write_bf16_safetensors(&d.join("model.safetensors"), &tensors)?;
            std::fs::write(
                d.join("config.json"),
                serde_json::to_string_pretty(&self.cfg).unwrap(),
            )
            .map_err(|e| zipserv::Error::io(d, e))
        })?;
        Ok(())
    }
}

fn xxhash_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn concat_rows(parts: &[(Vec<u16>, Vec<usize>)], name: &str) -> Result<(Vec<u16>, usize, usize)> {
    let cols = parts[0].1[1];
    let mut bits = Vec::new();
    let mut rows = 0;
    for (b, s) in parts {
        if s.len() != 2 || s[1] != cols {
            return Err(err(format!(
                "{name}: parts of shapes {:?} cannot be merged",
                parts.iter().map(|p| &p.1).collect::<Vec<_>>()
            )));
        }
        bits.extend_from_slice(b);
        rows += s[0];
    }
    Ok((bits, rows, cols))
}

/// A progress callback: `(done, total)` layers.
pub type LoadProgress<'a> = &'a dyn Fn(usize, usize);

impl Llama {
    /// Build the model from `src` with linear layers held as `mode`, for
    /// sequences of up to `max_len` tokens.
    pub fn load(
        src: &dyn WeightSource,
        cfg: Config,
        mode: Weights,
        max_len: usize,
        dev: &Device,
        progress: LoadProgress,
    ) -> Result<Llama> {
        let (nh, nkv, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let shape = AttnShape {
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
            max_len,
        };
        shape.check().map_err(err)?;
        if let Some(m) = cfg.max_position_embeddings {
            if max_len > m {
                return Err(err(format!(
                    "max_len {max_len} exceeds the model's {m} positions"
                )));
            }
        }
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cd) = dev {
            // One stream, raw pointers: the per-tensor events are not needed.
            unsafe { cd.disable_event_tracking() };
        }
        let vec = |name: &str| -> Result<Tensor> {
            let (b, s) = src.bits(name)?;
            bits_tensor(&b, &s, dev)
        };
        let bias = |name: &str| -> Result<Option<(Vec<u16>, Vec<usize>)>> {
            if src.has(name) {
                Ok(Some(src.bits(name)?))
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            progress(i, cfg.num_hidden_layers);
            let p = format!("model.layers.{i}");
            let (qkv, r, c) = concat_rows(
                &[
                    src.bits(&format!("{p}.self_attn.q_proj.weight"))?,
                    src.bits(&format!("{p}.self_attn.k_proj.weight"))?,
                    src.bits(&format!("{p}.self_attn.v_proj.weight"))?,
                ],
                &format!("{p}.self_attn.qkv"),
            )?;
            if (r, c) != (shape.qkv_width(), cfg.hidden_size) {
                return Err(err(format!(
                    "{p}: q/k/v make {r}x{c}, expected {}x{}",
                    shape.qkv_width(),
                    cfg.hidden_size
                )));
            }
            let qkv_bias = match (
                bias(&format!("{p}.self_attn.q_proj.bias"))?,
                bias(&format!("{p}.self_attn.k_proj.bias"))?,
                bias(&format!("{p}.self_attn.v_proj.bias"))?,
            ) {
                (Some(q), Some(k), Some(v)) => {
                    let all: Vec<u16> = [q.0, k.0, v.0].concat();
                    Some(bits_tensor(&all, &[r], dev)?)
                }
                (None, None, None) => None,
                _ => return Err(err(format!("{p}: some of q/k/v have a bias, not all"))),
            };
            let qkv = Linear::new(&qkv, r, c, qkv_bias, mode, dev)?;
            let (ob, os) = src.bits(&format!("{p}.self_attn.o_proj.weight"))?;
            let o = Linear::new(&ob, os[0], os[1], None, mode, dev)?;
            let (gu, r, c) = concat_rows(
                &[
                    src.bits(&format!("{p}.mlp.gate_proj.weight"))?,
                    src.bits(&format!("{p}.mlp.up_proj.weight"))?,
                ],
                &format!("{p}.mlp.gate_up"),
            )?;
            let gate_up = Linear::new(&gu, r, c, None, mode, dev)?;
            let (db, ds) = src.bits(&format!("{p}.mlp.down_proj.weight"))?;
            let down = Linear::new(&db, ds[0], ds[1], None, mode, dev)?;
            layers.push(Layer {
                attn_norm: vec(&format!("{p}.input_layernorm.weight"))?,
                qkv,
                o,
                mlp_norm: vec(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_up,
                down,
            });
        }
        progress(cfg.num_hidden_layers, cfg.num_hidden_layers);
        let (eb, es) = src.bits("model.embed_tokens.weight")?;
        if es != [cfg.vocab_size, cfg.hidden_size] {
            return Err(err(format!(
                "embed_tokens is {es:?}, expected [{}, {}]",
                cfg.vocab_size, cfg.hidden_size
            )));
        }
        // The embedding is held like the linear layers (a compressed one is
        // looked up by decoding rows on the device); a tied head is the same
        // matrix.
        let embed = Linear::new(&eb, es[0], es[1], None, mode, dev)?;
        drop(eb);
        let tied = !src.has("lm_head.weight");
        let lm_head = if tied {
            embed.clone()
        } else {
            let (b, s) = src.bits("lm_head.weight")?;
            Linear::new(&b, s[0], s[1], None, mode, dev)?
        };
        let rope = ops::rope_table(&cfg.inv_freq()?, max_len, dev)?;
        Ok(Llama {
            mode,
            embed,
            tied,
            layers,
            norm: vec("model.norm.weight")?,
            lm_head,
            rope,
            shape,
            dev: dev.clone(),
            cfg,
        })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }
    pub fn max_len(&self) -> usize {
        self.shape.max_len
    }

    /// Bytes of weights on the device: (linear layers incl. the head,
    /// everything: embedding and norms too; a tied head counted once).
    pub fn weight_bytes(&self) -> (usize, usize) {
        let lin: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.o.weight_bytes()
                    + l.gate_up.weight_bytes()
                    + l.down.weight_bytes()
            })
            .sum::<usize>()
            + self.lm_head.weight_bytes();
        let other = if self.tied {
            0
        } else {
            self.embed.weight_bytes()
        } + self.norm.elem_count() * 2
            + self
                .layers
                .iter()
                .map(|l| (l.attn_norm.elem_count() + l.mlp_norm.elem_count()) * 2)
                .sum::<usize>();
        (lin, lin + other)
    }

    /// Tune the compressed layers' fused kernels for `n` rows of activations:
    /// one plan per shape, timed over all the layers of that shape in turn
    /// (weights from memory, as in a forward pass).
    pub fn tune(&self, n: usize) -> Result<()> {
        let pick = |f: &dyn Fn(&Layer) -> &Linear| -> Vec<&ZipLinear> {
            self.layers
                .iter()
                .filter_map(|l| match f(l) {
                    Linear::Zip(z) => Some(z),
                    Linear::Dense { .. } => None,
                })
                .collect()
        };
        for group in [
            pick(&|l| &l.qkv),
            pick(&|l| &l.o),
            pick(&|l| &l.gate_up),
            pick(&|l| &l.down),
        ] {
            if !group.is_empty() {
                ZipLinear::tune_group(&group, n)?;
            }
        }
        self.lm_head.tune(n)
    }

    /// Median seconds of the linear layers alone (every layer's four
    /// projections and the head) on `n` rows of activations.
    pub fn linears_only(&self, n: usize, warmup: usize, runs: usize) -> Result<f64> {
        let c = &self.cfg;
        let x = |k: usize| Tensor::zeros((n, k), DType::BF16, &self.dev);
        let (xh, xa, xi) = (
            x(c.hidden_size)?,
            x(c.num_attention_heads * c.head_dim())?,
            x(c.intermediate_size)?,
        );
        self.median_secs(warmup, runs, || {
            for l in &self.layers {
                l.qkv.forward(&xh)?;
                l.o.forward(&xa)?;
                l.gate_up.forward(&xh)?;
                l.down.forward(&xi)?;
            }
            self.lm_head.forward(&xh).map(|_| ())
        })
    }

    /// Median wall seconds of `f` to completion on the device, after `warmup` runs.
    fn median_secs(
        &self,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        let mut times = Vec::with_capacity(runs);
        for i in 0..warmup + runs.max(1) {
            self.dev.synchronize()?;
            let t = std::time::Instant::now();
            f()?;
            self.dev.synchronize()?;
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Median seconds of the attention part of one decode step alone (every
    /// layer's RoPE + cache append and attention, at the cache's length; the
    /// appended slot is the one the next step overwrites).
    pub fn attention_only(&self, cache: &KvCache, warmup: usize, runs: usize) -> Result<f64> {
        let step = Step {
            shape: self.shape,
            batch: cache.batch,
            pos0: cache.pos,
            t_len: 1,
        };
        let qkv = Tensor::zeros(
            (cache.batch, self.shape.qkv_width()),
            DType::BF16,
            &self.dev,
        )?;
        let scale = 1.0 / (self.shape.head_dim as f32).sqrt();
        self.median_secs(warmup, runs, || {
            for c in &cache.layers {
                ops::rope_append(c, &qkv, &self.rope, step)?;
                ops::attention(&qkv, c, &self.rope, step, scale)?;
            }
            Ok(())
        })
    }

    /// An empty KV cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let s = &self.shape;
        let layers = (0..self.layers.len())
            .map(|_| {
                Tensor::zeros(
                    (2, batch, s.kv_heads, s.max_len, s.head_dim),
                    DType::BF16,
                    &self.dev,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            batch,
            pos: 0,
        })
    }

    /// Run `t_len` new tokens of each sequence (`ids`: `batch * t_len`, row
    /// `b` its sequence's tokens) through the model, append them to the
    /// cache, and return the logits of each sequence's last token
    /// (`[batch, vocab]`, BF16).
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32], t_len: usize) -> Result<Tensor> {
        let b = cache.batch;
        if t_len == 0 || ids.len() != b * t_len {
            return Err(err(format!(
                "forward: {} ids for {b} sequences of {t_len}",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(err(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let step = Step {
            shape: self.shape,
            batch: b,
            pos0: cache.pos,
            t_len,
        };
        if cache.pos + t_len > self.shape.max_len {
            return Err(err(format!(
                "the sequence would reach {} tokens, the cache holds {}",
                cache.pos + t_len,
                self.shape.max_len
            )));
        }
        let eps = self.cfg.rms_norm_eps as f32;
        let scale = 1.0 / (self.shape.head_dim as f32).sqrt();
        let mut res = self.embed.gather_rows(ids, &self.dev)?;
        let mut delta: Option<Tensor> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let (r, h) = ops::add_rms_norm(&res, delta.as_ref(), &layer.attn_norm, eps)?;
            let qkv = layer.qkv.forward(&h)?;
            ops::rope_append(&cache.layers[l], &qkv, &self.rope, step)?;
            let a = ops::attention(&qkv, &cache.layers[l], &self.rope, step, scale)?;
            let o = layer.o.forward(&a)?;
            let (r2, h2) = ops::add_rms_norm(&r, Some(&o), &layer.mlp_norm, eps)?;
            let m = ops::silu_mul(&layer.gate_up.forward(&h2)?)?;
            delta = Some(layer.down.forward(&m)?);
            res = r2;
        }
        let (_, hf) = ops::add_rms_norm(&res, delta.as_ref(), &self.norm, eps)?;
        let last = if t_len == 1 {
            hf
        } else {
            let h = self.cfg.hidden_size;
            hf.reshape((b, t_len, h))?
                .narrow(1, t_len - 1, 1)?
                .reshape((b, h))?
                .contiguous()?
        };
        cache.pos += t_len;
        self.lm_head.forward(&last)
    }

    /// Generate up to `max_new` tokens for each prompt (all of one length),
    /// stopping a sequence at an end token; `on_step` sees each step's tokens.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        sampler: &mut Sampler,
        on_step: &mut dyn FnMut(&[u32], &Tensor),
    ) -> Result<Vec<Vec<u32>>> {
        let b = prompts.len();
        let t = prompts.first().map(|p| p.len()).unwrap_or(0);
        if b == 0 || t == 0 || prompts.iter().any(|p| p.len() != t) {
            return Err(err("generate: prompts must be non-empty and of one length"));
        }
        let mut cache = self.new_cache(b)?;
        let ids: Vec<u32> = prompts.concat();
        let mut logits = self.forward(&mut cache, &ids, t)?;
        let eos = self.cfg.eos();
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for step in 0..max_new {
            let next = sampler.sample(&logits)?;
            on_step(&next, &logits);
            for (i, &tok) in next.iter().enumerate() {
                if !done[i] {
                    out[i].push(tok);
                    done[i] = eos.contains(&tok);
                }
            }
            if done.iter().all(|&d| d) || step + 1 == max_new || cache.pos >= self.shape.max_len {
                break;
            }
            logits = self.forward(&mut cache, &next, 1)?;
        }
        Ok(out)
    }
}

/// The KV caches of a batch of sequences (one tensor a layer, `[2, batch,
/// kv_heads, max_len, head_dim]`) and their common length.
pub struct KvCache {
    layers: Vec<Tensor>,
    pub batch: usize,
    pub pos: usize,
}

/// Next-token choice.
pub enum Sampler {
    Greedy,
    /// Temperature and nucleus sampling, seeded.
    Sample {
        temperature: f64,
        top_p: f64,
        rng: zipserv::synth::Rng,
    },
}

impl Sampler {
    pub fn sample(&mut self, logits: &Tensor) -> Result<Vec<u32>> {
        match self {
            Sampler::Greedy => ops::argmax(logits)?.to_vec1::<u32>(),
            Sampler::Sample {
                temperature,
                top_p,
                rng,
            } => {
                let l: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
                Ok(l.iter()
                    .map(|row| sample_row(row, *temperature, *top_p, rng))
                    .collect())
            }
        }
    }
}

fn sample_row(row: &[f32], temperature: f64, top_p: f64, rng: &mut zipserv::synth::Rng) -> u32 {
    if temperature <= 0.0 {
        return row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            )
            .0 as u32;
    }
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - m) / temperature).exp()))
        .collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = p.iter().map(|x| x.1).sum();
    let mut keep = 0;
    let mut acc = 0.0;
    for (i, x) in p.iter().enumerate() {
        acc += x.1 / total;
        keep = i + 1;
        if acc >= top_p {
            break;
        }
    }
    let kept: f64 = p[..keep].iter().map(|x| x.1).sum();
    let mut u = rng.uniform() * kept;
    for x in &p[..keep] {
        u -= x.1;
        if u <= 0.0 {
            return x.0 as u32;
        }
    }
    p[keep - 1].0 as u32
}
