//! The small fused kernels of a Llama-family decoder step (nvptx64), so that a
//! layer is eight launches: RMSNorm (with the residual add folded in), the
//! q/k/v projection, RoPE + KV-cache append, attention, the output projection,
//! RMSNorm, the gate/up projection, SiLU-times-up and the down projection
//! (plus the greedy argmax of the logits).
//!
//! The arithmetic is specified once, here, and mirrored formula for formula by
//! the CPU implementations in `zipserv-candle` (`ops.rs`), which the GPU tests
//! compare against: every input and output is BF16, every sum is FP32, and the
//! values are rounded to BF16 where a BF16 model rounds them (residual sums,
//! normalised activations before the norm weight, SiLU before the product).
//! Sums run in another order on the GPU (block reductions, and attention split
//! over a sequence's keys when the grid is small), so results agree to an ulp
//! or two, not bit for bit.
//!
//! Layouts (row-major, BF16 unless said): activations `[rows][cols]`; the fused
//! projection output `qkv[row][(nh + 2 nkv) d]` as `q heads | k heads | v heads`;
//! KV caches `[batch][nkv][lmax][d]`; RoPE tables `cos/sin[pos][d/2]` FP32;
//! rows of a batch of `t_len` new tokens are `b * t_len + t`, token `t` of every
//! sequence at position `pos0 + t`.
use crate::device::{bar_sync, f32_to_bf16, grid_launch_dependents, smem_base};
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
    unsafe {
        asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) d, in(reg32) x, options(pure, nomem, nostack))
    };
    d
}

#[inline(always)]
fn sqrt_rn(x: f32) -> f32 {
    let d: f32;
    unsafe {
        asm!("sqrt.rn.f32 {0}, {1};", out(reg32) d, in(reg32) x, options(pure, nomem, nostack))
    };
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

/// Eight BF16 values (16 bytes) as FP32.
#[inline(always)]
unsafe fn load8(p: *const u16) -> [f32; 8] {
    let w = *(p as *const [u32; 4]);
    let mut v = [0f32; 8];
    for (i, x) in w.iter().enumerate() {
        v[2 * i] = f32::from_bits(x << 16);
        v[2 * i + 1] = f32::from_bits(x & 0xffff_0000);
    }
    v
}

/// Eight FP32 values rounded to BF16, stored as 16 bytes.
#[inline(always)]
unsafe fn store8(p: *mut u16, v: &[f32; 8]) {
    let mut w = [0u32; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = f32_to_bf16(v[2 * i]) as u32 | (f32_to_bf16(v[2 * i + 1]) as u32) << 16;
    }
    *(p as *mut [u32; 4]) = w;
}

/// RMSNorm of one row per block. With `delta` not null the row is first
/// `v = bf16(x + delta)`, written to `res` (the residual stream), else `v = x`;
/// then `out = bf16(bf16(v * rsqrt(mean(v^2) + eps)) * w)`. Each thread holds
/// up to two 8-element chunks in registers between the two passes (`cols` a
/// multiple of 8, at most 16 times the block size).
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
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
    let row = _block_idx_x() as usize * cols as usize;
    let add = !delta.is_null();
    let chunks = cols / 8;
    let (c0, c1) = (tid(), tid() + nthreads());
    let (v0, v1) = (
        rms_load(x, delta, res, row, c0, chunks, add),
        rms_load(x, delta, res, row, c1, chunks, add),
    );
    let mut ss = 0f32;
    for i in 0..8 {
        ss += v0[i] * v0[i] + v1[i] * v1[i];
    }
    let tot = block_reduce::<false>(ss, smem_base());
    let r = 1.0 / sqrt_rn(tot / cols as f32 + eps);
    rms_store(&v0, w, out, row, c0, chunks, r);
    rms_store(&v1, w, out, row, c1, chunks, r);
}

