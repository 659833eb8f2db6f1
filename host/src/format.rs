//! The version-1 TCA-TBE arrays of one matrix (`FORMAT.md` §4) and their
//! validation.
use crate::error::{Error, Result};
use zipserv_kernels::geometry::{FTS_PER_BT, FTS_PER_WT, FT_ELEMS, WTS_PER_BT};

/// Format version written and read by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Per-BlockTile padding of the sign/mantissa stream, in bytes.
pub const HF_PAD: usize = 16;
/// Per-BlockTile padding of the fallback stream, in elements.
pub const FB_PAD: usize = 8;

/// One BF16 matrix in TCA-TBE version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub base_exp: u8,
    pub bitmap1: Vec<u64>,
    pub bitmap2: Vec<u64>,
    pub bitmap3: Vec<u64>,
    pub sign_mantissa: Vec<u8>,
    pub fallback: Vec<u16>,
    /// `(hf_start, fb_start)` of each BlockTile, plus the totals.
    pub offsets_block: Vec<[i32; 2]>,
    /// `(hf_start, fb_start)` of each WarpTile relative to its BlockTile.
    pub offsets_warp: Vec<[i32; 2]>,
    pub max_hf: i32,
    pub max_fb: i32,
}

/// Summary counts of a matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub elements: u64,
    pub high_freq: u64,
    pub bytes: u64,
}

impl Stats {
    /// Fraction of elements inside the exponent window.
    pub fn coverage(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.high_freq as f64 / self.elements as f64
        }
    }
    /// Stored bits per weight, all arrays and metadata included.
    pub fn bits_per_weight(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.elements as f64
        }
    }
}

/// Check a shape can be stored in version 1.
pub fn check_shape(rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 || !rows.is_multiple_of(64) || !cols.is_multiple_of(64) {
        return Err(Error::invalid(format!(
            "shape {rows}x{cols}: version 1 needs both dimensions to be non-zero multiples of 64"
        )));
    }
    rows.checked_mul(cols)
        .filter(|&n| n <= (i32::MAX as usize))
        .ok_or_else(|| {
            Error::invalid(format!(
                "shape {rows}x{cols} is too large (over 2^31 elements)"
            ))
        })?;
    Ok(())
}

impl CompressedMatrix {
    pub fn num_bt(&self) -> usize {
        (self.rows / 64) * (self.cols / 64)
    }
    pub fn num_ft(&self) -> usize {
        (self.rows / 8) * (self.cols / 8)
    }

    /// Bytes of all arrays and scalars as stored.
    pub fn stored_bytes(&self) -> u64 {
        (self.bitmap1.len() * 24
            + self.sign_mantissa.len()
            + self.fallback.len() * 2
            + self.offsets_block.len() * 8
            + self.offsets_warp.len() * 8
            + 1
            + 8) as u64
    }

    pub fn stats(&self) -> Stats {
        let hf: u64 = self
            .bitmap1
            .iter()
            .zip(&self.bitmap2)
            .zip(&self.bitmap3)
            .map(|((a, b), c)| (a | b | c).count_ones() as u64)
            .sum();
        Stats {
            elements: (self.rows * self.cols) as u64,
            high_freq: hf,
            bytes: self.stored_bytes(),
        }
    }

    /// Check every array length, offset and count against the shape and the
    /// bitmaps. After this succeeds, decoding cannot index out of bounds.
    pub fn validate(&self) -> Result<()> {
        check_shape(self.rows, self.cols)?;
        if self.base_exp > 248 {
            return Err(Error::invalid(format!(
                "base exponent {} is over 248",
                self.base_exp
            )));
        }
        let nft = self.num_ft();
        let nbt = self.num_bt();
        for (name, len) in [
            ("bitmap1", self.bitmap1.len()),
            ("bitmap2", self.bitmap2.len()),
            ("bitmap3", self.bitmap3.len()),
        ] {
            if len != nft {
                return Err(Error::invalid(format!(
                    "{name} has {len} words, the shape needs {nft}"
                )));
            }
        }
        if self.offsets_block.len() != nbt + 1 {
            return Err(Error::invalid(format!(
                "offsets_block has {} pairs, the shape needs {}",
                self.offsets_block.len(),
                nbt + 1
            )));
        }
        if self.offsets_warp.len() != nbt * WTS_PER_BT {
            return Err(Error::invalid(format!(
                "offsets_warp has {} pairs, the shape needs {}",
                self.offsets_warp.len(),
                nbt * WTS_PER_BT
            )));
        }
        if self.offsets_block[0] != [0, 0] {
            return Err(Error::invalid("offsets_block does not start at (0, 0)"));
        }
        let (mut max_hf, mut max_fb) = (0i32, 0i32);
        for bt in 0..nbt {
            let [h0, f0] = self.offsets_block[bt];
            let [h1, f1] = self.offsets_block[bt + 1];
            let (dh, df) = (h1 as i64 - h0 as i64, f1 as i64 - f0 as i64);
            let mut hf = 0i64;
            for wt in 0..WTS_PER_BT {
                let [wh, wf] = self.offsets_warp[bt * WTS_PER_BT + wt];
                let fb_before = (wt * FTS_PER_WT * FT_ELEMS) as i64 - hf;
                if wh as i64 != hf || wf as i64 != fb_before {
                    return Err(Error::invalid(format!(
                        "offsets_warp of block tile {bt}, warp tile {wt} is ({wh}, {wf}); the bitmaps give ({hf}, {fb_before})"
                    )));
                }
                let base = bt * FTS_PER_BT + wt * FTS_PER_WT;
                for f in base..base + FTS_PER_WT {
                    hf += (self.bitmap1[f] | self.bitmap2[f] | self.bitmap3[f]).count_ones() as i64;
                }
            }
            let fb = (FTS_PER_BT * FT_ELEMS) as i64 - hf;
            let want_h = (hf as usize).div_ceil(HF_PAD) * HF_PAD;
            let want_f = (fb as usize).div_ceil(FB_PAD) * FB_PAD;
            if dh != want_h as i64 || df != want_f as i64 {
                return Err(Error::invalid(format!(
                    "offsets_block of block tile {bt} give run lengths ({dh}, {df}); the bitmaps give ({want_h}, {want_f})"
                )));
            }
            max_hf = max_hf.max(dh as i32);
            max_fb = max_fb.max(df as i32);
        }
        let [th, tf] = self.offsets_block[nbt];
        if th as usize != self.sign_mantissa.len() || tf as usize != self.fallback.len() {
            return Err(Error::invalid(format!(
                "streams hold ({}, {}) elements, offsets_block totals say ({th}, {tf})",
                self.sign_mantissa.len(),
                self.fallback.len()
            )));
        }
        if max_hf != self.max_hf || max_fb != self.max_fb {
            return Err(Error::invalid(format!(
                "max counts ({}, {}) differ from the offsets ({max_hf}, {max_fb})",
                self.max_hf, self.max_fb
            )));
        }
        Ok(())
    }
}
