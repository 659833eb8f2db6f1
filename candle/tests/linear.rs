//! ZipLinear against candle's own matmul on the original weights: identical
//! results, since the weights come back bit for bit.
use candle_core::{DType, Device, Module, Tensor};
use safetensors::Dtype;

#[test]
fn zip_linear_matches_dense_linear_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, comp) = (
        dir.path().join("m.safetensors"),
        dir.path().join("m.zs.safetensors"),
    );
    let (out, inp) = (128usize, 192usize);
    let w = zipserv::synth::student_t_bf16(out * inp, 0.02, 5);
    let b = zipserv::synth::student_t_bf16(out, 0.1, 6);
    let (w8, b8): (&[u8], &[u8]) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&b));
    zipserv::container::write_file(
        &orig,
        &[
            ("proj.weight", Dtype::BF16, vec![out, inp], w8),
            ("proj.bias", Dtype::BF16, vec![out], b8),
        ],
        &[],
    )
    .unwrap();
    zipserv::ops::compress(&orig, &comp, &zipserv::ops::Silent).unwrap();

    let dev = Device::Cpu;
    let zt = zipserv_candle::ZipTensors::load(&comp, &dev).unwrap();
    let lin = zt.linear("proj").unwrap();
    assert_eq!((lin.out_features(), lin.in_features()), (out, inp));
    let x = Tensor::randn(0f32, 1.0, (2, 3, inp), &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let got = lin.forward(&x).unwrap();
    let wt = Tensor::from_vec(
        w.iter()
            .map(|&v| half::bf16::from_bits(v))
            .collect::<Vec<_>>(),
        (out, inp),
        &dev,
    )
    .unwrap();
    let bt = Tensor::from_vec(
        b.iter()
            .map(|&v| half::bf16::from_bits(v))
            .collect::<Vec<_>>(),
        out,
        &dev,
    )
    .unwrap();
    let want = x
        .broadcast_matmul(&wt.t().unwrap())
        .unwrap()
        .broadcast_add(&bt)
        .unwrap();
    assert_eq!(got.dims(), &[2, 3, out]);
    let (g, r): (Vec<f32>, Vec<f32>) = (
        got.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
        want.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
    );
    assert!(
        g.iter().zip(&r).all(|(a, b)| a.to_bits() == b.to_bits()),
        "outputs differ"
    );
    // The decoded weight is the original, bit for bit.
    let dw: Vec<half::bf16> = zt
        .tensor("proj.weight", &dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(dw.iter().map(|v| v.to_bits()).eq(w.iter().copied()));
    assert!(zt.linear("missing").is_err());
}
