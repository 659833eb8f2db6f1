//! Exponent histogram and the coverage-maximising window (`FORMAT.md` §2).
use rayon::prelude::*;

/// Histogram of the 8-bit exponents of BF16 bit patterns.
pub fn exponent_histogram(bits: &[u16]) -> [u64; 256] {
    bits.par_chunks(1 << 16)
        .map(|chunk| {
            // Four interleaved sub-histograms: no store-to-load dependency
            // between neighbouring elements with the same exponent.
            let mut h = [[0u32; 256]; 4];
            let mut it = chunk.chunks_exact(4);
            for q in &mut it {
                h[0][((q[0] >> 7) & 0xff) as usize] += 1;
                h[1][((q[1] >> 7) & 0xff) as usize] += 1;
                h[2][((q[2] >> 7) & 0xff) as usize] += 1;
                h[3][((q[3] >> 7) & 0xff) as usize] += 1;
            }
            for &x in it.remainder() {
                h[0][((x >> 7) & 0xff) as usize] += 1;
            }
            let mut out = [0u64; 256];
            for (i, o) in out.iter_mut().enumerate() {
                *o = h.iter().map(|s| s[i] as u64).sum();
            }
            out
        })
        .reduce(
            || [0u64; 256],
            |mut a, b| {
                for i in 0..256 {
                    a[i] += b[i];
                }
                a
            },
        )
}

/// The base exponent `B` in `0..=248` maximising the count of exponents in
/// `B+1 ..= B+7`; ties go to the smallest `B`. Returns `(B, covered)`.
pub fn choose_base(hist: &[u64; 256]) -> (u8, u64) {
    let mut best = (0u8, 0u64);
    for b in 0..=248usize {
        let covered: u64 = hist[b + 1..=b + 7].iter().sum();
        if covered > best.1 {
            best = (b as u8, covered);
        }
    }
    best
}
