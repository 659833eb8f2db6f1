//! GPU kernels (nvptx64). Built by `cargo xtask build-ptx`.
//!
//! * `zs_decompress`: device layout -> row-major BF16, bit-exact.
//! * `zs_gemm_nbN` (N = 1..16): ZipGEMM, `Y[n][m] = sum_k X[n][k] W[m][k]` for
//!   `n < 8N`, decoding the device layout straight into `mma.sync.m16n8k16`
//!   A registers. One warp streams one 16-row strip over a range of 64-column
//!   tiles; split-K partials are summed in the block's shared memory (the
//!   warp-independent kernel's splits as one block's warps), in a cluster's
//!   distributed shared memory, or through an FP32 workspace where the last
//!   warp of a strip writes the BF16 result.
use crate::geometry::*;
use core::arch::asm;
use core::arch::global_asm;
use core::arch::nvptx::*;

/// Warps per thread block of every kernel.
pub const WARPS: u32 = ZG_WARPS as u32;

// Dynamic shared memory. Per warp: a 512-byte high-byte scratch for the
// exception patch, then (ZipGEMM) the warp's ring of staged tile records.
global_asm!(".extern .shared .align 16 .b8 zs_dyn[];");

/// Programmatic dependent launch (sm_90): let the kernel launched after this
/// one on the stream, if it was launched as a programmatic dependent, start
/// now (its blocks run what does not depend on this kernel's output, then
/// [`grid_dependency_wait`]). Every block runs it first, so all of this
/// kernel's blocks are resident before a dependent takes any room. A no-op
/// before sm_90 and where nothing was launched as a dependent.
#[inline(always)]
pub(crate) fn grid_launch_dependents() {
    #[cfg(zs_sm90)]
    unsafe {
        asm!("griddepcontrol.launch_dependents;", options(nostack))
    };
}

/// Wait until the grids this one depends on (the kernel launched before it on
/// the stream, when this one was launched as a programmatic dependent) have
/// completed and their writes are visible; a no-op otherwise (and before
/// sm_90). Everything that reads what an earlier kernel wrote, or writes what
/// it may read, comes after it.
#[inline(always)]
pub(crate) fn grid_dependency_wait() {
    #[cfg(zs_sm90)]
    unsafe {
        asm!("griddepcontrol.wait;", options(nostack))
    };
}

#[inline(always)]
pub(crate) fn smem_base() -> u32 {
    let base: u32;
    unsafe { asm!("mov.u32 {0}, zs_dyn;", out(reg32) base, options(pure, nomem, nostack)) };
    base
}

#[inline(always)]
pub(crate) unsafe fn cp_async16(dst: u32, src: *const u8) {
    asm!("cp.async.cg.shared.global [{0}], [{1}], 16;", in(reg32) dst, in(reg64) src, options(nostack));
}

/// 16-byte async copy through L1 (`.ca`: the warps of a block read the same
/// activations) that writes zeros instead when `valid` is false.
#[inline(always)]
unsafe fn cp_async16_ca_zfill(dst: u32, src: *const u16, valid: bool) {
    let n: u32 = if valid { 16 } else { 0 };
    asm!("cp.async.ca.shared.global [{0}], [{1}], 16, {2};", in(reg32) dst, in(reg64) src, in(reg32) n, options(nostack));
}

/// 16-byte async copy that writes zeros instead when `valid` is false.
#[inline(always)]
unsafe fn cp_async16_zfill(dst: u32, src: *const u8, valid: bool) {
    let n: u32 = if valid { 16 } else { 0 };
    asm!("cp.async.cg.shared.global [{0}], [{1}], 16, {2};", in(reg32) dst, in(reg64) src, in(reg32) n, options(nostack));
}

#[inline(always)]
pub(crate) fn bar_sync() {
    unsafe { asm!("bar.sync 0;", options(nostack)) };
}

#[inline(always)]
pub(crate) unsafe fn cp_async_commit() {
    asm!("cp.async.commit_group;", options(nostack));
}

#[inline(always)]
pub(crate) unsafe fn cp_async_wait<const N: usize>() {
    asm!("cp.async.wait_group {n};", n = const N, options(nostack));
}

#[inline(always)]
unsafe fn lds_u32(addr: u32) -> u32 {
    let a: u32;
    asm!("ld.shared.u32 {0}, [{1}];", out(reg32) a, in(reg32) addr, options(nostack));
    a
}

/// In a ring of `S` `cp.async` stages with `S - 1` commit groups in flight,
/// wait until the oldest has landed (the block-staged kernels' tile wait).
#[inline(always)]
pub(crate) unsafe fn ring_wait<const S: usize>() {
    match S {
        3 => cp_async_wait::<1>(),
        4 => cp_async_wait::<2>(),
        5 => cp_async_wait::<3>(),
        _ => cp_async_wait::<0>(),
    }
}

/// The stage after `s` in a ring of `S`.
#[inline(always)]
pub(crate) fn ring_next<const S: usize>(s: u32) -> u32 {
    if s + 1 == S as u32 {
        0
    } else {
        s + 1
    }
}

/// Stage one tile record into shared memory (3 16-byte copies a lane at most).
#[inline(always)]
pub(crate) unsafe fn stage_tile(records: *const u8, tile: u32, lane: u32, dst: u32) {
    let rec = records.add(tile as usize * DT_RECORD_BYTES);
    cp_async16(dst + lane * 16, rec.add(lane as usize * 16));
    cp_async16(dst + 512 + lane * 16, rec.add(512 + lane as usize * 16));
    if lane < 24 {
        cp_async16(dst + 1024 + lane * 16, rec.add(1024 + lane as usize * 16));
    }
}

/// A staged tile as this lane needs it.
#[inline(always)]
pub(crate) unsafe fn read_staged(src: u32, lane: u32) -> TileRegs {
    TileRegs {
        lo: [lds_v4(src + lane * 16), lds_v4(src + 512 + lane * 16)],
        sel: [
            lds_u32(src + 1024 + lane * 4),
            lds_u32(src + 1024 + 128 + lane * 4),
            lds_u32(src + 1024 + 256 + lane * 4),
        ],
    }
}

#[inline(always)]
unsafe fn ld_stream_v4(p: *const u8) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.global.nc.L1::no_allocate.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) p,
        options(pure, readonly, nostack));
    [a, b, c, d]
}

#[inline(always)]
unsafe fn ld_stream_u32(p: *const u8) -> u32 {
    let a: u32;
    asm!("ld.global.nc.L1::no_allocate.u32 {0}, [{1}];", out(reg32) a, in(reg64) p, options(pure, readonly, nostack));
    a
}

#[inline(always)]
unsafe fn ld_nc_u32(p: *const u32) -> u32 {
    let a: u32;
    asm!("ld.global.nc.u32 {0}, [{1}];", out(reg32) a, in(reg64) p, options(pure, readonly, nostack));
    a
}

#[inline(always)]
unsafe fn ld_nc_u16(p: *const u16) -> u32 {
    let a: u16;
    asm!("ld.global.nc.u16 {0}, [{1}];", out(reg16) a, in(reg64) p, options(pure, readonly, nostack));
    a as u32
}

