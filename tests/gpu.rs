//! GPU tests: bit-exact decompression and ZipGEMM against FP64, on the device.
//! Skipped, with the reason printed, where there is no GPU or no driver.

#[test]
fn gpu_suite() {
    if let Some(why) = zipserv::gpu::unavailable() {
        println!("SKIPPED gpu_suite: {why}");
        return;
    }
    let quick = std::env::var("ZIPSERV_GPU_FULL").is_err();
    zipserv::gpu::bench::gpu_test(&zipserv::gpu::bench::TestArgs { quick, tiny: false })
        .expect("GPU tests");
}
