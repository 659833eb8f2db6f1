//! Writes a small valid compressed file, the seed of the `container` fuzz
//! target: `cargo run -p zipserv --example fuzz_seed -- OUT.safetensors`.
use safetensors::Dtype;

fn main() -> zipserv::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("output path"));
    let dir = tempfile::tempdir().map_err(|e| zipserv::Error::io(".", e))?;
    let src = dir.path().join("seed.safetensors");
    let a = zipserv::synth::student_t_bf16(64 * 64, 0.02, 1);
    let b = zipserv::synth::random_bits(64 * 64, 2);
    let (a8, b8): (&[u8], &[u8]) = (bytemuck::cast_slice(&a), bytemuck::cast_slice(&b));
    zipserv::container::write_file(
        &src,
        &[
            ("a", Dtype::BF16, vec![64, 64], a8),
            ("b", Dtype::BF16, vec![64, 64], b8),
            ("n", Dtype::BF16, vec![64], &a8[..128]),
        ],
        &[],
    )?;
    zipserv::ops::compress(&src, &out, &zipserv::ops::Silent)?;
    Ok(())
}