/// Activation load (cached in L1: the warps of a block read the same columns).
#[inline(always)]
pub(crate) unsafe fn ld_act_v4(p: *const u16) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.global.nc.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) p,
        options(pure, readonly, nostack));
    [a, b, c, d]
}

#[inline(always)]
unsafe fn st_global_v4(p: *mut u16, v: [u32; 4]) {
    asm!("st.global.cs.v4.u32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg64) p, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack));
}

#[inline(always)]
fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("prmt.b32 {0}, {1}, {2}, {3};", out(reg32) d, in(reg32) a, in(reg32) b, in(reg32) sel, options(pure, nomem, nostack))
    };
    d
}

#[inline(always)]
fn syncwarp() {
    unsafe { asm!("bar.warp.sync 0xffffffff;", options(nostack)) };
}

#[inline(always)]
unsafe fn sts_v4(addr: u32, v: [u32; 4]) {
    asm!("st.shared.v4.u32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack));
}

#[inline(always)]
unsafe fn lds_v4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.shared.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr, options(nostack));
    [a, b, c, d]
}

/// XOR `delta` into the byte at shared address `addr`, atomically on its
/// 32-bit word: race-free even where a (corrupt) list names a byte twice.
#[inline(always)]
unsafe fn xor_shared_u8(addr: u32, delta: u32) {
    let word = addr & !3;
    let v = (delta & 0xff) << ((addr & 3) * 8);
    asm!("red.shared.xor.b32 [{0}], {1};", in(reg32) word, in(reg32) v, options(nostack));
}

#[inline(always)]
fn shfl_xor(v: u32, mask: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;", out(reg32) d, in(reg32) v, in(reg32) mask, options(nostack))
    };
    d
}

/// A 4x4 transpose among lanes `l, l ^ 4, l ^ 8, l ^ 12` (`s = (lane / 4) % 4`
/// orders them): on entry lane s holds element s of the four runs `v[0..4]`,
/// on exit all four elements of run s. Two butterfly stages; in each, a lane
/// sends the value it replaces and receives its partner's.
#[inline(always)]
fn column_run(mut v: [f32; 4], s: u32) -> [f32; 4] {
    let swap = |v: &mut [f32; 4], a: usize, d: usize, upper: bool, mask: u32| {
        let send = if upper { v[a] } else { v[a + d] };
        let got = f32::from_bits(shfl_xor(send.to_bits(), mask));
        if upper {
            v[a] = got;
        } else {
            v[a + d] = got;
        }
    };
    let odd = s & 1 != 0;
    swap(&mut v, 0, 1, odd, 4);
    swap(&mut v, 2, 1, odd, 4);
    let high = s & 2 != 0;
    swap(&mut v, 0, 2, high, 8);
    swap(&mut v, 1, 2, high, 8);
    v
}

/// `*p += v` (four consecutive floats, 16-byte aligned), relaxed, in L2: one
/// vector reduction on sm_90 (PTX 8.1), four scalar ones before.
#[inline(always)]
unsafe fn red_add_f32x4(p: *mut f32, v: [f32; 4]) {
    #[cfg(zs_sm90)]
    asm!("red.global.add.v4.f32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg64) p, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack));
    #[cfg(not(zs_sm90))]
    for (i, x) in v.iter().enumerate() {
        asm!("red.global.add.f32 [{0}], {1};", in(reg64) p.add(i), in(reg32) *x, options(nostack));
    }
}

#[inline(always)]
fn shfl_idx(v: u32, src: u32) -> u32 {
    let d: u32;
    unsafe {
        asm!("shfl.sync.idx.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;", out(reg32) d, in(reg32) v, in(reg32) src, options(nostack))
    };
    d
}

#[inline(always)]
fn mma(acc: &mut [f32; 4], a: &[u32; 4], b0: u32, b1: u32) {
    unsafe {
        asm!("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) acc[0], inout(reg32) acc[1], inout(reg32) acc[2], inout(reg32) acc[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3], in(reg32) b0, in(reg32) b1,
            options(pure, nomem, nostack));
    }
}

#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let d: u16;
    unsafe {
        asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) d, in(reg32) x, options(pure, nomem, nostack))
    };
    d
}

/// Four FP32 values as four BF16 in one 8-byte store.
#[inline(always)]
unsafe fn st_bf16x4(p: *mut u16, v: [f32; 4]) {
    let lo = f32_to_bf16(v[0]) as u32 | (f32_to_bf16(v[1]) as u32) << 16;
    let hi = f32_to_bf16(v[2]) as u32 | (f32_to_bf16(v[3]) as u32) << 16;
    asm!("st.global.v2.b32 [{0}], {{{1}, {2}}};", in(reg64) p, in(reg32) lo, in(reg32) hi, options(nostack));
}

/// One tile's compressed data as a lane holds it.
#[derive(Clone, Copy)]
pub(crate) struct TileRegs {
    pub(crate) lo: [[u32; 4]; 2],
    sel: [u32; 3],
}

#[inline(always)]
unsafe fn load_tile(records: *const u8, tile: u32, lane: u32) -> TileRegs {
    let rec = records.add(tile as usize * DT_RECORD_BYTES);
    TileRegs {
        lo: [
            ld_stream_v4(rec.add(lane as usize * 16)),
            ld_stream_v4(rec.add(512 + lane as usize * 16)),
        ],
        sel: [
            ld_stream_u32(rec.add(dev_sel_word_offset(lane as usize, 0))),
            ld_stream_u32(rec.add(dev_sel_word_offset(lane as usize, 1))),
            ld_stream_u32(rec.add(dev_sel_word_offset(lane as usize, 2))),
        ],
    }
}

/// Exception list bounds of a tile's two halves: `[start0, start1, end1]`.
#[inline(always)]
pub(crate) unsafe fn load_exc_bounds(exc_off: *const u32, tile: u32) -> [u32; 3] {
    let p = exc_off.add(2 * tile as usize);
    [ld_nc_u32(p), ld_nc_u32(p.add(1)), ld_nc_u32(p.add(2))]
}

/// This lane's first exception entry of each half (0 when it has none).
#[inline(always)]
pub(crate) unsafe fn load_exc_first(exc: *const u16, b: [u32; 3], lane: u32) -> [u32; 2] {
    let mut e = [0u32; 2];
    if b[0] + lane < b[1] {
        e[0] = ld_nc_u16(exc.add((b[0] + lane) as usize));
    }
    if b[1] + lane < b[2] {
        e[1] = ld_nc_u16(exc.add((b[1] + lane) as usize));
    }
    e
}

