//! Arbitrary version-1 arrays: validation either rejects them or the CPU
//! decoder runs in bounds; whatever it decodes re-encodes to the same bits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zipserv::CompressedMatrix;

fn take<'a>(d: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(d.len());
    let (a, b) = d.split_at(n);
    *d = b;
    a
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mut d = data;
    let h = take(&mut d, 8);
    let rows = 64 * (1 + (h[0] % 2) as usize);
    let cols = 64 * (1 + (h[1] % 2) as usize);
    let nbt = (rows / 64) * (cols / 64);
    let nft = nbt * 64;
    let words = |d: &mut &[u8], n: usize| -> Vec<u64> {
        take(d, n * 8).chunks(8).map(|c| { let mut b = [0u8; 8]; b[..c.len()].copy_from_slice(c); u64::from_le_bytes(b) }).collect()
    };
    let b1 = words(&mut d, nft);
    let b2 = words(&mut d, nft);
    let b3 = words(&mut d, nft);
    // Offsets and streams follow from the bitmaps when `h[2]` is even (so
    // that valid matrices are reached), else come from the input.
    let mut m = CompressedMatrix {
        rows,
        cols,
        base_exp: h[3],
        bitmap1: b1,
        bitmap2: b2,
        bitmap3: b3,
        sign_mantissa: take(&mut d, 4096 * nbt).to_vec(),
        fallback: take(&mut d, 2 * 4096 * nbt).chunks(2).map(|c| c[0] as u16 | (*c.get(1).unwrap_or(&0) as u16) << 8).collect(),
        offsets_block: vec![[0, 0]; nbt + 1],
        offsets_warp: vec![[0, 0]; 4 * nbt],
        max_hf: h[4] as i32,
        max_fb: h[5] as i32,
    };
    if h[2] % 2 == 0 && m.bitmap1.len() == nft && m.bitmap2.len() == nft && m.bitmap3.len() == nft {
        let (mut th, mut tf, mut mh, mut mf) = (0i32, 0i32, 0, 0);
        for bt in 0..nbt {
            let mut hf = 0i32;
            for wt in 0..4 {
                m.offsets_warp[bt * 4 + wt] = [hf, wt as i32 * 1024 - hf];
                for f in bt * 64 + wt * 16..bt * 64 + wt * 16 + 16 {
                    hf += (m.bitmap1[f] | m.bitmap2[f] | m.bitmap3[f]).count_ones() as i32;
                }
            }
            let (ph, pf) = ((hf + 15) / 16 * 16, (4096 - hf + 7) / 8 * 8);
            th += ph;
            tf += pf;
            mh = mh.max(ph);
            mf = mf.max(pf);
            m.offsets_block[bt + 1] = [th, tf];
        }
        m.sign_mantissa.resize(th as usize, 0);
        m.fallback.resize(tf as usize, 0);
        m.max_hf = mh;
        m.max_fb = mf;
        m.base_exp = h[3].min(248);
    }
    if m.validate().is_err() {
        return;
    }
    let bits = zipserv::decode::decode(&m).unwrap();
    let again = zipserv::encode::encode(&bits, rows, cols).unwrap();
    assert_eq!(zipserv::decode::decode(&again).unwrap(), bits);
});
