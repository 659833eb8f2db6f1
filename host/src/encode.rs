//! The version-1 encoder: BF16 bit patterns in, TCA-TBE arrays out.
//! Multi-threaded over BlockTile rows (rayon); two passes (count, fill) so that
//! every output array is allocated once at its exact size.
use crate::error::Result;
use crate::format::{check_shape, CompressedMatrix, FB_PAD, HF_PAD};
use crate::window::{choose_base, exponent_histogram};
use rayon::prelude::*;
use zipserv_kernels::geometry::{v1_ft_origin, FTS_PER_BT, FTS_PER_WT, FT_ELEMS, WTS_PER_BT};

/// Bit `j` of the result = bit 0 of byte `j` of `x` (the other bits of `x` are ignored).
#[inline(always)]
pub(crate) fn pack_lsb(x: u64) -> u64 {
    ((x & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Encode a row-major `rows x cols` BF16 matrix given as raw bit patterns.
pub fn encode(bits: &[u16], rows: usize, cols: usize) -> Result<CompressedMatrix> {
    check_shape(rows, cols)?;
    if bits.len() != rows * cols {
        return Err(crate::Error::invalid(format!(
            "{} elements given for shape {rows}x{cols}",
            bits.len()
        )));
    }
    let hist = exponent_histogram(bits);
    let (base, _) = choose_base(&hist);
    let kb = cols / 64;
    let mb = rows / 64;
    let nbt = mb * kb;

    // Pass 1: high-frequency count of each BlockTile.
    let counts: Vec<u32> = (0..mb)
        .into_par_iter()
        .flat_map_iter(|br| {
            let mut c = vec![0u32; kb];
            for r in 0..64 {
                let row = &bits[(br * 64 + r) * cols..(br * 64 + r + 1) * cols];
                let lo = base as u16 + 1;
                for (bc, chunk) in row.chunks_exact(64).enumerate() {
                    // u16 lanes throughout, so that this vectorises.
                    let n: u16 = chunk
                        .iter()
                        .map(|&x| ((((x >> 7) & 0xff).wrapping_sub(lo) & 0xff) < 7) as u16)
                        .sum();
                    c[bc] += n as u32;
                }
            }
            c
        })
        .collect();

    let mut offsets_block = Vec::with_capacity(nbt + 1);
    let (mut h, mut f) = (0usize, 0usize);
    let (mut max_hf, mut max_fb) = (0usize, 0usize);
    offsets_block.push([0i32, 0i32]);
    for &c in &counts {
        let ph = (c as usize).div_ceil(HF_PAD) * HF_PAD;
        let pf = (4096 - c as usize).div_ceil(FB_PAD) * FB_PAD;
        max_hf = max_hf.max(ph);
        max_fb = max_fb.max(pf);
        h += ph;
        f += pf;
        offsets_block.push([h as i32, f as i32]);
    }

    let nft = nbt * FTS_PER_BT;
    let mut b1 = vec![0u64; nft];
    let mut b2 = vec![0u64; nft];
    let mut b3 = vec![0u64; nft];
    let mut sm = vec![0u8; h];
    let mut fb = vec![0u16; f];
    let mut ow = vec![[0i32; 2]; nbt * WTS_PER_BT];

    // Split every array into per-BlockTile-row pieces, then fill them in parallel.
    struct Piece<'a> {
        br: usize,
        b1: &'a mut [u64],
        b2: &'a mut [u64],
        b3: &'a mut [u64],
        sm: &'a mut [u8],
        fb: &'a mut [u16],
        ow: &'a mut [[i32; 2]],
    }
    let mut pieces = Vec::with_capacity(mb);
    {
        let (mut r1, mut r2, mut r3) = (&mut b1[..], &mut b2[..], &mut b3[..]);
        let (mut rs, mut rf, mut ro) = (&mut sm[..], &mut fb[..], &mut ow[..]);
        for br in 0..mb {
            let [h0, f0] = offsets_block[br * kb];
            let [h1, f1] = offsets_block[(br + 1) * kb];
            let n = kb * FTS_PER_BT;
            let (a, rest) = std::mem::take(&mut r1).split_at_mut(n);
            r1 = rest;
            let (b, rest) = std::mem::take(&mut r2).split_at_mut(n);
            r2 = rest;
            let (c, rest) = std::mem::take(&mut r3).split_at_mut(n);
            r3 = rest;
            let (s, rest) = std::mem::take(&mut rs).split_at_mut((h1 - h0) as usize);
            rs = rest;
            let (fv, rest) = std::mem::take(&mut rf).split_at_mut((f1 - f0) as usize);
            rf = rest;
            let (o, rest) = std::mem::take(&mut ro).split_at_mut(kb * WTS_PER_BT);
            ro = rest;
            pieces.push(Piece {
                br,
                b1: a,
                b2: b,
                b3: c,
                sm: s,
                fb: fv,
                ow: o,
            });
        }
    }
    pieces.into_par_iter().for_each(|p| {
        let row_base = offsets_block[p.br * kb];
        for bc in 0..kb {
            let bt = p.br * kb + bc;
            let [bh, bf] = offsets_block[bt];
            let mut hi = (bh - row_base[0]) as usize;
            let mut fi = (bf - row_base[1]) as usize;
            let (hstart, fstart) = (hi, fi);
            for ftl in 0..FTS_PER_BT {
                if ftl % FTS_PER_WT == 0 {
                    p.ow[bc * WTS_PER_BT + ftl / FTS_PER_WT] =
                        [(hi - hstart) as i32, (fi - fstart) as i32];
                }
                let (r0, c0) = v1_ft_origin(bt * FTS_PER_BT + ftl, cols);
                let (mut w1, mut w2, mut w3) = (0u64, 0u64, 0u64);
                // Branch-free compaction into small local runs, copied out once.
                let mut tsm = [0u8; 64];
                let mut tfb = [0u16; 64];
                let (mut nh, mut nf) = (0usize, 0usize);
                for r in 0..8 {
                    let row: &[u16; 8] = bits[(r0 + r) * cols + c0..(r0 + r) * cols + c0 + 8]
                        .try_into()
                        .unwrap();
                    let (codes, mask, smb) = crate::simd::encode_row(row, base);
                    if mask == 0xff {
                        // The common case: all 8 in the window.
                        tsm[nh..nh + 8].copy_from_slice(&smb.to_le_bytes());
                        nh += 8;
                    } else {
                        for (c, &x) in row.iter().enumerate() {
                            let hf = (mask >> c) & 1 != 0;
                            tsm[nh & 63] = (smb >> (8 * c)) as u8;
                            tfb[nf & 63] = x;
                            nh += hf as usize;
                            nf += (!hf) as usize;
                        }
                    }
                    w1 |= pack_lsb(codes) << (8 * r);
                    w2 |= pack_lsb(codes >> 1) << (8 * r);
                    w3 |= pack_lsb(codes >> 2) << (8 * r);
                }
                p.sm[hi..hi + nh].copy_from_slice(&tsm[..nh]);
                p.fb[fi..fi + nf].copy_from_slice(&tfb[..nf]);
                hi += nh;
                fi += nf;
                let fl = bc * FTS_PER_BT + ftl;
                p.b1[fl] = w1;
                p.b2[fl] = w2;
                p.b3[fl] = w3;
            }
            debug_assert_eq!(hi - hstart + fi - fstart, FTS_PER_BT * FT_ELEMS);
        }
    });

    Ok(CompressedMatrix {
        rows,
        cols,
        base_exp: base,
        bitmap1: b1,
        bitmap2: b2,
        bitmap3: b3,
        sign_mantissa: sm,
        fallback: fb,
        offsets_block,
        offsets_warp: ow,
        max_hf: max_hf as i32,
        max_fb: max_fb as i32,
    })
}