/// High bytes of the lane's 16 weights of half `half`, exceptions patched
/// through the warp's 512-byte scratch. Exceptions are ~3% of weights, so
/// nearly every half has some. Two ways (`SF`, "scatter first"):
///
/// * `SF = false`: every lane parks its 16 looked-up bytes in the scratch,
///   lane `i` XORs exception `i` in (a loop takes any past 32), and every lane
///   reads its bytes back: table lookups, store, warp sync, XOR, warp sync,
///   load in a row.
/// * `SF = true`: the scratch holds zeros between calls ([`clear_scratch`] at
///   the kernel's start); lane `i` XORs exception `i`'s delta into it while
///   the table lookups run, and every lane reads its 16 delta bytes back,
///   clears them and XORs them into its looked-up bytes: one warp sync
///   between the lookups and the result (the second, after the clear, orders
///   it before the next call's XORs). 1-3 % less GPU time in the
///   warp-independent kernels at N <= 32 on the H100, 1-3 % more in the Hopper
///   kernel at N = 64-128 (session 7), so only the first use it.
#[inline(always)]
pub(crate) unsafe fn high_bytes<const SF: bool>(
    t: &TileRegs,
    half: usize,
    tab: (u32, u32),
    exc: *const u16,
    start: u32,
    end: u32,
    first: u32,
    lane: u32,
    scratch: u32,
) -> [u32; 4] {
    let nib = dev_unpack_sel(t.sel);
    let (sa, sb) = if half == 0 {
        (nib[0], nib[1])
    } else {
        (nib[2], nib[3])
    };
    let h = [
        prmt(tab.0, tab.1, sa),
        prmt(tab.0, tab.1, sa >> 16),
        prmt(tab.0, tab.1, sb),
        prmt(tab.0, tab.1, sb >> 16),
    ];
    let mine = scratch + lane * 16;
    if !SF {
        sts_v4(mine, h);
        syncwarp();
    }
    let cnt = end - start;
    if lane < cnt {
        xor_shared_u8(scratch + (first & 0x1ff), first >> 9);
    }
    if cnt > 32 {
        let mut i = 32 + lane;
        while i < cnt {
            let e = ld_nc_u16(exc.add((start + i) as usize));
            xor_shared_u8(scratch + (e & 0x1ff), e >> 9);
            i += 32;
        }
    }
    syncwarp();
    let back = lds_v4(mine);
    if !SF {
        return back;
    }
    sts_v4(mine, [0; 4]);
    syncwarp();
    [
        h[0] ^ back[0],
        h[1] ^ back[1],
        h[2] ^ back[2],
        h[3] ^ back[3],
    ]
}

/// Zero this lane's 16 bytes of the warp's exception scratch (the state
/// `high_bytes::<true>` expects and leaves), then sync the warp.
#[inline(always)]
pub(crate) unsafe fn clear_scratch(scratch: u32, lane: u32) {
    sts_v4(scratch + lane * 16, [0; 4]);
    syncwarp();
}

/// The 8 A registers (two k16 slices) of a half from low and high bytes.
#[inline(always)]
pub(crate) fn assemble(lo: &[u32; 4], h: &[u32; 4]) -> [u32; 8] {
    let mut a = [0u32; 8];
    let mut i = 0;
    while i < 4 {
        a[2 * i] = prmt(lo[i], h[i], 0x5140);
        a[2 * i + 1] = prmt(lo[i], h[i], 0x7362);
        i += 1;
    }
    a
}

/// Decode half `half` of a lane's tile into its 8 A registers: high bytes
/// (table lookup, exceptions patched scatter-first: the kernel clears its
/// scratches first) interleaved with the low bytes.
#[inline(always)]
pub(crate) unsafe fn decode_half(
    t: &TileRegs,
    half: usize,
    tab: (u32, u32),
    exc: *const u16,
    bounds: &[u32; 3],
    first: &[u32; 2],
    lane: u32,
    scratch: u32,
) -> [u32; 8] {
    let h = high_bytes::<true>(
        t,
        half,
        tab,
        exc,
        bounds[half],
        bounds[half + 1],
        first[half],
        lane,
        scratch,
    );
    assemble(&t.lo[half], &h)
}

/// The two k16 MMAs of a decoded half against every activation block.
#[inline(always)]
fn mma_half<const NB: usize>(acc: &mut [[f32; 4]; NB], a: &[u32; 8], bx: &[[u32; 4]; NB]) {
    let a0 = [a[0], a[1], a[2], a[3]];
    let a1 = [a[4], a[5], a[6], a[7]];
    for nb in 0..NB {
        mma(&mut acc[nb], &a0, bx[nb][0], bx[nb][1]);
        mma(&mut acc[nb], &a1, bx[nb][2], bx[nb][3]);
    }
}

#[inline(always)]
pub(crate) fn lane_warp() -> (u32, u32) {
    let tid = unsafe { _thread_idx_x() } as u32;
    (tid % 32, tid / 32)
}

/// This SM's cycle counter (`%clock64`; volatile: read where it stands).
#[inline(always)]
fn clock64() -> u64 {
    let c: u64;
    unsafe { asm!("mov.u64 {0}, %clock64;", out(reg64) c, options(nostack)) };
    c
}

/// SM clock probe: every thread spins for `cycles` cycles of its SM's clock;
/// thread 0 of block 0 stores the cycles it counted. Timed with events by the
/// host, a launch over every SM gives the clock under load (a hot card slows
/// it, and the fused kernels' integer decode with it).
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_clock_probe(out: *mut u64, cycles: u64) {
    let start = clock64();
    let mut now = start;
    while now.wrapping_sub(start) < cycles {
        now = clock64();
    }
    if _block_idx_x() == 0 && _thread_idx_x() == 0 {
        *out = now.wrapping_sub(start);
    }
}

/// Standalone decompressor: `out` is the row-major `rows x cols` BF16 matrix.
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_decompress(
    records: *const u8,
    exc_off: *const u32,
    exc: *const u16,
    tab_lo: u32,
    tab_hi: u32,
    out: *mut u16,
    rows: u32,
    cols: u32,
) {
    let (lane, warp) = lane_warp();
    let scratch = smem_base() + warp * ZG_SCRATCH as u32;
    clear_scratch(scratch, lane);
    let kt = cols / DT_COLS as u32;
    let tiles = (rows / DT_ROWS as u32) * kt;
    let step = _grid_dim_x() as u32 * WARPS;
    let mut tile = _block_idx_x() as u32 * WARPS + warp;
    if tile >= tiles {
        return;
    }
    let (r0, q) = (lane / 4, lane % 4);
    let mut cur = load_tile(records, tile, lane);
    let mut cb = load_exc_bounds(exc_off, tile);
    let mut ce = load_exc_first(exc, cb, lane);
    loop {
        let next = tile + step;
        let has_next = next < tiles;
        let (nt, nb) = if has_next {
            (
                load_tile(records, next, lane),
                load_exc_bounds(exc_off, next),
            )
        } else {
            (cur, cb)
        };
        let (strip, ktile) = (tile / kt, tile % kt);
        for half in 0..2usize {
            let a = decode_half(&cur, half, (tab_lo, tab_hi), exc, &cb, &ce, lane, scratch);
            let col = ktile * 64 + 32 * half as u32 + 8 * q;
            let row = strip * 16 + r0;
            st_global_v4(
                out.add((row * cols + col) as usize),
                [a[0], a[2], a[4], a[6]],
            );
            st_global_v4(
                out.add(((row + 8) * cols + col) as usize),
                [a[1], a[3], a[5], a[7]],
            );
        }
        if !has_next {
            break;
        }
        ce = load_exc_first(exc, nb, lane);
        cur = nt;
        cb = nb;
        tile = next;
    }
}

