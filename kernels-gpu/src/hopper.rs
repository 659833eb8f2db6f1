//! Hopper ZipGEMM (sm_90a only; built into `zipserv_kernels.sm_90a.ptx`).
//!
//! For larger N the `mma.sync` kernels hit the shared-memory wall: every warp
//! reads the whole activation tile through its registers (12-17 bytes of
//! shared-memory traffic a weight at N = 64-128). Here each warp still decodes
//! its 16-row strip straight into the `m16n8k16` A-fragment registers, but four
//! warps (a warpgroup, 64 rows) issue one `wgmma.mma_async` m64nNk16 with A
//! from those registers and the activations read by the tensor cores straight
//! from shared memory, once per warpgroup.
//!
//! The device layout permutes k inside each 32-column half (see
//! [`dev_slot`]), and `wgmma` reads B in its canonical K-major layout, so the
//! activations are first rewritten into that layout, the "image", by
//! [`zs_act_image`] (a small pass over N x K values): per k tile of 64
//! columns, four k16 slices; per slice, core matrices of 8 rows x 8 logical k
//! (16 bytes a row, 128 bytes each), ordered (slice, k half `c`, row group
//! `g`): byte offset `((slice * 2 + c) * NB + g) * 128 + (row % 8) * 16`.
//! In wgmma's terms: leading-dimension byte offset (next 8 k) `NB * 128`,
//! stride-dimension byte offset (next 8 rows) 128, no swizzle. The GEMM then
//! copies an image tile into shared memory with contiguous 16-byte `cp.async`,
//! or (the `b` builds) with one bulk copy completing on an mbarrier.
//! (Permuting inside the GEMM instead, by 4-byte `cp.async` or by loads and
//! 4-byte shared stores, measured 1.2-1.5x slower at N = 64-128 on the H100.)
use crate::device::*;
use crate::geometry::*;
use core::arch::asm;
use core::arch::nvptx::*;

include!("wgmma_ops.rs");

#[inline(always)]
unsafe fn wgmma_fence() {
    asm!("wgmma.fence.sync.aligned;", options(nostack));
}

#[inline(always)]
unsafe fn wgmma_commit() {
    asm!("wgmma.commit_group.sync.aligned;", options(nostack));
}

#[inline(always)]
unsafe fn wgmma_wait<const N: usize>() {
    asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack));
}

/// Make this thread's shared-memory writes (`cp.async` lands them through the
/// generic proxy) visible to the tensor cores' reads (the async proxy).
#[inline(always)]
unsafe fn fence_proxy_async() {
    asm!("fence.proxy.async.shared::cta;", options(nostack));
}

/// An empty volatile asm over `v`: keeps the compiler from moving the
/// instructions that write (or read) these registers across the wgmma fence and
/// wait instructions around it.
#[inline(always)]
unsafe fn pin(v: &mut u32) {
    asm!("/* pin {0} */", inout(reg32) * v, options(nostack));
}

#[inline(always)]
unsafe fn pin_f(v: &mut f32) {
    asm!("/* pin {0} */", inout(reg32) * v, options(nostack));
}

/// Initialise the mbarrier at `addr` for `count` arrivals a phase (one
/// thread, before a block barrier).
#[inline(always)]
unsafe fn mbar_init(addr: u32, count: u32) {
    asm!("mbarrier.init.shared::cta.b64 [{0}], {1};", in(reg32) addr, in(reg32) count, options(nostack));
}

/// Make mbarrier initialisations visible to the async proxy (bulk copies).
#[inline(always)]
unsafe fn fence_mbar_init() {
    asm!("fence.mbarrier_init.release.cluster;", options(nostack));
}

/// Arrive at the mbarrier `addr`, expecting `bytes` more from bulk copies in
/// this phase.
#[inline(always)]
unsafe fn mbar_arrive_tx(addr: u32, bytes: u32) {
    asm!("{{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [{0}], {1}; }}",
        in(reg32) addr, in(reg32) bytes, options(nostack));
}

