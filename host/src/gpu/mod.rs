//! The GPU side: device memory, the decompressor and ZipGEMM launches, cuBLAS
//! for baselines and for the prefill path. Uses cudarc with dynamic loading, so
//! the library builds and runs (without a GPU) on machines with no CUDA.
pub mod bench;
pub mod llm;
pub mod plans;

use crate::device_layout::DeviceMatrix;
use crate::error::{Error, Result};
use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Warps per block of every kernel.
pub const WARPS: u32 = zipserv_kernels::geometry::ZG_WARPS as u32;
/// The fused kernel variants `(strips per warp, 8-column blocks, ring stages)`;
/// 0 strips names the warp-independent kernel (one strip a warp, no staging);
/// 1 and 2 the block-staged one (`mma.sync`); **3 the Hopper kernel**
/// (`wgmma`, one strip a warp, four warps a 64-row wgmma tile, activations
/// rewritten first into the tensor cores' layout; sm_90a PTX only, so only on
/// compute capability 9.0). A `_d1` suffix names the build that loads records
/// one tile ahead, not two, `j` one that loads activations just in time, `aS`
/// (warp-independent) one that stages them through a ring of S tiles in the
/// warp's shared memory, `cNN`
/// a register cap of NN, `i2` (Hopper) two activation-image stages in a ring
/// of their own (the records keep `stages`); the last field is the block size in warps (the
/// warp-independent kernel takes any; the others need 8). Must agree with
/// `gemm_kernels!` in `kernels-gpu/src/device.rs` and `hopper.rs`.
pub const GEMM_VARIANTS: [(usize, usize, usize, &str, u32); 49] = [
    (0, 1, 0, "", 8),
    (0, 1, 0, "_d1", 8),
    (0, 1, 0, "_d1c64", 8),
    (0, 2, 0, "", 8),
    (0, 2, 0, "_d1", 8),
    (0, 2, 0, "_d1c64", 8),
    (0, 2, 0, "_d1", 4),
    (0, 4, 0, "", 8),
    (0, 4, 0, "_d1", 8),
    (0, 4, 0, "_d1j", 8),
    (0, 4, 0, "_d1jc80", 8),
    (0, 4, 0, "_d1", 4),
    (0, 4, 0, "_d1j", 4),
    // Activations staged through the warp's shared memory (`aS`, S stages).
    (0, 2, 0, "_d1a2", 4),
    (0, 4, 0, "_d1a2", 4),
    (0, 4, 0, "_d1a2", 8),
    (0, 4, 0, "_d1a3", 4),
    (0, 4, 0, "_a2", 4),
    (0, 2, 0, "_d1a2c64", 4),
    (0, 4, 0, "_d1a2c80", 4),
    (0, 4, 0, "_a2c96", 4),
    (1, 1, 4, "", 8),
    (1, 2, 4, "", 8),
    (1, 4, 4, "", 8),
    (1, 8, 3, "", 8),
    (2, 4, 3, "", 8),
    (2, 8, 3, "", 8),
    (2, 16, 3, "", 8),
    (3, 4, 5, "", 8),
    (3, 8, 5, "", 8),
    (3, 16, 3, "_s3", 8),
    (3, 8, 4, "_w16", 16),
    (3, 16, 4, "_w16", 16),
    (3, 16, 3, "_w16s3", 16),
    (3, 8, 3, "_s3c80", 8),
    (3, 4, 3, "_w4s3", 4),
    (3, 8, 3, "_w4s3", 4),
    (3, 16, 3, "_w4s3", 4),
    (3, 2, 3, "_w4s3", 4),
    (3, 16, 4, "_w4s4", 4),
    (3, 16, 3, "_w4s3i2", 4),
    (3, 8, 3, "_w4s3i2", 4),
    (3, 16, 4, "_w4s4i2", 4),
    // The image by bulk copy (`b`, no proxy fence): the tuner's usual
    // choices at N = 33-128, built both ways.
    (3, 8, 3, "_s3c80b", 8),
    (3, 8, 3, "_w4s3b", 4),
    (3, 8, 3, "_w4s3i2b", 4),
    (3, 16, 3, "_s3b", 8),
    (3, 16, 3, "_w4s3b", 4),
    (3, 16, 3, "_w4s3i2b", 4),
];
/// The kernel families, as the first field of [`GEMM_VARIANTS`] names them.
pub const FAMILIES: [usize; 4] = [0, 1, 2, 3];
/// The Hopper (`wgmma`) family.
pub const HOPPER: usize = 3;
/// Largest N the fused kernel takes.
pub const FUSED_MAX_N: usize = 128;

/// Dynamic shared memory of a variant's block (the warp-independent kernel
/// uses only the exception scratches of its warps).
pub fn variant_smem(variant: usize) -> usize {
    use zipserv_kernels::geometry::{zg_warp_ring_bytes, ZG_SCRATCH};
    let (rs, nb, _, cap, wpb) = GEMM_VARIANTS[variant];
    if rs == 0 {
        wpb as usize * (ZG_SCRATCH + zg_warp_ring_bytes(nb, act_ring_stages(cap)))
    } else {
        gemm_smem(GEMM_VARIANTS[variant])
    }
}

/// Activation ring stages of a warp-independent build, from its suffix
/// (`a2`, `a3`; 0: activations through registers).
pub fn act_ring_stages(cap: &str) -> usize {
    match cap.find('a') {
        Some(i) => cap[i + 1..i + 2].parse().unwrap_or(0),
        None => 0,
    }
}

/// Rows of the matrix one warp (`mma.sync` kernels) or one warpgroup (the
/// Hopper kernel) takes: the row count a variant needs `m` to be a multiple of.
pub fn variant_rows(variant: usize) -> usize {
    match GEMM_VARIANTS[variant].0 {
        HOPPER => 64,
        rs => 16 * rs.max(1),
    }
}

/// Blocks one k split of `variant` launches for `m` rows: a warp per strip
/// (warp-independent kernel) or per `rs` strips (block-staged kernel).
fn block_groups(m: usize, variant: usize) -> u32 {
    let (rs, _, _, _, wpb) = GEMM_VARIANTS[variant];
    let strips_a_warp = if rs == HOPPER { 1 } else { rs.max(1) as u32 };
    ((m / 16) as u32).div_ceil(wpb * strips_a_warp)
}

/// Dynamic shared memory of a block-staged or Hopper variant's block (the
/// Hopper kernel stages one record a warp; an `i2` build has two image stages,
/// the others one ring).
pub fn gemm_smem((rs, nb, st, cap, wpb): (usize, usize, usize, &str, u32)) -> usize {
    use zipserv_kernels::geometry::{hopper_smem_bytes, zipgemm_smem_bytes_w};
    if rs == HOPPER {
        let image_stages = if cap.contains("i2") { 2 } else { st };
        hopper_smem_bytes(wpb as usize, nb, st, image_stages)
    } else {
        zipgemm_smem_bytes_w(wpb as usize, rs, nb, st)
    }
}

fn gpu_err(e: impl std::fmt::Debug) -> Error {
    Error::Gpu(format!("{e:?}"))
}

/// The PTX embedded at build time for an architecture.
pub fn embedded_ptx(sm: u32) -> Result<&'static str> {
    #[cfg(zs_ptx)]
    {
        Ok(if sm == 90 {
            include_str!(env!("ZS_PTX_SM_90A"))
        } else if sm > 90 {
            include_str!(env!("ZS_PTX_SM_90"))
        } else {
            include_str!(env!("ZS_PTX_SM_80"))
        })
    }
    #[cfg(not(zs_ptx))]
    {
        let _ = sm;
        Err(Error::Gpu(
            "this zipserv was built without its GPU kernels: run `cargo xtask build-ptx`, then rebuild".into(),
        ))
    }
}

