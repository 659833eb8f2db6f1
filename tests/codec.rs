//! The version-1 codec on the CPU: bit-exact round trips, the window rule,
//! validation, and a golden layout.
use proptest::prelude::*;
use zipserv::synth::{random_bits, student_t_bf16};
use zipserv::window::{choose_base, exponent_histogram};
use zipserv::{decode::decode, encode::encode};
use zipserv_kernels::geometry::*;

fn roundtrip(bits: &[u16], r: usize, c: usize) -> zipserv::CompressedMatrix {
    let m = encode(bits, r, c).unwrap();
    m.validate().unwrap();
    let back = decode(&m).unwrap();
    assert!(back == bits, "round trip differs for {r}x{c}");
    m
}

#[test]
fn all_65536_patterns_round_trip() {
    // Every BF16 bit pattern, in a 256 x 256 matrix, in two different orders.
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    roundtrip(&bits, 256, 256);
    let rev: Vec<u16> = bits.iter().rev().map(|x| x.rotate_left(5)).collect();
    roundtrip(&rev, 64, 1024);
}

#[test]
fn realistic_weights_compress_to_about_11_35_bits() {
    let bits = student_t_bf16(1024 * 1024, 0.02, 1);
    let m = roundtrip(&bits, 1024, 1024);
    let s = m.stats();
    assert!(
        s.coverage() > 0.95 && s.coverage() < 0.99,
        "coverage {}",
        s.coverage()
    );
    let bpw = s.bits_per_weight();
    assert!((11.1..11.6).contains(&bpw), "bits/weight {bpw}");
}

#[test]
fn all_fallback_and_all_in_window() {
    // Exponent 0 only (zeros and subnormals): no window covers anything, every
    // element is a fallback. (Any other exponent, 255 included, fits a window.)
    let fb: Vec<u16> = (0..64 * 64).map(|i| (i as u16 * 37) & 0x807f).collect();
    let m = roundtrip(&fb, 64, 64);
    assert_eq!(m.stats().high_freq, 0);
    assert_eq!(m.fallback.len(), 4096);
    assert!(m.sign_mantissa.is_empty());
    // One exponent only: every element is high-frequency.
    let hf: Vec<u16> = random_bits(128 * 64, 3)
        .iter()
        .map(|x| (x & 0x807f) | (120 << 7))
        .collect();
    let m = roundtrip(&hf, 128, 64);
    assert_eq!(m.stats().high_freq, 128 * 64);
    assert!(m.fallback.is_empty());
}

#[test]
fn window_at_both_ends_of_the_exponent_range() {
    // Exponents 1..=7 -> B = 0.
    let lo: Vec<u16> = (0..64 * 64)
        .map(|i| ((1 + (i % 7)) << 7) as u16 | (i as u16 & 0x7f))
        .collect();
    let m = roundtrip(&lo, 64, 64);
    assert_eq!(m.base_exp, 0);
    assert_eq!(m.stats().high_freq, 4096);
    // Exponents 249..=255 -> B = 248 (255 = Inf/NaN is in the window).
    let hi: Vec<u16> = (0..64 * 64)
        .map(|i| ((249 + (i % 7)) << 7) as u16 | 0x8000 | (i as u16 & 0x7f))
        .collect();
    let m = roundtrip(&hi, 64, 64);
    assert_eq!(m.base_exp, 248);
    assert_eq!(m.stats().high_freq, 4096);
}

#[test]
fn window_rule_is_argmax_with_ties_to_smallest() {
    let mut h = [0u64; 256];
    h[10..=16].fill(5);
    h[100..=106].fill(5);
    assert_eq!(choose_base(&h), (9, 35));
    h[107] = 6;
    assert_eq!(choose_base(&h).0, 100);
    let hist = exponent_histogram(&[0x3f80; 10]);
    assert_eq!(hist[127], 10);
}

#[test]
fn unfit_tensors_get_the_right_reason() {
    use safetensors::Dtype;
    use zipserv::container::unfit_reason;
    assert_eq!(unfit_reason(Dtype::BF16, &[128, 64]), None);
    assert!(unfit_reason(Dtype::F32, &[128, 64])
        .unwrap()
        .contains("F32"));
    assert!(unfit_reason(Dtype::BF16, &[64]).unwrap().contains("1-D"));
    assert!(unfit_reason(Dtype::BF16, &[100, 64])
        .unwrap()
        .contains("multiples of 64"));
    assert!(unfit_reason(Dtype::BF16, &[1 << 18, 1 << 14])
        .unwrap()
        .contains("too large"));
}

#[test]
fn bad_shapes_are_errors() {
    assert!(encode(&[0u16; 64 * 32], 64, 32).is_err());
    assert!(encode(&[0u16; 10], 64, 64).is_err());
    assert!(encode(&[], 0, 64).is_err());
}

