//! The small fused kernels of a Llama-family decoder step (nvptx64), so that a
//! layer is eight launches: RMSNorm (with the residual add folded in), the
//! q/k/v projection, RoPE + KV-cache append, attention, the output projection,
//! RMSNorm, the gate/up projection, SiLU-times-up and the down projection.
//!
//! The arithmetic is specified once, here, and mirrored line by line by the
//! CPU implementations in `zipserv-candle` (`ops.rs`), which the GPU tests
//! compare against: every input and output is BF16, every sum is FP32, and the
//! values are rounded to BF16 where a BF16 model rounds them (residual sums,
//! normalised activations before the norm weight, SiLU before the product).
//!
//! Layouts (row-major, BF16 unless said): activations `[rows][cols]`; the fused
//! projection output `qkv[row][(nh + 2 nkv) d]` as `q heads | k heads | v heads`;
//! KV caches `[batch][nkv][lmax][d]`; RoPE tables `cos/sin[pos][d/2]` FP32;
//! rows of a batch of `t_len` new tokens are `b * t_len + t`, token `t` of every
//! sequence at position `pos0 + t`.
use crate::device::{bar_sync, f32_to_bf16, smem_base};
use core::arch::asm;
use core::arch::nvptx::*;

const LOG2E: f32 = core::f32::consts::LOG2_E;

#[inline(always)]
fn bf(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// `x` rounded to BF16 (nearest even), as FP32.
#[inline(always)]
fn round_bf(x: f32) -> f32 {
    bf(f32_to_bf16(x))
}

#[inline(always)]
fn shfl_xor(v: f32, m: u32) -> f32 {
    let d: f32;
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;", out(reg32) d, in(reg32) v, in(reg32) m, options(nostack))
    };
    d
}

#[inline(always)]
fn warp_sum(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v += shfl_xor(v, m);
        m >>= 1;
    }
    v
}

#[inline(always)]
fn warp_max(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v = v.max(shfl_xor(v, m));
        m >>= 1;
    }
    v
}

#[inline(always)]
fn ex2(x: f32) -> f32 {
    let d: f32;
    unsafe { asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) d, in(reg32) x, options(pure, nomem, nostack)) };
    d
}

#[inline(always)]
fn sqrt_rn(x: f32) -> f32 {
    let d: f32;
    unsafe { asm!("sqrt.rn.f32 {0}, {1};", out(reg32) d, in(reg32) x, options(pure, nomem, nostack)) };
    d
}