/// Why no GPU can be used here, or `None` when one can.
pub fn unavailable() -> Option<String> {
    // Linked against libcuda (the candle build), the process would not have
    // started without it; loaded at run time, it may be missing.
    #[cfg(not(feature = "cuda-linked"))]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda.so) found".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => None,
        Ok(_) => Some("the CUDA driver reports no GPU".into()),
        Err(e) => Some(format!("the CUDA driver failed: {e:?}")),
    }
}

/// A matrix in the device layout, resident on the GPU.
pub struct GpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub table: (u32, u32),
    pub records: CudaSlice<u8>,
    pub exc_off: CudaSlice<u32>,
    pub exc: CudaSlice<u16>,
    /// Bytes held on the GPU.
    pub bytes: usize,
}

/// Split-K choice for the fused kernel: `sk` k-splits of `tps` tiles each.
/// With `cluster` (see [`cluster_split_ok`]) the `sk` blocks
/// of a row group run as one thread-block cluster and sum their partials
/// through distributed shared memory; else through an FP32 workspace in L2
/// (atomic reductions, the last block converts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Split {
    pub sk: u32,
    pub tps: u32,
    pub cluster: bool,
    /// The warp-independent kernel only: one block a 16-row strip, its `sk`
    /// warps the strip's k splits, summed in the block's shared memory (no
    /// workspace, no atomics).
    pub block: bool,
}

/// Largest (portable) thread-block cluster, so the largest clustered split.
pub const MAX_CLUSTER: u32 = zipserv_kernels::geometry::ZG_MAX_CLUSTER as u32;

/// Most k splits one block takes ([`Split::block`]): 16 warps.
pub const MAX_BLOCK_SPLIT: u32 = 16;

impl Split {
    /// The same split summed on chip (see [`Split::cluster`]).
    pub fn clustered(self) -> Split {
        Split {
            cluster: true,
            ..self
        }
    }
    /// The same split summed inside one block (see [`Split::block`]).
    pub fn in_block(self) -> Split {
        Split {
            block: true,
            ..self
        }
    }
}

/// A fused launch plan: kernel variant (index into [`GEMM_VARIANTS`]) and split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    pub variant: usize,
    pub split: Split,
}

impl Plan {
    pub fn describe(&self) -> String {
        let (rs, nb, st, cap, wpb) = GEMM_VARIANTS[self.variant];
        let w = if wpb == WARPS || cap.contains(&format!("w{wpb}")) {
            String::new()
        } else {
            format!("w{wpb}")
        };
        let c = if self.split.cluster {
            "c"
        } else if self.split.block {
            "b"
        } else {
            ""
        };
        format!("r{rs}nb{nb}s{st}{cap}{w} sk={}{c}", self.split.sk)
    }
}

struct Scratch {
    ws: Option<CudaSlice<f32>>,
    counters: Option<CudaSlice<u32>>,
    dense: Option<CudaSlice<u16>>,
    /// The Hopper kernel's activation image.
    image: Option<CudaSlice<u8>>,
    /// Flash-decoding partials.
    attn_ws: Option<CudaSlice<f32>>,
}

/// One GPU with the zipserv kernels loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub sms: u32,
    pub sm: u32,
    decompress_fn: CudaFunction,
    gather_fn: CudaFunction,
    /// `zs_clock_probe` (`None` in a PTX loaded by `ZIPSERV_PTX` without it).
    clock_fn: Option<CudaFunction>,
    /// One per [`GEMM_VARIANTS`] row; `None` where this card's PTX lacks it.
    gemm_fns: Vec<Option<CudaFunction>>,
    /// The largest block each of them launches with (its registers decide).
    gemm_max_threads: Vec<u32>,
    /// The Hopper kernel's activation rewrite (sm_90a only).
    image_fn: Option<CudaFunction>,
    /// Launch the Hopper GEMM as a programmatic dependent of the activation
    /// rewrite (sm_90a, the embedded kernels; `ZS_NO_PDL=1` turns it off).
    pdl: bool,
    /// Launch every fused GEMM (and the activation rewrite) as a programmatic
    /// dependent of whatever kernel comes before it on the stream: its blocks
    /// start in that kernel's tail and prefetch their first records and
    /// exception lists before they wait for it (compute capability 9.0 and
    /// up, kernels that wait; `ZS_NO_CHAIN=1` or `ZS_NO_PDL=1` turns it off).
    chain: bool,
    /// Kernel families whose splits the tuner may sum in a cluster (compute
    /// capability 9.0 and up: the Hopper and the warp-independent kernels).
    /// For A/B runs `ZS_NO_CLUSTER=1` turns it off, `ZS_NO_CLUSTER=0` (or
    /// `=3`) only for that family.
    clusters: [bool; 4],

    llm: llm::LlmFns,
    blas: CudaBlas,
    scratch: Mutex<Scratch>,
    tuned: Mutex<HashMap<(usize, usize, usize), Plan>>,
}

