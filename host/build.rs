//! Embed the kernels' PTX (built by `cargo xtask build-ptx`) when it exists.
use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(zs_ptx)");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ptx");
    let mut all = true;
    for arch in ["sm_80", "sm_90", "sm_90a"] {
        let p = dir.join(format!("zipserv_kernels.{arch}.ptx"));
        println!("cargo::rerun-if-changed={}", p.display());
        if p.exists() {
            println!(
                "cargo::rustc-env=ZS_PTX_{}={}",
                arch.to_uppercase(),
                p.canonicalize().unwrap().display()
            );
        } else {
            all = false;
        }
    }
    if all {
        println!("cargo::rustc-cfg=zs_ptx");
    }
}
