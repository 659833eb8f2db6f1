//! The GPU layout "ZSD1" (`FORMAT.md` §6): made from a version-1 matrix at load
//! time, decoded by the kernels with a byte-permute table lookup instead of the
//! paper's per-lane popcount walk. Same information, fixed length per element
//! (8 + 3 bits), high bytes outside the 8-entry table patched from a small
//! exception list. See `kernels-gpu/src/geometry.rs` for the geometry.
use crate::error::{Error, Result};
use crate::format::check_shape;
use rayon::prelude::*;
use zipserv_kernels::geometry::*;

/// A matrix in the device layout, on the host (ready to upload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMatrix {
    pub rows: usize,
    pub cols: usize,
    /// The 8 high bytes a selector can name (byte `i` = selector `i`).
    pub table: [u8; 8],
    /// `(rows / 16) * (cols / 64)` records of [`DT_RECORD_BYTES`], strip-major.
    pub records: Vec<u8>,
    /// Exception list start of each half tile, plus the total (`2 * tiles + 1`).
    pub exc_off: Vec<u32>,
    /// Exception entries (see [`dev_exc_entry`]).
    pub exc: Vec<u16>,
}

impl DeviceMatrix {
    pub fn tiles(&self) -> usize {
        (self.rows / DT_ROWS) * (self.cols / DT_COLS)
    }
    /// Bytes the GPU holds for this matrix.
    pub fn device_bytes(&self) -> usize {
        self.records.len() + self.exc_off.len() * 4 + self.exc.len() * 2 + 8
    }
    /// The table as the two `u32` words the kernels take.
    pub fn table_words(&self) -> (u32, u32) {
        let t = &self.table;
        (
            u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]),
        )
    }
    /// Check that every array agrees with the shape and that every exception
    /// entry stays inside its half tile, so no kernel can read out of bounds.
    pub fn validate(&self) -> Result<()> {
        check_shape(self.rows, self.cols)?;
        let t = self.tiles();
        if self.records.len() != t * DT_RECORD_BYTES {
            return Err(Error::invalid("device records have the wrong length"));
        }
        if self.exc_off.len() != 2 * t + 1 || self.exc_off[0] != 0 {
            return Err(Error::invalid(
                "device exception offsets have the wrong length",
            ));
        }
        if self
            .exc_off
            .windows(2)
            .any(|w| w[1] < w[0] || w[1] - w[0] > 512)
        {
            return Err(Error::invalid(
                "device exception offsets are not a valid prefix sum",
            ));
        }
        if *self.exc_off.last().unwrap() as usize != self.exc.len() {
            return Err(Error::invalid(
                "device exception count differs from its offsets",
            ));
        }
        Ok(())
    }
}

/// Choose the 8-entry high-byte table: the 8 most frequent high bytes, with at
/// least one of each sign so that any exception differs from some entry in the
/// low 7 bits only.
pub fn choose_table(bits: &[u16]) -> [u8; 8] {
    let hist = bits
        .par_chunks(1 << 16)
        .map(|c| {
            let mut h = [0u64; 256];
            for &x in c {
                h[(x >> 8) as usize] += 1;
            }
            h
        })
        .reduce(
            || [0u64; 256],
            |mut a, b| {
                for i in 0..256 {
                    a[i] += b[i];
                }
                a
            },
        );
    let mut order: Vec<usize> = (0..256).collect();
    order.sort_by(|&a, &b| hist[b].cmp(&hist[a]).then(a.cmp(&b)));
    let mut t: Vec<u8> = order[..8].iter().map(|&i| i as u8).collect();
    for sign in [0u8, 0x80] {
        if !t.iter().any(|&x| x & 0x80 == sign) {
            let best = order.iter().find(|&&i| (i as u8) & 0x80 == sign).unwrap();
            t[7] = *best as u8;
        }
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&t);
    out
}