/// Chunk `c` of a row for RMSNorm (zeros past the end), the residual add
/// applied and written back.
#[inline(always)]
unsafe fn rms_load(
    x: *const u16,
    delta: *const u16,
    res: *mut u16,
    row: usize,
    c: u32,
    chunks: u32,
    add: bool,
) -> [f32; 8] {
    if c >= chunks {
        return [0f32; 8];
    }
    let at = row + 8 * c as usize;
    let mut v = load8(x.add(at));
    if add {
        let dv = load8(delta.add(at));
        for i in 0..8 {
            v[i] = round_bf(v[i] + dv[i]);
        }
        store8(res.add(at), &v);
    }
    v
}

#[inline(always)]
unsafe fn rms_store(
    v: &[f32; 8],
    w: *const u16,
    out: *mut u16,
    row: usize,
    c: u32,
    chunks: u32,
    r: f32,
) {
    if c >= chunks {
        return;
    }
    let wv = load8(w.add(8 * c as usize));
    let mut o = [0f32; 8];
    for i in 0..8 {
        o[i] = round_bf(v[i] * r) * wv[i];
    }
    store8(out.add(row + 8 * c as usize), &o);
}

/// Index of the largest value of each row (`rows x cols` BF16, `cols` a
/// multiple of 8; the first index among equals; NaNs ignored), one block a row.
/// Shared memory: 256 bytes.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_argmax(x: *const u16, out: *mut u32, cols: u32) {
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
    let row = x.add(_block_idx_x() as usize * cols as usize);
    let (mut best, mut bi) = (f32::NEG_INFINITY, u32::MAX);
    let mut c = tid();
    while c < cols / 8 {
        let v = load8(row.add(8 * c as usize));
        for (i, a) in v.iter().enumerate() {
            if *a > best {
                best = *a;
                bi = 8 * c + i as u32;
            }
        }
        c += nthreads();
    }
    // (value, index) pairs: larger value, then smaller index, wins.
    let better = |a: f32, ai: u32, b: f32, bi: u32| b > a || (b == a && bi < ai);
    let mut m = 16;
    while m > 0 {
        let (o, oi) = (shfl_xor(best, m), shfl_xor(f32::from_bits(bi), m).to_bits());
        if better(best, bi, o, oi) {
            best = o;
            bi = oi;
        }
        m >>= 1;
    }
    let (lane, warp, nw) = (tid() & 31, tid() / 32, nthreads() / 32);
    let base = smem_base();
    if lane == 0 {
        sts(base + warp * 4, best);
        sts(base + 128 + warp * 4, f32::from_bits(bi));
    }
    bar_sync();
    if tid() == 0 {
        let (mut b, mut i) = (lds(base), lds(base + 128).to_bits());
        for k in 1..nw {
            let (o, oi) = (lds(base + k * 4), lds(base + 128 + k * 4).to_bits());
            if better(b, i, o, oi) {
                b = o;
                i = oi;
            }
        }
        *out.add(_block_idx_x() as usize) = if i == u32::MAX { 0 } else { i };
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
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
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

/// Up to 16 consecutive BF16 values (`dl` of them, a multiple of 4) as FP32,
/// in 8-byte loads.
#[inline(always)]
unsafe fn load_dims(p: *const u16, dl: u32) -> [f32; 16] {
    let mut v = [0f32; 16];
    let mut c = 0;
    while c < 4 {
        if c * 4 < dl {
            let w = *(p.add(c as usize * 4) as *const u64);
            for e in 0..4 {
                v[(c * 4) as usize + e] = bf((w >> (16 * e)) as u16);
            }
        }
        c += 1;
    }
    v
}

/// Causal attention of each new token (q roped here, as `zs_rope_kv` ropes
/// k) over its sequence's cache (grouped query: head `h` reads kv head
/// `h / (nh / nkv)`). Grid `(nh, rows, chunks)`, any multiple of 32 threads.
/// With more than one chunk (flash-decoding, for grids too small to fill the
/// GPU) block `z` takes keys `z * chunk ..` and writes its running max, sum
/// and unnormalised output to `ws[((row * nh + h) * chunks + z) * (d + 2)]`,
/// which `zs_attn_combine` merges. Decode
/// is latency-bound, so each warp works on 4 keys at once (8 lanes a key, a
/// lane `d / 8` consecutive dimensions; `d` a multiple of 32, at most 128) and
/// two such groups are loaded before either is used. Softmax in FP32 with the
/// scores in shared memory: `(lmax + 32 + nw * d) * 4` bytes.
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
    ws: *mut f32,
    chunk: u32,
) {
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
    let (h, bt) = (_block_idx_x() as u32, _block_idx_y() as u32);
    let (c, chunks) = (_block_idx_z() as u32, _grid_dim_z() as u32);
    let (b, p) = (bt / t_len, pos0 + bt % t_len);
    let n = p + 1;
    let (t0, t1) = if chunks == 1 {
        (0, n)
    } else {
        ((c * chunk).min(n), ((c + 1) * chunk).min(n))
    };
    let g = h / (nh / nkv);
    let (lane, warp, nw) = (tid() & 31, tid() / 32, nthreads() / 32);
    let (slot, s) = (lane / 8, lane % 8);
    let dl = d / 8;
    let half = d / 2;
    let width = (nh + 2 * nkv) * d;
    let s_at = smem_base();
    let red = s_at + lmax * 4;
    let o_at = red + 128;

    // q (roped; the rotate-half partner of lane s is lane s ^ 4), pre-scaled.
    let raw = load_dims(qkv.add((bt * width + h * d + s * dl) as usize), dl);
    let mut q = [0f32; 16];
    for j in 0..16usize {
        let other = shfl_xor(raw[j], 4);
        if (j as u32) < dl {
            let i = ((s * dl + j as u32) % half + p * half) as usize;
            let (c, sn) = (*cos.add(i), *sin.add(i));
            q[j] = if s < 4 {
                round_bf(raw[j] * c - other * sn)
            } else {
                round_bf(raw[j] * c + other * sn)
            } * scale;
        }
    }
    let cache = (((b * nkv + g) * lmax) * d + s * dl) as usize;
    let (kr, vr) = (kc.add(cache), vc.add(cache));
    let stride = nw * 4;

    // Scores: key t = (warp * 4 + slot) + i * stride. The loop runs on a
    // warp-uniform base (the shuffles need every lane).
    let mut base = t0 + warp * 4;
    while base < t1 {
        let t = base + slot;
        let t2 = t + stride;
        let k1 = if t < t1 {
            load_dims(kr.add((t * d) as usize), dl)
        } else {
            [0f32; 16]
        };
        let k2 = if t2 < t1 {
            load_dims(kr.add((t2 * d) as usize), dl)
        } else {
            [0f32; 16]
        };
        let (mut d1, mut d2) = (0f32, 0f32);
        for j in 0..16 {
            d1 += q[j] * k1[j];
            d2 += q[j] * k2[j];
        }
        for m in [1u32, 2, 4] {
            d1 += shfl_xor(d1, m);
            d2 += shfl_xor(d2, m);
        }
        if s == 0 {
            if t < t1 {
                sts(s_at + (t - t0) * 4, d1);
            }
            if t2 < t1 {
                sts(s_at + (t2 - t0) * 4, d2);
            }
        }
        base += 2 * stride;
    }
    bar_sync();
    let len = t1 - t0;
    let mut m = f32::NEG_INFINITY;
    let mut t = tid();
    while t < len {
        m = m.max(lds(s_at + t * 4));
        t += nthreads();
    }
    let m = block_reduce::<true>(m, red);
    let mut sum = 0f32;
    let mut t = tid();
    while t < len {
        let e = ex2((lds(s_at + t * 4) - m) * LOG2E);
        sts(s_at + t * 4, e);
        sum += e;
        t += nthreads();
    }
    // The reduction's barrier also publishes the exponentials.
    let sum = block_reduce::<false>(sum, red);

    let mut acc = [0f32; 16];
    let mut base = t0 + warp * 4;
    while base < t1 {
        let t = base + slot;
        let t2 = t + stride;
        let (p1, v1) = if t < t1 {
            (
                lds(s_at + (t - t0) * 4),
                load_dims(vr.add((t * d) as usize), dl),
            )
        } else {
            (0.0, [0f32; 16])
        };
        let (p2, v2) = if t2 < t1 {
            (
                lds(s_at + (t2 - t0) * 4),
                load_dims(vr.add((t2 * d) as usize), dl),
            )
        } else {
            (0.0, [0f32; 16])
        };
        for j in 0..16 {
            acc[j] += p1 * v1[j] + p2 * v2[j];
        }
        base += 2 * stride;
    }
    // Sum the warp's 4 key slots, then the warps.
    for a in acc.iter_mut() {
        *a += shfl_xor(*a, 8);
        *a += shfl_xor(*a, 16);
    }
    if slot == 0 {
        for (j, a) in acc.iter().enumerate() {
            if (j as u32) < dl {
                sts(o_at + (warp * d + s * dl + j as u32) * 4, *a);
            }
        }
    }
    bar_sync();
    let dst = out.add((bt * nh * d + h * d) as usize);
    if chunks == 1 {
        let mut i = tid();
        while i < d {
            *dst.add(i as usize) = f32_to_bf16(warps_sum(o_at, nw, d, i) / sum);
            i += nthreads();
        }
        return;
    }
    // Flash-decoding: publish this chunk's part; zs_attn_combine merges them.
    let part = ws.add((((bt * nh + h) * chunks + c) * (d + 2)) as usize);
    let mut i = tid();
    while i < d {
        *part.add(2 + i as usize) = warps_sum(o_at, nw, d, i);
        i += nthreads();
    }
    if tid() == 0 {
        *part = m;
        *part.add(1) = sum;
    }
}