/// Wait until the phase of parity `parity` of mbarrier `addr` completed
/// (its bulk copies landed and are visible to this thread).
#[inline(always)]
unsafe fn mbar_wait(addr: u32, parity: u32) {
    loop {
        let done: u32;
        asm!("{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{1}], {2}; selp.u32 {0}, 1, 0, p; }}",
            out(reg32) done, in(reg32) addr, in(reg32) parity, options(nostack));
        if done != 0 {
            break;
        }
    }
}

/// Bulk copy (TMA engine) of `bytes` (a multiple of 16) from global `src` to
/// this block's shared memory at `dst` (both 16-byte aligned), completing on
/// mbarrier `mbar`. The copy writes through the async proxy, which `wgmma`
/// reads: no proxy fence, and nothing in this thread's memory scoreboard
/// (a `fence.proxy.async` waits for every `cp.async` of the thread in flight,
/// which cost the earlier builds their copy lookahead).
#[inline(always)]
unsafe fn bulk_copy(dst: u32, src: *const u8, bytes: u32, mbar: u32) {
    asm!("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [{0}], [{1}], {2}, [{3}];",
        in(reg32) dst, in(reg64) src, in(reg32) bytes, in(reg32) mbar, options(nostack));
}

/// The shared-memory descriptor of a K-major, unswizzled B operand at `addr`
/// with core matrices `lbo` bytes apart along k and `sbo` bytes apart along n.
#[inline(always)]
fn smem_desc(addr: u32, lbo: u32, sbo: u32) -> u64 {
    ((addr as u64 >> 4) & 0x3fff)
        | (((lbo as u64 >> 4) & 0x3fff) << 16)
        | (((sbo as u64 >> 4) & 0x3fff) << 32)
}

#[inline(always)]
unsafe fn ld_v4_u32(p: *const u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.global.nc.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) p,
        options(pure, readonly, nostack));
    [a, b, c, d]
}

/// The activation image (see the module notes) of `x` (`n x k` BF16,
/// row-major) for `8 nb` rows; rows `n..8 nb` are zero. One thread a 16-byte
/// chunk of a row: thread `i = ((t * 2 + half) * 8 nb + row) * 4 + q` reads
/// columns `64 t + 32 half + 8 q ..+ 8`, whose four column pairs `j = 2 h + c`
/// belong to k16 slice `2 half + h`, k half `c`, word `q` of the row's line.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_act_image(
    x: *const u32,
    img: *mut u32,
    n: u32,
    k: u32,
    nb: u32,
) {
    // The GEMM launched after this kernel as its programmatic dependent may
    // start now (its blocks wait for this grid's completion before they read
    // the image: `griddepcontrol.wait`). Launched as a programmatic dependent
    // itself (of the kernel that wrote `x`), this one waits for that kernel
    // before reading `x`.
    grid_launch_dependents();
    grid_dependency_wait();
    let i = _block_idx_x() as u32 * _block_dim_x() as u32 + _thread_idx_x() as u32;
    let rows = 8 * nb;
    if i >= (k / 64) * 2 * rows * 4 {
        return;
    }
    let q = i % 4;
    let row = (i / 4) % rows;
    let th = i / (4 * rows);
    let (t, half) = (th / 2, th % 2);
    let v = if row < n {
        ld_v4_u32(x.add((row * (k / 2) + t * 32 + half * 16 + q * 4) as usize))
    } else {
        [0; 4]
    };
    let base = t * nb * 256 + (row / 8) * 32 + (row % 8) * 4 + q;
    for (j, w) in v.iter().enumerate() {
        let (h, c) = (j as u32 / 2, j as u32 % 2);
        let slice = 2 * half + h;
        *img.add((base + (slice * 2 + c) * nb * 32) as usize) = *w;
    }
}

