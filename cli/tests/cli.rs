//! The `zipserv` command line, end to end: round trips of files and model
//! directories, and bad input (clear one-line errors, exit codes 1 and 2, no
//! partial output, inputs never overwritten).
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use zipserv::synth::{random_bits, student_t_bf16};

fn zipserv(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zipserv"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

macro_rules! zs {
    ($($a:expr),*) => { zipserv(&[$(std::ffi::OsStr::new(&$a)),*]) };
}

fn bytes(bits: &[u16]) -> Vec<u8> {
    bytemuck::cast_slice(bits).to_vec()
}

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let t: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.clone(), b.as_slice()))
        .collect();
    zipserv::container::write_file(path, &t, &[("format", "pt")]).unwrap();
}

/// A small model file: two compressible matrices, a norm vector, an F32
/// matrix, an odd-shaped BF16 matrix and an I64 tensor.
fn model(path: &Path, seed: u64) {
    write(
        path,
        &[
            (
                "layers.0.q.weight",
                Dtype::BF16,
                vec![128, 192],
                bytes(&student_t_bf16(128 * 192, 0.02, seed)),
            ),
            (
                "layers.0.mlp.weight",
                Dtype::BF16,
                vec![256, 128],
                bytes(&random_bits(256 * 128, seed + 1)),
            ),
            (
                "layers.0.norm.weight",
                Dtype::BF16,
                vec![192],
                bytes(&student_t_bf16(192, 1.0, seed + 2)),
            ),
            ("proj.f32", Dtype::F32, vec![64, 64], vec![7u8; 64 * 64 * 4]),
            (
                "embed.weight",
                Dtype::BF16,
                vec![100, 64],
                bytes(&student_t_bf16(100 * 64, 0.02, seed + 3)),
            ),
            ("position_ids", Dtype::I64, vec![1, 8], vec![1u8; 64]),
        ],
    );
}

fn tensors_equal(a: &Path, b: &Path) {
    let (da, db) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (sa, sb) = (
        SafeTensors::deserialize(&da).unwrap(),
        SafeTensors::deserialize(&db).unwrap(),
    );
    let mut na = sa.names();
    let mut nb = sb.names();
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    for n in na {
        let (x, y) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert_eq!(x.dtype(), y.dtype(), "{n}");
        assert_eq!(x.shape(), y.shape(), "{n}");
        assert!(x.data() == y.data(), "{n} differs");
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".zipserv")
        })
        .collect()
}

#[test]
fn file_round_trip() {
    let d = tmp();
    let (inp, z, out) = (
        d.path().join("m.safetensors"),
        d.path().join("m.zs.safetensors"),
        d.path().join("back.safetensors"),
    );
    model(&inp, 1);
    let o = zs!("compress", inp, "-o", z);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("compressed 2 tensors, kept 4 unchanged"),
        "{text}"
    );
    assert!(text.contains("bits/weight"), "{text}");
    // Any safetensors reader opens the compressed file.
    let zb = std::fs::read(&z).unwrap();
    let st = SafeTensors::deserialize(&zb).unwrap();
    assert!(st.names().iter().any(|n| n.ends_with(".__zs__.bitmap1")));
    let o = zs!("verify", z, "--against", inp);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = zs!("decompress", z, "-o", out);
    assert!(o.status.success(), "{}", stderr(&o));
    tensors_equal(&inp, &out);
    let o = zs!("inspect", z, "--json");
    assert!(o.status.success());
    let js: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(js.as_array().unwrap().len(), 6);
    let o = zs!("inspect", z);
    assert!(String::from_utf8_lossy(&o.stdout).contains("layers.0.q.weight"));
    assert!(leftovers(d.path()).is_empty());
}

