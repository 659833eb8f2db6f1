//! Tile geometry shared by host and device.
//!
//! Two layouts live here:
//!
//! * **Version 1** (the on-disk TCA-TBE arrays, `FORMAT.md`): FragTiles (8x8)
//!   ordered BlockTile (64x64, row-major) -> WarpTile (16x64, top to bottom) ->
//!   TensorCoreTile (16x16, left to right) -> FT (column-major 2x2), element
//!   `p = 8 * row + col` inside an FT, lane `l` owning `p = 2l, 2l + 1`.
//! * **Device layout "ZSD1"** (made at load time, `FORMAT.md` §6): one record per
//!   16x64 warp tile, strip-major (`tile = strip * (K / 64) + ktile`). A record
//!   holds, per lane, the low byte of each of its 32 weights (verbatim) and a
//!   3-bit selector of the high byte (sign + top 7 exponent bits) into a per-matrix
//!   table of 8 high bytes; high bytes not in the table are exceptions, patched
//!   by XOR from a per-half-tile list. The lane-to-element map is chosen so that a
//!   lane's activation operand is one contiguous 16-byte load (see [`dev_slot`]).

/// FragTile side (8x8 elements).
pub const FT: usize = 8;
/// TensorCoreTile side (16x16).
pub const TT: usize = 16;
/// WarpTile rows (a WarpTile is 16 x 64).
pub const WT_ROWS: usize = 16;
/// BlockTile side (64x64).
pub const BT: usize = 64;
/// FragTiles per BlockTile.
pub const FTS_PER_BT: usize = 64;
/// FragTiles per WarpTile.
pub const FTS_PER_WT: usize = 16;
/// WarpTiles per BlockTile.
pub const WTS_PER_BT: usize = 4;
/// Elements in a FragTile.
pub const FT_ELEMS: usize = 64;

/// Row and column (in the matrix) of the first element of FragTile `f`, for a
/// matrix with `k` columns (version 1 order, `FORMAT.md` §3).
#[inline(always)]
pub const fn v1_ft_origin(f: usize, k: usize) -> (usize, usize) {
    let bt = f / FTS_PER_BT;
    let in_bt = f % FTS_PER_BT;
    let wt = in_bt / 16;
    let tt = (in_bt / 4) % 4;
    let ft = in_bt % 4;
    let bts_per_row = k / BT;
    let bt_row = bt / bts_per_row;
    let bt_col = bt % bts_per_row;
    (
        bt_row * BT + wt * WT_ROWS + (ft & 1) * FT,
        bt_col * BT + tt * TT + (ft >> 1) * FT,
    )
}

/// Index of the FragTile holding element `(row, col)` (version 1 order).
#[inline(always)]
pub const fn v1_ft_index(row: usize, col: usize, k: usize) -> usize {
    let bt = (row / BT) * (k / BT) + col / BT;
    let wt = (row % BT) / WT_ROWS;
    let tt = (col % BT) / TT;
    let ft = ((col % TT) / FT) * 2 + (row % TT) / FT;
    bt * FTS_PER_BT + wt * 16 + tt * 4 + ft
}

/// Position `p` of element (local row `r`, local col `c`) inside an FT.
#[inline(always)]
pub const fn ft_pos(r: usize, c: usize) -> usize {
    8 * r + c
}

// ---------------------------------------------------------------------------
// Device layout ZSD1
// ---------------------------------------------------------------------------

/// Rows of a device warp tile.
pub const DT_ROWS: usize = 16;
/// Columns of a device warp tile.
pub const DT_COLS: usize = 64;
/// Elements of a device warp tile.
pub const DT_ELEMS: usize = DT_ROWS * DT_COLS;
/// Weights a lane owns per warp tile.
pub const DT_SLOTS: usize = 32;
/// Weights a lane owns per half tile (one 16x32 half = two k16 MMA slices).
pub const DT_HALF_SLOTS: usize = 16;
/// Bytes of low bytes per record.
pub const DT_LOW_BYTES: usize = DT_ELEMS;
/// Bytes of selectors per record (3 bits x 1024, as 3 u32 words per lane).
pub const DT_SEL_BYTES: usize = 3 * 4 * 32;
/// Bytes of one record (16-byte aligned).
pub const DT_RECORD_BYTES: usize = DT_LOW_BYTES + DT_SEL_BYTES;
/// Exception lists are kept per half tile (512 elements).
pub const DT_HALVES_PER_TILE: usize = 2;

