//! zipserv in candle: compressed linear layers, the fused ops of a decoder
//! step, a Llama-family decoder, GGUF import and a checkpoint loader.
//!
//! [`ZipLinear`] keeps its weight compressed. On the CPU it holds TCA-TBE
//! version 1 and decodes it for each forward pass (~2.5 GB/s on 2 cores)
//! before a candle matmul. On CUDA (feature `cuda`) it holds the GPU layout and
//! runs zipserv's fused ZipGEMM (decompress + cuBLAS above the crossover) on
//! candle's stream.
use candle_core::{DType, Device, Module, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use zipserv::container::{decode_checked, kept_checked, read_compressed, MappedFile};
use zipserv::CompressedMatrix;

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gguf;
pub mod llama;
pub mod ops;
pub mod tokenizer;
pub use tokenizers;

pub(crate) fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// BF16 bit patterns as a candle tensor.
pub fn bits_tensor(bits: &[u16], shape: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<half::bf16> = bits.iter().map(|&b| half::bf16::from_bits(b)).collect();
    Tensor::from_vec(v, shape, dev)
}

/// Write BF16 tensors `(name, shape, bit patterns)` as one safetensors file
/// (atomically).
pub fn write_bf16_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u16>)],
) -> zipserv::Result<u64> {
    let list: Vec<(&str, safetensors::Dtype, Vec<usize>, &[u8])> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safetensors::Dtype::BF16,
                s.clone(),
                bytemuck::cast_slice::<u16, u8>(b),
            )
        })
        .collect();
    zipserv::container::write_file(path, &list, &[("format", "pt")])
}

enum Weight {
    /// TCA-TBE version 1 (CPU path).
    Cpu(CompressedMatrix),
    /// The GPU layout, resident on a CUDA device.
    #[cfg(feature = "cuda")]
    Gpu {
        gpu: Arc<zipserv::gpu::Gpu>,
        lin: Arc<zipserv::gpu::ZipLinear>,
    },
}

/// A linear layer `y = x W^T (+ b)` over a compressed BF16 weight `W` (`out x in`).
#[derive(Clone)]
pub struct ZipLinear {
    rows: usize,
    cols: usize,
    weight: Arc<Weight>,
    bias: Option<Tensor>,
}

impl ZipLinear {
    /// A CPU layer over a version 1 matrix.
    pub fn new(weight: CompressedMatrix, bias: Option<Tensor>) -> Self {
        ZipLinear {
            rows: weight.rows,
            cols: weight.cols,
            weight: Arc::new(Weight::Cpu(weight)),
            bias,
        }
    }

    /// Compress a row-major BF16 matrix for `dev`: version 1 on the CPU, the
    /// GPU layout (validated, then uploaded) on CUDA.
    pub fn from_bits(
        bits: &[u16],
        rows: usize,
        cols: usize,
        bias: Option<Tensor>,
        dev: &Device,
    ) -> Result<Self> {
        match dev {
            Device::Cpu => Ok(ZipLinear::new(
                zipserv::encode::encode(bits, rows, cols).map_err(err)?,
                bias,
            )),
            #[cfg(feature = "cuda")]
            Device::Cuda(cd) => {
                let gpu = cuda::gpu_for(cd)?;
                let d = zipserv::device_layout::build(bits, rows, cols).map_err(err)?;
                let m = gpu.upload(&d).map_err(err)?;
                Ok(ZipLinear {
                    rows,
                    cols,
                    weight: Arc::new(Weight::Gpu {
                        gpu,
                        lin: Arc::new(zipserv::gpu::ZipLinear::new(m)),
                    }),
                    bias,
                })
            }
            #[allow(unreachable_patterns)]
            _ => Err(err(format!("ZipLinear: device {dev:?} is not supported"))),
        }
    }

