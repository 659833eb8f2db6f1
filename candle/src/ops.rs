//! The fused ops of a decoder step as candle custom ops: RMSNorm with the
//! residual add folded in, RoPE + KV-cache append (in place), attention over
//! the cache, SiLU-times-up. On CUDA they launch zipserv's kernels
//! (`kernels-gpu/src/llm.rs`, which specifies the arithmetic) on candle's
//! stream; the CPU implementations here follow the same formulas operation for
//! operation (the GPU's `exp` is `ex2.approx`, so the two agree to a few ulp
//! of FP32 before BF16 rounding, not bit for bit).
use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;
pub use zipserv::gpu::llm::AttnShape;

fn bf(x: bf16) -> f32 {
    x.to_f32()
}
fn rb(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The contiguous elements of a CPU storage as `T`.
fn cpu_slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("zipserv op: input is not contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

fn check_bf16(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::BF16 {
        bail!("{what}: expected BF16, got {:?}", t.dtype())
    }
    Ok(())
}

/// RoPE tables `[2, max_len, head_dim / 2]` FP32 (cos then sin) for
/// `inv_freq[i]` (the model's frequencies, scaling applied).
pub fn rope_table(inv_freq: &[f32], max_len: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let half = inv_freq.len();
    let mut t = vec![0f32; 2 * max_len * half];
    for p in 0..max_len {
        for (i, f) in inv_freq.iter().enumerate() {
            let a = p as f32 * f;
            t[p * half + i] = a.cos();
            t[max_len * half + p * half + i] = a.sin();
        }
    }
    Tensor::from_vec(t, (2, max_len, half), dev)
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm {
    eps: f32,
    add: bool,
}

fn rmsnorm_row(
    x: &[bf16],
    delta: Option<&[bf16]>,
    w: &[bf16],
    eps: f32,
    res: &mut [bf16],
    out: &mut [bf16],
) {
    let mut ss = 0f32;
    for i in 0..x.len() {
        let v = match delta {
            Some(d) => bf16::from_f32(bf(x[i]) + bf(d[i])),
            None => x[i],
        };
        res[i] = v;
        ss += bf(v) * bf(v);
    }
    let r = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for i in 0..x.len() {
        out[i] = bf16::from_f32(rb(bf(res[i]) * r) * bf(w[i]));
    }
}

impl RmsNorm {
    fn cpu(&self, x: &[bf16], delta: Option<&[bf16]>, w: &[bf16]) -> Vec<bf16> {
        let cols = w.len();
        let rows = x.len() / cols;
        // Output: [residual rows | normalised rows] when adding, else the
        // normalised rows only.
        let mut res = vec![bf16::ZERO; rows * cols];
        let mut out = vec![bf16::ZERO; rows * cols];
        for r in 0..rows {
            let s = r * cols..(r + 1) * cols;
            rmsnorm_row(
                &x[s.clone()],
                delta.map(|d| &d[s.clone()]),
                w,
                self.eps,
                &mut res[s.clone()],
                &mut out[s],
            );
        }
        if self.add {
            res.extend_from_slice(&out);
            res
        } else {
            out
        }
    }
    fn shape(&self, l: &Layout) -> Shape {
        let d = l.shape().dims2().unwrap_or((0, 0));
        if self.add {
            Shape::from((2, d.0, d.1))
        } else {
            Shape::from(d)
        }
    }
}

impl candle_core::CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "zipserv-rmsnorm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.cpu(cpu_slice(s1, l1)?, None, cpu_slice(s2, l2)?);
        Ok((CpuStorage::BF16(out), self.shape(l1)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::rmsnorm(self, (s1, l1), None, (s2, l2))
    }
}

impl candle_core::CustomOp3 for RmsNorm {
    fn name(&self) -> &'static str {
        "zipserv-add-rmsnorm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.cpu(
            cpu_slice(s1, l1)?,
            Some(cpu_slice(s2, l2)?),
            cpu_slice(s3, l3)?,
        );
        Ok((CpuStorage::BF16(out), self.shape(l1)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::rmsnorm(self, (s1, l1), Some((s2, l2)), (s3, l3))
    }
}

/// `(residual, normed)`: `residual = x + delta` (BF16, or `x` when `delta` is
/// `None`) and its RMSNorm with weight `w`. `x`, `delta`: `[rows, cols]` BF16.
pub fn add_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    check_bf16(x, "rms_norm input")?;
    check_bf16(w, "rms_norm weight")?;
    let (_, cols) = x.dims2()?;
    if w.dims1()? != cols {
        bail!(
            "rms_norm: weight has {} elements for rows of {cols}",
            w.dims1()?
        )
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match delta {
        None => {
            let n = x.apply_op2_no_bwd(&w, &RmsNorm { eps, add: false })?;
            Ok((x, n))
        }
        Some(d) => {
            if d.dims() != x.dims() {
                bail!(
                    "rms_norm: residual {:?} and delta {:?} differ",
                    x.dims(),
                    d.dims()
                )
            }
            let both = x.apply_op3_no_bwd(&d.contiguous()?, &w, &RmsNorm { eps, add: true })?;
            Ok((both.get(0)?, both.get(1)?))
        }
    }
}

// ---------------------------------------------------------------- attention

/// Where a step's new tokens go: `batch` sequences of `t_len` new tokens at
/// positions `pos0..pos0 + t_len`.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub shape: AttnShape,
    pub batch: usize,
    pub pos0: usize,
    pub t_len: usize,
}

impl Step {
    fn check(&self, qkv: &Tensor, cache: &Tensor, rope: &Tensor) -> Result<()> {
        let s = &self.shape;
        s.check().map_err(crate::err)?;
        if self.pos0 + self.t_len > s.max_len {
            bail!(
                "positions {}..{} exceed the cache length {}",
                self.pos0,
                self.pos0 + self.t_len,
                s.max_len
            )
        }
        check_bf16(qkv, "qkv")?;
        check_bf16(cache, "kv cache")?;
        if qkv.dims() != [self.batch * self.t_len, s.qkv_width()] {
            bail!(
                "qkv is {:?}, expected [{}, {}]",
                qkv.dims(),
                self.batch * self.t_len,
                s.qkv_width()
            )
        }
        if cache.dims() != [2, self.batch, s.kv_heads, s.max_len, s.head_dim]
            || !cache.is_contiguous()
        {
            bail!(
                "kv cache is {:?}, expected contiguous [2, {}, {}, {}, {}]",
                cache.dims(),
                self.batch,
                s.kv_heads,
                s.max_len,
                s.head_dim
            )
        }
        if rope.dtype() != DType::F32 || rope.dims() != [2, s.max_len, s.head_dim / 2] {
            bail!(
                "rope table is {:?} {:?}, expected F32 [2, {}, {}]",
                rope.dtype(),
                rope.dims(),
                s.max_len,
                s.head_dim / 2
            )
        }
        Ok(())
    }

    /// Rows of the cache of sequence `b`, kv head `g`: offset in elements.
    fn cache_at(&self, b: usize, g: usize, p: usize) -> usize {
        let s = &self.shape;
        ((b * s.kv_heads + g) * s.max_len + p) * s.head_dim
    }

    fn cpu_append(&self, cache: &mut [bf16], qkv: &[bf16], rope: &[f32]) {
        let s = &self.shape;
        let (d, half, w) = (s.head_dim, s.head_dim / 2, s.qkv_width());
        let vbase = self.batch * s.kv_heads * s.max_len * d;
        for bt in 0..self.batch * self.t_len {
            let (b, p) = (bt / self.t_len, self.pos0 + bt % self.t_len);
            let row = &qkv[bt * w..(bt + 1) * w];
            for g in 0..s.kv_heads {
                let k = &row[(s.heads + g) * d..];
                let at = self.cache_at(b, g, p);
                for i in 0..half {
                    let (x0, x1) = (bf(k[i]), bf(k[i + half]));
                    let (c, sn) = (rope[p * half + i], rope[s.max_len * half + p * half + i]);
                    cache[at + i] = bf16::from_f32(x0 * c - x1 * sn);
                    cache[at + i + half] = bf16::from_f32(x1 * c + x0 * sn);
                }
                let v = &row[(s.heads + s.kv_heads + g) * d..];
                cache[vbase + at..vbase + at + d].copy_from_slice(&v[..d]);
            }
        }
    }

    fn cpu_attention(&self, qkv: &[bf16], cache: &[bf16], rope: &[f32], scale: f32) -> Vec<bf16> {
        let s = &self.shape;
        let (d, half, w) = (s.head_dim, s.head_dim / 2, s.qkv_width());
        let vbase = self.batch * s.kv_heads * s.max_len * d;
        let rows = self.batch * self.t_len;
        let mut out = vec![bf16::ZERO; rows * s.heads * d];
        let mut q = vec![0f32; d];
        let mut sc = vec![0f32; s.max_len];
        for bt in 0..rows {
            let (b, p) = (bt / self.t_len, self.pos0 + bt % self.t_len);
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                let qr = &qkv[bt * w + h * d..];
                for i in 0..half {
                    let (x0, x1) = (bf(qr[i]), bf(qr[i + half]));
                    let (c, sn) = (rope[p * half + i], rope[s.max_len * half + p * half + i]);
                    q[i] = rb(x0 * c - x1 * sn) * scale;
                    q[i + half] = rb(x1 * c + x0 * sn) * scale;
                }
                let mut m = f32::NEG_INFINITY;
                for (t, st) in sc.iter_mut().enumerate().take(p + 1) {
                    let k = &cache[self.cache_at(b, g, t)..];
                    *st = (0..d).map(|j| q[j] * bf(k[j])).sum();
                    m = m.max(*st);
                }
                let mut sum = 0f32;
                for st in sc.iter_mut().take(p + 1) {
                    *st = (*st - m).exp();
                    sum += *st;
                }
                let o = &mut out[(bt * s.heads + h) * d..(bt * s.heads + h + 1) * d];
                for (j, oj) in o.iter_mut().enumerate() {
                    let mut acc = 0f32;
                    for (t, st) in sc.iter().enumerate().take(p + 1) {
                        acc += st * bf(cache[vbase + self.cache_at(b, g, t) + j]);
                    }
                    *oj = bf16::from_f32(acc / sum);
                }
            }
        }
        out
    }
}

struct RopeAppend(Step);

impl candle_core::InplaceOp3 for RopeAppend {
    fn name(&self) -> &'static str {
        "zipserv-rope-kv-append"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let qkv = cpu_slice::<bf16>(s2, l2)?;
        let rope = cpu_slice::<f32>(s3, l3)?;
        let (a, b) = dst_l.contiguous_offsets().expect("checked contiguous");
        let cache = match dst {
            CpuStorage::BF16(v) => &mut v[a..b],
            _ => bail!("kv cache: expected BF16"),
        };
        self.0.cpu_append(cache, qkv, rope);
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        cuda::rope_append(&self.0, (dst, dst_l), (s2, l2), (s3, l3))
    }
}