/// The second step of a split attention: merge the `chunks` parts of each
/// `(row, h)` (running max, sum, unnormalised output) into `out`. Grid
/// `(nh, rows)`.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_attn_combine(
    ws: *const f32,
    out: *mut u16,
    nh: u32,
    d: u32,
    chunks: u32,
) {
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
    let (h, bt) = (_block_idx_x() as u32, _block_idx_y() as u32);
    let parts = ws.add(((bt * nh + h) * chunks * (d + 2)) as usize);
    let mut mx = f32::NEG_INFINITY;
    for z in 0..chunks {
        mx = mx.max(*parts.add((z * (d + 2)) as usize));
    }
    let mut total = 0f32;
    for z in 0..chunks {
        let q = parts.add((z * (d + 2)) as usize);
        total += *q.add(1) * ex2((*q - mx) * LOG2E);
    }
    let dst = out.add((bt * nh * d + h * d) as usize);
    let mut i = tid();
    while i < d {
        let mut o = 0f32;
        for z in 0..chunks {
            let q = parts.add((z * (d + 2)) as usize);
            o += *q.add(2 + i as usize) * ex2((*q - mx) * LOG2E);
        }
        *dst.add(i as usize) = f32_to_bf16(o / total);
        i += nthreads();
    }
}

/// Sum over the warps' partial outputs in shared memory, dimension `i`.
#[inline(always)]
unsafe fn warps_sum(o_at: u32, nw: u32, d: u32, i: u32) -> f32 {
    let mut tot = 0f32;
    let mut w = 0;
    while w < nw {
        tot += lds(o_at + (w * d + i) * 4);
        w += 1;
    }
    tot
}

/// `out[r][i] = bf16(bf16(silu(g)) * u)` with `g = gu[r][i]`, `u = gu[r][inter + i]`.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_silu_mul(
    gu: *const u16,
    out: *mut u16,
    rows: u32,
    inter: u32,
) {
    // A fused GEMM launched after this op may start its weight prefetch.
    grid_launch_dependents();
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
