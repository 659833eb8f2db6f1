//! Shared helpers of the integration tests.
use std::path::Path;

/// Write a safetensors file from `(name, dtype, shape, bytes)` entries.
pub fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let mut w = zipserv::container::StreamingWriter::new(path).unwrap();
    for (n, d, s, b) in tensors {
        w.add(n, *d, s.clone(), b).unwrap();
    }
    let mut md = std::collections::BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    w.finish(md).unwrap();
}

/// BF16 bit patterns as little-endian bytes.
pub fn bytes(bits: &[u16]) -> Vec<u8> {
    bytemuck::cast_slice(bits).to_vec()
}