/// Row gather (embedding lookup straight from the device layout): `out[i]` is
/// row `ids[i]` of the `rows x cols` matrix, for `i < n`. One warp decodes
/// one 16x64 tile of the row's strip and writes the row's 64 values; ids past
/// the last row read the last row (the host checks ids first).
#[no_mangle]
pub unsafe extern "gpu-kernel" fn zs_gather_rows(
    records: *const u8,
    exc_off: *const u32,
    exc: *const u16,
    tab_lo: u32,
    tab_hi: u32,
    ids: *const u32,
    n: u32,
    out: *mut u16,
    rows: u32,
    cols: u32,
) {
    let (lane, warp) = lane_warp();
    let scratch = smem_base() + warp * ZG_SCRATCH as u32;
    clear_scratch(scratch, lane);
    let kt = cols / DT_COLS as u32;
    let step = _grid_dim_x() as u32 * WARPS;
    let mut w = _block_idx_x() as u32 * WARPS + warp;
    let (r0, q) = (lane / 4, lane % 4);
    while w < n * kt {
        let (i, ktile) = (w / kt, w % kt);
        let r = (*ids.add(i as usize)).min(rows - 1);
        let tile = (r / 16) * kt + ktile;
        let cur = load_tile(records, tile, lane);
        let cb = load_exc_bounds(exc_off, tile);
        let ce = load_exc_first(exc, cb, lane);
        for half in 0..2usize {
            let a = decode_half(&cur, half, (tab_lo, tab_hi), exc, &cb, &ce, lane, scratch);
            let dst = out.add((i * cols + ktile * 64 + 32 * half as u32 + 8 * q) as usize);
            if r0 == r % 16 {
                st_global_v4(dst, [a[0], a[2], a[4], a[6]]);
            } else if r0 + 8 == r % 16 {
                st_global_v4(dst, [a[1], a[3], a[5], a[7]]);
            }
        }
        w += step;
    }
}

/// The arguments of every ZipGEMM kernel (entry points take them as separate
/// pointers and scalars and bundle them here).
#[derive(Clone, Copy)]
pub(crate) struct GemmArgs {
    pub(crate) records: *const u8,
    pub(crate) exc_off: *const u32,
    pub(crate) exc: *const u16,
    pub(crate) tab: (u32, u32),
    pub(crate) x: *const u16,
    pub(crate) y: *mut u16,
    pub(crate) ws: *mut f32,
    pub(crate) counters: *mut u32,
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) sk: u32,
    pub(crate) tps: u32,
}

/// ZipGEMM block: 8 warps, each owning `RS` consecutive 16-row strips, all on
/// the same range of k tiles. Per k tile, the block stages the activation tile
/// (`8 NB` rows x 64 columns, 16-byte chunks swizzled against bank conflicts)
/// and its warps' tile records into a ring of `S` shared-memory stages with
/// `cp.async`, one barrier per k tile. Each warp decodes its records straight
/// into `mma.sync` A registers; exception lists come through registers.
#[inline(always)]
unsafe fn gemm<const NB: usize, const RS: usize, const S: usize>(a: GemmArgs) {
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
        sk,
        tps,
    } = a;
    // Launched as a programmatic dependent of the kernel before it, this
    // block waits at once: its first copies take the activations with the
    // records.
    grid_launch_dependents();
    grid_dependency_wait();
    let (lane, warp) = lane_warp();
    let tid = warp * 32 + lane;
    let base = smem_base();
    let scratch = base + warp * ZG_SCRATCH as u32;
    clear_scratch(scratch, lane);
    let ring = base + WARPS * ZG_SCRATCH as u32;
    let xbytes = (NB * 1024) as u32;
    let stage_bytes = xbytes + WARPS * RS as u32 * DT_RECORD_BYTES as u32;
    let strips = m / 16;
    let kt = k / 64;
    let block_strips = WARPS * RS as u32;
    let cta_groups = (strips + block_strips - 1) / block_strips;
    let b = _block_idx_x() as u32;
    let (ks, cg) = (b / cta_groups, b % cta_groups);
    let block_first = cg * block_strips;
    let first_strip = block_first + warp * RS as u32;
    let active = first_strip < strips;
    let t0 = ks * tps;
    let t1 = if t0 + tps < kt { t0 + tps } else { kt };
    let (r0, q) = (lane / 4, lane % 4);
    let mut acc = [[[0f32; 4]; NB]; RS];
    let tile_of = |j: usize, t: u32| (first_strip + j as u32) * kt + t;

    // Activation chunks this thread copies per k tile: (source element offset
    // at k tile 0, swizzled destination offset, in range).
    const XPT_MAX: usize = 4;
    let xpt = (64 * NB).div_ceil(WARPS as usize * 32);
    let mut xsrc = [0u32; XPT_MAX];
    let mut xdst = [0u32; XPT_MAX];
    let mut xok = [false; XPT_MAX];
    for i in 0..xpt {
        let c = tid + i as u32 * WARPS * 32;
        let (row, ch) = (c / 8, c % 8);
        xok[i] = c < 64 * NB as u32 && row < n;
        xsrc[i] = if xok[i] { row * k + ch * 8 } else { 0 };
        xdst[i] = row * 128 + ((ch ^ ((row & 1) * 4)) * 16);
    }
    // B fragment offsets inside a stage: row r0 of block 0, chunk 4h + q swizzled.
    let boff = [
        r0 * 128 + ((q ^ ((r0 & 1) * 4)) * 16),
        r0 * 128 + (((4 + q) ^ ((r0 & 1) * 4)) * 16),
    ];
    let rec_dst = xbytes + warp * RS as u32 * DT_RECORD_BYTES as u32;

    // Stage k tile `t` into stage `st`: the block's activation chunks, and
    // this warp's own records.
    let issue = |t: u32, st: u32| {
        if t < t1 {
            for i in 0..xpt {
                if 64 * NB as u32 >= WARPS * 32 * (i as u32 + 1)
                    || tid + i as u32 * WARPS * 32 < 64 * NB as u32
                {
                    cp_async16_zfill(
                        st + xdst[i],
                        x.add((xsrc[i] + t * 64) as usize) as *const u8,
                        xok[i],
                    );
                }
            }
            if active {
                for j in 0..RS {
                    stage_tile(
                        records,
                        tile_of(j, t),
                        lane,
                        st + rec_dst + (j * DT_RECORD_BYTES) as u32,
                    );
                }
            }
        }
        cp_async_commit();
    };

    if t0 < t1 {
        let mut issue_stage = 0u32;
        for s in 0..S as u32 - 1 {
            issue(t0 + s, ring + issue_stage * stage_bytes);
            issue_stage += 1;
        }
        let mut cur_stage = 0u32;
        let mut cb = [[0u32; 3]; RS];
        let mut nbd = [[0u32; 3]; RS];
        let mut ce = [[0u32; 2]; RS];
        if active {
            for j in 0..RS {
                cb[j] = load_exc_bounds(exc_off, tile_of(j, t0));
                if t0 + 1 < t1 {
                    nbd[j] = load_exc_bounds(exc_off, tile_of(j, t0 + 1));
                }
            }
            for j in 0..RS {
                ce[j] = load_exc_first(exc, cb[j], lane);
            }
        }
        let mut t = t0;
        loop {
            ring_wait::<S>();
            // Tile t has landed for everyone, and everyone is done with t - 1,
            // whose stage the next copy reuses.
            bar_sync();
            issue(t + S as u32 - 1, ring + issue_stage * stage_bytes);
            issue_stage = ring_next::<S>(issue_stage);
            let st = ring + cur_stage * stage_bytes;
            cur_stage = ring_next::<S>(cur_stage);
            let mut farb = nbd;
            let mut ne = [[0u32; 2]; RS];
            if active {
                if t + 2 < t1 {
                    for j in 0..RS {
                        farb[j] = load_exc_bounds(exc_off, tile_of(j, t + 2));
                    }
                }
                if t + 1 < t1 {
                    for j in 0..RS {
                        ne[j] = load_exc_first(exc, nbd[j], lane);
                    }
                }
                let mut cur = [TileRegs {
                    lo: [[0; 4]; 2],
                    sel: [0; 3],
                }; RS];
                for j in 0..RS {
                    cur[j] = read_staged(st + rec_dst + (j * DT_RECORD_BYTES) as u32, lane);
                }
                for half in 0..2usize {
                    let mut bx = [[0u32; 4]; NB];
                    for (nb, bv) in bx.iter_mut().enumerate() {
                        *bv = lds_v4(st + boff[half] + nb as u32 * 1024);
                    }
                    for j in 0..RS {
                        let a = decode_half(&cur[j], half, tab, exc, &cb[j], &ce[j], lane, scratch);
                        mma_half::<NB>(&mut acc[j], &a, &bx);
                    }
                }
            }
            t += 1;
            if t >= t1 {
                break;
            }
            cb = nbd;
            nbd = farb;
            ce = ne;
        }
        cp_async_wait::<0>();
    }
    if !active {
        return;
    }
    finish::<NB, RS>(&acc, y, ws, counters, m, n, sk, first_strip, lane);
}