/// Hopper ZipGEMM block: `W` warps (`W / 4` warpgroups, `16 W` rows), one strip a warp,
/// all on the same range of k tiles. Per k tile the block stages the activation
/// image tile (`NB` KiB) and its warps' records (`cp.async`) into a ring of
/// `S` stages, `S - 1` tiles ahead (or, with `SI < S`, the image into a ring
/// of its own, `SI - 1` tiles ahead). The image comes by `cp.async` too and a
/// `fence.proxy.async` publishes it to the tensor cores each tile, or, with
/// `BULK`, by one bulk copy a tile through the async proxy that `wgmma` reads,
/// with no fence: the fence waits for every `cp.async` of the thread in
/// flight, the later tiles' too, so the first way keeps less copy lookahead
/// (on the H200, with 43 % more bandwidth to cover, `BULK` takes 5-11 % less
/// GPU time at N = 32-128; on the H100 1-3 % more: both are built).
/// Each warp decodes its record half by
/// half into A registers and its warpgroup issues two `wgmma` (one per k16
/// slice) per half. A warpgroup keeps one half's wgmmas in flight while it
/// decodes the next half, and drains them before the tile's barrier, so a
/// stage is refilled only after every warpgroup's wgmmas on it completed.
/// `x` is the image.
#[inline(always)]
unsafe fn gemm_wg<
    const NB: usize,
    const S: usize,
    const SI: usize,
    const W: u32,
    const BULK: bool,
>(
    a: GemmArgs,
) {
    // The kernel after this one may start its own prologue now (see
    // `grid_launch_dependents`); this one's first wait is in `wg_segment`.
    grid_launch_dependents();
    let cta_groups = (a.m / 16).div_ceil(W);
    let b = _block_idx_x() as u32;
    // Launched in clusters of `sk` blocks (one row group's k splits), the
    // blocks sum their partials on chip; else through the FP32 workspace.
    let (nct, rank, cid) = cluster_dims();
    let clustered = nct > 1;
    let (ks, cg) = if clustered {
        (rank, cid)
    } else {
        (b / cta_groups, b % cta_groups)
    };
    let kt = a.k / 64;
    let t0 = ks * a.tps;
    let t1 = if t0 + a.tps < kt { t0 + a.tps } else { kt };
    wg_segment::<NB, S, SI, W, BULK>(&a, cg, t0, t1, a.sk, clustered);
}

/// One block's work on row group `cg` (`16 W` rows), k tiles `t0..t1`, with
/// `sk` blocks contributing to that row group.
#[inline(always)]
unsafe fn wg_segment<
    const NB: usize,
    const S: usize,
    const SI: usize,
    const W: u32,
    const BULK: bool,