    pub fn in_features(&self) -> usize {
        self.cols
    }
    pub fn out_features(&self) -> usize {
        self.rows
    }
    /// Bytes the compressed weight takes where it lives (device layout on the
    /// GPU, version 1 on the CPU), bias excluded.
    pub fn weight_bytes(&self) -> usize {
        match &*self.weight {
            Weight::Cpu(m) => m.stored_bytes() as usize,
            #[cfg(feature = "cuda")]
            Weight::Gpu { lin, .. } => lin.weight.bytes,
        }
    }
    /// The weight's BF16 bit patterns, decoded on the CPU.
    pub fn weight_bits(&self) -> Result<Vec<u16>> {
        match &*self.weight {
            Weight::Cpu(m) => zipserv::decode::decode(m).map_err(err),
            #[cfg(feature = "cuda")]
            Weight::Gpu { gpu, lin } => {
                let out = gpu
                    .stream
                    .alloc_zeros::<u16>(self.rows * self.cols)
                    .map_err(err)?;
                gpu.decompress(&lin.weight, &out).map_err(err)?;
                gpu.stream.clone_dtoh(&out).map_err(err)
            }
        }
    }
    /// The weight decoded to a BF16 tensor `[out, in]` on `device`.
    pub fn dense_weight(&self, device: &Device) -> Result<Tensor> {
        bits_tensor(&self.weight_bits()?, &[self.rows, self.cols], device)
    }

    /// Tune the fused kernel's launch for `n` rows of activations (CUDA; a
    /// no-op on the CPU). Plans are kept per shape by the device's runtime.
    pub fn tune(&self, n: usize) -> Result<()> {
        ZipLinear::tune_group(&[self], n)
    }

    /// Tune one plan for layers of one shape, timing them in turn (`group`:
    /// several layers of the same shape, so that the weights come from memory,
    /// not from L2, as they do in a model's forward pass).
    pub fn tune_group(group: &[&ZipLinear], n: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            let mut mats = Vec::new();
            let mut gpu = None;
            for z in group {
                if let Weight::Gpu { gpu: g, lin } = &*z.weight {
                    if n > lin.crossover.min(zipserv::gpu::FUSED_MAX_N) {
                        return Ok(());
                    }
                    if (lin.weight.rows, lin.weight.cols) != (group[0].rows, group[0].cols) {
                        return Err(err("tune_group: layers of different shapes"));
                    }
                    mats.push(&lin.weight);
                    gpu = Some(g);
                }
            }
            if let Some(gpu) = gpu {
                let (m, k) = (group[0].rows, group[0].cols);
                let x = gpu.stream.alloc_zeros::<u16>(n * k).map_err(err)?;
                let y = gpu.stream.alloc_zeros::<u16>(n * m).map_err(err)?;
                gpu.tune(&mats, gpu.ptr(&x), gpu.ptr(&y), n).map_err(err)?;
            }
        }
        let _ = (group, n);
        Ok(())
    }
}

impl ZipLinear {
    /// Rows `ids` of the weight (`[n, in]` BF16 on `dev`, the weight's
    /// device): an embedding lookup from the compressed matrix.
    pub fn gather_rows(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            candle_core::bail!("row {bad} is outside the matrix ({} rows)", self.rows)
        }
        let n = ids.len();
        match &*self.weight {
            Weight::Cpu(_) => {
                let bits = self.weight_bits()?;
                let mut out = Vec::with_capacity(n * self.cols);
                for &i in ids {
                    let r = i as usize * self.cols;
                    out.extend_from_slice(&bits[r..r + self.cols]);
                }
                bits_tensor(&out, &[n, self.cols], dev)
            }
            #[cfg(feature = "cuda")]
            Weight::Gpu { .. } => Tensor::from_slice(ids, n, dev)?
                .apply_op1_no_bwd(&GatherRows(self.weight.clone(), self.cols)),
        }
    }
}

#[cfg(feature = "cuda")]
struct GatherRows(Arc<Weight>, usize);

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for GatherRows {
    fn name(&self) -> &'static str {
        "zipserv-gather-rows"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("gather_rows: the weight is on a CUDA device, the ids on the CPU")
    }
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let Weight::Gpu { gpu, lin } = &*self.0 else {
            candle_core::bail!("gather_rows: the weight is on the CPU")
        };
        let n = l.shape().dims1()?;
        let out = cuda::alloc_bf16(&s.device, n * self.1)?;
        let ids = cuda::dev_ptr::<u32>(s, l.start_offset())?;
        unsafe { gpu.gather_rows(&lin.weight, ids, n, cuda::dev_ptr::<half::bf16>(&out, 0)?) }
            .map_err(err)?;
        Ok((out, candle_core::Shape::from((n, self.1))))
    }
}