/// Write a warp's accumulators for strips `first_strip ..+ RS`: BF16 straight
/// to `y` without split-K, else FP32 reductions into the workspace, and the
/// last of the `sk` warps of the strips converts the sums to BF16 and clears
/// the workspace and its counter for the next call.
///
/// The workspace holds the sums in the accumulators' own lane order (run
/// (j, nb) of lane l at `((strip j) NB + nb) 32 + l`, 16 bytes each), not in
/// `y`'s: every warp's reduction instruction covers 512 contiguous bytes,
/// four whole L2 lines, and only the last warp transposes (session 11; until
/// then each lane's 16 bytes went to its own column of `y`'s layout, a
/// sector apart, after a 4x4 transpose in every warp).
#[inline(always)]
pub(crate) unsafe fn finish<const NB: usize, const RS: usize>(
    acc: &[[[f32; 4]; NB]; RS],
    y: *mut u16,
    ws: *mut f32,
    counters: *mut u32,
    m: u32,
    n: u32,
    sk: u32,
    first_strip: u32,
    lane: u32,
) {
    let (r0, q) = (lane / 4, lane % 4);
    let group = first_strip / RS as u32;

    // Accumulator (j, nb, i): row 16 (first_strip + j) + r0 + 8 (i / 2),
    // column nb * 8 + 2q + i % 2. The four lanes with the same q and r0 / 4
    // (lanes 16 (r0 / 4) + q + 4 s) hold rows 4 (r0 / 4) .. + 3 (and + 8) of
    // columns 2q, 2q + 1; a 4x4 transpose among them leaves lane s with four
    // consecutive rows of one column (`column_run`): one 8-byte BF16 store
    // instead of four.
    let s = r0 % 4;
    // Where run (j, nb) of this lane goes in `y` after the transpose (None:
    // past column n), and where it lives in the workspace.
    let out = |j: usize, nb: usize| -> Option<usize> {
        let col = nb as u32 * 8 + 2 * q + (s & 1);
        let row = (first_strip + j as u32) * 16 + 4 * (r0 / 4) + 8 * (s >> 1);
        (col < n).then_some((col * m + row) as usize)
    };
    let at = |j: usize, nb: usize| -> usize {
        ((((first_strip + j as u32) * NB as u32 + nb as u32) * 32 + lane) * 4) as usize
    };
    // This lane's columns of run nb (before the transpose) start at column
    // nb * 8 + 2q: all past n, nothing to add.
    let live = |nb: usize| nb as u32 * 8 + 2 * q < n;
    if sk == 1 {
        for j in 0..RS {
            for nb in 0..NB {
                let v = column_run(acc[j][nb], s);
                if let Some(o) = out(j, nb) {
                    st_bf16x4(y.add(o), v);
                }
            }
        }
        return;
    }
    for j in 0..RS {
        for nb in 0..NB {
            if live(nb) {
                red_add_f32x4(ws.add(at(j, nb)), acc[j][nb]);
            }
        }
    }
    asm!("fence.acq_rel.gpu;", options(nostack));
    syncwarp();
    let mut old = 0u32;
    if lane == 0 {
        asm!("atom.global.acq_rel.gpu.add.u32 {0}, [{1}], 1;", out(reg32) old, in(reg64) counters.add(group as usize), options(nostack));
    }
    old = shfl_idx(old, 0);
    if old != sk - 1 {
        return;
    }
    // The last warp of this strip group: read the sums (16-byte runs, up to
    // eight loads in flight a lane before any is used: one L2 round trip a
    // batch), transpose, write BF16, clear the workspace and the counter.
    asm!("fence.acq_rel.gpu;", options(nostack));
    for j in 0..RS {
        let mut nb0 = 0;
        while nb0 < NB {
            let mut v = [[0f32; 4]; 8];
            for (b, vb) in v.iter_mut().enumerate() {
                let nb = nb0 + b;
                if nb < NB && live(nb) {
                    let p = ws.add(at(j, nb));
                    asm!("ld.global.cg.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
                        out(reg32) vb[0], out(reg32) vb[1], out(reg32) vb[2], out(reg32) vb[3],
                        in(reg64) p, options(nostack));
                }
            }
            for (b, vb) in v.iter().enumerate() {
                let nb = nb0 + b;
                if nb < NB {
                    // Every lane takes part in the transpose (shuffles).
                    let t = column_run(*vb, s);
                    if let Some(o) = out(j, nb) {
                        st_bf16x4(y.add(o), t);
                    }
                    if live(nb) {
                        asm!("st.global.cg.v4.f32 [{0}], {{{1}, {1}, {1}, {1}}};", in(reg64) ws.add(at(j, nb)), in(reg32) 0f32, options(nostack));
                    }
                }
            }
            nb0 += 8;
        }
    }
    if lane == 0 {
        asm!("st.global.relaxed.gpu.u32 [{0}], {1};", in(reg64) counters.add(group as usize), in(reg32) 0u32, options(nostack));
    }
}

