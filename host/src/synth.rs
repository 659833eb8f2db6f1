//! Realistic synthetic weights for demos, tests and benchmarks: Student-t with
//! 5 degrees of freedom scaled to a standard deviation of 0.02 (the exponent
//! statistics of real LLM weights), rounded to BF16 (nearest even).
use rayon::prelude::*;

/// A small, fast, seedable generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn student_t5(&mut self) -> f64 {
        let z = self.normal();
        let chi: f64 = (0..5).map(|_| self.normal().powi(2)).sum();
        z / (chi / 5.0).sqrt()
    }
}

/// `n` BF16 bit patterns of Student-t(5) weights with standard deviation `std`.
pub fn student_t_bf16(n: usize, std: f64, seed: u64) -> Vec<u16> {
    let scale = std / (5.0f64 / 3.0).sqrt();
    let mut out = vec![0u16; n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = Rng::new(seed.wrapping_mul(0x1000_0001).wrapping_add(i as u64));
            for x in chunk {
                *x = half::bf16::from_f32((rng.student_t5() * scale) as f32).to_bits();
            }
        });
    out
}

/// Like [`student_t_bf16`] for large `n` (synthetic models of billions of
/// weights): each element is drawn uniformly, by a hash of its index, from a
/// pool of 2^22 Student-t(5) samples, about 20x faster than sampling each.
pub fn student_t_fast_bf16(n: usize, std: f64, seed: u64) -> Vec<u16> {
    const POOL: usize = 1 << 22;
    if n <= POOL {
        return student_t_bf16(n, std, seed);
    }
    let pool = student_t_bf16(POOL, std, seed);
    let mut out = vec![0u16; n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = Rng::new(seed ^ 0x5851_F42D_4C95_7F2D ^ i as u64);
            for x in chunk {
                *x = pool[(rng.next_u64() >> 42) as usize];
            }
        });
    out
}

/// `n` BF16 bit patterns, uniform in `[-a, a]`.
pub fn uniform_bf16(n: usize, a: f32, seed: u64) -> Vec<u16> {
    let mut out = vec![0u16; n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = Rng::new(seed.wrapping_mul(0x2000_0003).wrapping_add(i as u64));
            for x in chunk {
                *x = half::bf16::from_f32(((rng.uniform() * 2.0 - 1.0) as f32) * a).to_bits();
            }
        });
    out
}

/// `n` uniformly random 16-bit patterns (every BF16 value, NaNs included).
pub fn random_bits(n: usize, seed: u64) -> Vec<u16> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u16).collect()
}

/// Write a safetensors file shaped like one Llama decoder layer (merged qkv and
/// gate_up, o, down, and an RMSNorm weight) of Student-t(5) weights.
pub fn write_llama_layer(
    path: &std::path::Path,
    hidden: usize,
    kv: usize,
    inter: usize,
    seed: u64,
) -> crate::Result<()> {
    let mats = [
        (
            "model.layers.0.self_attn.qkv_proj.weight",
            hidden + 2 * kv,
            hidden,
        ),
        ("model.layers.0.self_attn.o_proj.weight", hidden, hidden),
        ("model.layers.0.mlp.gate_up_proj.weight", 2 * inter, hidden),
        ("model.layers.0.mlp.down_proj.weight", hidden, inter),
    ];
    let data: Vec<Vec<u16>> = mats
        .iter()
        .enumerate()
        .map(|(i, (_, r, c))| student_t_bf16(r * c, 0.02, seed + i as u64))
        .collect();
    let norm: Vec<u16> = vec![half::bf16::from_f32(1.0).to_bits(); hidden];
    let mut tensors: Vec<(&str, safetensors::Dtype, Vec<usize>, &[u8])> = mats
        .iter()
        .zip(&data)
        .map(|((n, r, c), d)| {
            (
                *n,
                safetensors::Dtype::BF16,
                vec![*r, *c],
                bytemuck::cast_slice(d),
            )
        })
        .collect();
    tensors.push((
        "model.layers.0.input_layernorm.weight",
        safetensors::Dtype::BF16,
        vec![hidden],
        bytemuck::cast_slice(&norm),
    ));
    crate::container::write_file(path, &tensors, &[("format", "pt")])?;
    Ok(())
}