/// Element `(row, col)` inside a 16x64 device warp tile that `lane` holds in
/// `slot` (0..32). Slot `2g` / `2g+1` are the low / high bf16 of the lane's A
/// register `g`; registers `4s .. 4s+3` are the four A registers of the k16 MMA
/// slice `s`. The k order inside each 32-column half is permuted (the MMA sums
/// over k, so any bijection shared by A and B is exact): lane `l` with
/// `q = l % 4` covers columns `32P + 8q .. 32P + 8q + 7` of half `P`, which is
/// one 16-byte load of its activation row.
#[inline(always)]
pub const fn dev_slot(lane: usize, slot: usize) -> (usize, usize) {
    let r0 = lane / 4;
    let q = lane % 4;
    let g = slot / 2;
    let hi = slot % 2;
    let slice = g / 4;
    let a = g % 4;
    let p = slice / 2;
    let h = slice % 2;
    (r0 + 8 * (a & 1), 32 * p + 8 * q + 4 * h + 2 * (a >> 1) + hi)
}

/// Byte offset, inside a record, of the low byte of (`lane`, `slot`).
/// Half `P` of all lanes is one contiguous 512-byte run, lane-major, so a warp
/// reads it with one coalesced 16-byte load per lane.
#[inline(always)]
pub const fn dev_low_offset(lane: usize, slot: usize) -> usize {
    (slot / DT_HALF_SLOTS) * 512 + lane * 16 + slot % DT_HALF_SLOTS
}

/// Where the 3-bit selector of `slot` lives: `(word, shift)` for the low three
/// bits of a nibble, for slots 0..24; slots 24..32 spread their 3 bits over bit 3
/// of nibble `slot - 24` of words 0, 1, 2. Words are stored at
/// `DT_LOW_BYTES + word * 128 + lane * 4`.
#[inline(always)]
pub const fn dev_sel_word_offset(lane: usize, word: usize) -> usize {
    DT_LOW_BYTES + word * 128 + lane * 4
}

/// Pack 32 selectors (3 bits each) of one lane into its three selector words.
#[inline(always)]
pub const fn dev_pack_sel(sel: &[u8; 32]) -> [u32; 3] {
    let mut w = [0u32; 3];
    let mut s = 0;
    while s < 24 {
        w[s / 8] |= ((sel[s] & 7) as u32) << (4 * (s % 8));
        s += 1;
    }
    while s < 32 {
        let j = s - 24;
        let mut b = 0;
        while b < 3 {
            w[b] |= (((sel[s] >> b) & 1) as u32) << (4 * j + 3);
            b += 1;
        }
        s += 1;
    }
    w
}

/// The four nibble-selector words (slots 0-7, 8-15, 16-23, 24-31) of a lane,
/// each nibble in 0..8 (a `prmt` byte index into the 8-byte table).
#[inline(always)]
pub const fn dev_unpack_sel(w: [u32; 3]) -> [u32; 4] {
    const LO3: u32 = 0x7777_7777;
    const B3: u32 = 0x8888_8888;
    [
        w[0] & LO3,
        w[1] & LO3,
        w[2] & LO3,
        ((w[0] & B3) >> 3) | ((w[1] & B3) >> 2) | ((w[2] & B3) >> 1),
    ]
}

/// Exception entry: XOR `delta` (7 bits) into the high byte at `offset`
/// (`lane * 16 + slot % 16`, 9 bits) of the half tile's high-byte scratch.
#[inline(always)]
pub const fn dev_exc_entry(lane: usize, slot: usize, delta: u8) -> u16 {
    (((lane * 16 + slot % DT_HALF_SLOTS) as u16) & 0x1ff) | (((delta & 0x7f) as u16) << 9)
}

/// Split an exception entry into (scratch byte offset, XOR delta).
#[inline(always)]
pub const fn dev_exc_split(e: u16) -> (usize, u8) {
    ((e & 0x1ff) as usize, (e >> 9) as u8)
}

// ---------------------------------------------------------------------------
// ZipGEMM launch geometry (host launches, device kernels)
// ---------------------------------------------------------------------------