/// Split-K epilogue inside one block of `w` warps, the k splits of strip
/// `strip`: every warp parks its FP32 partial sums in its own slice of the
/// block's shared memory (over the scratches and rings: a barrier first), and
/// after a second barrier each thread sums one 4-row run of a column over the
/// warps in warp order (deterministic) and writes it as BF16. Two block
/// barriers instead of the workspace's L2 reductions, fence, counter atomic
/// and read-back (about 4 µs at the end of a small layer's launch, session 9).
#[inline(always)]
unsafe fn finish_block<const NB: usize>(
    acc: &[[f32; 4]; NB],
    y: *mut u16,
    m: u32,
    n: u32,
    strip: u32,
    active: bool,
    w: u32,
) {
    let (lane, warp) = lane_warp();
    let part = smem_base();
    let stride = ZG_PART_COL_STRIDE as u32;
    let slice = zg_block_partial_bytes(NB) as u32;
    // Every warp is past its last read of its scratch and ring.
    bar_sync();
    // Accumulator (nb, i): row lane / 4 + 8 (i / 2), column nb * 8 + 2 (lane
    // % 4) + i % 2; after the 4x4 transpose among lanes (see `finish`) a lane
    // holds four consecutive rows of one column.
    let (r0, q) = (lane / 4, lane % 4);
    let s = r0 % 4;
    for (nb, v) in acc.iter().enumerate() {
        let v = column_run(*v, s);
        let col = nb as u32 * 8 + 2 * q + (s & 1);
        let row = 4 * (r0 / 4) + 8 * (s >> 1);
        asm!("st.shared.v4.f32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg32) part + warp * slice + (col * stride + row) * 4,
            in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack));
    }
    bar_sync();
    if !active {
        return;
    }
    // Runs of four rows: 4 a column, 8 NB columns.
    let mut c = warp * 32 + lane;
    while c < 32 * NB as u32 {
        let (col, r4) = (c / 4, c % 4);
        if col < n {
            let mut sum = [0f32; 4];
            for wi in 0..w {
                let (a, b, cc, d): (f32, f32, f32, f32);
                asm!("ld.shared.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
                    out(reg32) a, out(reg32) b, out(reg32) cc, out(reg32) d,
                    in(reg32) part + wi * slice + (col * stride + 4 * r4) * 4, options(nostack));
                sum[0] += a;
                sum[1] += b;
                sum[2] += cc;
                sum[3] += d;
            }
            st_bf16x4(y.add((col * m + strip * 16 + 4 * r4) as usize), sum);
        }
        c += w * 32;
    }
}

// ---------------------------------------------------------------------------
// Split-K inside a thread-block cluster (sm_90: the Hopper kernel and the
// warp-independent kernel)
// ---------------------------------------------------------------------------

/// (`%cluster_nctarank`, `%cluster_ctarank`, `%clusterid.x`): blocks in this
/// block's cluster, its rank there, the cluster's index (1, 0 and the block
/// index when launched without clusters).
#[cfg(zs_sm90)]
#[inline(always)]
pub(crate) fn cluster_dims() -> (u32, u32, u32) {
    let (n, r, id): (u32, u32, u32);
    unsafe {
        asm!("mov.u32 {0}, %cluster_nctarank;",
            "mov.u32 {1}, %cluster_ctarank;",
            "mov.u32 {2}, %clusterid.x;",
            out(reg32) n, out(reg32) r, out(reg32) id, options(pure, nomem, nostack));
    }
    (n, r, id)
}

/// Every thread of the cluster arrives; shared-memory writes before it are
/// visible to the cluster's reads after it.
#[cfg(zs_sm90)]
#[inline(always)]
pub(crate) unsafe fn cluster_sync() {
    asm!(
        "barrier.cluster.arrive.release;",
        "barrier.cluster.wait.acquire;",
        options(nostack)
    );
}

/// This block's shared-memory address `addr` in block `rank`'s shared memory
/// (a `shared::cluster` address; offsets from it stay in that block).
#[cfg(zs_sm90)]
#[inline(always)]
fn mapa(addr: u32, rank: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("mapa.shared::cluster.u32 {0}, {1}, {2};", out(reg32) r, in(reg32) addr,
            in(reg32) rank, options(pure, nomem, nostack));
    }
    r
}

/// 16 bytes at a `shared::cluster` address.
#[cfg(zs_sm90)]
#[inline(always)]
unsafe fn ld_cluster_v4(addr: u32) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    asm!("ld.shared::cluster.v4.f32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
        options(nostack));
    [a, b, c, d]
}

/// Split-K epilogue inside a cluster of `sk` blocks of `w` warps (one row
/// group of `16 w` rows, one k split each): every block parks its FP32
/// partial sums in its own shared memory at `part` (the Hopper kernel: over
/// its stage ring; the warp-independent kernel: over its scratches), then
/// block `rank` sums its share of the tile's 4-row runs over all `sk` blocks
/// through distributed shared memory, in rank order (deterministic), and
/// writes BF16. No workspace, no atomics,
/// and no L2 round trips at the tail. (Storing the partials straight into the
/// owners' shared memory instead took 8-14 more registers a thread for the
/// whole kernel: ptxas computes the 64 remote addresses while the
/// accumulators are live.)
#[cfg(zs_sm90)]
#[inline(always)]
pub(crate) unsafe fn finish_cluster<const NB: usize>(
    acc: &[[f32; 4]; NB],
    y: *mut u16,
    m: u32,
    n: u32,
    cg: u32,
    active: bool,
    part: u32,
    w: u32,
) {
    let (lane, warp) = lane_warp();
    let (nct, rank, _) = cluster_dims();
    let rows = 16 * w;
    let stride = cluster_col_stride(w as usize) as u32;
    // Every warp of the block is past its last read of the ring.
    bar_sync();
    if active {
        // Accumulator (nb, i): row 16 warp + lane / 4 + 8 (i / 2), column
        // nb * 8 + 2 (lane % 4) + i % 2.
        let (r0, q) = (lane / 4, lane % 4);
        for (nb, v) in acc.iter().enumerate() {
            for (i, x) in v.iter().enumerate() {
                let row = 16 * warp + r0 + 8 * (i as u32 / 2);
                let col = nb as u32 * 8 + 2 * q + i as u32 % 2;
                asm!("st.shared.f32 [{0}], {1};", in(reg32) part + (col * stride + row) * 4,
                    in(reg32) *x, options(nostack));
            }
        }
    }
    cluster_sync();
    let row0 = cg * rows;
    let runs = if m - row0 < rows { m - row0 } else { rows } / 4;
    let total = n * runs;
    let threads = w * 32;
    // This block's runs: c = rank * threads + tid + j * nct * threads, two at
    // a time (one at NB <= 4: few runs, and the registers of the small
    // builds), every block's value requested before any is summed: one round
    // trip through the cluster per batch.
    let batch = if NB >= 8 { 2 } else { 1 };
    let step = nct * threads;
    let mut c0 = rank * threads + warp * 32 + lane;
    while c0 < total {
        let mut v = [[[0f32; 4]; ZG_MAX_CLUSTER]; 2];
        for (b, vb) in v.iter_mut().enumerate().take(batch) {
            let c = c0 + b as u32 * step;
            let off = part + ((c / runs) * stride + 4 * (c % runs)) * 4;
            for (r, vr) in vb.iter_mut().enumerate() {
                if c < total && (r as u32) < nct {
                    *vr = ld_cluster_v4(mapa(off, r as u32));
                }
            }
        }
        for (b, vb) in v.iter().enumerate().take(batch) {
            let c = c0 + b as u32 * step;
            if c < total {
                let mut s = vb[0];
                for vr in vb.iter().skip(1) {
                    // Past the cluster's size the slots are zero.
                    for j in 0..4 {
                        s[j] += vr[j];
                    }
                }
                let (col, r4) = (c / runs, c % runs);
                st_bf16x4(y.add((col * m + row0 + 4 * r4) as usize), s);
            }
        }
        c0 += batch as u32 * step;
    }
    // No block leaves (its shared memory gone) while another still reads
    // it: the loads above completed (their values are used), so no ordering
    // is needed, only the arrival.
    asm!(
        "barrier.cluster.arrive.relaxed;",
        "barrier.cluster.wait;",
        options(nostack)
    );
}