>(
    a: &GemmArgs,
    cg: u32,
    t0: u32,
    t1: u32,
    sk: u32,
    clustered: bool,
) {
    let GemmArgs {
        records,
        exc_off,
        exc,
        tab,
        x,
        y,
        ws,
        counters,
        m,
        n,
        k,
        ..
    } = *a;
    let (lane, warp) = lane_warp();
    let tid = warp * 32 + lane;
    // The image stages' mbarriers first, then the scratches and the ring.
    let mbar0 = smem_base();
    let mbar = |s: u32| mbar0 + 8 * s;
    let base = mbar0 + ZG_MBAR_BYTES as u32;
    let scratch = base + warp * ZG_SCRATCH as u32;
    let ring = base + W * ZG_SCRATCH as u32;
    let xbytes = (NB * 1024) as u32;
    const { assert!(8 * SI <= ZG_MBAR_BYTES) };
    let stage_bytes = xbytes + W * DT_RECORD_BYTES as u32;
    // Stage layout. One ring (SI == S): stage s holds the image tile, then
    // the warps' records. Two rings (SI < S): SI image tiles, then S stages of
    // records; the records (from DRAM) come S - 1 tiles ahead, the image (from
    // L2) SI - 1, in a smaller footprint.
    let split = SI < S;
    let (x_stride, r_stride, rring) = if split {
        (
            xbytes,
            W * DT_RECORD_BYTES as u32,
            ring + SI as u32 * xbytes,
        )
    } else {
        (stage_bytes, stage_bytes, ring + xbytes)
    };
    let img_at = |s: u32| ring + s * x_stride;
    let rec_at = |s: u32| rring + s * r_stride + warp * DT_RECORD_BYTES as u32;
    let strips = m / 16;
    let kt = k / 64;
    let first_strip = cg * W + warp;
    // Whole warpgroups only (m is a multiple of 64): wgmma is collective.
    let active = cg * W + (warp / 4) * 4 < strips;
    // BULK: the mbarriers are initialised before the barrier below. (The
    // other builds keep that barrier from v12's stream-K schedule, one a
    // block.)
    if BULK && tid == 0 {
        for s in 0..SI as u32 {
            mbar_init(mbar(s), 1);
        }
        fence_mbar_init();
    }
    bar_sync();
    let mut acc = [[0f32; 4]; NB];
    // An idle warpgroup (past the last row) decodes strips 0-3 and discards
    // them: the wgmma code then has no branch around it (ptxas serialises
    // wgmma that sits in a path it cannot prove warp-uniform).
    let work_strip = if active { first_strip } else { warp % 4 };
    let tile = |t: u32| work_strip * kt + t;
    let (lbo, sbo) = ((NB * 128) as u32, 128u32);

    // Stage k tile `t`: the image tile into image stage `s` (BULK: one bulk
    // copy by thread 0, completing on the stage's mbarrier; else 16-byte
    // `cp.async` chunks, thread `tid` taking chunks tid, tid + 32 W, ...), this
    // warp's record into `st` (`cp.async`).
    let ximg = x as *const u8;
    let fill_image = |t: u32, s: u32| {
        if t < t1 {
            let src = ximg.add((t * xbytes) as usize);
            if BULK {
                if tid == 0 {
                    mbar_arrive_tx(mbar(s), xbytes);
                    bulk_copy(img_at(s), src, xbytes, mbar(s));
                }
            } else {
                let st = img_at(s);
                let mut c = tid;
                while c < (NB * 64) as u32 {
                    cp_async16(st + c * 16, src.add(c as usize * 16));
                    c += W * 32;
                }
            }
        }
    };
    let fill_record = |t: u32, st: u32| {
        if t < t1 {
            stage_tile(records, tile(t), lane, st);
        }
    };

    if t0 < t1 {
        // The first tiles' records do not depend on the activation image, so
        // they are requested before waiting for the kernel that writes it
        // (launched as a programmatic dependent, this block may start while
        // `zs_act_image` still runs). BULK: a commit group a tile (the
        // groups hold records only). Else the first group holds them all.
        for s in 0..S as u32 - 1 {
            fill_record(t0 + s, rec_at(s));
            if BULK {
                cp_async_commit();
            }
        }
        if !BULK && split {
            cp_async_commit();
        }
        // So are the first tiles' exception bounds and entries (two dependent
        // loads from DRAM).
        let cb0 = load_exc_bounds(exc_off, tile(t0));
        let mut cb = cb0;
        let mut nbd = [0u32; 3];
        if t0 + 1 < t1 {
            nbd = load_exc_bounds(exc_off, tile(t0 + 1));
        }
        let mut ce = load_exc_first(exc, cb0, lane);
        grid_dependency_wait();
        for s in 0..SI as u32 - 1 {
            fill_image(t0 + s, s);
            if !BULK {
                cp_async_commit();
            }
        }
        if !BULK && split {
            // Empty groups, so that the tile wait below counts the same
            // groups from the first tile on.
            for _ in 0..SI - 1 {
                cp_async_commit();
            }
        }
        // BULK, bit s: the parity of image stage s's next phase.
        let mut phase = 0u32;
        let (mut issue_img, mut issue_rec) = (SI as u32 - 1, S as u32 - 1);
        let (mut cur_img, mut cur_rec) = (0u32, 0u32);
        let mut t = t0;
        // One k tile: consumes the bounds `$cb` and first exceptions `$ce` of
        // tile t, loads the bounds of tile t + 2 into `$farb` and the first
        // exceptions of tile t + 1 (from `$nbd`) into `$ne`.
        macro_rules! step {
            ($cb:ident, $nbd:ident, $ce:ident, $farb:ident, $ne:ident) => {
                if BULK {
                    // Tile t's record group is the oldest of the S - 1 in
                    // flight; its image is the current phase of its stage.
                    ring_wait::<S>();
                    mbar_wait(mbar(cur_img), (phase >> cur_img) & 1);
                    phase ^= 1 << cur_img;
                } else {
                    // One ring: tile t's group is the oldest of the S - 1 in
                    // flight. Two: each tile commits its image copy (SI - 1
                    // tiles ahead), then its record copy (S - 1 ahead); tile
                    // t's image group is followed by 2 (SI - 1) - 1 younger
                    // ones. The fence waits for every copy in flight.
                    if split {
                        match SI {
                            2 => cp_async_wait::<1>(),
                            3 => cp_async_wait::<3>(),
                            _ => cp_async_wait::<0>(),
                        }
                    } else {
                        ring_wait::<S>();
                    }
                    fence_proxy_async();
                }
                // This warpgroup's last wgmmas (on tile t - 1) complete before
                // the barrier: after it no wgmma reads tile t - 1's stage,
                // which the next copy refills (S - 1 tiles in flight; keeping
                // them in flight across the barrier would cost a stage of
                // lookahead).
                wgmma_wait::<0>();
                bar_sync();
                fill_image(t + SI as u32 - 1, issue_img);
                if !BULK && split {
                    cp_async_commit();
                }
                fill_record(t + S as u32 - 1, rec_at(issue_rec));
                cp_async_commit();
                issue_img = ring_next::<SI>(issue_img);
                issue_rec = ring_next::<S>(issue_rec);
                let xs = img_at(cur_img);
                let rs = rec_at(cur_rec);
                cur_img = ring_next::<SI>(cur_img);
                cur_rec = ring_next::<S>(cur_rec);
                let mut $farb = $nbd;
                let mut $ne = [0u32; 2];
                if t + 2 < t1 {
                    $farb = load_exc_bounds(exc_off, tile(t + 2));
                }
                if t + 1 < t1 {
                    $ne = load_exc_first(exc, $nbd, lane);
                }
                let cur = read_staged(rs, lane);
                for half in 0..2usize {
                    // In half 1 the table lookups and the exception patch run
                    // while half 0's wgmmas are in flight (in half 0 nothing
                    // is: the tile's barrier drained them, and the wait below
                    // costs nothing); only the final interleave (8 `prmt`)
                    // defines the A registers, after `wait_group 0`. ptxas serialises every wgmma (C7513: a
                    // wait after each one) if a non-wgmma instruction defines a
                    // wgmma input while any group is pending, and rewriting A
                    // registers an in-flight wgmma reads is undefined anyway.
                    let h = high_bytes::<false>(
                        &cur,
                        half,
                        tab,
                        exc,
                        $cb[half],
                        $cb[half + 1],
                        $ce[half],
                        lane,
                        scratch,
                    );
                    wgmma_wait::<0>();
                    let mut r = assemble(&cur.lo[half], &h);
                    for v in r.iter_mut() {
                        pin(v);
                    }
                    wgmma_fence();
                    let s0 = xs + (2 * half as u32) * (NB as u32 * 256);
                    let s1 = s0 + NB as u32 * 256;
                    let (a0, a1) = ([r[0], r[1], r[2], r[3]], [r[4], r[5], r[6], r[7]]);
                    wgmma_nb::<NB>(&mut acc, &a0, smem_desc(s0, lbo, sbo));
                    wgmma_nb::<NB>(&mut acc, &a1, smem_desc(s1, lbo, sbo));
                    wgmma_commit();
                }
            };
        }
        // Unrolled twice, the roles of the prefetch registers swapping: a
        // rotation (`ce = ne` at the end of every tile) is a register move
        // that waits for the load issued in the same tile (ncu: 5-6 % of
        // the stall samples at N = 128 sat on that move).
        loop {
            step!(cb, nbd, ce, farb, ne);
            t += 1;
            if t >= t1 {
                break;
            }
            step!(nbd, farb, ne, farb2, ne2);
            t += 1;
            if t >= t1 {
                break;
            }
            cb = farb;
            nbd = farb2;
            ce = ne2;
        }
        cp_async_wait::<0>();
        wgmma_wait::<0>();
    } else {
        grid_dependency_wait();
    }
    for row in acc.iter_mut() {
        for v in row.iter_mut() {
            pin_f(v);
        }
    }
    if clustered {
        finish_cluster::<NB>(&acc, y, m, n, cg, active, ring, W);
        return;
    }
    if !active {
        return;
    }
    finish::<NB, 1>(&[acc], y, ws, counters, m, n, sk, first_strip, lane);
}

