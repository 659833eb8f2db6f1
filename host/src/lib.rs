//! zipserv: lossless TCA-TBE compression of BF16 LLM weights (ZipServ, ASPLOS '26)
//! with GPU kernels that decode it inside the matrix multiply.
//!
//! * [`encode`] / [`decode`]: the version-1 codec on the CPU (`FORMAT.md`).
//! * [`device_layout`]: the load-time GPU layout and its CPU reference decoder.
//! * [`container`]: compressed safetensors files and model directories.
//! * [`gpu`]: device memory, the decompressor and ZipGEMM launches (cudarc).
pub mod container;
pub mod decode;
pub mod device_layout;
pub mod encode;
pub mod error;
pub mod format;
pub mod gpu;
pub mod ops;
pub mod simd;
pub mod synth;
pub mod window;

pub use error::{Error, Result};
pub use format::{CompressedMatrix, Stats, FORMAT_VERSION};