/// ZipGEMM, warp-independent variant (best for small N): each warp streams one
/// 16-row strip over its range of k tiles with no block barrier; tile records
/// come through registers two tiles ahead, activation fragments straight from
/// global memory (L1-cached: the block's 8 warps read the same k tiles) one
/// half ahead. `D` (1 or 2) is how many tiles ahead records are loaded:
/// fewer registers with 1, more bytes in flight with 2. `PB`: load the next
/// half's activation fragments before decoding this one (else just in time).
/// `AS` > 0: the activations go instead through a ring of `AS` stages in the
/// warp's shared memory ([`zg_warp_ring_bytes`]), `AS - 1` whole tiles ahead,
/// each lane copying (`cp.async`) exactly the fragments it later reads: no
/// registers hold them in flight and no warp sync orders them.
/// With [`ZG_SPLIT_IN_BLOCK`] in `sk`, block `b` is strip `b` and its warps
/// are the strip's k splits, summed by [`finish_block`].
#[inline(always)]
unsafe fn gemm_warp<const NB: usize, const D: usize, const PB: bool, const AS: usize>(a: GemmArgs) {
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
        sk,
        tps,
    } = a;
    grid_launch_dependents();
    let (lane, warp) = lane_warp();
    let scratch = smem_base() + warp * ZG_SCRATCH as u32;
    clear_scratch(scratch, lane);
    let strips = m / 16;
    let kt = k / 64;
    // Any block size: blocks are only a way to launch independent warps,
    // unless the split is in the block (then the block is one strip).
    let wpb = _block_dim_x() as u32 / 32;
    let in_block = sk & ZG_SPLIT_IN_BLOCK != 0;
    let sk = sk & !ZG_SPLIT_IN_BLOCK;
    let gw = _block_idx_x() as u32 * wpb + warp;
    // Launched in clusters of `sk` blocks (sm_90), block `rank` of cluster
    // `cid` takes k split `rank` of strips `cid * wpb ..`, and the cluster sums
    // on chip; every warp then stays to the end (cluster barriers).
    #[cfg(zs_sm90)]
    let (nct, rank, cid) = cluster_dims();
    #[cfg(not(zs_sm90))]
    let (nct, rank, cid) = (1u32, 0u32, 0u32);
    let clustered = nct > 1;
    let (ks, strip) = if clustered {
        (rank, cid * wpb + warp)
    } else if in_block {
        (warp, _block_idx_x() as u32)
    } else {
        (gw / strips, gw % strips)
    };
    let active = if clustered || in_block {
        strip < strips
    } else {
        gw < strips * sk
    };
    // Warps that sum on chip stay to the end (block or cluster barriers).
    if !active && !clustered && !in_block {
        return;
    }
    let t0 = if active { ks * tps } else { kt };
    let t1 = if t0 + tps < kt { t0 + tps } else { kt };
    let (r0, q) = (lane / 4, lane % 4);
    let mut acc = [[[0f32; 4]; NB]; 1];
    // Activation fragments of half `half` of k tile `t` (rows past n are zero).
    let act = |t: u32, half: u32| -> [[u32; 4]; NB] {
        let mut bx = [[0u32; 4]; NB];
        for (nb, b) in bx.iter_mut().enumerate() {
            let row = nb as u32 * 8 + r0;
            if row < n {
                *b = ld_act_v4(x.add((row * k + t * 64 + 32 * half + 8 * q) as usize));
            }
        }
        bx
    };
    // AS > 0: this warp's activation ring, after the block's scratches; a
    // stage holds a lane's 2 NB fragments of one k tile at
    // `(half NB + nb) 512 + 16 lane`.
    let ring = smem_base()
        + wpb * ZG_SCRATCH as u32
        + warp * zg_warp_ring_bytes(NB, AS) as u32
        + lane * 16;
    let stage_bytes = (NB * 1024) as u32;
    // Copy k tile `t`'s fragments into stage `s` and commit them as one group
    // (an empty group past the warp's range keeps the count).
    let stage_act = |t: u32, s: u32| {
        if t < t1 {
            for half in 0..2u32 {
                for nb in 0..NB as u32 {
                    let row = nb * 8 + r0;
                    let off = if row < n {
                        row * k + t * 64 + 32 * half + 8 * q
                    } else {
                        0
                    };
                    let dst = ring + s * stage_bytes + (half * NB as u32 + nb) * 512;
                    cp_async16_ca_zfill(dst, x.add(off as usize), row < n);
                }
            }
        }
        cp_async_commit();
    };
    let staged = |s: u32, half: u32| -> [[u32; 4]; NB] {
        let mut bx = [[0u32; 4]; NB];
        for (nb, b) in bx.iter_mut().enumerate() {
            *b = lds_v4(ring + s * stage_bytes + (half * NB as u32 + nb as u32) * 512);
        }
        bx
    };
    if t0 < t1 {
        let tile0 = strip * kt;
        let mut cur = load_tile(records, tile0 + t0, lane);
        let mut cb = load_exc_bounds(exc_off, tile0 + t0);
        let mut nxt = cur;
        let mut nbd = cb;
        if t0 + 1 < t1 {
            if D == 2 {
                nxt = load_tile(records, tile0 + t0 + 1, lane);
            }
            nbd = load_exc_bounds(exc_off, tile0 + t0 + 1);
        }
        let mut ce = load_exc_first(exc, cb, lane);
        // The records and exception lists above depend on no earlier kernel;
        // the activations (and the sums this warp writes) do. Launched as a
        // programmatic dependent, the warp got here while the kernel before
        // it still ran.
        grid_dependency_wait();
        let mut bnext = if PB && AS == 0 {
            act(t0, 0)
        } else {
            [[0u32; 4]; NB]
        };
        // The first AS - 1 tiles' activations (AS > 0).
        let mut s = 0u32;
        for j in 1..AS as u32 {
            stage_act(t0 + j - 1, j - 1);
        }
        let mut t = t0;
        loop {
            let (mut far, mut farb) = (nxt, nbd);
            if (t + D as u32) < t1 {
                far = load_tile(records, tile0 + t + D as u32, lane);
            }
            if t + 2 < t1 {
                farb = load_exc_bounds(exc_off, tile0 + t + 2);
            }
            let ne = if t + 1 < t1 {
                load_exc_first(exc, nbd, lane)
            } else {
                [0, 0]
            };
            if AS > 0 {
                // Into the stage tile t - 1 used (this lane read its own
                // fragments there, and the MMAs that took them have issued).
                let far_s = if s == 0 { AS as u32 - 1 } else { s - 1 };
                stage_act(t + AS as u32 - 1, far_s);
            }
            for half in 0..2usize {
                if AS > 0 {
                    let a = decode_half(&cur, half, tab, exc, &cb, &ce, lane, scratch);
                    if half == 0 {
                        // Tile t's group; AS - 1 younger ones may still fly.
                        match AS {
                            2 => cp_async_wait::<1>(),
                            3 => cp_async_wait::<2>(),
                            _ => cp_async_wait::<0>(),
                        }
                    }
                    let bx = staged(s, half as u32);
                    mma_half::<NB>(&mut acc[0], &a, &bx);
                    continue;
                }
                let bx = if PB { bnext } else { act(t, half as u32) };
                if PB {
                    if half == 0 {
                        bnext = act(t, 1);
                    } else if t + 1 < t1 {
                        bnext = act(t + 1, 0);
                    }
                }
                let a = decode_half(&cur, half, tab, exc, &cb, &ce, lane, scratch);
                mma_half::<NB>(&mut acc[0], &a, &bx);
            }
            s = if s + 1 == AS as u32 { 0 } else { s + 1 };
            t += 1;
            if t >= t1 {
                break;
            }
            cur = if D == 2 { nxt } else { far };
            cb = nbd;
            ce = ne;
            nxt = far;
            nbd = farb;
        }
        if AS > 0 {
            // Only empty groups can be left; nothing writes the ring after
            // this (a block's or cluster's partial sums go over it).
            cp_async_wait::<0>();
        }
    } else {
        grid_dependency_wait();
    }
    if in_block {
        finish_block::<NB>(&acc[0], y, m, n, strip, active, wpb);
        return;
    }
    #[cfg(zs_sm90)]
    if clustered {
        // The scratches are free now: the partial sums go over them.
        finish_cluster::<NB>(&acc[0], y, m, n, cid, active, smem_base(), wpb);
        return;
    }
    finish::<NB, 1>(&acc, y, ws, counters, m, n, sk, strip, lane);
}