#[cfg(feature = "cuda")]
struct ZipMatmul(Arc<Weight>, usize);

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for ZipMatmul {
    fn name(&self) -> &'static str {
        "zipserv-zipgemm"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("ZipLinear: the weight is on a CUDA device, the input on the CPU")
    }
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let Weight::Gpu { gpu, lin } = &*self.0 else {
            candle_core::bail!("ZipLinear: the weight is on the CPU, the input on a CUDA device")
        };
        let (n, k) = l.shape().dims2()?;
        let m = self.1;
        if k != lin.weight.cols || !l.is_contiguous() {
            candle_core::bail!(
                "ZipLinear: input {:?} (contiguous: {}) for a {m}x{} weight",
                l.dims(),
                l.is_contiguous(),
                lin.weight.cols
            )
        }
        let out = cuda::alloc_bf16(&s.device, n * m)?;
        let x = cuda::dev_ptr::<half::bf16>(s, l.start_offset())?;
        lin.forward_raw(gpu, x, cuda::dev_ptr::<half::bf16>(&out, 0)?, n)
            .map_err(err)?;
        Ok((out, candle_core::Shape::from((n, m))))
    }
}

impl Module for ZipLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = match &*self.weight {
            Weight::Cpu(_) => {
                let w = self.dense_weight(xs.device())?.to_dtype(xs.dtype())?;
                xs.broadcast_matmul(&w.t()?)?
            }
            #[cfg(feature = "cuda")]
            Weight::Gpu { .. } => {
                if xs.dtype() != DType::BF16 {
                    candle_core::bail!(
                        "ZipLinear on CUDA takes BF16 activations, got {:?}",
                        xs.dtype()
                    )
                }
                let dims = xs.dims().to_vec();
                let x2 = xs.flatten_to(dims.len().saturating_sub(2))?.contiguous()?;
                let x2 = if dims.len() == 1 {
                    x2.unsqueeze(0)?
                } else {
                    x2
                };
                let y = x2.apply_op1_no_bwd(&ZipMatmul(self.weight.clone(), self.rows))?;
                let mut od = dims;
                *od.last_mut().unwrap() = self.rows;
                y.reshape(od)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

/// A checkpoint: the tensors of a safetensors file or of a directory of them,
/// compressed by zipserv or not. Compressed matrices stay in TCA-TBE until
/// asked for; every checksum of a compressed file is verified on load. Plain
/// tensors stay in the memory-mapped files (nothing is copied until asked for).
pub struct Checkpoint {
    files: Vec<MappedFile>,
    compressed: HashMap<String, CompressedMatrix>,
    plain: HashMap<String, Plain>,
}

/// Where a plain tensor lies: file index, dtype, shape, byte range.
struct Plain {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl Plain {
    fn of(file: usize, mf: &MappedFile, t: &safetensors::tensor::TensorView<'_>) -> Plain {
        let start = t.data().as_ptr() as usize - mf.bytes().as_ptr() as usize;
        Plain {
            file,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            bytes: start..start + t.data().len(),
        }
    }
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Self> {
        let mut ck = Checkpoint {
            files: Vec::new(),
            compressed: HashMap::new(),
            plain: HashMap::new(),
        };
        for file in zipserv::container::safetensors_files(path).map_err(err)? {
            let mf = MappedFile::open(&file).map_err(err)?;
            let fi = ck.files.len();
            {
                let st = mf.tensors().map_err(err)?;
                match mf.zipserv_meta().map_err(err)? {
                    Some(meta) => {
                        for (name, tm) in &meta.compressed {
                            decode_checked(&st, name, tm).map_err(err)?;
                            ck.compressed
                                .insert(name.clone(), read_compressed(&st, name, tm).map_err(err)?);
                        }
                        for (name, km) in &meta.kept {
                            let t = kept_checked(&st, name, km).map_err(err)?;
                            ck.plain.insert(name.clone(), Plain::of(fi, &mf, &t));
                        }
                    }
                    None => {
                        for (name, t) in st.tensors() {
                            ck.plain.insert(name.clone(), Plain::of(fi, &mf, &t));
                        }
                    }
                }
            }
            ck.files.push(mf);
        }
        Ok(ck)
    }

    /// A plain tensor: dtype, shape, bytes (in the mapped file).
    fn plain(&self, name: &str) -> Result<(safetensors::Dtype, &[usize], &[u8])> {
        let p = self
            .plain
            .get(name)
            .ok_or_else(|| err(format!("no tensor {name}")))?;
        Ok((
            p.dtype,
            &p.shape,
            &self.files[p.file].bytes()[p.bytes.clone()],
        ))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.compressed.contains_key(name) || self.plain.contains_key(name)
    }
    pub fn is_compressed(&self, name: &str) -> bool {
        self.compressed.contains_key(name)
    }
    /// Whether any tensor is compressed.
    pub fn any_compressed(&self) -> bool {
        !self.compressed.is_empty()
    }
    pub fn compressed(&self, name: &str) -> Option<&CompressedMatrix> {
        self.compressed.get(name)
    }
    pub fn compressed_names(&self) -> impl Iterator<Item = &String> {
        self.compressed.keys()
    }

    /// A tensor as BF16 bit patterns and its shape (compressed ones decoded;
    /// F32 and F16 ones rounded to BF16).
    pub fn bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        if let Some(m) = self.compressed.get(name) {
            return Ok((
                zipserv::decode::decode(m).map_err(err)?,
                vec![m.rows, m.cols],
            ));
        }
        let (dt, shape, bytes) = self.plain(name)?;
        let bits = match dt {
            safetensors::Dtype::BF16 => zipserv::container::bf16_bits(bytes).into_owned(),
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_bits())
                .collect(),
            safetensors::Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| {
                    half::bf16::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32()).to_bits()
                })
                .collect(),
            other => {
                return Err(err(format!(
                    "tensor {name}: dtype {other:?} is not a float type"
                )))
            }
        };
        Ok((bits, shape.to_vec()))
    }

    /// Any tensor on `device` in its own dtype (compressed ones decoded to BF16).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        if let Some(m) = self.compressed.get(name) {
            let bits = zipserv::decode::decode(m).map_err(err)?;
            return bits_tensor(&bits, &[m.rows, m.cols], device);
        }
        let (dt, shape, bytes) = self.plain(name)?;
        let dtype = match dt {
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U32 => DType::U32,
            safetensors::Dtype::U8 => DType::U8,
            other => {
                return Err(err(format!(
                    "tensor {name}: dtype {other:?} is not supported here"
                )))
            }
        };
        Tensor::from_raw_buffer(bytes, dtype, shape, device)
    }
}

