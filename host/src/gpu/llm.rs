//! Launchers of the decoder-step kernels (`kernels-gpu/src/llm.rs`): RMSNorm
//! with the residual add folded in, RoPE + KV-cache append, attention over the
//! cache, SiLU-times-up. Shapes are checked here; the buffers are raw device
//! addresses, so every launcher is `unsafe`: the caller guarantees that each
//! address holds the elements its documentation names.
use super::{gpu_err, Gpu};
use crate::error::{Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub(super) struct LlmFns {
    rmsnorm: CudaFunction,
    rope_kv: CudaFunction,
    attention: CudaFunction,
    combine: CudaFunction,
    silu_mul: CudaFunction,
    argmax: CudaFunction,
}

impl LlmFns {
    pub(super) fn load(m: &Arc<CudaModule>) -> Result<LlmFns> {
        let f = |n: &str| m.load_function(n).map_err(gpu_err);
        Ok(LlmFns {
            rmsnorm: f("zs_rmsnorm")?,
            rope_kv: f("zs_rope_kv")?,
            attention: f("zs_attention")?,
            combine: f("zs_attn_combine")?,
            silu_mul: f("zs_silu_mul")?,
            argmax: f("zs_argmax")?,
        })
    }
}

/// Threads a block of the attention kernel (16 warps: decode attention is
/// latency-bound, and at batch 1 there are only as many blocks as heads).
const ATTN_THREADS: u32 = 512;
/// Largest cache length the attention kernel keeps its scores for (48 KB of
/// shared memory, the default limit, with the reduction scratch and the
/// warps' partial outputs).
pub const ATTN_MAX_LEN: usize = 8192;

/// Shape of an attention layer: heads, kv heads, head dimension, cache length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_len: usize,
}

impl AttnShape {
    /// Check what the kernels assume.
    pub fn check(&self) -> Result<()> {
        let AttnShape {
            heads,
            kv_heads,
            head_dim,
            max_len,
        } = *self;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(Error::invalid(format!(
                "{heads} heads are not a multiple of {kv_heads} kv heads"
            )));
        }
        if head_dim == 0 || head_dim % 32 != 0 || head_dim > 128 {
            return Err(Error::invalid(format!(
                "head dimension {head_dim}: the attention kernel takes multiples of 32 up to 128"
            )));
        }
        if max_len == 0 || max_len > ATTN_MAX_LEN {
            return Err(Error::invalid(format!(
                "cache length {max_len}: the attention kernel takes 1..={ATTN_MAX_LEN}"
            )));
        }
        Ok(())
    }
    /// Width of a fused q/k/v row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

fn u(x: usize) -> u32 {
    x as u32
}

