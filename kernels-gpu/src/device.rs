//! GPU kernels (nvptx64). Built by `cargo xtask build-ptx`.
//!
//! * `zs_decompress`: device layout -> row-major BF16, bit-exact.
//! * `zs_gemm_nbN` (N = 1..16): ZipGEMM, `Y[n][m] = sum_k X[n][k] W[m][k]` for
//!   `n < 8N`, decoding the device layout straight into `mma.sync.m16n8k16`
//!   A registers. One warp streams one 16-row strip over a range of 64-column
//!   tiles; split-K partials go through an FP32 workspace and the last warp of a
//!   strip writes the BF16 result.
use crate::geometry::*;
use core::arch::asm;
use core::arch::global_asm;
use core::arch::nvptx::*;

/// Warps per thread block of every kernel.
pub const WARPS: u32 = 8;

// Per-warp high-byte scratch (512 bytes a warp) for the exception patch.
global_asm!(".shared .align 16 .b8 zs_scratch[4096];");

#[inline(always)]
fn scratch_base(warp: u32) -> u32 {
    let base: u32;
    unsafe { asm!("mov.u32 {0}, zs_scratch;", out(reg32) base, options(pure, nomem, nostack)) };
    base + warp * 512
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
unsafe fn ld_act_v4(p: *const u16) -> [u32; 4] {
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

/// XOR `delta` into the byte at shared address `addr`.
#[inline(always)]
unsafe fn xor_shared_u8(addr: u32, delta: u32) {
    asm!("{{ .reg .b16 t; .reg .b16 d; cvt.u16.u32 d, {1}; ld.shared.u8 t, [{0}]; xor.b16 t, t, d; st.shared.u8 [{0}], t; }}",
        in(reg32) addr, in(reg32) delta, options(nostack));
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
fn f32_to_bf16(x: f32) -> u16 {
    let d: u16;
    unsafe {
        asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) d, in(reg32) x, options(pure, nomem, nostack))
    };
    d
}

/// One tile's compressed data as a lane holds it.
#[derive(Clone, Copy)]
struct TileRegs {
    lo: [[u32; 4]; 2],
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
unsafe fn load_exc_bounds(exc_off: *const u32, tile: u32) -> [u32; 3] {
    let p = exc_off.add(2 * tile as usize);
    [ld_nc_u32(p), ld_nc_u32(p.add(1)), ld_nc_u32(p.add(2))]
}

/// This lane's first exception entry of each half (0 when it has none).
#[inline(always)]
unsafe fn load_exc_first(exc: *const u16, b: [u32; 3], lane: u32) -> [u32; 2] {
    let mut e = [0u32; 2];
    if b[0] + lane < b[1] {
        e[0] = ld_nc_u16(exc.add((b[0] + lane) as usize));
    }
    if b[1] + lane < b[2] {
        e[1] = ld_nc_u16(exc.add((b[1] + lane) as usize));
    }
    e
}

/// High bytes of the lane's 16 weights of half `half`, exceptions patched.
#[inline(always)]
unsafe fn high_bytes(
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
    let mut h = [
        prmt(tab.0, tab.1, sa),
        prmt(tab.0, tab.1, sa >> 16),
        prmt(tab.0, tab.1, sb),
        prmt(tab.0, tab.1, sb >> 16),
    ];
    if end > start {
        // Warp-uniform: the whole warp patches through its scratch.
        let mine = scratch + lane * 16;
        sts_v4(mine, h);
        syncwarp();
        if lane < end - start {
            xor_shared_u8(scratch + (first & 0x1ff), first >> 9);
        }
        let mut i = start + 32;
        while i < end {
            if i + lane < end {
                let e = ld_nc_u16(exc.add((i + lane) as usize));
                xor_shared_u8(scratch + (e & 0x1ff), e >> 9);
            }
            i += 32;
        }
        syncwarp();
        h = lds_v4(mine);
        syncwarp();
    }
    h
}

/// The 8 A registers (two k16 slices) of a half from low and high bytes.
#[inline(always)]
fn assemble(lo: &[u32; 4], h: &[u32; 4]) -> [u32; 8] {
    let mut a = [0u32; 8];
    let mut i = 0;
    while i < 4 {
        a[2 * i] = prmt(lo[i], h[i], 0x5140);
        a[2 * i + 1] = prmt(lo[i], h[i], 0x7362);
        i += 1;
    }
    a
}

#[inline(always)]
fn lane_warp() -> (u32, u32) {
    let tid = unsafe { _thread_idx_x() } as u32;
    (tid % 32, tid / 32)
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
    let scratch = scratch_base(warp);
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
            let h = high_bytes(
                &cur,
                half,
                (tab_lo, tab_hi),
                exc,
                cb[half],
                cb[half + 1],
                ce[half],
                lane,
                scratch,
            );
            let a = assemble(&cur.lo[half], &h);
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

/// Per-warp ZipGEMM over one strip and one range of k tiles.
#[inline(always)]
unsafe fn gemm<const NB: usize>(
    records: *const u8,
    exc_off: *const u32,
    exc: *const u16,
    tab: (u32, u32),
    x: *const u16,
    y: *mut u16,
    ws: *mut f32,
    counters: *mut u32,
    m: u32,
    n: u32,
    k: u32,
    sk: u32,
    tps: u32,
) {
    let (lane, warp) = lane_warp();
    let scratch = scratch_base(warp);
    let strips = m / 16;
    let kt = k / 64;
    let gw = _block_idx_x() as u32 * WARPS + warp;
    if gw >= strips * sk {
        return;
    }
    let (ks, strip) = (gw / strips, gw % strips);
    let t0 = ks * tps;
    let t1 = if t0 + tps < kt { t0 + tps } else { kt };
    let (r0, q) = (lane / 4, lane % 4);
    let mut acc = [[0f32; 4]; NB];

    // Activation row pointers of this lane (row n = nb * 8 + lane / 4), or None.
    let act = |nb: usize, ktile: u32, half: u32| -> [u32; 4] {
        let row = nb as u32 * 8 + r0;
        if row < n {
            ld_act_v4(x.add((row * k + ktile * 64 + 32 * half + 8 * q) as usize))
        } else {
            [0; 4]
        }
    };

    if t0 < t1 {
        let base_tile = strip * kt;
        let mut cur = load_tile(records, base_tile + t0, lane);
        let mut cb = load_exc_bounds(exc_off, base_tile + t0);
        let mut nxt = if t0 + 1 < t1 {
            load_tile(records, base_tile + t0 + 1, lane)
        } else {
            cur
        };
        let mut nb_ = if t0 + 1 < t1 {
            load_exc_bounds(exc_off, base_tile + t0 + 1)
        } else {
            cb
        };
        let mut ce = load_exc_first(exc, cb, lane);
        let mut t = t0;
        loop {
            // Prefetch two tiles ahead.
            let far = if t + 2 < t1 {
                (
                    load_tile(records, base_tile + t + 2, lane),
                    load_exc_bounds(exc_off, base_tile + t + 2),
                )
            } else {
                (nxt, nb_)
            };
            let ne = if t + 1 < t1 {
                load_exc_first(exc, nb_, lane)
            } else {
                [0, 0]
            };
            for half in 0..2usize {
                let mut bx = [[0u32; 4]; NB];
                for (nb, b) in bx.iter_mut().enumerate() {
                    *b = act(nb, t, half as u32);
                }
                let h = high_bytes(
                    &cur,
                    half,
                    tab,
                    exc,
                    cb[half],
                    cb[half + 1],
                    ce[half],
                    lane,
                    scratch,
                );
                let a = assemble(&cur.lo[half], &h);
                let a0 = [a[0], a[1], a[2], a[3]];
                let a1 = [a[4], a[5], a[6], a[7]];
                for nb in 0..NB {
                    mma(&mut acc[nb], &a0, bx[nb][0], bx[nb][1]);
                    mma(&mut acc[nb], &a1, bx[nb][2], bx[nb][3]);
                }
            }
            t += 1;
            if t >= t1 {
                break;
            }
            cur = nxt;
            cb = nb_;
            ce = ne;
            nxt = far.0;
            nb_ = far.1;
        }
    }

    // Epilogue. Accumulator (nb, i): row r0 + 8 * (i / 2), column nb * 8 + 2q + i % 2.
    let mrow = strip * 16 + r0;
    if sk == 1 {
        for nb in 0..NB {
            for i in 0..4usize {
                let col = nb as u32 * 8 + 2 * q + (i as u32 % 2);
                let row = mrow + 8 * (i as u32 / 2);
                if col < n {
                    *y.add((col * m + row) as usize) = f32_to_bf16(acc[nb][i]);
                }
            }
        }
        return;
    }
    for nb in 0..NB {
        for i in 0..4usize {
            let col = nb as u32 * 8 + 2 * q + (i as u32 % 2);
            let row = mrow + 8 * (i as u32 / 2);
            if col < n {
                let p = ws.add((col * m + row) as usize);
                asm!("red.global.add.f32 [{0}], {1};", in(reg64) p, in(reg32) acc[nb][i], options(nostack));
            }
        }
    }
    asm!("fence.acq_rel.gpu;", options(nostack));
    let mut old = 0u32;
    if lane == 0 {
        asm!("atom.global.acq_rel.gpu.add.u32 {0}, [{1}], 1;", out(reg32) old, in(reg64) counters.add(strip as usize), options(nostack));
    }
    old = shfl_idx(old, 0);
    if old != sk - 1 {
        return;
    }
    // The last warp of this strip: read the sums, write BF16, clear for the next call.
    asm!("fence.acq_rel.gpu;", options(nostack));
    let total = 16 * n;
    let mut i = lane;
    while i < total {
        let (col, r) = (i / 16, i % 16);
        let p = ws.add((col * m + strip * 16 + r) as usize);
        let v: f32;
        asm!("ld.global.cg.f32 {0}, [{1}];", out(reg32) v, in(reg64) p, options(nostack));
        *y.add((col * m + strip * 16 + r) as usize) = f32_to_bf16(v);
        asm!("st.global.cg.f32 [{0}], {1};", in(reg64) p, in(reg32) 0f32, options(nostack));
        i += 32;
    }
    if lane == 0 {
        asm!("st.global.relaxed.gpu.u32 [{0}], {1};", in(reg64) counters.add(strip as usize), in(reg32) 0u32, options(nostack));
    }
}

macro_rules! gemm_kernels {
    ($($name:ident = $nb:literal),*) => {$(
        #[no_mangle]
        pub unsafe extern "gpu-kernel" fn $name(
            records: *const u8, exc_off: *const u32, exc: *const u16, tab_lo: u32, tab_hi: u32,
            x: *const u16, y: *mut u16, ws: *mut f32, counters: *mut u32,
            m: u32, n: u32, k: u32, sk: u32, tps: u32,
        ) {
            gemm::<$nb>(records, exc_off, exc, (tab_lo, tab_hi), x, y, ws, counters, m, n, k, sk, tps);
        }
    )*};
}

gemm_kernels!(
    zs_gemm_nb1 = 1,
    zs_gemm_nb2 = 2,
    zs_gemm_nb3 = 3,
    zs_gemm_nb4 = 4,
    zs_gemm_nb5 = 5,
    zs_gemm_nb6 = 6,
    zs_gemm_nb7 = 7,
    zs_gemm_nb8 = 8,
    zs_gemm_nb12 = 12,
    zs_gemm_nb16 = 16
);
