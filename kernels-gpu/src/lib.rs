//! zipserv kernels.
//!
//! On the host this crate is a `no_std` library holding [`geometry`]: the one
//! definition of the TCA-TBE tile order (FT/TT/WT/BT), the lane-to-position maps
//! and the GPU ("device") layout. The encoder, the CPU decoder, the layout
//! converter, the tests and the kernels all use it.
//!
//! Built for `nvptx64-nvidia-cuda` (see `cargo xtask build-ptx`) it also holds
//! the GPU kernels in [`device`].
#![no_std]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_gpu_kernel, asm_experimental_arch, stdarch_nvptx)
)]

pub mod geometry;

#[cfg(target_arch = "nvptx64")]
#[macro_use]
pub mod device;

/// Hopper-only kernels (`wgmma`): built for sm_90a only (`--cfg zs_wgmma`).
#[cfg(all(target_arch = "nvptx64", zs_wgmma))]
pub mod hopper;

#[cfg(target_arch = "nvptx64")]
pub mod llm;

#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    unsafe { core::arch::nvptx::trap() }
}
