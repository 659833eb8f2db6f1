//! `import-gguf`, `generate`, `compare` and `bench-e2e` end to end on the CPU:
//! a tiny synthetic Llama with a byte-level tokenizer, compressed and not.
use std::path::Path;
use std::process::{Command, Output};
use zipserv_candle::llama::{Config, Synthetic};

fn zipserv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zipserv"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tiny_model(dir: &Path) {
    let cfg = Config {
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: Some(1),
        head_dim: Some(64),
        vocab_size: 512,
        tie_word_embeddings: true,
        eos_token_id: None,
        ..Config::llama31_8b()
    };
    Synthetic { cfg, seed: 9 }.write(dir).unwrap();
    // A byte-level tokenizer: the 256 byte symbols, no merges.
    let mut alphabet: Vec<String> =
        zipserv_candle::tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .map(|c| c.to_string())
            .collect();
    alphabet.sort();
    let tk = zipserv_candle::tokenizer::byte_level_bpe(&alphabet, &[], &[]).unwrap();
    tk.save(dir.join("tokenizer.json"), false).unwrap();
}

#[test]
fn generate_and_compare_on_a_tiny_model() {
    let d = tempfile::tempdir().unwrap();
    let (plain, zip) = (d.path().join("plain"), d.path().join("zip"));
    tiny_model(&plain);
    let o = zipserv(&[
        "compress",
        plain.to_str().unwrap(),
        "-o",
        zip.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let o = zipserv(&[
        "generate",
        zip.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-len",
        "64",
        "--max-new",
        "5",
        "--prompt",
        "hello there",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.starts_with("hello there"), "{t}");
    assert!(t.contains("Zip weights on Cpu"), "{t}");
    assert!(t.contains("5 new"), "{t}");

    // Sampled generation runs too, and is reproducible with a seed.
    let sampled = |seed: &str| {
        let o = zipserv(&[
            "generate",
            plain.to_str().unwrap(),
            "--device",
            "cpu",
            "--max-len",
            "64",
            "--max-new",
            "6",
            "--temperature",
            "0.8",
            "--seed",
            seed,
            "--prompt",
            "abc",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(sampled("3"), sampled("3"));

    let json = d.path().join("cmp.json");
    let o = zipserv(&[
        "compare",
        zip.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-len",
        "64",
        "--max-new",
        "8",
        "--prompt",
        "one",
        "--prompt",
        "two words",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // On the CPU both runs decode the exact weights: identical tokens.
    assert!(
        text(&o).contains("2 of 2 prompts identical for 8 tokens; PASS"),
        "{}",
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["matching"], 8);

    // A token the model cannot hold: a clear error.
    let o = zipserv(&[
        "generate",
        zip.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-len",
        "4",
        "--max-new",
        "9",
        "--prompt",
        "a prompt longer than the cache",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cache holds 4"), "{}", text(&o));
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let not_gguf = d.path().join("model.gguf");
    std::fs::write(&not_gguf, b"definitely not a GGUF file").unwrap();
    let out = d.path().join("out");
    let o = zipserv(&[
        "import-gguf",
        not_gguf.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a GGUF file"), "{}", text(&o));
    assert!(!out.exists(), "output left behind");

    let o = zipserv(&[
        "generate",
        d.path().join("missing").to_str().unwrap(),
        "--device",
        "cpu",
        "--prompt",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("config.json"), "{}", text(&o));

    #[cfg(not(feature = "cuda"))]
    {
        let o = zipserv(&["bench-e2e", "--device", "cuda"]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("without CUDA support"), "{}", text(&o));
    }
}

#[test]
fn bench_e2e_writes_its_csv() {
    let d = tempfile::tempdir().unwrap();
    let csv = d.path().join("res/e2e.csv");
    let o = zipserv(&[
        "bench-e2e",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--batches",
        "1,2",
        "--context",
        "8",
        "--new",
        "3",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let s = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("model,batch,compressed_tok_s,bf16_tok_s,"),
        "{s}"
    );
    assert_eq!(lines.len(), 3, "{s}");
    assert!(lines[1].starts_with("tiny-synthetic-2L,1,"), "{s}");
}