/// Warps in every block of the zipserv kernels.
pub const ZG_WARPS: usize = 8;
/// Shared-memory bytes of one warp's exception scratch (a half tile's high bytes).
pub const ZG_SCRATCH: usize = 512;

/// Dynamic shared memory of a ZipGEMM block: the warps' exception scratches,
/// then (block-staged kernel) `stages` stages of an activation tile
/// (`8 nb` rows x 64 columns of BF16) and `8 rs` tile records.
pub const fn zipgemm_smem_bytes(rs: usize, nb: usize, stages: usize) -> usize {
    zipgemm_smem_bytes_w(ZG_WARPS, rs, nb, stages)
}

/// [`zipgemm_smem_bytes`] for a block of `warps` warps (the Hopper kernel,
/// one record a warp, comes in 8- and 16-warp builds).
pub const fn zipgemm_smem_bytes_w(warps: usize, rs: usize, nb: usize, stages: usize) -> usize {
    warps * ZG_SCRATCH + stages * (nb * 1024 + warps * rs * DT_RECORD_BYTES)
}

/// Shared-memory bytes of one warp's activation ring in the warp-independent
/// ZipGEMM builds that stage activations (`stages` k tiles of `8 nb` rows x
/// 64 columns of BF16; none when `stages` is 0). Such a block holds its
/// warps' scratches, then their rings.
pub const fn zg_warp_ring_bytes(nb: usize, stages: usize) -> usize {
    stages * nb * 1024
}

/// Floats between two columns of a warp's FP32 partial sums in shared memory
/// when a block's warps are the k splits of one strip (16 rows plus 4, so a
/// warp's 16-byte stores spread over the banks).
pub const ZG_PART_COL_STRIDE: usize = 20;

/// Shared-memory bytes of one warp's partial sums (`8 nb` columns) when a
/// block's warps are the k splits of one strip ([`ZG_SPLIT_IN_BLOCK`]).
pub const fn zg_block_partial_bytes(nb: usize) -> usize {
    8 * nb * ZG_PART_COL_STRIDE * 4
}

/// Flag in the warp-independent ZipGEMM's `sk` argument: block `b` is strip
/// `b` and its warps are the strip's `sk` k splits, summed in shared memory
/// (no workspace, no atomics, no cluster).
pub const ZG_SPLIT_IN_BLOCK: u32 = 1 << 16;

/// Largest thread-block cluster (a portable size) the host launches for a
/// split-K summed on chip, so the most partial sums a block adds.
pub const ZG_MAX_CLUSTER: usize = 8;

/// Floats between two columns of a block's FP32 partial-sum tile in shared
/// memory (cluster split-K): the block's `16 warps` rows plus 4, so
/// the accumulator stores of a warp (8 rows x 4 column pairs) fall on 32
/// different banks.
pub const fn cluster_col_stride(warps: usize) -> usize {
    16 * warps + 4
}

/// Bytes of a block's FP32 partial-sum tile (`8 nb` columns) in the cluster
/// split-K; it reuses a Hopper block's stage ring ([`hopper_smem_bytes`]
/// takes the larger) or a warp-independent block's scratches.
pub const fn cluster_partial_bytes(warps: usize, nb: usize) -> usize {
    8 * nb * cluster_col_stride(warps) * 4
}

/// Shared-memory bytes at the start of a Hopper ZipGEMM block for the
/// mbarriers of its bulk copies (8 bytes each, one an image stage).
pub const ZG_MBAR_BYTES: usize = 64;

/// Dynamic shared memory of a Hopper ZipGEMM block of `warps` warps: the
/// bulk copies' mbarriers, the exception scratches, `image_stages`
/// activation-image tiles and `stages` stages of the warps' records (one ring
/// when the counts are equal, two otherwise: the same bytes per stage), and at
/// least the cluster split-K's partial-sum tile over them.
pub const fn hopper_smem_bytes(
    warps: usize,
    nb: usize,
    stages: usize,
    image_stages: usize,
) -> usize {
    let ring = image_stages * nb * 1024 + stages * warps * DT_RECORD_BYTES;
    let partial = cluster_partial_bytes(warps, nb);
    ZG_MBAR_BYTES + warps * ZG_SCRATCH + if ring > partial { ring } else { partial }
}
