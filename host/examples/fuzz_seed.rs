//! Writes a small valid compressed file, the seed of the `container` fuzz
//! target: `cargo run -p zipserv --example fuzz_seed -- OUT.safetensors`.
fn main() -> zipserv::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("output path"));
    let dir = tempfile::tempdir().map_err(|e| zipserv::Error::io(".", e))?;
    let src = dir.path().join("seed.safetensors");
    let mut w = zipserv::container::StreamingWriter::new(&src)?;
    let a = zipserv::synth::student_t_bf16(64 * 64, 0.02, 1);
    let b = zipserv::synth::random_bits(64 * 64, 2);
    w.add(
        "a",
        safetensors::Dtype::BF16,
        vec![64, 64],
        bytemuck::cast_slice(&a),
    )?;
    w.add(
        "b",
        safetensors::Dtype::BF16,
        vec![64, 64],
        bytemuck::cast_slice(&b),
    )?;
    w.add(
        "n",
        safetensors::Dtype::BF16,
        vec![64],
        bytemuck::cast_slice(&a[..64]),
    )?;
    w.finish(Default::default())?;
    zipserv::ops::compress(&src, &out, &zipserv::ops::Silent)?;
    Ok(())
}
