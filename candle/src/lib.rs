//! zipserv in candle: compressed linear layers and a loader for compressed
//! safetensors files.
//!
//! [`ZipLinear`] keeps its weight in TCA-TBE version 1 and, on the CPU, decodes
//! it for each forward pass (the CPU decoder runs at ~2.5 GB/s on 2 cores) before
//! a candle matmul, so that the weights stay compressed in memory. The CUDA
//! path (zipserv's fused kernels on candle's stream) is the next step.
use candle_core::{DType, Device, Module, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;
use zipserv::container::{decode_checked, kept_checked, read_compressed, MappedFile};
use zipserv::CompressedMatrix;

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// A linear layer `y = x W^T (+ b)` over a compressed BF16 weight `W` (`out x in`).
pub struct ZipLinear {
    weight: CompressedMatrix,
    bias: Option<Tensor>,
}

impl ZipLinear {
    pub fn new(weight: CompressedMatrix, bias: Option<Tensor>) -> Self {
        ZipLinear { weight, bias }
    }
    pub fn in_features(&self) -> usize {
        self.weight.cols
    }
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }
    /// The compressed weight.
    pub fn compressed(&self) -> &CompressedMatrix {
        &self.weight
    }
    /// The weight decoded to a BF16 tensor `[out, in]` on `device`.
    pub fn dense_weight(&self, device: &Device) -> Result<Tensor> {
        let bits = zipserv::decode::decode(&self.weight).map_err(err)?;
        let w: Vec<half::bf16> = bits.into_iter().map(half::bf16::from_bits).collect();
        Tensor::from_vec(w, (self.weight.rows, self.weight.cols), device)
    }
}

impl Module for ZipLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.dense_weight(xs.device())?.to_dtype(xs.dtype())?;
        let y = xs.broadcast_matmul(&w.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

/// The tensors of one compressed safetensors file, compressed ones kept in
/// TCA-TBE until asked for.
pub struct ZipTensors {
    compressed: HashMap<String, CompressedMatrix>,
    kept: HashMap<String, Tensor>,
}

impl ZipTensors {
    /// Read and check a file written by `zipserv compress` (every compressed
    /// matrix is validated and its checksum verified on load).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mf = MappedFile::open(path).map_err(err)?;
        let st = mf.tensors().map_err(err)?;
        let meta = mf
            .zipserv_meta()
            .map_err(err)?
            .ok_or_else(|| err(format!("{}: not a zipserv-compressed file", path.display())))?;
        let mut compressed = HashMap::new();
        for (name, tm) in &meta.compressed {
            decode_checked(&st, name, tm).map_err(err)?;
            compressed.insert(name.clone(), read_compressed(&st, name, tm).map_err(err)?);
        }
        let mut kept = HashMap::new();
        for (name, km) in &meta.kept {
            let t = kept_checked(&st, name, km).map_err(err)?;
            let dtype = match t.dtype() {
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
            kept.insert(
                name.clone(),
                Tensor::from_raw_buffer(t.data(), dtype, t.shape(), device)?,
            );
        }
        Ok(ZipTensors { compressed, kept })
    }

    /// A linear layer from `{prefix}.weight` (compressed) and `{prefix}.bias` if present.
    pub fn linear(&self, prefix: &str) -> Result<ZipLinear> {
        let wname = format!("{prefix}.weight");
        let w = self
            .compressed
            .get(&wname)
            .ok_or_else(|| err(format!("{wname} is not a compressed matrix in this file")))?;
        Ok(ZipLinear::new(
            w.clone(),
            self.kept.get(&format!("{prefix}.bias")).cloned(),
        ))
    }

    /// Any tensor by name (compressed ones decoded to BF16).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        if let Some(t) = self.kept.get(name) {
            return Ok(t.clone());
        }
        let m = self
            .compressed
            .get(name)
            .ok_or_else(|| err(format!("no tensor {name}")))?;
        ZipLinear::new(m.clone(), None).dense_weight(device)
    }

    /// Names of the compressed matrices.
    pub fn compressed_names(&self) -> impl Iterator<Item = &String> {
        self.compressed.keys()
    }
}
