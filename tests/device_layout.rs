//! The GPU layout: geometry, and bit-exact conversion from version 1.
use zipserv::device_layout::{build, decode};
use zipserv::synth::{random_bits, student_t_bf16};
use zipserv_kernels::geometry::*;

#[test]
fn slot_map_is_a_bijection_onto_the_tile() {
    let mut seen = [[false; 64]; 16];
    for lane in 0..32 {
        for slot in 0..32 {
            let (r, c) = dev_slot(lane, slot);
            assert!(!seen[r][c], "({r},{c}) twice");
            seen[r][c] = true;
        }
    }
    assert!(seen.iter().all(|r| r.iter().all(|&x| x)));
    // A lane's slots in half P cover columns 32P + 8q .. 32P + 8q + 7 of rows r0, r0 + 8.
    for lane in 0..32 {
        for slot in 0..32 {
            let (r, c) = dev_slot(lane, slot);
            assert!(r == lane / 4 || r == lane / 4 + 8);
            assert_eq!(c / 8, (slot / 16) * 4 + lane % 4);
        }
    }
}

#[test]
fn mma_k_pairing_is_consistent() {
    // For the m16n8k16 A fragment, register a (0..4) of slice s holds k index
    // kk = 2q + 8 * (a >> 1) (+1); B register b (0, 1) holds kk = 2q + 8b (+1).
    // Our B words for slice h are the activation pairs 2h and 2h + 1 of the
    // lane's 8 columns; check the A slots use the same columns.
    for lane in 0..32 {
        for slot in 0..32 {
            let (_, c) = dev_slot(lane, slot);
            let g = slot / 2;
            let (slice, a) = (g / 4, g % 4);
            let h = slice % 2;
            let b = a >> 1; // which B register this A register pairs with
            let word = 2 * h + b; // activation word (pair) index in the lane's 16 bytes
            assert_eq!(c % 8, 2 * word + slot % 2);
        }
    }
}

#[test]
fn selector_packing_round_trips() {
    let mut sel = [0u8; 32];
    for (i, s) in sel.iter_mut().enumerate() {
        *s = ((i * 5 + 3) % 8) as u8;
    }
    let nib = dev_unpack_sel(dev_pack_sel(&sel));
    for (i, &s) in sel.iter().enumerate() {
        assert_eq!((nib[i / 8] >> (4 * (i % 8))) & 0xf, s as u32);
    }
}

fn check(bits: &[u16], r: usize, c: usize) -> zipserv::device_layout::DeviceMatrix {
    // Through version 1, as a model load does.
    let v1 = zipserv::encode::encode(bits, r, c).unwrap();
    let w = zipserv::decode::decode(&v1).unwrap();
    let d = build(&w, r, c).unwrap();
    d.validate().unwrap();
    assert!(
        decode(&d).unwrap() == bits,
        "device layout round trip differs ({r}x{c})"
    );
    d
}

#[test]
fn device_layout_round_trips() {
    check(&(0..=u16::MAX).collect::<Vec<_>>(), 256, 256);
    check(&random_bits(128 * 192, 5), 128, 192);
    let d = check(&student_t_bf16(512 * 512, 0.02, 6), 512, 512);
    let bits = d.device_bytes() as f64 * 8.0 / (512.0 * 512.0);
    assert!(bits < 11.8, "device layout {bits} bits/weight");
    // No exceptions at all.
    let one: Vec<u16> = random_bits(64 * 64, 7)
        .iter()
        .map(|x| (x & 0x007f) | 0x3f00)
        .collect();
    let d = check(&one, 64, 64);
    assert!(d.exc.is_empty());
}

#[test]
fn table_has_both_signs() {
    let pos: Vec<u16> = random_bits(64 * 64, 8).iter().map(|x| x & 0x7fff).collect();
    let d = check(&pos, 64, 64);
    assert!(d.table.iter().any(|&t| t & 0x80 != 0));
    assert!(d.table.iter().any(|&t| t & 0x80 == 0));
}
