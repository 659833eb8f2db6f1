//! Arbitrary bytes as a compressed model file: inspect, verify and decompress
//! must return an error or a verified result, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let p = dir.path().join("in.safetensors");
    std::fs::File::create(&p).unwrap().write_all(data).unwrap();
    let _ = zipserv::ops::inspect(&p);
    if zipserv::ops::verify(&p, None, &zipserv::ops::Silent).is_ok() {
        // Verified: decompressing must succeed too.
        zipserv::ops::decompress(&p, &dir.path().join("out.safetensors"), &zipserv::ops::Silent).unwrap();
    }
});