struct Attention(Step, f32);

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "zipserv-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.0.cpu_attention(
            cpu_slice(s1, l1)?,
            cpu_slice(s2, l2)?,
            cpu_slice(s3, l3)?,
            self.1,
        );
        let st = &self.0;
        Ok((
            CpuStorage::BF16(out),
            Shape::from((st.batch * st.t_len, st.shape.heads * st.shape.head_dim)),
        ))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::attention(&self.0, self.1, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// Append the step's new k (roped) and v to `cache` (`[2, batch, kv_heads,
/// max_len, head_dim]` BF16, k then v), in place.
pub fn rope_append(cache: &Tensor, qkv: &Tensor, rope: &Tensor, step: Step) -> Result<()> {
    step.check(qkv, cache, rope)?;
    cache.inplace_op3(&qkv.contiguous()?, &rope.contiguous()?, &RopeAppend(step))
}

/// Attention of the step's new tokens over `cache` (after [`rope_append`]):
/// `[batch * t_len, heads * head_dim]` BF16.
pub fn attention(
    qkv: &Tensor,
    cache: &Tensor,
    rope: &Tensor,
    step: Step,
    scale: f32,
) -> Result<Tensor> {
    step.check(qkv, cache, rope)?;
    qkv.contiguous()?
        .apply_op3_no_bwd(cache, &rope.contiguous()?, &Attention(step, scale))
}

// ---------------------------------------------------------------- SwiGLU

struct SiluMul;

impl candle_core::CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "zipserv-silu-mul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let gu = cpu_slice::<bf16>(s, l)?;
        let (rows, w) = l.shape().dims2()?;
        let inter = w / 2;
        let mut out = Vec::with_capacity(rows * inter);
        for r in 0..rows {
            for i in 0..inter {
                let g = bf(gu[r * w + i]);
                let u = bf(gu[r * w + inter + i]);
                let s = rb(g / (1.0 + (-g).exp()));
                out.push(bf16::from_f32(s * u));
            }
        }
        Ok((CpuStorage::BF16(out), Shape::from((rows, inter))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::silu_mul(s, l)
    }
}

/// `silu(gate) * up` for `gu = [gate | up]` (`[rows, 2 inter]` BF16).
pub fn silu_mul(gu: &Tensor) -> Result<Tensor> {
    check_bf16(gu, "silu_mul input")?;
    let (_, w) = gu.dims2()?;
    if w % 2 != 0 {
        bail!("silu_mul: odd width {w}")
    }
    gu.contiguous()?.apply_op1_no_bwd(&SiluMul)
}

// ---------------------------------------------------------------- argmax

struct Argmax;

impl candle_core::CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "zipserv-argmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<bf16>(s, l)?;
        let (rows, cols) = l.shape().dims2()?;
        let out = (0..rows)
            .map(|r| {
                let (mut best, mut bi) = (f32::NEG_INFINITY, None);
                for (i, v) in x[r * cols..(r + 1) * cols].iter().enumerate() {
                    if bf(*v) > best {
                        best = bf(*v);
                        bi = Some(i as u32);
                    }
                }
                bi.unwrap_or(0)
            })
            .collect();
        Ok((CpuStorage::U32(out), Shape::from(rows)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::argmax(s, l)
    }
}

/// Index of the largest value of each row of `x` (`[rows, cols]` BF16, `cols`
/// a multiple of 8): the first among equals, NaNs ignored. `[rows]` U32.
pub fn argmax(x: &Tensor) -> Result<Tensor> {
    check_bf16(x, "argmax input")?;
    let (_, cols) = x.dims2()?;
    if cols % 8 != 0 {
        bail!("argmax: rows of {cols}, expected a multiple of 8")
    }
    x.contiguous()?.apply_op1_no_bwd(&Argmax)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{RmsNorm, Step};
    use crate::cuda::{alloc_bf16, dev_ptr, gpu_for};
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use half::bf16;

    type In<'a> = (&'a CudaStorage, &'a Layout);

    pub(super) fn rmsnorm(
        op: &RmsNorm,
        x: In,
        delta: Option<In>,
        w: In,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &x.0.device;
        let gpu = gpu_for(dev)?;
        let (rows, cols) = x.1.shape().dims2()?;
        let n = rows * cols;
        let out = alloc_bf16(dev, if op.add { 2 * n } else { n })?;
        let o = dev_ptr::<bf16>(&out, 0)?;
        let (xp, wp) = (
            dev_ptr::<bf16>(x.0, x.1.start_offset())?,
            dev_ptr::<bf16>(w.0, w.1.start_offset())?,
        );
        let (dp, res, normed) = match delta {
            Some(d) => (
                dev_ptr::<bf16>(d.0, d.1.start_offset())?,
                o,
                o + 2 * n as u64,
            ),
            None => (0, 0, o),
        };
        unsafe { gpu.rmsnorm(xp, dp, wp, res, normed, rows, cols, op.eps) }.map_err(crate::err)?;
        Ok((out, op.shape(x.1)))
    }

    pub(super) fn rope_append(
        step: &Step,
        cache: (&mut CudaStorage, &Layout),
        qkv: In,
        rope: In,
    ) -> Result<()> {
        let gpu = gpu_for(&qkv.0.device)?;
        let s = &step.shape;
        let kc = dev_ptr::<bf16>(cache.0, cache.1.start_offset())?;
        let vc = kc + 2 * (step.batch * s.kv_heads * s.max_len * s.head_dim) as u64;
        let r = dev_ptr::<f32>(rope.0, rope.1.start_offset())?;
        let sin = r + 4 * (s.max_len * s.head_dim / 2) as u64;
        let q = dev_ptr::<bf16>(qkv.0, qkv.1.start_offset())?;
        unsafe { gpu.rope_kv(q, kc, vc, r, sin, *s, step.batch, step.pos0, step.t_len) }
            .map_err(crate::err)
    }

    pub(super) fn attention(
        step: &Step,
        scale: f32,
        qkv: In,
        cache: In,
        rope: In,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &qkv.0.device;
        let gpu = gpu_for(dev)?;
        let s = &step.shape;
        let rows = step.batch * step.t_len;
        let out = alloc_bf16(dev, rows * s.heads * s.head_dim)?;
        let kc = dev_ptr::<bf16>(cache.0, cache.1.start_offset())?;
        let vc = kc + 2 * (step.batch * s.kv_heads * s.max_len * s.head_dim) as u64;
        let r = dev_ptr::<f32>(rope.0, rope.1.start_offset())?;
        let sin = r + 4 * (s.max_len * s.head_dim / 2) as u64;
        let q = dev_ptr::<bf16>(qkv.0, qkv.1.start_offset())?;
        unsafe {
            gpu.attention(
                q,
                kc,
                vc,
                r,
                sin,
                dev_ptr::<bf16>(&out, 0)?,
                *s,
                step.batch,
                step.pos0,
                step.t_len,
                scale,
            )
        }
        .map_err(crate::err)?;
        Ok((out, Shape::from((rows, s.heads * s.head_dim))))
    }

    pub(super) fn argmax(x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &x.device;
        let gpu = gpu_for(dev)?;
        let (rows, cols) = l.shape().dims2()?;
        let out = unsafe { dev.alloc::<u32>(rows.max(1)) }?;
        let o = CudaStorage::wrap_cuda_slice(out, dev.clone());
        unsafe {
            gpu.argmax(
                dev_ptr::<bf16>(x, l.start_offset())?,
                dev_ptr::<u32>(&o, 0)?,
                rows,
                cols,
            )
        }
        .map_err(crate::err)?;
        Ok((o, Shape::from(rows)))
    }

    pub(super) fn silu_mul(gu: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &gu.device;
        let gpu = gpu_for(dev)?;
        let (rows, w) = l.shape().dims2()?;
        let out = alloc_bf16(dev, rows * w / 2)?;
        unsafe {
            gpu.silu_mul(
                dev_ptr::<bf16>(gu, l.start_offset())?,
                dev_ptr::<bf16>(&out, 0)?,
                rows,
                w / 2,
            )
        }
        .map_err(crate::err)?;
        Ok((out, Shape::from((rows, w / 2))))
    }
}