#[inline(always)]
unsafe fn sts(addr: u32, v: f32) {
    asm!("st.shared.f32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack));
}

#[inline(always)]
unsafe fn lds(addr: u32) -> f32 {
    let v: f32;
    asm!("ld.shared.f32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(nostack));
    v
}

#[inline(always)]
fn tid() -> u32 {
    unsafe { _thread_idx_x() as u32 }
}

#[inline(always)]
fn nthreads() -> u32 {
    unsafe { _block_dim_x() as u32 }
}

/// Sum (`MAX == false`) or maximum over the block, every thread gets it. Uses
/// 32 floats of shared memory at `scratch`; the warps' parts are combined in
/// warp order, so the result does not depend on timing.
#[inline(always)]
unsafe fn block_reduce<const MAX: bool>(v: f32, scratch: u32) -> f32 {
    let (lane, warp, nw) = (tid() & 31, tid() / 32, nthreads() / 32);
    let w = if MAX { warp_max(v) } else { warp_sum(v) };
    if lane == 0 {
        sts(scratch + warp * 4, w);
    }
    bar_sync();
    let mut r = lds(scratch);
    let mut i = 1;
    while i < nw {
        let x = lds(scratch + i * 4);
        r = if MAX { r.max(x) } else { r + x };
        i += 1;
    }
    bar_sync();
    r
}

/// RMSNorm of one row per block. With `delta` not null the row is first
/// `v = bf16(x + delta)`, written to `res` (the residual stream), else `v = x`;
/// then `out = bf16(bf16(v * rsqrt(mean(v^2) + eps)) * w)`.
/// Shared memory: 128 bytes.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_rmsnorm(
    x: *const u16,
    delta: *const u16,
    w: *const u16,
    res: *mut u16,
    out: *mut u16,
    cols: u32,
    eps: f32,
) {
    let row = _block_idx_x() as usize * cols as usize;
    let add = !delta.is_null();
    let src: *const u16 = if add { res.add(row) } else { x.add(row) };
    let mut ss = 0f32;
    let mut i = tid();
    while i < cols {
        let at = row + i as usize;
        let mut v = *x.add(at);
        if add {
            v = f32_to_bf16(bf(v) + bf(*delta.add(at)));
            *res.add(at) = v;
        }
        let f = bf(v);
        ss += f * f;
        i += nthreads();
    }
    let tot = block_reduce::<false>(ss, smem_base());
    let r = 1.0 / sqrt_rn(tot / cols as f32 + eps);
    let mut i = tid();
    while i < cols {
        let n = round_bf(bf(*src.add(i as usize)) * r);
        *out.add(row + i as usize) = f32_to_bf16(n * bf(*w.add(i as usize)));
        i += nthreads();
    }
}

/// RoPE (rotate-half convention) of the k heads of the new tokens, appended
/// with their v to the caches (`qkv` is not changed; the attention kernel
/// ropes q as it loads it). One block per new token row. For a pair
/// `(x0, x1) = (x[i], x[i + d/2])` at position `p`, with `c = cos[p][i]`,
/// `s = sin[p][i]`: `(bf16(x0 c - x1 s), bf16(x1 c + x0 s))`.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_rope_kv(
    qkv: *const u16,
    kc: *mut u16,
    vc: *mut u16,
    cos: *const f32,
    sin: *const f32,
    pos0: u32,
    t_len: u32,
    nh: u32,
    nkv: u32,
    d: u32,
    lmax: u32,
) {
    let bt = _block_idx_x() as u32;
    let (b, p) = (bt / t_len, pos0 + bt % t_len);
    let half = d / 2;
    let width = (nh + 2 * nkv) * d;
    let base = qkv.add((bt * width) as usize);
    let (cr, sr) = (cos.add((p * half) as usize), sin.add((p * half) as usize));
    let mut idx = tid();
    while idx < nkv * half {
        let (g, i) = (idx / half, idx % half);
        let at = ((nh + g) * d + i) as usize;
        let (x0, x1) = (bf(*base.add(at)), bf(*base.add(at + half as usize)));
        let (c, s) = (*cr.add(i as usize), *sr.add(i as usize));
        let slot = (((b * nkv + g) * lmax + p) * d + i) as usize;
        *kc.add(slot) = f32_to_bf16(x0 * c - x1 * s);
        *kc.add(slot + half as usize) = f32_to_bf16(x1 * c + x0 * s);
        idx += nthreads();
    }
    let mut idx = tid();
    while idx < nkv * d {
        let (g, j) = (idx / d, idx % d);
        *vc.add((((b * nkv + g) * lmax + p) * d + j) as usize) =
            *base.add(((nh + nkv) * d + idx) as usize);
        idx += nthreads();
    }
}