#[test]
fn validation_catches_corruption() {
    let bits = student_t_bf16(128 * 128, 0.02, 9);
    let m = encode(&bits, 128, 128).unwrap();
    let mut a = m.clone();
    a.bitmap2[3] ^= 1 << 17;
    assert!(a.validate().is_err() || zipserv::decode::decode(&a).unwrap() != bits);
    let mut b = m.clone();
    b.offsets_block[2][0] += 16;
    assert!(b.validate().is_err());
    let mut c = m.clone();
    c.sign_mantissa.pop();
    assert!(c.validate().is_err());
    let mut d = m.clone();
    d.offsets_warp[5][1] -= 1;
    assert!(d.validate().is_err());
    let mut e = m.clone();
    e.base_exp = 249;
    assert!(e.validate().is_err());
    let mut f = m;
    f.bitmap1.truncate(10);
    assert!(f.validate().is_err());
}

/// A hand-worked 64x64 matrix pins the exact arrays (FORMAT.md §3-4).
#[test]
fn golden_layout() {
    // Element (r, c) has exponent 120 + ((r + c) % 3) - 1 (119..121, codes 4..6
    // with B = 115... chosen by the rule), except (0, 1) which is zero and
    // (9, 0) which is 2^-100 (fallbacks). Mantissa = c, sign = r odd.
    let mut bits = vec![0u16; 64 * 64];
    for r in 0..64 {
        for c in 0..64 {
            let e = 119 + ((r + c) % 3) as u16;
            bits[r * 64 + c] = (((r % 2) as u16) << 15) | (e << 7) | c as u16;
        }
    }
    bits[1] = 0;
    bits[9 * 64] = 27 << 7;
    let m = roundtrip(&bits, 64, 64);
    // Histogram: 119, 120, 121 only -> windows B+1..B+7 covering them: B in 114..=118;
    // ties to the smallest: B = 114.
    assert_eq!(m.base_exp, 114);
    // FT 0 = rows 0-7, cols 0-7. Element (0,0): e = 119, code 5 = 0b101.
    assert_eq!(m.bitmap1[0] & 1, 1);
    assert_eq!(m.bitmap2[0] & 1, 0);
    assert_eq!(m.bitmap3[0] & 1, 1);
    // Element (0,1) is the zero: no bit in any plane at p = 1.
    assert_eq!((m.bitmap1[0] | m.bitmap2[0] | m.bitmap3[0]) >> 1 & 1, 0);
    // Element (0,2): e = 121, code 7.
    assert_eq!(
        (
            m.bitmap1[0] >> 2 & 1,
            m.bitmap2[0] >> 2 & 1,
            m.bitmap3[0] >> 2 & 1
        ),
        (1, 1, 1)
    );
    // Streams: first bytes are elements (0,0), (0,2), (0,3) in p order.
    assert_eq!(&m.sign_mantissa[..3], &[0, 2, 3]);
    // Fallbacks in FT order: (0,1) lives in FT 0; (9,0) in FT 1 (rows 8-15, cols 0-7).
    assert_eq!(m.fallback[..2], [0, 27 << 7]);
    assert_eq!(m.fallback.len(), 8, "2 fallbacks padded to 8");
    assert_eq!(m.sign_mantissa.len(), 4096, "4094 bytes padded to 16");
    assert_eq!(m.offsets_block, vec![[0, 0], [4096, 8]]);
    // Warp tiles: WT 0 holds both fallbacks.
    assert_eq!(
        m.offsets_warp,
        vec![[0, 0], [1022, 2], [2046, 2], [3070, 2]]
    );
    assert_eq!((m.max_hf, m.max_fb), (4096, 8));
    // FT order: FT 2 of a TT is rows 0-7, cols 8-15; FT 4 is the next TT.
    assert_eq!(v1_ft_origin(2, 64), (0, 8));
    assert_eq!(v1_ft_origin(4, 64), (0, 16));
    assert_eq!(v1_ft_origin(16, 64), (16, 0));
    assert_eq!(v1_ft_origin(64, 128), (0, 64));
    // Bit pattern of the whole first FT's plane 1 (row-major p = 8r + c).
    let mut want = 0u64;
    for r in 0..8 {
        for c in 0..8 {
            let code = 5 + ((r + c) % 3) as u64;
            if !(r == 0 && c == 1) {
                want |= (code & 1) << ft_pos(r, c);
            }
        }
    }
    assert_eq!(m.bitmap1[0], want);
}

#[test]
fn ft_index_and_origin_agree() {
    let k = 192;
    for f in 0..(128 / 8) * (k / 8) {
        let (r, c) = v1_ft_origin(f, k);
        assert_eq!(v1_ft_index(r, c, k), f);
        assert_eq!(v1_ft_index(r + 7, c + 7, k), f);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_and_bits_round_trip(rb in 1usize..4, cb in 1usize..4, seed in any::<u64>(), mode in 0u8..3) {
        let (r, c) = (rb * 64, cb * 64);
        let bits = match mode {
            0 => random_bits(r * c, seed),
            1 => student_t_bf16(r * c, 0.02, seed),
            _ => random_bits(r * c, seed).iter().map(|x| x & 0x83ff).collect(),
        };
        let m = encode(&bits, r, c).unwrap();
        m.validate().unwrap();
        prop_assert_eq!(decode(&m).unwrap(), bits);
    }
}