/// Build the device layout of a row-major BF16 matrix.
pub fn build(bits: &[u16], rows: usize, cols: usize) -> Result<DeviceMatrix> {
    check_shape(rows, cols)?;
    if bits.len() != rows * cols {
        return Err(Error::invalid("element count does not match the shape"));
    }
    let table = choose_table(bits);
    let mut lookup = [None::<u8>; 256];
    for (i, &h) in table.iter().enumerate() {
        if lookup[h as usize].is_none() {
            lookup[h as usize] = Some(i as u8);
        }
    }
    let same_sign = [
        table.iter().position(|&x| x & 0x80 == 0).unwrap() as u8,
        table.iter().position(|&x| x & 0x80 != 0).unwrap() as u8,
    ];
    let kt = cols / DT_COLS;
    let tiles = (rows / DT_ROWS) * kt;
    let mut records = vec![0u8; tiles * DT_RECORD_BYTES];
    // Per tile: exceptions of half 0 and half 1.
    let per_tile: Vec<[Vec<u16>; 2]> = records
        .par_chunks_mut(DT_RECORD_BYTES)
        .enumerate()
        .map(|(tile, rec)| {
            let (strip, ktile) = (tile / kt, tile % kt);
            let mut exc: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
            for lane in 0..32 {
                let mut sel = [0u8; 32];
                for slot in 0..DT_SLOTS {
                    let (r, c) = dev_slot(lane, slot);
                    let x = bits[(strip * DT_ROWS + r) * cols + ktile * DT_COLS + c];
                    rec[dev_low_offset(lane, slot)] = x as u8;
                    let h = (x >> 8) as u8;
                    sel[slot] = match lookup[h as usize] {
                        Some(i) => i,
                        None => {
                            let i = same_sign[(h >> 7) as usize];
                            exc[slot / DT_HALF_SLOTS].push(dev_exc_entry(
                                lane,
                                slot,
                                table[i as usize] ^ h,
                            ));
                            i
                        }
                    };
                }
                for (w, word) in dev_pack_sel(&sel).iter().enumerate() {
                    let o = dev_sel_word_offset(lane, w);
                    rec[o..o + 4].copy_from_slice(&word.to_le_bytes());
                }
            }
            exc
        })
        .collect();
    let mut exc_off = Vec::with_capacity(2 * tiles + 1);
    let mut exc = Vec::new();
    exc_off.push(0u32);
    for halves in per_tile {
        for h in halves {
            exc.extend_from_slice(&h);
            exc_off.push(exc.len() as u32);
        }
    }
    Ok(DeviceMatrix {
        rows,
        cols,
        table,
        records,
        exc_off,
        exc,
    })
}

/// Decode the device layout on the CPU exactly as the kernels do (selector
/// unpack, table permute, XOR patch through a per-half scratch).
pub fn decode(d: &DeviceMatrix) -> Result<Vec<u16>> {
    d.validate()?;
    let (rows, cols) = (d.rows, d.cols);
    let kt = cols / DT_COLS;
    let mut out = vec![0u16; rows * cols];
    out.par_chunks_mut(DT_ROWS * cols)
        .enumerate()
        .for_each(|(strip, dst)| {
            for ktile in 0..kt {
                let tile = strip * kt + ktile;
                let rec = &d.records[tile * DT_RECORD_BYTES..(tile + 1) * DT_RECORD_BYTES];
                let mut high = [[0u8; 512]; 2];
                for lane in 0..32 {
                    let mut w = [0u32; 3];
                    for (i, word) in w.iter_mut().enumerate() {
                        let o = dev_sel_word_offset(lane, i);
                        *word = u32::from_le_bytes(rec[o..o + 4].try_into().unwrap());
                    }
                    let nib = dev_unpack_sel(w);
                    for slot in 0..DT_SLOTS {
                        let s = (nib[slot / 8] >> (4 * (slot % 8))) & 0xf;
                        high[slot / DT_HALF_SLOTS][lane * 16 + slot % DT_HALF_SLOTS] =
                            d.table[s as usize];
                    }
                }
                for (half, hb) in high.iter_mut().enumerate() {
                    let h = 2 * tile + half;
                    for &e in &d.exc[d.exc_off[h] as usize..d.exc_off[h + 1] as usize] {
                        let (o, delta) = dev_exc_split(e);
                        hb[o] ^= delta;
                    }
                }
                for lane in 0..32 {
                    for slot in 0..DT_SLOTS {
                        let (r, c) = dev_slot(lane, slot);
                        let lo = rec[dev_low_offset(lane, slot)] as u16;
                        let hi =
                            high[slot / DT_HALF_SLOTS][lane * 16 + slot % DT_HALF_SLOTS] as u16;
                        dst[r * cols + ktile * DT_COLS + c] = (hi << 8) | lo;
                    }
                }
            }
        });
    Ok(out)
}
