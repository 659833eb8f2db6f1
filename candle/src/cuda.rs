//! candle's CUDA device and zipserv's runtime: one [`Gpu`] per candle device,
//! on that device's stream, so that zipserv's launches are ordered with
//! candle's own work without any synchronisation.
use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use zipserv::gpu::Gpu;

type Registry = Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<Gpu>>>;

/// zipserv's runtime for a candle CUDA device (created on first use).
pub fn gpu_for(dev: &CudaDevice) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Registry> = OnceLock::new();
    let mut map = GPUS.get_or_init(Default::default).lock().unwrap();
    if let Some(g) = map.get(&dev.id()) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::on_stream(dev.cuda_stream()).map_err(crate::err)?);
    map.insert(dev.id(), g.clone());
    Ok(g)
}

/// A fresh BF16 buffer of `n` elements as candle storage (contents undefined).
pub fn alloc_bf16(dev: &CudaDevice, n: usize) -> Result<CudaStorage> {
    let s = unsafe { dev.alloc::<half::bf16>(n.max(1)) }?;
    Ok(CudaStorage::wrap_cuda_slice(s, dev.clone()))
}

/// Device address of element `offset` of a storage of `T`.
pub fn dev_ptr<T: CudaDType>(s: &CudaStorage, offset: usize) -> Result<u64> {
    let sl = s.as_cuda_slice::<T>()?;
    let (p, _sync) = sl.device_ptr(sl.stream());
    Ok(p + (offset * std::mem::size_of::<T>()) as u64)
}
