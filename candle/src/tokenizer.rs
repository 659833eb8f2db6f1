//! Tokenizers: a Hugging Face `tokenizer.json`, or the byte-level BPE that a
//! GGUF file carries in its metadata (`tokenizer.ggml.*`, GPT-2 style), built
//! with the `tokenizers` crate.
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// A byte-level BPE tokenizer from a vocabulary (id order), its merges
/// (`"a b"`), and the ids of the special (control) tokens.
pub fn byte_level_bpe(tokens: &[String], merges: &[String], special: &[u32]) -> Result<Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk.with_decoder(Some(ByteLevel::default()));
    let added: Vec<AddedToken> = special
        .iter()
        .filter_map(|&i| tokens.get(i as usize))
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tk.add_special_tokens(added)
        .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    Ok(tk)
}

/// The tokenizer of a model directory (`tokenizer.json`).
pub fn load(dir: &Path) -> Result<Tokenizer> {
    let p = dir.join("tokenizer.json");
    Tokenizer::from_file(&p).map_err(|e| anyhow!("{}: {e}", p.display()))
}

pub fn encode(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tk
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec())
}

pub fn decode(tk: &Tokenizer, ids: &[u32]) -> Result<String> {
    tk.decode(ids, false)
        .map_err(|e| anyhow!("detokenizing: {e}"))
}

/// The chat template of a model directory (`tokenizer_config.json`), if any.
pub fn chat_template(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("tokenizer_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
    )
    .with_context(|| p.display().to_string())?;
    Ok(v.get("chat_template")
        .and_then(|t| t.as_str())
        .map(String::from))
}
