//! Eight-element row kernels of the CPU codec: SSE2 on x86-64 (part of its
//! baseline, so always present), plain Rust elsewhere. Both give identical bits.

/// For 8 BF16 patterns: (codes as 8 bytes, in-window mask as 8 bits,
/// sign/mantissa bytes as 8 bytes), for base exponent `base`.
#[inline(always)]
pub fn encode_row(x: &[u16; 8], base: u8) -> (u64, u32, u64) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::*;
        let v = _mm_loadu_si128(x.as_ptr() as *const __m128i);
        let ff = _mm_set1_epi16(0xff);
        let e = _mm_and_si128(_mm_srli_epi16(v, 7), ff);
        let d = _mm_and_si128(_mm_sub_epi16(e, _mm_set1_epi16(base as i16)), ff);
        let dm1 = _mm_and_si128(_mm_sub_epi16(d, _mm_set1_epi16(1)), ff);
        let hf = _mm_cmplt_epi16(dm1, _mm_set1_epi16(7));
        let code = _mm_and_si128(d, hf);
        let codes = _mm_cvtsi128_si64(_mm_packus_epi16(code, code)) as u64;
        let mask = (_mm_movemask_epi8(_mm_packs_epi16(hf, hf)) & 0xff) as u32;
        let sm16 = _mm_or_si128(
            _mm_and_si128(_mm_srli_epi16(v, 8), _mm_set1_epi16(0x80)),
            _mm_and_si128(v, _mm_set1_epi16(0x7f)),
        );
        let sm = _mm_cvtsi128_si64(_mm_packus_epi16(sm16, sm16)) as u64;
        (codes, mask, sm)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (mut codes, mut mask, mut sm) = (0u64, 0u32, 0u64);
        for (c, &v) in x.iter().enumerate() {
            let d = (((v >> 7) & 0xff) as u8).wrapping_sub(base);
            let hf = d.wrapping_sub(1) < 7;
            codes |= ((if hf { d } else { 0 }) as u64) << (8 * c);
            mask |= (hf as u32) << c;
            sm |= ((((v >> 8) & 0x80) | (v & 0x7f)) as u64) << (8 * c);
        }
        (codes, mask, sm)
    }
}

/// Decode 8 in-window elements: `codes` (8 bytes, each 1..=7) and their
/// sign/mantissa bytes `sm` (8 bytes) to BF16 patterns.
#[inline(always)]
pub fn decode_row_hf(codes: u64, sm: u64, base: u8, out: &mut [u16; 8]) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::*;
        let z = _mm_setzero_si128();
        let c = _mm_unpacklo_epi8(_mm_cvtsi64_si128(codes as i64), z);
        let b = _mm_unpacklo_epi8(_mm_cvtsi64_si128(sm as i64), z);
        let e = _mm_slli_epi16(_mm_add_epi16(c, _mm_set1_epi16(base as i16)), 7);
        let s = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
        let m = _mm_and_si128(b, _mm_set1_epi16(0x7f));
        let v = _mm_or_si128(_mm_or_si128(s, e), m);
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, v);
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (c, o) in out.iter_mut().enumerate() {
        let code = (codes >> (8 * c)) as u16 & 0xff;
        let b = (sm >> (8 * c)) as u16 & 0xff;
        *o = ((b & 0x80) << 8) | ((base as u16 + code) << 7) | (b & 0x7f);
    }
}
