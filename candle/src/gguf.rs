//! GGUF import: a llama-architecture GGUF file (quantized or not) to a
//! Hugging Face-style BF16 checkpoint directory (`model.safetensors`,
//! `config.json`, `tokenizer.json`, `tokenizer_config.json`), which
//! `zipserv compress` then compresses and [`crate::llama::Llama`] loads.
//!
//! llama.cpp stores q/k projection rows permuted for its interleaved RoPE;
//! they are permuted back to the rotate-half order of Hugging Face models.
use crate::llama::Config;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use std::path::Path;

fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| anyhow!("GGUF metadata has no {key}"))
}

fn strings(v: &Value) -> Result<Vec<String>> {
    v.to_vec()?
        .iter()
        .map(|x| Ok(x.to_string()?.clone()))
        .collect()
}

/// Undo llama.cpp's q/k row permutation: GGUF row `h*hd + 2i + j` is HF row
/// `h*hd + j*hd/2 + i`.
pub fn unpermute_rows(bits: &[u16], rows: usize, cols: usize, heads: usize) -> Vec<u16> {
    let hd = rows / heads;
    let mut out = vec![0u16; bits.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * hd / 2 + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&bits[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The Hugging Face name of a GGUF tensor.
fn hf_name(n: &str) -> Option<String> {
    let fixed = match n {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = n.strip_prefix("blk.")?;
    let (i, t) = rest.split_once('.')?;
    let (kind, suffix) = t.rsplit_once('.')?;
    let hf = match kind {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{hf}.{suffix}"))
}

/// What [`import`] wrote.
pub struct Imported {
    pub config: Config,
    pub tensors: usize,
    pub params: usize,
}

/// Convert `gguf` into a new directory `out` (refused if it exists and is
/// not empty; written atomically). `progress(done, total)` counts tensors.
pub fn import(gguf: &Path, out: &Path, progress: &dyn Fn(usize, usize)) -> Result<Imported> {
    let mut f = std::fs::File::open(gguf).with_context(|| gguf.display().to_string())?;
    let c =
        Content::read(&mut f).map_err(|e| anyhow!("{}: not a GGUF file: {e}", gguf.display()))?;
    let arch = meta(&c, "general.architecture")?.to_string()?.clone();
    if arch != "llama" {
        bail!(
            "{}: architecture {arch:?}; the importer reads llama-architecture GGUF files",
            gguf.display()
        );
    }
    let u = |k: &str| -> Result<usize> { Ok(meta(&c, &format!("{arch}.{k}"))?.to_u32()? as usize) };
    let (hidden, heads) = (u("embedding_length")?, u("attention.head_count")?);
    let kv = u("attention.head_count_kv").unwrap_or(heads);
    let tokens = strings(meta(&c, "tokenizer.ggml.tokens")?)?;
    let merges = strings(meta(&c, "tokenizer.ggml.merges")?)?;
    let model = meta(&c, "tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        bail!("tokenizer model {model:?}: the importer builds byte-level BPE (gpt2) tokenizers");
    }
    let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|x| x.to_i32())
            .collect::<candle_core::Result<_>>()?,
        None => vec![],
    };
    // Type 3 is a control token, 4 user-defined: both matched whole.
    let special: Vec<u32> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(i, _)| i as u32)
        .collect();
    let tok_id = |k: &str| c.metadata.get(k).and_then(|v| v.to_u32().ok());
    let config = Config {
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv),
        head_dim: Some(hidden / heads),
        rms_norm_eps: meta(&c, &format!("{arch}.attention.layer_norm_rms_epsilon"))?.to_f32()?
            as f64,
        rope_theta: c
            .metadata
            .get(&format!("{arch}.rope.freq_base"))
            .map(|v| v.to_f32())
            .transpose()?
            .unwrap_or(10000.0) as f64,
        vocab_size: tokens.len(),
        max_position_embeddings: u("context_length").ok(),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        rope_scaling: None,
        model_type: Some("llama".into()),
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: tok_id("tokenizer.ggml.eos_token_id").map(|e| e.into()),
    };
    let tk = crate::tokenizer::byte_level_bpe(&tokens, &merges, &special)?;

    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u16>)> = Vec::new();
    let mut params = 0;
    for (k, name) in names.iter().enumerate() {
        progress(k, names.len());
        let hf = hf_name(name)
            .ok_or_else(|| anyhow!("GGUF tensor {name}: no Hugging Face name known"))?;
        let t = c
            .tensor(&mut f, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| anyhow!("GGUF tensor {name}: {e}"))?;
        let shape = t.dims().to_vec();
        let vals: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let mut bits: Vec<u16> = vals
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        if shape.len() == 2 && (name.contains("attn_q.") || name.contains("attn_k.")) {
            let h = if name.contains("attn_q.") { heads } else { kv };
            bits = unpermute_rows(&bits, shape[0], shape[1], h);
        }
        params += bits.len();
        tensors.push((hf, shape, bits));
    }
    progress(names.len(), names.len());
    let template = c
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok().cloned());
    zipserv::ops::with_output_dir(out, |dir| {
        let io = |e: anyhow::Error| zipserv::Error::invalid(e.to_string());
        crate::write_bf16_safetensors(&dir.join("model.safetensors"), &tensors)?;
        let cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "torch_dtype": "bfloat16",
            "converted_from": gguf.file_name().map(|n| n.to_string_lossy().to_string()),
        });
        let mut cfg_v = serde_json::to_value(&config).unwrap();
        cfg_v
            .as_object_mut()
            .unwrap()
            .extend(cfg.as_object().unwrap().clone());
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&cfg_v).unwrap(),
        )
        .map_err(|e| zipserv::Error::io(dir, e))?;
        tk.save(dir.join("tokenizer.json"), false)
            .map_err(|e| io(anyhow!("writing tokenizer.json: {e}")))?;
        let tc = serde_json::json!({ "chat_template": template });
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string())
            .map_err(|e| zipserv::Error::io(dir, e))?;
        Ok(())
    })?;
    Ok(Imported {
        config,
        tensors: tensors.len(),
        params,
    })
}
