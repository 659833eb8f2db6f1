//! The version-1 decoder on the CPU: every bit comes back.
use crate::error::{Error, Result};
use crate::format::CompressedMatrix;
use rayon::prelude::*;
use zipserv_kernels::geometry::{v1_ft_origin, FTS_PER_BT};

/// `SPREAD[b]` has bit 0 of byte `j` set iff bit `j` of `b` is set.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if (b >> j) & 1 == 1 {
                t[b] |= 1 << (8 * j);
            }
            j += 1;
        }
        b += 1;
    }
    t
};

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
                    let (mut h, mut f) = (hi, fi);
                    for r in 0..8 {
                        let sh = 8 * r;
                        let codes = SPREAD[((w1 >> sh) & 0xff) as usize]
                            | (SPREAD[((w2 >> sh) & 0xff) as usize] << 1)
                            | (SPREAD[((w3 >> sh) & 0xff) as usize] << 2);
                        let dst: &mut [u16; 8] = (&mut rows
                            [(r0 + r) * cols + c0..(r0 + r) * cols + c0 + 8])
                            .try_into()
                            .unwrap();
                        if (ind >> sh) & 0xff == 0xff {
                            // The common case: all 8 in the window.
                            let smb = u64::from_le_bytes(sm[h..h + 8].try_into().unwrap());
                            crate::simd::decode_row_hf(codes, smb, m.base_exp, dst);
                            h += 8;
                            continue;
                        }
                        for (c, d) in dst.iter_mut().enumerate() {
                            let code = ((codes >> (8 * c)) & 0xff) as u16;
                            // Mostly in the window: a well-predicted branch.
                            if code != 0 {
                                let b = sm[h] as u16;
                                *d = ((b & 0x80) << 8) | ((base + code) << 7) | (b & 0x7f);
                                h += 1;
                            } else {
                                *d = fb[f];
                                f += 1;
                            }
                        }
                    }
                    hi = h;
                    fi = f;
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
