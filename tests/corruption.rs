//! Hostile input: a few hundred corrupted variants of a real compressed model
//! (bit flips, truncations, zeroed runs, lying headers). `verify` and
//! `decompress` must either succeed with bit-identical output or fail with an
//! error (exit code 1 or 2); never panic, never hang, never allocate what a
//! header claims without checking it.
use std::path::Path;
use std::time::{Duration, Instant};
use zipserv::ops::{decompress, verify, Silent};
use zipserv::synth::Rng;

enum Outcome {
    Identical,
    Error(i32),
}

/// Run verify and decompress on `file`; panics (caught) and wrong output count as failures.
fn check(file: &Path, orig: &Path, out_dir: &Path) -> Result<Outcome, String> {
    let out = out_dir.join("out.safetensors");
    let _ = std::fs::remove_file(&out);
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| {
        let v = verify(file, Some(orig), &Silent);
        let d = decompress(file, &out, &Silent);
        (v, d)
    })
    .map_err(|_| "panicked".to_string())?;
    if t.elapsed() > Duration::from_secs(20) {
        return Err(format!("took {:?}", t.elapsed()));
    }
    match r {
        (Ok(_), Ok(())) => {
            // Success must mean the original tensors, bit for bit.
            verify(file, Some(orig), &Silent).map_err(|e| format!("verify flipped: {e}"))?;
            let back = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&back).map_err(|e| e.to_string())?;
            let ob = std::fs::read(orig).unwrap();
            let os = safetensors::SafeTensors::deserialize(&ob).unwrap();
            for n in os.names() {
                if st.tensor(n).map(|t| t.data().to_vec()).ok()
                    != Some(os.tensor(n).unwrap().data().to_vec())
                {
                    return Err(format!("decompress succeeded but {n} differs"));
                }
            }
            Ok(Outcome::Identical)
        }
        (Err(e), _) | (_, Err(e)) => {
            if out.exists() {
                return Err("failed decompress left its output".into());
            }
            let code = e.exit_code();
            if !(code == 1 || code == 2) {
                return Err(format!("exit code {code}"));
            }
            if e.to_string().lines().count() != 1 {
                return Err(format!("error is not one line: {e}"));
            }
            Ok(Outcome::Error(code))
        }
    }
}

#[test]
fn corrupted_models_never_crash_or_lie() {
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("minilm-bf16.safetensors");
    let comp = dir.path().join("minilm.zs.safetensors");
    zipserv_tests::write_minilm_bf16(&orig);
    zipserv::ops::compress(&orig, &comp, &Silent).unwrap();
    let good = std::fs::read(&comp).unwrap();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(0xC0FFEE ^ std::process::id() as u64);
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..160 {
        let mut b = good.clone();
        let at = (rng.next_u64() as usize) % b.len();
        b[at] ^= 1 << (rng.next_u64() % 8);
        variants.push((format!("bit flip {i} at {at}"), b));
    }
    for i in 0..40 {
        let mut b = good.clone();
        let at = 8 + (rng.next_u64() as usize) % hlen;
        b[at] = (rng.next_u64() % 256) as u8;
        variants.push((format!("header byte {i} at {at}"), b));
    }
    for i in 0..50 {
        let len = (rng.next_u64() as usize) % good.len();
        variants.push((format!("truncated {i} to {len}"), good[..len].to_vec()));
    }
    for i in 0..50 {
        let mut b = good.clone();
        let at = (rng.next_u64() as usize) % b.len();
        let n = 1 + (rng.next_u64() as usize) % 4096;
        let end = (at + n).min(b.len());
        b[at..end].fill(0);
        variants.push((format!("zeroed {i} [{at}, {end})"), b));
    }
    // Headers that lie about shapes and counts.
    let header = String::from_utf8(good[8..8 + hlen].to_vec()).unwrap();
    let body = &good[8 + hlen..];
    let edits = [
        (r#"\"shape\":[384,384]"#, r#"\"shape\":[1048576,1048576]"#),
        (r#"\"shape\":[384,384]"#, r#"\"shape\":[32768,65536]"#),
        (r#"\"shape\":[1536,384]"#, r#"\"shape\":[384,1536]"#),
        (r#"\"max_hf\":"#, r#"\"max_hf\":9"#),
        (r#"\"base_exp\":"#, r#"\"base_exp\":2"#),
        (r#"\"checksum\":\"0"#, r#"\"checksum\":\"1"#),
        (r#""data_offsets":[0,"#, r#""data_offsets":[0,9"#),
        (r#"\"version\":1"#, r#"\"version\":0"#),
        ("\"dtype\":\"U64\"", "\"dtype\":\"U8\""),
        ("\"dtype\":\"I32\"", "\"dtype\":\"U16\""),
    ];
    for (from, to) in edits {
        if !header.contains(from) {
            continue;
        }
        let h = header.replacen(from, to, 1);
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(body);
        variants.push((format!("header edit {from} -> {to}"), b));
    }
    let (mut identical, mut errors) = (0, [0usize; 3]);
    let mut failures = Vec::new();
    let file = dir.path().join("variant.safetensors");
    for (what, bytes) in &variants {
        std::fs::write(&file, bytes).unwrap();
        match check(&file, &orig, dir.path()) {
            Ok(Outcome::Identical) => identical += 1,
            Ok(Outcome::Error(c)) => errors[c as usize] += 1,
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    println!(
        "corruption: {} variants, {identical} decoded bit-identical, {} mismatches (exit 1), {} invalid (exit 2)",
        variants.len(),
        errors[1],
        errors[2]
    );
    assert!(variants.len() >= 300);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