/// Causal attention of each new token (q roped here) over its sequence's cache (grouped
/// query: head `h` reads kv head `h / (nh / nkv)`). Grid `(nh, rows)`; each
/// warp takes every `nw`-th key, a lane `d / 32` consecutive dimensions
/// (`d` a multiple of 32, at most 128). Softmax in FP32 with the scores kept
/// in shared memory: `(lmax + 32 + nw * d) * 4` bytes.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_attention(
    qkv: *const u16,
    kc: *const u16,
    vc: *const u16,
    cos: *const f32,
    sin: *const f32,
    out: *mut u16,
    pos0: u32,
    t_len: u32,
    nh: u32,
    nkv: u32,
    d: u32,
    lmax: u32,
    scale: f32,
) {
    let (h, bt) = (_block_idx_x() as u32, _block_idx_y() as u32);
    let (b, p) = (bt / t_len, pos0 + bt % t_len);
    let n = p + 1;
    let g = h / (nh / nkv);
    let (lane, warp, nw) = (tid() & 31, tid() / 32, nthreads() / 32);
    let dl = d / 32;
    let width = (nh + 2 * nkv) * d;
    let s_at = smem_base();
    let red = s_at + lmax * 4;
    let o_at = red + 128;

    // q, roped as zs_rope_kv ropes k: lane l holds dimensions l*dl.., its
    // rotate-half partner is lane l ^ 16.
    let qr = qkv.add((bt * width + h * d + lane * dl) as usize);
    let half = d / 2;
    let mut q = [0f32; 4];
    for (j, qj) in q.iter_mut().enumerate() {
        let x = if (j as u32) < dl { bf(*qr.add(j)) } else { 0.0 };
        let other = shfl_xor(x, 16);
        let i = ((lane * dl + j as u32) % half) as usize;
        let (c, s) = if (j as u32) < dl {
            (*cos.add((p * half) as usize + i), *sin.add((p * half) as usize + i))
        } else {
            (0.0, 0.0)
        };
        *qj = if lane < 16 {
            round_bf(x * c - other * s)
        } else {
            round_bf(x * c + other * s)
        };
    }
    let cache = (((b * nkv + g) * lmax) * d + lane * dl) as usize;
    let (kr, vr) = (kc.add(cache), vc.add(cache));

    let mut t = warp;
    while t < n {
        let k = kr.add((t * d) as usize);
        let mut dot = 0f32;
        for (j, qj) in q.iter().enumerate() {
            if (j as u32) < dl {
                dot += qj * bf(*k.add(j));
            }
        }
        let dot = warp_sum(dot);
        if lane == 0 {
            sts(s_at + t * 4, dot * scale);
        }
        t += nw;
    }
    bar_sync();
    let mut m = f32::NEG_INFINITY;
    let mut t = tid();
    while t < n {
        m = m.max(lds(s_at + t * 4));
        t += nthreads();
    }
    let m = block_reduce::<true>(m, red);
    let mut sum = 0f32;
    let mut t = tid();
    while t < n {
        let e = ex2((lds(s_at + t * 4) - m) * LOG2E);
        sts(s_at + t * 4, e);
        sum += e;
        t += nthreads();
    }
    // The reduction's barrier also publishes the exponentials.
    let sum = block_reduce::<false>(sum, red);

    let mut acc = [0f32; 4];
    let mut t = warp;
    while t < n {
        let pt = lds(s_at + t * 4);
        let v = vr.add((t * d) as usize);
        for (j, aj) in acc.iter_mut().enumerate() {
            if (j as u32) < dl {
                *aj += pt * bf(*v.add(j));
            }
        }
        t += nw;
    }
    for (j, aj) in acc.iter().enumerate() {
        if (j as u32) < dl {
            sts(o_at + (warp * d + lane * dl + j as u32) * 4, *aj);
        }
    }
    bar_sync();
    let mut i = tid();
    while i < d {
        let mut tot = 0f32;
        let mut w = 0;
        while w < nw {
            tot += lds(o_at + (w * d + i) * 4);
            w += 1;
        }
        *out.add((bt * nh * d + h * d + i) as usize) = f32_to_bf16(tot / sum);
        i += nthreads();
    }
}

/// `out[r][i] = bf16(bf16(silu(g)) * u)` with `g = gu[r][i]`, `u = gu[r][inter + i]`.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_silu_mul(gu: *const u16, out: *mut u16, rows: u32, inter: u32) {
    let total = rows * inter;
    let stride = _grid_dim_x() as u32 * nthreads();
    let mut idx = _block_idx_x() as u32 * nthreads() + tid();
    while idx < total {
        let (r, i) = (idx / inter, idx % inter);
        let g = bf(*gu.add((r * 2 * inter + i) as usize));
        let u = bf(*gu.add((r * 2 * inter + inter + i) as usize));
        let s = round_bf(g / (1.0 + ex2(-g * LOG2E)));
        *out.add(idx as usize) = f32_to_bf16(s * u);
        idx += stride;
    }
}
