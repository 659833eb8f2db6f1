//! Arbitrary BF16 bit patterns: version 1 and the GPU layout both give every
//! bit back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let (rows, cols) = (64 * (1 + (data[0] % 2) as usize), 64 * (1 + ((data[0] >> 1) % 2) as usize));
    let src = &data[1..];
    let bits: Vec<u16> = (0..rows * cols)
        .map(|i| {
            let j = 2 * i;
            if src.is_empty() { 0 } else { src[j % src.len()] as u16 | (src[(j + 1) % src.len()] as u16) << 8 }
        })
        .collect();
    let m = zipserv::encode::encode(&bits, rows, cols).unwrap();
    m.validate().unwrap();
    assert_eq!(zipserv::decode::decode(&m).unwrap(), bits);
    let d = zipserv::device_layout::build(&bits, rows, cols).unwrap();
    assert_eq!(zipserv::device_layout::decode(&d).unwrap(), bits);
});