impl Gpu {
    /// RMSNorm of `rows` rows of `cols`. With `delta` not 0, the row is first
    /// `bf16(x + delta)`, written to `res` (the residual stream); then
    /// `out = bf16(bf16(v / rms(v)) * w)`.
    ///
    /// # Safety
    /// `x`, `out` (and `delta`, `res` when `delta` is not 0) hold `rows * cols`
    /// BF16 values, `w` holds `cols`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rmsnorm(
        &self,
        x: u64,
        delta: u64,
        w: u64,
        res: u64,
        out: u64,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        if !cols.is_multiple_of(8) || cols > 16384 {
            return Err(Error::invalid(format!(
                "rmsnorm: rows of {cols}; the kernel takes multiples of 8 up to 16384"
            )));
        }
        // Two 8-element chunks a thread at most.
        let threads = (cols / 8).div_ceil(2).div_ceil(32).clamp(1, 32) * 32;
        let cols32 = u(cols);
        let mut b = self.stream.launch_builder(&self.llm.rmsnorm);
        b.arg(&x)
            .arg(&delta)
            .arg(&w)
            .arg(&res)
            .arg(&out)
            .arg(&cols32)
            .arg(&eps);
        b.launch(LaunchConfig {
            grid_dim: (u(rows), 1, 1),
            block_dim: (u(threads), 1, 1),
            shared_mem_bytes: 128,
        })
        .map_err(gpu_err)?;
        Ok(())
    }

    /// The new tokens' k (roped) and v appended to the caches at positions
    /// `pos0 .. pos0 + t_len` (`qkv` is read only).
    ///
    /// # Safety
    /// `qkv` holds `batch * t_len` rows of `shape.qkv_width()`; `kc`, `vc` hold
    /// `batch * kv_heads * max_len * head_dim`; `cos`, `sin` hold
    /// `max_len * head_dim / 2` FP32 values.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rope_kv(
        &self,
        qkv: u64,
        kc: u64,
        vc: u64,
        cos: u64,
        sin: u64,
        shape: AttnShape,
        batch: usize,
        pos0: usize,
        t_len: usize,
    ) -> Result<()> {
        shape.check()?;
        if pos0 + t_len > shape.max_len {
            return Err(Error::invalid(format!(
                "positions {pos0}..{} exceed the cache length {}",
                pos0 + t_len,
                shape.max_len
            )));
        }
        if batch * t_len == 0 {
            return Ok(());
        }
        let (p, t, nh, nkv, d, l) = (
            u(pos0),
            u(t_len),
            u(shape.heads),
            u(shape.kv_heads),
            u(shape.head_dim),
            u(shape.max_len),
        );
        let mut b = self.stream.launch_builder(&self.llm.rope_kv);
        b.arg(&qkv).arg(&kc).arg(&vc).arg(&cos).arg(&sin);
        b.arg(&p).arg(&t).arg(&nh).arg(&nkv).arg(&d).arg(&l);
        b.launch(LaunchConfig {
            grid_dim: (u(batch * t_len), 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        })
        .map_err(gpu_err)?;
        Ok(())
    }

    /// Causal attention of the new tokens (q roped on load; after
    /// [`Gpu::rope_kv`]) over the caches; `out` gets `batch * t_len` rows of
    /// `heads * head_dim`.
    ///
    /// # Safety
    /// As [`Gpu::rope_kv`]; `out` holds `batch * t_len * heads * head_dim`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention(
        &self,
        qkv: u64,
        kc: u64,
        vc: u64,
        cos: u64,
        sin: u64,
        out: u64,
        shape: AttnShape,
        batch: usize,
        pos0: usize,
        t_len: usize,
        scale: f32,
    ) -> Result<()> {
        shape.check()?;
        if pos0 + t_len > shape.max_len {
            return Err(Error::invalid("attention: positions exceed the cache"));
        }
        if batch * t_len == 0 {
            return Ok(());
        }
        let (p, t, nh, nkv, d, l) = (
            u(pos0),
            u(t_len),
            u(shape.heads),
            u(shape.kv_heads),
            u(shape.head_dim),
            u(shape.max_len),
        );
        let nw = ATTN_THREADS / 32;
        let smem = (l + 32 + nw * d) * 4;
        // Flash-decoding: a decode step with fewer blocks than two waves
        // splits each sequence into chunks of at least 64 keys.
        let rows = batch * t_len;
        let blocks = rows * shape.heads;
        let n = pos0 + 1;
        let (chunks, chunk) = if t_len == 1 && blocks < 2 * self.sms as usize {
            let want = (2 * self.sms as usize).div_ceil(blocks);
            let chunk = n.div_ceil(want).div_ceil(64).max(1) * 64;
            (n.div_ceil(chunk), chunk)
        } else {
            (1, n)
        };
        let ws = if chunks > 1 {
            self.attn_scratch(blocks * chunks * (shape.head_dim + 2))?
        } else {
            0
        };
        let chunk = u(chunk);
        let mut b = self.stream.launch_builder(&self.llm.attention);
        b.arg(&qkv).arg(&kc).arg(&vc).arg(&cos).arg(&sin).arg(&out);
        b.arg(&p)
            .arg(&t)
            .arg(&nh)
            .arg(&nkv)
            .arg(&d)
            .arg(&l)
            .arg(&scale);
        b.arg(&ws).arg(&chunk);
        b.launch(LaunchConfig {
            grid_dim: (nh, u(rows), u(chunks)),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: smem,
        })
        .map_err(gpu_err)?;
        if chunks > 1 {
            let c = u(chunks);
            let mut b = self.stream.launch_builder(&self.llm.combine);
            b.arg(&ws).arg(&out).arg(&nh).arg(&d).arg(&c);
            b.launch(LaunchConfig {
                grid_dim: (nh, u(rows), 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            })
            .map_err(gpu_err)?;
        }
        Ok(())
    }

    /// `out[r][i] = bf16(bf16(silu(gu[r][i])) * gu[r][inter + i])`.
    ///
    /// # Safety
    /// `gu` holds `rows * 2 * inter` BF16 values, `out` `rows * inter`.
    pub unsafe fn silu_mul(&self, gu: u64, out: u64, rows: usize, inter: usize) -> Result<()> {
        let total = rows * inter;
        if total == 0 {
            return Ok(());
        }
        if total > u32::MAX as usize / 2 {
            return Err(Error::invalid("silu_mul: too many elements"));
        }
        let (r, i) = (u(rows), u(inter));
        let mut b = self.stream.launch_builder(&self.llm.silu_mul);
        b.arg(&gu).arg(&out).arg(&r).arg(&i);
        b.launch(LaunchConfig {
            grid_dim: (u(total.div_ceil(256)).min(self.sms * 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
        .map_err(gpu_err)?;
        Ok(())
    }

    /// Index of the largest value of each row (`rows x cols` BF16, `cols` a
    /// multiple of 8; the first among equals; NaNs ignored) into `out` (u32).
    ///
    /// # Safety
    /// `x` holds `rows * cols` BF16 values, `out` `rows` u32.
    pub unsafe fn argmax(&self, x: u64, out: u64, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        if cols == 0 || !cols.is_multiple_of(8) || cols > u32::MAX as usize {
            return Err(Error::invalid(format!(
                "argmax: rows of {cols}; the kernel takes multiples of 8"
            )));
        }
        let c = u(cols);
        let mut b = self.stream.launch_builder(&self.llm.argmax);
        b.arg(&x).arg(&out).arg(&c);
        b.launch(LaunchConfig {
            grid_dim: (u(rows), 1, 1),
            block_dim: (u((cols / 8).div_ceil(32).clamp(1, 32) * 32), 1, 1),
            shared_mem_bytes: 256,
        })
        .map_err(gpu_err)?;
        Ok(())
    }
}