/// The tensors of one compressed safetensors file (see [`Checkpoint`]), for
/// building layers one by one.
pub struct ZipTensors {
    ck: Checkpoint,
    device: Device,
}

impl ZipTensors {
    /// Read and check a file written by `zipserv compress` (every compressed
    /// matrix is validated and its checksum verified on load).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let ck = Checkpoint::load(path)?;
        if !ck.any_compressed() {
            return Err(err(format!(
                "{}: not a zipserv-compressed file",
                path.display()
            )));
        }
        Ok(ZipTensors {
            ck,
            device: device.clone(),
        })
    }

    /// A linear layer from `{prefix}.weight` (compressed) and `{prefix}.bias` if present.
    pub fn linear(&self, prefix: &str) -> Result<ZipLinear> {
        let wname = format!("{prefix}.weight");
        let w = self
            .ck
            .compressed(&wname)
            .ok_or_else(|| err(format!("{wname} is not a compressed matrix in this file")))?;
        let bname = format!("{prefix}.bias");
        let bias = if self.ck.contains(&bname) {
            Some(self.ck.tensor(&bname, &self.device)?)
        } else {
            None
        };
        match self.device {
            Device::Cpu => Ok(ZipLinear::new(w.clone(), bias)),
            _ => {
                let (bits, _) = self.ck.bits(&wname)?;
                ZipLinear::from_bits(&bits, w.rows, w.cols, bias, &self.device)
            }
        }
    }

    /// Any tensor by name (compressed ones decoded to BF16).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.ck.tensor(name, device)
    }

    /// Names of the compressed matrices.
    pub fn compressed_names(&self) -> impl Iterator<Item = &String> {
        self.ck.compressed_names()
    }
}