/// `name = function::<generics>`: a kernel entry point over one build of a
/// ZipGEMM family (entry points take pointers and scalars only).
macro_rules! gemm_kernels {
    ($($name:ident = $f:ident::<$($g:tt),*>),* $(,)?) => {$(
        #[no_mangle]
        pub unsafe extern "gpu-kernel" fn $name(
            records: *const u8, exc_off: *const u32, exc: *const u16, tab_lo: u32, tab_hi: u32,
            x: *const u16, y: *mut u16, ws: *mut f32, counters: *mut u32,
            m: u32, n: u32, k: u32, sk: u32, tps: u32,
        ) {
            $f::<$($g),*>(GemmArgs { records, exc_off, exc, tab: (tab_lo, tab_hi), x, y, ws, counters, m, n, k, sk, tps });
        }
    )*};
}

// zs_gemm_r{RS}_nb{NB}{suffix}: RS = 0 names the warp-independent kernel
// (gemm_warp::<NB, record tiles ahead, activations one half ahead>), RS = 1, 2
// the block-staged one (gemm::<NB, strips a warp, ring stages>). The host's
// `GEMM_VARIANTS` table and xtask's MAXNREG must agree with these names.
gemm_kernels!(
    zs_gemm_r0_nb1 = gemm_warp::<1, 2, true, 0>,
    zs_gemm_r0_nb2 = gemm_warp::<2, 2, true, 0>,
    zs_gemm_r0_nb4 = gemm_warp::<4, 2, true, 0>,
);
// Records one tile ahead only (fewer registers, more blocks a multiprocessor);
// the tuner picks per shape.
gemm_kernels!(
    zs_gemm_r0_nb1_d1 = gemm_warp::<1, 1, true, 0>,
    zs_gemm_r0_nb2_d1 = gemm_warp::<2, 1, true, 0>,
    zs_gemm_r0_nb4_d1 = gemm_warp::<4, 1, true, 0>,
);
// And under tighter register caps (xtask's MAXNREG): 4 and 3 blocks a
// multiprocessor; `j` builds load activations just in time.
gemm_kernels!(
    zs_gemm_r0_nb1_d1c64 = gemm_warp::<1, 1, true, 0>,
    zs_gemm_r0_nb2_d1c64 = gemm_warp::<2, 1, true, 0>,
    zs_gemm_r0_nb4_d1j = gemm_warp::<4, 1, false, 0>,
    zs_gemm_r0_nb4_d1jc80 = gemm_warp::<4, 1, false, 0>,
);
// Activations through a ring in the warp's shared memory (`aS`: S stages).
gemm_kernels!(
    zs_gemm_r0_nb2_d1a2 = gemm_warp::<2, 1, true, 2>,
    zs_gemm_r0_nb4_d1a2 = gemm_warp::<4, 1, true, 2>,
    zs_gemm_r0_nb4_d1a3 = gemm_warp::<4, 1, true, 3>,
    zs_gemm_r0_nb4_a2 = gemm_warp::<4, 2, true, 2>,
    zs_gemm_r0_nb2_d1a2c64 = gemm_warp::<2, 1, true, 2>,
    zs_gemm_r0_nb4_d1a2c80 = gemm_warp::<4, 1, true, 2>,
    zs_gemm_r0_nb4_a2c96 = gemm_warp::<4, 2, true, 2>,
);
gemm_kernels!(
    zs_gemm_r1_nb1 = gemm::<1, 1, 4>,
    zs_gemm_r1_nb2 = gemm::<2, 1, 4>,
    zs_gemm_r1_nb4 = gemm::<4, 1, 4>,
    zs_gemm_r1_nb8 = gemm::<8, 1, 3>,
    zs_gemm_r2_nb4 = gemm::<4, 2, 3>,
    zs_gemm_r2_nb8 = gemm::<8, 2, 3>,
    zs_gemm_r2_nb16 = gemm::<16, 2, 3>,
);
