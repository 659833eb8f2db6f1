//! The version-1 decoder on the CPU: every bit comes back.
use crate::error::{Error, Result};
use crate::format::CompressedMatrix;
use rayon::prelude::*;
use zipserv_kernels::geometry::{v1_ft_origin, FTS_PER_BT};

/// Decode into a caller buffer of `rows * cols` BF16 bit patterns.
/// The matrix must have passed [`CompressedMatrix::validate`] (checked here).
pub fn decode_into(m: &CompressedMatrix, out: &mut [u16]) -> Result<()> {
    m.validate()?;
    if out.len() != m.rows * m.cols {
        return Err(Error::invalid("output buffer has the wrong length"));
    }
    let cols = m.cols;
    let kb = cols / 64;
    let base = m.base_exp as u16;
    out.par_chunks_mut(64 * cols)
        .enumerate()
        .for_each(|(br, rows)| {
            for bc in 0..kb {
                let bt = br * kb + bc;
                let [h0, f0] = m.offsets_block[bt];
                let [h1, f1] = m.offsets_block[bt + 1];
                let sm = &m.sign_mantissa[h0 as usize..h1 as usize];
                let fb = &m.fallback[f0 as usize..f1 as usize];
                let (mut hi, mut fi) = (0usize, 0usize);
                for ftl in 0..FTS_PER_BT {
                    let f = bt * FTS_PER_BT + ftl;
                    let (r0, c0) = v1_ft_origin(f, cols);
                    let (w1, w2, w3) = (m.bitmap1[f], m.bitmap2[f], m.bitmap3[f]);
                    let ind = w1 | w2 | w3;
                    let r0 = r0 - br * 64;
                    if ind == u64::MAX {
                        // Fast path: all 64 elements in the window.
                        let s = &sm[hi..hi + 64];
                        for r in 0..8 {
                            let dst = &mut rows[(r0 + r) * cols + c0..(r0 + r) * cols + c0 + 8];
                            for c in 0..8 {
                                let p = 8 * r + c;
                                let code = ((w1 >> p) & 1)
                                    | (((w2 >> p) & 1) << 1)
                                    | (((w3 >> p) & 1) << 2);
                                let b = s[p] as u16;
                                dst[c] =
                                    ((b & 0x80) << 8) | ((base + code as u16) << 7) | (b & 0x7f);
                            }
                        }
                        hi += 64;
                        continue;
                    }
                    for r in 0..8 {
                        let dst = &mut rows[(r0 + r) * cols + c0..(r0 + r) * cols + c0 + 8];
                        for (c, d) in dst.iter_mut().enumerate() {
                            let p = 8 * r + c;
                            if (ind >> p) & 1 != 0 {
                                let code = ((w1 >> p) & 1)
                                    | (((w2 >> p) & 1) << 1)
                                    | (((w3 >> p) & 1) << 2);
                                let b = sm[hi] as u16;
                                *d = ((b & 0x80) << 8) | ((base + code as u16) << 7) | (b & 0x7f);
                                hi += 1;
                            } else {
                                *d = fb[fi];
                                fi += 1;
                            }
                        }
                    }
                }
            }
        });
    Ok(())
}

/// Decode into a new vector.
pub fn decode(m: &CompressedMatrix) -> Result<Vec<u16>> {
    let mut out = vec![0u16; m.rows * m.cols];
    decode_into(m, &mut out)?;
    Ok(out)
}