impl Gpu {
    /// Open GPU `ordinal` and load the kernels.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if let Some(why) = unavailable() {
            return Err(Error::Gpu(why));
        }
        let ctx = CudaContext::new(ordinal).map_err(gpu_err)?;
        // Raw pointers and stream order only: no per-buffer event tracking.
        unsafe { ctx.disable_event_tracking() };
        Gpu::on_stream(ctx.default_stream())
    }

    /// The kernels loaded into `stream`'s context, every launch on `stream`
    /// (for example a candle device's stream: launches are then ordered with
    /// the framework's own work).
    pub fn on_stream(stream: Arc<CudaStream>) -> Result<Gpu> {
        let ctx = stream.context().clone();
        let (maj, min) = ctx.compute_capability().map_err(gpu_err)?;
        let sm = (maj * 10 + min) as u32;
        if sm < 80 {
            return Err(Error::Gpu(format!(
                "compute capability {maj}.{min}: zipserv needs 8.0 or newer"
            )));
        }
        let name = ctx.name().map_err(gpu_err)?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(gpu_err)? as u32;
        // Kernel experiments: `ZIPSERV_PTX=file` loads that PTX instead of the
        // embedded one (same entry points), so two builds can be timed on one
        // machine. Announced on stderr: it is never silent.
        // (Set but empty: the embedded kernels, as if unset.)
        let custom = std::env::var_os("ZIPSERV_PTX").filter(|v| !v.is_empty());
        let custom_ptx = custom.is_some();
        let ptx = match custom {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Gpu(format!("ZIPSERV_PTX={}: {e}", Path::new(&path).display()))
                })?;
                eprintln!(
                    "zipserv: kernels from ZIPSERV_PTX={}",
                    Path::new(&path).display()
                );
                text
            }
            None => embedded_ptx(sm)?.to_string(),
        };
        // What an experiment's PTX supports, read from its text: the Hopper
        // GEMM waiting for the image (`griddepcontrol.wait`: PDL is safe);
        // the warp-independent GEMM and, on sm_90a, the image rewrite waiting
        // for the kernel before them (chained launches are safe); reading
        // their cluster (clustered splits). The embedded PTX has all three.
        let waits =
            |name: &str| entry_text(&ptx, name).is_some_and(|t| t.contains("griddepcontrol.wait"));
        let waits_for_image = waits("zs_gemm_r3_nb4");
        let chain_safe = waits("zs_gemm_r0_nb1") && (sm != 90 || waits("zs_act_image"));
        let cluster_aware = ptx.contains("%cluster_nctarank");
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(gpu_err)?;
        let decompress_fn = module.load_function("zs_decompress").map_err(gpu_err)?;
        let gather_fn = module.load_function("zs_gather_rows").map_err(gpu_err)?;
        let clock_fn = module.load_function("zs_clock_probe").ok();
        let llm = llm::LlmFns::load(&module)?;
        // The sm_90a PTX (compute capability 9.0 exactly) has the Hopper family.
        let hopper = sm == 90;
        let gemm_fns = GEMM_VARIANTS
            .iter()
            .map(|&(rs, nb, _, cap, wpb)| {
                if rs == HOPPER && !hopper {
                    return Ok(None);
                }
                let name = format!("zs_gemm_r{rs}_nb{nb}{cap}");
                let f = match module.load_function(&name) {
                    Ok(f) => f,
                    // An experiment's PTX (another build) may lack a variant.
                    Err(_) if custom_ptx => return Ok(None),
                    Err(e) => return Err(gpu_err(e)),
                };
                // Rows of one kernel with several block sizes share the
                // function: its limit is the largest of theirs (and, for the
                // warp-independent kernel, of a split inside a block of 16
                // warps), never below the default 48 KiB.
                let smem = (0..GEMM_VARIANTS.len())
                    .filter(|&v| {
                        let (r2, n2, _, c2, _) = GEMM_VARIANTS[v];
                        (r2, n2, c2) == (rs, nb, cap)
                    })
                    .map(|variant| {
                        let widest = split_for(MAX_BLOCK_SPLIT, MAX_BLOCK_SPLIT).in_block();
                        let block = if rs == 0 {
                            plan_smem(Plan { variant, split: widest })
                        } else {
                            0
                        };
                        variant_smem(variant).max(block)
                    })
                    .max()
                    .unwrap_or(0);
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem.max(48 << 10) as i32,
                )
                .map_err(gpu_err)?;
                // A build whose registers do not let its block size launch
                // here is left out (the tuner never sees it).
                let max_threads = f
                    .get_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                    )
                    .map_err(gpu_err)?;
                if (max_threads as u32) < wpb * 32 {
                    return Ok(None);
                }
                Ok(Some((f, max_threads as u32)))
            })
            .collect::<Result<Vec<_>>>()?;
        let gemm_max_threads = gemm_fns
            .iter()
            .map(|f| f.as_ref().map_or(0, |f| f.1))
            .collect();
        let gemm_fns = gemm_fns.into_iter().map(|f| f.map(|f| f.0)).collect();
        let pdl = hopper && waits_for_image && std::env::var_os("ZS_NO_PDL").is_none();
        let chain = sm >= 90
            && chain_safe
            && std::env::var_os("ZS_NO_PDL").is_none()
            && std::env::var_os("ZS_NO_CHAIN").is_none();
        let no_cluster = std::env::var("ZS_NO_CLUSTER").ok();
        let clusters = [0, 1, 2, 3].map(|rs| {
            sm >= 90
                && cluster_aware
                && clusterable(rs)
                && match no_cluster.as_deref() {
                    None => true,
                    Some(f) if f == "0" || f == "3" => f != rs.to_string(),
                    Some(_) => false,
                }
        });
        let image_fn = if hopper {
            let f = module.load_function("zs_act_image").map_err(gpu_err)?;
            // The GEMM that follows as its programmatic dependent starts while
            // the image kernel's blocks still run: with the image kernel
            // preferring the largest shared-memory carveout, the
            // multiprocessors need not be reconfigured (drained) before the
            // GEMM's blocks fit beside it. Without this, clustered GEMM plans
            // launched after cuBLAS (which leaves another carveout) ran a
            // third slower (BENCHMARKS.md, session 5). `ZS_IMAGE_CARVEOUT=0`
            // leaves the driver's default, for A/B runs.
            if std::env::var("ZS_IMAGE_CARVEOUT").as_deref() != Ok("0") {
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                    100,
                )
                .map_err(gpu_err)?;
            }
            Some(f)
        } else {
            None
        };
        let blas = CudaBlas::new(stream.clone()).map_err(gpu_err)?;
        Ok(Gpu {
            ctx,
            stream,
            name,
            sms,
            sm,
            decompress_fn,
            gather_fn,
            clock_fn,
            gemm_fns,
            gemm_max_threads,
            image_fn,
            pdl,
            chain,
            clusters,
            llm,
            blas,
            scratch: Mutex::new(Scratch {
                ws: None,
                counters: None,
                dense: None,
                image: None,
                attn_ws: None,
            }),
            tuned: Mutex::new(HashMap::new()),
        })
    }

    /// Run every later launch (kernels and cuBLAS) on the caller's `stream`
    /// (of this GPU's context). Launches are asynchronous on it; nothing here
    /// synchronises except [`Gpu::sync`] and the timing helpers.
    pub fn set_stream(&mut self, stream: Arc<CudaStream>) -> Result<()> {
        if !Arc::ptr_eq(stream.context(), &self.ctx) {
            return Err(Error::Gpu(
                "the stream belongs to another CUDA context".into(),
            ));
        }
        // Work already queued (workspace clearing included) finishes first.
        self.sync()?;
        unsafe { self.blas.set_stream(stream.clone()) }.map_err(gpu_err)?;
        self.stream = stream;
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(gpu_err)
    }

    /// Raw device address of a buffer.
    pub fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// Validate a device-layout matrix, then copy it to the GPU.
    pub fn upload(&self, d: &DeviceMatrix) -> Result<GpuMatrix> {
        d.validate()?;
        let s = &self.stream;
        let exc: Vec<u16> = if d.exc.is_empty() {
            vec![0]
        } else {
            d.exc.clone()
        };
        Ok(GpuMatrix {
            rows: d.rows,
            cols: d.cols,
            table: d.table_words(),
            records: s.clone_htod(&d.records).map_err(gpu_err)?,
            exc_off: s.clone_htod(&d.exc_off).map_err(gpu_err)?,
            exc: s.clone_htod(&exc).map_err(gpu_err)?,
            bytes: d.device_bytes(),
        })
    }

    /// Decompress into `out` (`rows * cols` BF16 bit patterns, row-major):
    /// asynchronous on the GPU's stream, no allocation.
    pub fn decompress(&self, m: &GpuMatrix, out: &CudaSlice<u16>) -> Result<()> {
        self.decompress_raw(m, self.ptr(out), out.len())
    }

    fn decompress_raw(&self, m: &GpuMatrix, out: u64, len: usize) -> Result<()> {
        if len < m.rows * m.cols {
            return Err(Error::invalid(
                "decompress: output buffer is smaller than the matrix",
            ));
        }
        let tiles = (m.rows / 16) * (m.cols / 64);
        let blocks = (tiles as u32).div_ceil(WARPS).min(self.sms * 16);
        let (rec, eo, ex) = (self.ptr(&m.records), self.ptr(&m.exc_off), self.ptr(&m.exc));
        let (r, c) = (m.rows as u32, m.cols as u32);
        let mut b = self.stream.launch_builder(&self.decompress_fn);
        b.arg(&rec)
            .arg(&eo)
            .arg(&ex)
            .arg(&m.table.0)
            .arg(&m.table.1)
            .arg(&out)
            .arg(&r)
            .arg(&c);
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (WARPS * 32, 1, 1),
                // One exception scratch a warp.
                shared_mem_bytes: WARPS * zipserv_kernels::geometry::ZG_SCRATCH as u32,
            })
        }
        .map_err(gpu_err)?;
        Ok(())
    }

    /// Row gather from the device layout (an embedding lookup): `out` gets
    /// rows `ids[0..n]` of `m`, BF16 row-major; asynchronous.
    ///
    /// # Safety
    /// `ids` holds `n` u32 row indices below `m.rows` (larger ones read the
    /// last row), `out` holds `n * m.cols` BF16 values.
    pub unsafe fn gather_rows(&self, m: &GpuMatrix, ids: u64, n: usize, out: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let warps = n * (m.cols / 64);
        let blocks = (warps as u32).div_ceil(WARPS).min(self.sms * 16);
        let (rec, eo, ex) = (self.ptr(&m.records), self.ptr(&m.exc_off), self.ptr(&m.exc));
        let (nn, r, c) = (n as u32, m.rows as u32, m.cols as u32);
        let mut b = self.stream.launch_builder(&self.gather_fn);
        b.arg(&rec)
            .arg(&eo)
            .arg(&ex)
            .arg(&m.table.0)
            .arg(&m.table.1)
            .arg(&ids)
            .arg(&nn)
            .arg(&out)
            .arg(&r)
            .arg(&c);
        b.launch(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: WARPS * zipserv_kernels::geometry::ZG_SCRATCH as u32,
        })
        .map_err(gpu_err)?;
        Ok(())
    }

    /// A plan for shape (m, k, n) when none was tuned: about three blocks a
    /// multiprocessor.
    pub fn default_plan(&self, m: usize, k: usize, n: usize) -> Plan {
        let kt = (k / 64) as u32;
        // Above N = 16 on Hopper, the one-warpgroup wgmma build (the tuner's
        // usual choice there, BENCHMARKS.md); else the mma.sync kernels.
        let hopper = (n > 16 && m.is_multiple_of(64))
            .then(|| {
                let need = n.div_ceil(8);
                (0..GEMM_VARIANTS.len())
                    .filter(|&v| self.has_variant(v))
                    .find(|&v| {
                        let (rs, nb, _, cap, _) = GEMM_VARIANTS[v];
                        rs == HOPPER && cap == "_w4s3" && nb >= need
                    })
            })
            .flatten();
        let variant = hopper
            .or_else(|| [0, 1, 2].into_iter().find_map(|rs| variant_for(rs, n)))
            .expect("n <= FUSED_MAX_N");
        let sk = (self.sms * 3)
            .div_ceil(block_groups(m, variant))
            .clamp(1, kt.div_ceil(2).max(1));
        Plan {
            variant,
            split: split_for(kt, sk),
        }
    }

    /// Use the plans saved for this card in `path` (see [`plans::PlanCache`]);
    /// returns how many were loaded (0 when the file is missing or written for
    /// another card or another build's kernels).
    pub fn load_plans(&self, path: &std::path::Path) -> Result<usize> {
        let Some(c) = plans::PlanCache::load(path, &self.name)? else {
            return Ok(0);
        };
        let mut t = self.tuned.lock().unwrap();
        let mut loaded = 0;
        for e in &c.plans {
            // (A file of this card's name has this card's kernels; checked anyway.)
            if self.has_variant(e.variant) {
                t.insert((e.m, e.k, e.n8), e.plan());
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Save the plans [`Gpu::tune`] chose (with those loaded before) to `path`.
    pub fn save_plans(&self, path: &std::path::Path) -> Result<usize> {
        let mut entries: Vec<plans::PlanEntry> = self
            .tuned
            .lock()
            .unwrap()
            .iter()
            .map(|(&(m, k, n8), p)| plans::PlanEntry {
                m,
                k,
                n8,
                variant: p.variant,
                sk: p.split.sk,
                tps: p.split.tps,
                cluster: p.split.cluster,
                block: p.split.block,
            })
            .collect();
        entries.sort_by_key(|e| (e.m, e.k, e.n8));
        let n = entries.len();
        plans::PlanCache {
            fingerprint: plans::fingerprint(),
            card: self.name.clone(),
            plans: entries,
        }
        .save(path)?;
        Ok(n)
    }

    /// The plan used for (m, k, n): tuned if [`Gpu::tune`] ran, else the default.
    pub fn plan(&self, m: usize, k: usize, n: usize) -> Plan {
        let tuned = self
            .tuned
            .lock()
            .unwrap()
            .get(&(m, k, n.div_ceil(8)))
            .copied();
        tuned.unwrap_or_else(|| self.default_plan(m, k, n))
    }

    fn ensure_scratch(
        &self,
        ws_len: usize,
        counters: usize,
        dense: usize,
    ) -> Result<(u64, u64, u64)> {
        let mut guard = self.scratch.lock().unwrap();
        let s = &mut *guard;
        let ws = self.grown(&mut s.ws, ws_len)?;
        let ctr = self.grown(&mut s.counters, counters)?;
        let dense = if dense > 0 {
            self.grown(&mut s.dense, dense)?
        } else {
            s.dense.as_ref().map(|d| self.ptr(d)).unwrap_or(0)
        };
        Ok((ws, ctr, dense))
    }

    /// The attention kernel's flash-decoding workspace (`ws` floats): address.
    fn attn_scratch(&self, ws: usize) -> Result<u64> {
        let mut guard = self.scratch.lock().unwrap();
        self.grown(&mut guard.attn_ws, ws)
    }

    /// The address of `slot`'s buffer, first replaced by a zeroed one of `len`
    /// elements (at least one) if it is missing or shorter.
    fn grown<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        slot: &mut Option<CudaSlice<T>>,
        len: usize,
    ) -> Result<u64> {
        if slot.as_ref().is_none_or(|w| w.len() < len) {
            *slot = Some(self.stream.alloc_zeros::<T>(len.max(1)).map_err(gpu_err)?);
        }
        Ok(self.ptr(slot.as_ref().unwrap()))
    }

    /// Reserve the workspaces for matrices up to `max_m x max_k` and any N,
    /// so that no call allocates afterwards ([`split_workspace_len`] does not
    /// depend on N).
    pub fn reserve(&self, max_m: usize, max_k: usize) -> Result<()> {
        let widest = GEMM_VARIANTS.iter().map(|v| v.1).max().unwrap_or(1);
        self.ensure_scratch(
            split_workspace_len(max_m, widest),
            max_m / 16,
            max_m * max_k,
        )?;
        Ok(())
    }

    /// Fused ZipGEMM: `y[n][m] = sum_k x[n][k] * W[m][k]` for `n < n_rows`
    /// (x: `n x K` BF16 row-major, y: `n x M` BF16 row-major), FP32 accumulation.
    pub fn gemm_fused(
        &self,
        w: &GpuMatrix,
        x: u64,
        y: u64,
        n: usize,
        plan: Option<Plan>,
    ) -> Result<()> {
        if n == 0 || n > FUSED_MAX_N {
            return Err(Error::invalid(format!(
                "fused ZipGEMM takes 1..={FUSED_MAX_N} rows, got {n}"
            )));
        }
        let (m, k) = (w.rows, w.cols);
        let plan = plan.unwrap_or_else(|| self.plan(m, k, n));
        let sp = plan.split;
        let kt = (k / 64) as u32;
        if sp.sk == 0 || sp.tps == 0 || sp.tps.checked_mul(sp.sk).is_none_or(|c| c < kt) {
            return Err(Error::invalid(format!(
                "split {sp:?} does not cover {kt} k tiles"
            )));
        }
        let (rs, nb, _, _, wpb) = GEMM_VARIANTS[plan.variant];
        if sp.cluster && (!cluster_split_ok(rs, sp.sk) || self.sm < 90) {
            return Err(Error::invalid(format!(
                "plan {}: a clustered split needs compute capability 9.0, the Hopper or the \
                 warp-independent kernel and 2..={MAX_CLUSTER} splits",
                plan.describe()
            )));
        }
        if sp.block && (sp.cluster || !block_split_ok(rs, sp.sk)) {
            return Err(Error::invalid(format!(
                "plan {}: a split inside a block needs the warp-independent kernel and \
                 2..={MAX_BLOCK_SPLIT} splits",
                plan.describe()
            )));
        }
        if !self.plan_fits(plan) {
            return Err(Error::invalid(format!(
                "plan {}: {} warps a block need more registers than a multiprocessor has \
                 for this kernel",
                plan.describe(),
                sp.sk
            )));
        }
        if nb * 8 < n || m % variant_rows(plan.variant) != 0 {
            return Err(Error::invalid(format!(
                "plan {} does not fit {m}x{k}, n = {n}",
                plan.describe()
            )));
        }
        let Some(f) = &self.gemm_fns[plan.variant] else {
            return Err(Error::invalid(format!(
                "plan {}: this kernel is not built for sm_{}",
                plan.describe(),
                self.sm
            )));
        };
        let on_chip = sp.sk == 1 || sp.cluster || sp.block;
        let ws_len = if on_chip {
            0
        } else {
            split_workspace_len(m, nb)
        };
        let (ws, ctr, _) = self.ensure_scratch(ws_len, m / 16, 0)?;
        // The Hopper kernel reads the activations rewritten into wgmma's layout.
        let x = if rs == HOPPER {
            self.act_image(x, n, k, nb)?
        } else {
            x
        };

        let (blocks, wpb, sk_arg) = if sp.block {
            let flag = zipserv_kernels::geometry::ZG_SPLIT_IN_BLOCK;
            ((m / 16) as u32, sp.sk, sp.sk | flag)
        } else {
            (block_groups(m, plan.variant) * sp.sk, wpb, sp.sk)
        };
        let smem = plan_smem(plan) as u32;
        let (rec, eo, ex) = (self.ptr(&w.records), self.ptr(&w.exc_off), self.ptr(&w.exc));
        let (mm, nn, kk) = (m as u32, n as u32, k as u32);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (wpb * 32, 1, 1),
            shared_mem_bytes: smem,
        };
        let (t0, t1) = w.table;
        let mut args: [*mut std::ffi::c_void; 14] = [
            arg(&rec),
            arg(&eo),
            arg(&ex),
            arg(&t0),
            arg(&t1),
            arg(&x),
            arg(&y),
            arg(&ws),
            arg(&ctr),
            arg(&mm),
            arg(&nn),
            arg(&kk),
            arg(&sk_arg),
            arg(&sp.tps),
        ];
        // The Hopper kernel: a programmatic dependent of `zs_act_image`
        // (launched just before on this stream); its blocks start while the
        // image is written, request their first records, then wait for it.
        // The others: of whatever kernel came before (`chain`).
        let dependent = if rs == HOPPER { self.pdl } else { self.chain };
        let cluster = if sp.cluster { sp.sk } else { 1 };
        unsafe { self.launch_raw(f, cfg, &mut args, dependent, cluster) }
    }

    /// Launch `f` on this stream (`cuLaunchKernelEx`). With `dependent`, as a
    /// programmatic dependent of the kernel before it (programmatic stream
    /// serialisation): it may start once every block of that kernel has run
    /// `griddepcontrol.launch_dependents`, and must `griddepcontrol.wait`
    /// before it reads what that kernel writes. `cluster` > 1 launches
    /// clusters of that many consecutive blocks (the grid a multiple of it).
    ///
    /// # Safety
    /// `args` point to `f`'s parameters, in order, with their types.
    unsafe fn launch_raw(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut [*mut std::ffi::c_void],
        dependent: bool,
        cluster: u32,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(gpu_err)?;
        let mut attrs = launch_attrs(dependent, cluster);
        let c = launch_config(&cfg, self.stream.cu_stream(), &mut attrs);
        cudarc::driver::sys::cuLaunchKernelEx(
            &c,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(gpu_err)
    }

    /// How many clusters of `cluster` blocks of fused `variant` can be
    /// resident at once (0: such a cluster cannot be launched).
    fn max_active_clusters(&self, plan: Plan) -> u32 {
        let (variant, cluster) = (plan.variant, plan.split.sk);
        let Some(f) = &self.gemm_fns[variant] else {
            return 0;
        };
        let wpb = GEMM_VARIANTS[variant].4;
        let cfg = LaunchConfig {
            grid_dim: (cluster, 1, 1),
            block_dim: (wpb * 32, 1, 1),
            shared_mem_bytes: plan_smem(plan) as u32,
        };
        let mut attrs = launch_attrs(false, cluster);
        let mut count: std::ffi::c_int = 0;
        let ok = unsafe {
            let c = launch_config(&cfg, self.stream.cu_stream(), &mut attrs);
            cudarc::driver::sys::cuOccupancyMaxActiveClusters(&mut count, f.cu_function(), &c)
                .result()
                .is_ok()
        };
        if ok {
            count.max(0) as u32
        } else {
            0
        }
    }

    /// Rewrite `x` (`n x k` BF16) into the Hopper kernel's activation image for
    /// `8 nb` rows (zero past `n`), in a reusable scratch; returns its address.
    fn act_image(&self, x: u64, n: usize, k: usize, nb: usize) -> Result<u64> {
        let f = self
            .image_fn
            .as_ref()
            .ok_or_else(|| Error::Gpu("the activation image kernel needs sm_90a".into()))?;
        let bytes = (k / 64) * nb * 1024;
        let img = {
            let mut guard = self.scratch.lock().unwrap();
            self.grown(&mut guard.image, bytes)?
        };
        let threads = ((k / 64) * 2 * 8 * nb * 4) as u32;
        let (nn, kk, nbb) = (n as u32, k as u32, nb as u32);
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args: [*mut std::ffi::c_void; 5] =
            [arg(&x), arg(&img), arg(&nn), arg(&kk), arg(&nbb)];
        // A programmatic dependent of the kernel before it (`chain`): it
        // waits for that kernel before reading `x`.
        unsafe { self.launch_raw(f, cfg, &mut args, self.chain, 1)? };
        Ok(img)
    }

    /// Whether this card's PTX has fused kernel `variant`.
    pub fn has_variant(&self, variant: usize) -> bool {
        self.gemm_fns.get(variant).is_some_and(|f| f.is_some())
    }

    /// Whether a block of `plan` can launch here: a split inside a block
    /// needs `sk` warps' registers on one multiprocessor (16 warps fit the
    /// builds of up to 128 registers); other plans' blocks always do.
    pub fn plan_fits(&self, plan: Plan) -> bool {
        if !plan.split.block {
            return true;
        }
        // (The shared-memory limit set at load covers 16 warps.)
        self.gemm_max_threads
            .get(plan.variant)
            .is_some_and(|&t| plan.split.sk * 32 <= t)
    }

    /// [`variants_for`], restricted to the kernels this card has.
    pub fn variants(&self, rs: usize, n: usize) -> Vec<usize> {
        variants_for(rs, n)
            .into_iter()
            .filter(|&v| self.has_variant(v))
            .collect()
    }

    /// cuBLAS `y = x W^T` on a dense BF16 `W` (`m x k` row-major), FP32 compute.
    pub fn cublas_gemm(&self, w: u64, x: u64, y: u64, m: usize, n: usize, k: usize) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                w as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                k as i32,
                x as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                k as i32,
                (&beta) as *const f32 as *const _,
                y as *mut _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                m as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(gpu_err)
    }

    /// Prefill path: decompress into a reusable scratch, then cuBLAS.
    pub fn gemm_decoupled(&self, w: &GpuMatrix, x: u64, y: u64, n: usize) -> Result<()> {
        let (_, _, dense) = self.ensure_scratch(0, 0, w.rows * w.cols)?;
        self.decompress_raw(w, dense, w.rows * w.cols)?;
        self.cublas_gemm(dense, x, y, w.rows, n, w.cols)
    }

    /// Time `f` with CUDA events: median over `runs` runs (milliseconds), after
    /// `warmup` untimed runs. `f(i)` gets the run index (for rotating inputs).
    pub fn time_ms(
        &self,
        warmup: usize,
        runs: usize,
        f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        Ok(self.time_pair_ms(warmup, runs, |_| Ok(()), f)?.1)
    }

    /// Median GPU time of one call of `f` with the calls queued back to back
    /// (no host synchronisation between them, an event between every two
    /// calls): what a serving loop that enqueues ahead of the GPU sees. The
    /// synchronised timings ([`Gpu::time_ms`]) start every call on an idle
    /// GPU, so they also count the host's launch latency (a few µs a call).
    pub fn time_queued_ms(
        &self,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        for i in 0..warmup {
            f(i)?;
        }
        let evs = (0..=runs)
            .map(|_| self.timing_event())
            .collect::<Result<Vec<_>>>()?;
        evs[0].record(&self.stream).map_err(gpu_err)?;
        for i in 0..runs {
            f(warmup + i)?;
            evs[i + 1].record(&self.stream).map_err(gpu_err)?;
        }
        evs[runs].synchronize().map_err(gpu_err)?;
        let t = (0..runs)
            .map(|i| {
                evs[i]
                    .elapsed_ms(&evs[i + 1])
                    .map(|x| x as f64)
                    .map_err(gpu_err)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(median(t))
    }

    /// GPU time of one call of `f` in a span of `calls` calls queued back to
    /// back with nothing between them (no event, no synchronisation: a chained
    /// launch may overlap the call before it, as in a model), the span's mean
    /// a call; median over `spans` spans, after `warmup` untimed calls.
    pub fn time_span_ms(
        &self,
        warmup: usize,
        spans: usize,
        calls: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        for i in 0..warmup {
            f(i)?;
        }
        let (a, b) = (self.timing_event()?, self.timing_event()?);
        let mut t = Vec::with_capacity(spans);
        let mut i = warmup;
        for _ in 0..spans {
            a.record(&self.stream).map_err(gpu_err)?;
            for _ in 0..calls {
                f(i)?;
                i += 1;
            }
            b.record(&self.stream).map_err(gpu_err)?;
            b.synchronize().map_err(gpu_err)?;
            t.push(a.elapsed_ms(&b).map_err(gpu_err)? as f64 / calls as f64);
        }
        Ok(median(t))
    }

    /// The SM clock under load, in MHz: a probe kernel spins four blocks of
    /// 128 threads on every SM for 20 M cycles of the SM clock (about 10 ms),
    /// timed with events. `None` where the loaded PTX has no probe.
    pub fn sm_clock_mhz(&self) -> Result<Option<f64>> {
        let Some(f) = &self.clock_fn else {
            return Ok(None);
        };
        let out = self.stream.alloc_zeros::<u64>(1).map_err(gpu_err)?;
        let cycles: u64 = 20_000_000;
        // One timed launch, no warm-up (the probe's time is its spin).
        let ms = self.time_ms(0, 1, |_| {
            let mut l = self.stream.launch_builder(f);
            l.arg(&out).arg(&cycles);
            unsafe {
                l.launch(LaunchConfig {
                    grid_dim: (self.sms * 4, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map(|_| ())
            .map_err(gpu_err)
        })?;
        let counted = self.stream.clone_dtoh(&out).map_err(gpu_err)?[0];
        Ok(Some(counted as f64 / (ms * 1e3)))
    }

    /// The card's maximum SM clock in MHz (the driver's figure).
    pub fn max_clock_mhz(&self) -> Result<f64> {
        let khz = self
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
            .map_err(gpu_err)?;
        Ok(khz as f64 / 1e3)
    }

    /// An event for timing (with timestamps).
    fn timing_event(&self) -> Result<cudarc::driver::CudaEvent> {
        self.ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(gpu_err)
    }

    /// Time `f` and `g` alternately (f, g, f, g, ...), each launch between its
    /// own pair of CUDA events: medians over `runs` runs each (milliseconds),
    /// after `warmup` untimed rounds. Both see the same clocks and neighbours.
    pub fn time_pair_ms(
        &self,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut(usize) -> Result<()>,
        mut g: impl FnMut(usize) -> Result<()>,
    ) -> Result<(f64, f64)> {
        for i in 0..warmup {
            f(i)?;
            g(i)?;
        }
        let (a, b, c) = (
            self.timing_event()?,
            self.timing_event()?,
            self.timing_event()?,
        );
        let (mut tf, mut tg) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs {
            a.record(&self.stream).map_err(gpu_err)?;
            f(warmup + i)?;
            b.record(&self.stream).map_err(gpu_err)?;
            g(warmup + i)?;
            c.record(&self.stream).map_err(gpu_err)?;
            c.synchronize().map_err(gpu_err)?;
            tf.push(a.elapsed_ms(&b).map_err(gpu_err)? as f64);
            tg.push(b.elapsed_ms(&c).map_err(gpu_err)? as f64);
        }
        Ok((median(tf), median(tg)))
    }

    /// Candidate plans for (m, k, n): both strip counts, several splits.
    pub fn candidates(&self, m: usize, k: usize, n: usize) -> Vec<Plan> {
        let kt = (k / 64) as u32;
        let mut cands: Vec<Plan> = Vec::new();
        // ZS_FORCE_RS / ZS_FORCE_SK restrict the candidates (for profiling).
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let (force_rs, force_sk) = (env("ZS_FORCE_RS"), env("ZS_FORCE_SK"));
        for rs in FAMILIES {
            if force_rs.is_some_and(|f| f as usize != rs) {
                continue;
            }
            for variant in self.variants(rs, n) {
                if !m.is_multiple_of(variant_rows(variant)) {
                    continue;
                }
                let wpb = GEMM_VARIANTS[variant].4;
                let cta_groups = block_groups(m, variant);
                // Splits that fill whole waves of resident blocks, and a few
                // that overshoot them.
                let Some(f) = &self.gemm_fns[variant] else {
                    continue;
                };
                let per_sm = f
                    .occupancy_max_active_blocks_per_multiprocessor(
                        wpb * 32,
                        variant_smem(variant),
                        None,
                    )
                    .unwrap_or(1)
                    .max(1);
                let slots = per_sm * self.sms;
                let mut sks: Vec<u32> = (1..=3).map(|w| (w * slots) / cta_groups).collect();
                sks.extend([1, 2, 4].map(|b| (self.sms * b).div_ceil(cta_groups)));
                sks.push(1);
                let sks_all = sks.clone();
                for sk in sks {
                    let sk = sk.clamp(1, kt);
                    if force_sk.is_some_and(|f| f != sk) {
                        continue;
                    }
                    let p = Plan {
                        variant,
                        split: split_for(kt, sk),
                    };
                    if !cands.contains(&p) {
                        cands.push(p);
                    }
                }
                // Splits summed on chip: for the Hopper kernel every cluster
                // size the card can hold, for the warp-independent kernel the
                // sizes above that fit a cluster.
                if self.clusters[rs] {
                    let sizes: Vec<u32> = if rs == HOPPER {
                        (2..=MAX_CLUSTER).collect()
                    } else {
                        sks_all
                            .iter()
                            .copied()
                            .filter(|&k| cluster_split_ok(rs, k))
                            .collect()
                    };
                    for sk in sizes.into_iter().filter(|&k| k <= kt) {
                        let split = split_for(kt, sk).clustered();
                        if split.sk < 2 || force_sk.is_some_and(|f| f != split.sk) {
                            continue;
                        }
                        let p = Plan { variant, split };
                        if !cands.contains(&p) && self.max_active_clusters(p) > 0 {
                            cands.push(p);
                        }
                    }
                }
                // Splits inside a block (warp-independent kernel; the block
                // size is the split, so one row of each kernel is enough).
                let (_, nb, _, cap, _) = GEMM_VARIANTS[variant];
                let first_row = GEMM_VARIANTS
                    .iter()
                    .position(|v| (v.0, v.1, v.3) == (rs, nb, cap));
                // ZS_NO_BLOCK_SPLIT=1: none (an A/B switch; kernels built
                // before session 9 cannot take them).
                let block_splits = std::env::var_os("ZS_NO_BLOCK_SPLIT").is_none();
                if rs == 0 && first_row == Some(variant) && block_splits {
                    for sk in [2, 3, 4, 5, 6, 8, 10, 12, 16] {
                        let split = split_for(kt, sk).in_block();
                        if split.sk < 2 || force_sk.is_some_and(|f| f != split.sk) {
                            continue;
                        }
                        let p = Plan { variant, split };
                        if self.plan_fits(p) && !cands.contains(&p) {
                            cands.push(p);
                        }
                    }
                }
            }
        }
        // ZS_FORCE_PLAN: only the plan of that name (`Plan::describe`, e.g.
        // "r3nb16s3_w4s3 sk=5c"), for profiling one launch.
        if let Ok(name) = std::env::var("ZS_FORCE_PLAN") {
            cands.retain(|p| p.describe() == name);
        }
        cands
    }

    /// Pick the fastest plan for (matrix shape, n) by timing the candidates on
    /// `w` (rotating over its copies); the choice is used by [`Gpu::plan`]
    /// from then on.
    pub fn tune(&self, w: &[&GpuMatrix], x: u64, y: u64, n: usize) -> Result<Plan> {
        let (m, k) = (w[0].rows, w[0].cols);
        // Back to back: inside a model the fused kernels mostly follow one
        // another. Tuning with other traffic between launches (a 2xL2 memset,
        // or cuBLAS) picked plans that were faster in that setting but made
        // the decoder's linear layers 2-7 % slower at batch 8-16
        // (BENCHMARKS.md, optimisation log v16). Queued, as a model enqueues
        // its layers ahead of the GPU: the GPU time of a launch, not the
        // host's launch latency, which differs between plans (the Hopper
        // kernel's two launches, the others' one) but hides behind the GPU
        // in a model. In spans of 10 calls with nothing between them (since
        // session 9): a chained launch overlaps the call before it only
        // there, and plans differ in how much (an event between calls, the
        // queued timing, hid that: log v38). ZS_TUNE_QUEUED=1: an event
        // between every two calls, as in sessions 5-8; ZS_TUNE_SYNCED=1: each
        // launch from an idle GPU, as before session 5 (log v28).
        let synced = std::env::var_os("ZS_TUNE_SYNCED").is_some();
        let queued = std::env::var_os("ZS_TUNE_QUEUED").is_some();
        let time = |p: Plan, runs: usize| {
            let f = |i: usize| self.gemm_fused(w[i % w.len()], x, y, n, Some(p));
            if synced {
                self.time_ms(3, runs, f)
            } else if queued {
                self.time_queued_ms(3, runs, f)
            } else {
                self.time_span_ms(3, (runs / 10).max(3), 10, f)
            }
        };
        // Two rounds: every candidate briefly, then the best three again with
        // more runs, so that noise decides less often.
        let mut scored = Vec::new();
        // ZS_TUNE_LOG=1 prints every candidate's time (for the optimisation notes).
        let log = std::env::var_os("ZS_TUNE_LOG").is_some();
        for p in self.candidates(m, k, n) {
            let t = time(p, 20)?;
            if log {
                eprintln!("tune {m}x{k} n={n}: {} {:.2} us", p.describe(), t * 1e3);
            }
            scored.push((t, p));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best: Option<(f64, Plan)> = None;
        for &(_, p) in scored.iter().take(3) {
            let t = time(p, 60)?;
            if best.is_none_or(|b| t < b.0) {
                best = Some((t, p));
            }
        }
        let Some((_, best)) = best else {
            return Err(Error::invalid(format!(
                "no fused plan to tune for {m}x{k}, n = {n}{}",
                std::env::var("ZS_FORCE_PLAN")
                    .map(|p| format!(" (ZS_FORCE_PLAN={p} is not among this build's candidates)"))
                    .unwrap_or_default()
            )));
        };
        self.tuned
            .lock()
            .unwrap()
            .insert((m, k, n.div_ceil(8)), best);
        Ok(best)
    }
}

/// A kernel parameter for `cuLaunchKernelEx`: a pointer to its value (which
/// must outlive the launch call).
fn arg<T>(v: &T) -> *mut std::ffi::c_void {
    v as *const T as *mut std::ffi::c_void
}

/// The PTX text of kernel `name` (from its `.entry` line to the next one).
fn entry_text<'a>(ptx: &'a str, name: &str) -> Option<&'a str> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start + 1..];
    Some(&ptx[start..start + 1 + rest.find(".entry ").unwrap_or(rest.len())])
}

/// Launch attributes: programmatic stream serialisation (`dependent`), and a
/// cluster dimension when `cluster` > 1.
fn launch_attrs(dependent: bool, cluster: u32) -> Vec<cudarc::driver::sys::CUlaunchAttribute> {
    use cudarc::driver::sys::{CUlaunchAttribute, CUlaunchAttributeID as Id};
    let with_id = |id| {
        let mut a: CUlaunchAttribute = unsafe { std::mem::zeroed() };
        a.id = id;
        a
    };
    let mut attrs = Vec::new();
    if dependent {
        let mut a = with_id(Id::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION);
        a.value.programmaticStreamSerializationAllowed = 1;
        attrs.push(a);
    }
    if cluster > 1 {
        let mut a = with_id(Id::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION);
        a.value.clusterDim.x = cluster;
        a.value.clusterDim.y = 1;
        a.value.clusterDim.z = 1;
        attrs.push(a);
    }
    attrs
}

/// The driver's launch configuration for `cfg` on `stream` with `attrs`
/// (which must outlive its use).
fn launch_config(
    cfg: &LaunchConfig,
    stream: cudarc::driver::sys::CUstream,
    attrs: &mut [cudarc::driver::sys::CUlaunchAttribute],
) -> cudarc::driver::sys::CUlaunchConfig {
    cudarc::driver::sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream,
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    }
}

/// The median of timings (the upper one of an even count).
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|x, y| x.total_cmp(y));
    t[t.len() / 2]
}

/// Whether kernel family `rs` can sum its k splits in a cluster (sm_90).
pub fn clusterable(rs: usize) -> bool {
    rs == HOPPER || rs == 0
}

/// Whether `sk` splits of family `rs` can be summed in one cluster: the Hopper
/// or the warp-independent kernel, 2 to [`MAX_CLUSTER`] blocks.
pub fn cluster_split_ok(rs: usize, sk: u32) -> bool {
    clusterable(rs) && (2..=MAX_CLUSTER).contains(&sk)
}

/// Whether `sk` splits of family `rs` can be one block's warps
/// ([`Split::block`]): the warp-independent kernel, 2 to [`MAX_BLOCK_SPLIT`].
pub fn block_split_ok(rs: usize, sk: u32) -> bool {
    rs == 0 && (2..=MAX_BLOCK_SPLIT).contains(&sk)
}

/// Dynamic shared memory of a launch of `plan`: the variant's, and for a
/// clustered warp-independent split at least its partial-sum tile (which
/// goes over the warps' scratches; the Hopper builds' rings hold it already).
pub fn plan_smem(plan: Plan) -> usize {
    use zipserv_kernels::geometry::{zg_block_partial_bytes, zg_warp_ring_bytes, ZG_SCRATCH};
    let (rs, nb, _, cap, wpb) = GEMM_VARIANTS[plan.variant];
    let smem = variant_smem(plan.variant);
    if plan.split.block {
        // A warp a split: its scratch and ring, then its partial sums over them.
        let warp = ZG_SCRATCH + zg_warp_ring_bytes(nb, act_ring_stages(cap));
        plan.split.sk as usize * warp.max(zg_block_partial_bytes(nb))
    } else if plan.split.cluster && rs == 0 {
        smem.max(zipserv_kernels::geometry::cluster_partial_bytes(
            wpb as usize,
            nb,
        ))
    } else {
        smem
    }
}

/// Floats of the split-K workspace for `m` rows and a kernel of `nb` column
/// blocks: it keeps the sums in the accumulators' lane order, `8 nb` columns a
/// row whatever n is (the kernels' `finish`).
fn split_workspace_len(m: usize, nb: usize) -> usize {
    m * 8 * nb
}

/// `sk` splits of a `kt`-tile range, made even.
pub fn split_for(kt: u32, sk: u32) -> Split {
    let tps = kt.div_ceil(sk.max(1));
    Split {
        sk: kt.div_ceil(tps),
        tps,
        cluster: false,
        block: false,
    }
}

/// The smallest variant with `rs` strips a warp that covers `n` activation rows.
pub fn variant_for(rs: usize, n: usize) -> Option<usize> {
    let need = n.div_ceil(8);
    GEMM_VARIANTS
        .iter()
        .position(|&(r, b, _, _, _)| r == rs && b >= need)
}

/// Every variant with `rs` strips a warp and the fewest column blocks covering `n`.
pub fn variants_for(rs: usize, n: usize) -> Vec<usize> {
    let need = n.div_ceil(8);
    let Some(nb) = GEMM_VARIANTS
        .iter()
        .filter(|v| v.0 == rs && v.1 >= need)
        .map(|v| v.1)
        .min()
    else {
        return Vec::new();
    };
    (0..GEMM_VARIANTS.len())
        .filter(|&i| GEMM_VARIANTS[i].0 == rs && GEMM_VARIANTS[i].1 == nb)
        .collect()
}

/// The crossover from measured `(n, fused ms, decompress + cuBLAS ms)` points
/// (in increasing n; `None` where a path was not measured): the fused kernel
/// up to the last n before the first at which the prefill path is faster.
pub fn crossover_from(points: &[(usize, Option<f64>, Option<f64>)]) -> usize {
    let mut crossover = 0;
    for &(n, fused, dec) in points {
        match (fused, dec) {
            (Some(f), Some(d)) if d < f => break,
            (Some(_), _) => crossover = n,
            (None, _) => break,
        }
    }
    crossover
}

/// A linear layer over a compressed weight: fused ZipGEMM up to `crossover`
/// rows of activations, decompress + cuBLAS above (the prefill path).
pub struct ZipLinear {
    pub weight: GpuMatrix,
    pub crossover: usize,
}

impl ZipLinear {
    pub fn new(weight: GpuMatrix) -> Self {
        ZipLinear {
            weight,
            crossover: FUSED_MAX_N,
        }
    }
    /// `y = x W^T`; `x`: `n x K`, `y`: `n x M`, BF16 row-major device buffers.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<u16>,
        y: &CudaSlice<u16>,
        n: usize,
    ) -> Result<()> {
        let (m, k) = (self.weight.rows, self.weight.cols);
        if x.len() < n * k || y.len() < n * m {
            return Err(Error::invalid(format!(
                "ZipLinear {m}x{k}: buffers too small for n = {n} (x {} elements, y {})",
                x.len(),
                y.len()
            )));
        }
        self.forward_raw(gpu, gpu.ptr(x), gpu.ptr(y), n)
    }
    /// Set the crossover from measured points (see [`crossover_from`]).
    pub fn set_crossover(&mut self, points: &[(usize, Option<f64>, Option<f64>)]) {
        self.crossover = crossover_from(points);
    }

    /// Measure this layer on `gpu`: tune the fused plan for each N bucket up to
    /// [`FUSED_MAX_N`] and set the crossover to the decompress + cuBLAS path.
    /// `copies` (this weight uploaded again, optional) are rotated through so
    /// that small weights are not timed from L2.
    pub fn calibrate(&mut self, gpu: &Gpu, copies: &[&GpuMatrix]) -> Result<()> {
        let (m, k) = (self.weight.rows, self.weight.cols);
        let mut w: Vec<&GpuMatrix> = vec![&self.weight];
        w.extend_from_slice(copies);
        let mut points = Vec::new();
        for n in [8usize, 16, 32, 64, 128] {
            let x = gpu
                .stream
                .clone_htod(&crate::synth::uniform_bf16(n * k, 1.0, n as u64))
                .map_err(gpu_err)?;
            let y = gpu.stream.alloc_zeros::<u16>(n * m).map_err(gpu_err)?;
            let (xp, yp) = (gpu.ptr(&x), gpu.ptr(&y));
            let plan = gpu.tune(&w, xp, yp, n)?;
            let fused = gpu.time_ms(3, 30, |i| {
                gpu.gemm_fused(w[i % w.len()], xp, yp, n, Some(plan))
            })?;
            let dec = gpu.time_ms(3, 30, |i| gpu.gemm_decoupled(w[i % w.len()], xp, yp, n))?;
            points.push((n, Some(fused), Some(dec)));
        }
        self.set_crossover(&points);
        Ok(())
    }

    pub fn forward_raw(&self, gpu: &Gpu, x: u64, y: u64, n: usize) -> Result<()> {
        if !x.is_multiple_of(16) {
            return Err(Error::invalid("activations must be 16-byte aligned"));
        }
        if n <= self.crossover.min(FUSED_MAX_N) {
            gpu.gemm_fused(&self.weight, x, y, n, None)
        } else {
            gpu.gemm_decoupled(&self.weight, x, y, n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{crossover_from, entry_text};

    #[test]
    fn entry_text_is_one_kernel() {
        let ptx =
            ".visible .entry zs_a(\n{ griddepcontrol.wait; }\n.visible .entry zs_a_b(\n{ ret; }\n";
        assert!(entry_text(ptx, "zs_a")
            .unwrap()
            .contains("griddepcontrol.wait"));
        assert!(!entry_text(ptx, "zs_a_b")
            .unwrap()
            .contains("griddepcontrol"));
        assert!(entry_text(ptx, "zs_c").is_none());
        // The embedded kernels wait where the chained launches need it.
        if let Ok(ptx) = super::embedded_ptx(90) {
            for k in [
                "zs_gemm_r0_nb1",
                "zs_gemm_r0_nb4_d1",
                "zs_gemm_r1_nb1",
                "zs_gemm_r3_nb4",
                "zs_act_image",
            ] {
                let t = entry_text(ptx, k).unwrap_or_else(|| panic!("{k} missing"));
                assert!(t.contains("griddepcontrol.wait"), "{k}");
            }
        }
    }

    #[test]
    fn activation_rings_are_sized_from_the_suffix() {
        use super::{act_ring_stages, variant_smem, GEMM_VARIANTS};
        assert_eq!(act_ring_stages("_d1a2"), 2);
        assert_eq!(act_ring_stages("_a3"), 3);
        assert_eq!(act_ring_stages("_d1jc80"), 0);
        assert_eq!(act_ring_stages(""), 0);
        let at = |cap: &str, nb: usize, wpb: u32| {
            GEMM_VARIANTS
                .iter()
                .position(|v| v.0 == 0 && v.1 == nb && v.3 == cap && v.4 == wpb)
                .unwrap()
        };
        // Four warps: four 512-byte scratches, then 2 stages of 4 KB each.
        assert_eq!(variant_smem(at("_d1a2", 4, 4)), 4 * 512 + 4 * 2 * 4096);
        assert_eq!(variant_smem(at("_d1a3", 4, 4)), 4 * 512 + 4 * 3 * 4096);
        assert_eq!(variant_smem(at("_d1", 4, 4)), 4 * 512);
        // A split inside a block: sk warps, each with its scratch (and ring),
        // or its partial sums (8 nb columns of 20 floats) where larger.
        use super::{plan_smem, split_for, Plan};
        let block = |v: usize, sk: u32| {
            plan_smem(Plan {
                variant: v,
                split: split_for(64, sk).in_block(),
            })
        };
        assert_eq!(block(at("_d1", 4, 8), 8), 8 * (4 * 8 * 20 * 4));
        assert_eq!(block(at("_d1a2", 4, 4), 16), 16 * (512 + 2 * 4096));
        assert_eq!(block(at("_d1", 1, 8), 4), 4 * 640);
    }

    #[test]
    fn crossover_stops_at_the_first_loss() {
        assert_eq!(
            crossover_from(&[
                (8, Some(1.0), None),
                (64, Some(2.0), Some(3.0)),
                (128, Some(5.0), Some(4.0))
            ]),
            64
        );
        assert_eq!(crossover_from(&[(8, Some(1.0), Some(0.5))]), 0);
        assert_eq!(
            crossover_from(&[(8, Some(1.0), None), (256, None, Some(1.0))]),
            8
        );
        // A win after a loss does not count: the crossover is one threshold.
        assert_eq!(
            crossover_from(&[
                (8, Some(1.0), Some(2.0)),
                (16, Some(3.0), Some(2.0)),
                (32, Some(1.0), Some(2.0))
            ]),
            8
        );
    }
}