#[test]
fn directory_round_trip() {
    let d = tmp();
    let src = d.path().join("model");
    std::fs::create_dir(&src).unwrap();
    model(&src.join("model-00001-of-00002.safetensors"), 10);
    write(
        &src.join("model-00002-of-00002.safetensors"),
        &[(
            "lm_head.weight",
            Dtype::BF16,
            vec![64, 128],
            bytes(&student_t_bf16(64 * 128, 0.02, 11)),
        )],
    );
    std::fs::write(src.join("config.json"), r#"{"hidden_size": 64}"#).unwrap();
    let mut wm = serde_json::Map::new();
    for n in [
        "layers.0.q.weight",
        "layers.0.mlp.weight",
        "layers.0.norm.weight",
        "proj.f32",
        "embed.weight",
        "position_ids",
    ] {
        wm.insert(n.into(), "model-00001-of-00002.safetensors".into());
    }
    wm.insert(
        "lm_head.weight".into(),
        "model-00002-of-00002.safetensors".into(),
    );
    std::fs::write(
        src.join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({"metadata": {"total_size": 1}, "weight_map": wm}))
            .unwrap(),
    )
    .unwrap();
    let (z, back) = (d.path().join("z"), d.path().join("back"));
    let o = zs!("compress", src, "-o", z);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(z.join("config.json").exists());
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(z.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        idx["weight_map"]["lm_head.weight.__zs__.bitmap1"],
        "model-00002-of-00002.safetensors"
    );
    let o = zs!("verify", z, "--against", src);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = zs!("decompress", z, "-o", back);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        tensors_equal(&src.join(f), &back.join(f));
    }
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        idx["weight_map"]["lm_head.weight"],
        "model-00002-of-00002.safetensors"
    );
    // A second compression into the now non-empty output is refused.
    let o = zs!("compress", src, "-o", z);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let d = tmp();
    let p = d.path();
    let good = p.join("m.safetensors");
    model(&good, 3);
    let z = p.join("m.zs.safetensors");
    assert!(zs!("compress", good, "-o", z).status.success());
    let one_line = |o: &Output| {
        let e = stderr(o);
        assert_eq!(e.trim().lines().count(), 1, "not one line: {e}");
        assert!(e.starts_with("zipserv: error:"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
        e
    };

    // Missing file.
    let o = zs!("verify", p.join("nope.safetensors"));
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("nope.safetensors"));
    // Not safetensors.
    let junk = p.join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file at all").unwrap();
    for cmd in ["verify", "inspect"] {
        let o = zs!(cmd, junk);
        assert_eq!(o.status.code(), Some(2));
        assert!(one_line(&o).contains("junk.safetensors"));
    }
    // Truncated compressed file.
    let bytes_z = std::fs::read(&z).unwrap();
    let trunc = p.join("trunc.safetensors");
    std::fs::write(&trunc, &bytes_z[..bytes_z.len() - 100]).unwrap();
    let o = zs!("verify", trunc);
    assert_eq!(o.status.code(), Some(2));
    one_line(&o);
    // A flipped bit inside a compressed array: verify reports a mismatch (1)
    // or an invalid array (2), never success, never a panic.
    // Likewise inside a kept tensor (its checksum catches it).
    let st = SafeTensors::deserialize(&bytes_z).unwrap();
    let data_start = bytes_z.len()
        - st.tensors()
            .iter()
            .map(|(_, t)| t.data().len())
            .sum::<usize>();
    let (_, h) = SafeTensors::read_metadata(&bytes_z).unwrap();
    for (name, at) in [
        ("layers.0.q.weight.__zs__.sign_mantissa", 5usize),
        ("layers.0.q.weight.__zs__.bitmap3", 3),
        ("position_ids", 1),
    ] {
        let info = h.info(name).unwrap();
        let mut flipped = bytes_z.clone();
        flipped[data_start + info.data_offsets.0 + at] ^= 0x10;
        let fl = p.join("flip.safetensors");
        std::fs::write(&fl, &flipped).unwrap();
        let o = zs!("verify", fl);
        assert!(
            matches!(o.status.code(), Some(1) | Some(2)),
            "{name}: {:?}",
            o.status
        );
        one_line(&o);
        let o = zs!("decompress", fl, "-o", p.join("flip.out.safetensors"));
        assert!(matches!(o.status.code(), Some(1) | Some(2)), "{name}");
        assert!(
            !p.join("flip.out.safetensors").exists(),
            "partial output left behind"
        );
    }
    // Unknown format version.
    let pat = br#"\"version\":1"#;
    let at = bytes_z
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("version in header");
    let mut ver_bytes = bytes_z.clone();
    ver_bytes[at + pat.len() - 1] = b'9';
    let ver = p.join("ver.safetensors");
    std::fs::write(&ver, &ver_bytes).unwrap();
    let o = zs!("verify", ver);
    assert_eq!(o.status.code(), Some(2));
    let e = one_line(&o);
    assert!(e.contains("format version 9"), "{e}");
    // Output would overwrite the input: refused, input untouched.
    let before = std::fs::read(&good).unwrap();
    let o = zs!("compress", good, "-o", good);
    assert_eq!(o.status.code(), Some(2));
    one_line(&o);
    assert_eq!(std::fs::read(&good).unwrap(), before);
    // Decompressing a plain file, compressing a compressed one.
    let o = zs!("decompress", good, "-o", p.join("x.safetensors"));
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("not a zipserv-compressed file"));
    let o = zs!("compress", z, "-o", p.join("y.safetensors"));
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("already compressed"));
    // verify --against a different model: mismatch, exit 1.
    let other = p.join("other.safetensors");
    model(&other, 4);
    let o = zs!("verify", z, "--against", other);
    assert_eq!(o.status.code(), Some(1));
    one_line(&o);
    assert!(
        leftovers(p).is_empty(),
        "temporary files left: {:?}",
        leftovers(p)
    );
}