#[inline(always)]
unsafe fn wgmma_nb<const NB: usize>(acc: &mut [[f32; 4]; NB], a: &[u32; 4], desc: u64) {
    let p = acc as *mut [[f32; 4]; NB];
    match NB {
        2 => wgmma_n16(&mut *(p as *mut [[f32; 4]; 2]), a, desc),
        4 => wgmma_n32(&mut *(p as *mut [[f32; 4]; 4]), a, desc),
        8 => wgmma_n64(&mut *(p as *mut [[f32; 4]; 8]), a, desc),
        16 => wgmma_n128(&mut *(p as *mut [[f32; 4]; 16]), a, desc),
        _ => core::arch::nvptx::trap(),
    }
}

// zs_gemm_r3_nb{NB}: the Hopper family (`GEMM_VARIANTS` rows with 3 "strips";
// the image, not `x`, is their activation argument).
gemm_kernels!(
    zs_gemm_r3_nb4 = gemm_wg::<4, 5, 5, 8, false>,
    zs_gemm_r3_nb8 = gemm_wg::<8, 5, 5, 8, false>,
    // Three stages (two tiles ahead): two blocks a multiprocessor fit. (The
    // four-stage build of this block crashes ptxas 12.9.)
    zs_gemm_r3_nb16_s3 = gemm_wg::<16, 3, 3, 8, false>,
    // 16 warps (256 rows) a block: every activation tile read from L2 serves
    // twice the weights (at N = 128 the 8-warp block reads 1.4 bytes of
    // activations from L2 per byte of weights).
    zs_gemm_r3_nb8_w16 = gemm_wg::<8, 4, 4, 16, false>,
    zs_gemm_r3_nb16_w16 = gemm_wg::<16, 4, 4, 16, false>,
    zs_gemm_r3_nb16_w16s3 = gemm_wg::<16, 3, 3, 16, false>,
    // A smaller ring and a register cap: three blocks a multiprocessor.
    zs_gemm_r3_nb8_s3c80 = gemm_wg::<8, 3, 3, 8, false>,
    // One warpgroup a block: more, smaller blocks, each with its own barrier
    // (each reads the activation tile for 64 rows only). The tuner's choice
    // at N = 16-64 on most shapes.
    zs_gemm_r3_nb4_w4s3 = gemm_wg::<4, 3, 3, 4, false>,
    zs_gemm_r3_nb8_w4s3 = gemm_wg::<8, 3, 3, 4, false>,
    zs_gemm_r3_nb16_w4s3 = gemm_wg::<16, 3, 3, 4, false>,
    zs_gemm_r3_nb2_w4s3 = gemm_wg::<2, 3, 3, 4, false>,
    // Three tiles ahead (N = 128 on the small layers waits on memory). The
    // same block at NB = 8 crashes ptxas 12.9, so it is not built.
    zs_gemm_r3_nb16_w4s4 = gemm_wg::<16, 4, 4, 4, false>,
    // Two image stages (one tile ahead, from L2) and three or four record
    // stages (two or three ahead, from DRAM): at NB = 16 the block takes
    // 52 KB instead of 68, and four blocks fit a multiprocessor, not three.
    zs_gemm_r3_nb16_w4s3i2 = gemm_wg::<16, 3, 2, 4, false>,
    zs_gemm_r3_nb8_w4s3i2 = gemm_wg::<8, 3, 2, 4, false>,
    zs_gemm_r3_nb16_w4s4i2 = gemm_wg::<16, 4, 2, 4, false>,
);
// The same blocks with the image staged by bulk copies, no proxy fence
// (`b`; see `gemm_wg`): on the H200 5-11 % less GPU time at N = 32-128, on
// the H100 1-3 % more, so both are built and the tuner picks per card.
gemm_kernels!(
    zs_gemm_r3_nb8_s3c80b = gemm_wg::<8, 3, 3, 8, true>,
    zs_gemm_r3_nb8_w4s3b = gemm_wg::<8, 3, 3, 4, true>,
    zs_gemm_r3_nb8_w4s3i2b = gemm_wg::<8, 3, 2, 4, true>,
    zs_gemm_r3_nb16_s3b = gemm_wg::<16, 3, 3, 8, true>,
    zs_gemm_r3_nb16_w4s3b = gemm_wg::<16, 3, 3, 4, true>,
    zs_gemm_r3_nb16_w4s3i2b = gemm_wg::<16, 3, 2, 4, true>,
);
