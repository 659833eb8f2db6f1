//! `cargo xtask <command>`: the project's build and run recipes.
//!
//! * `build-ptx`: kernels-gpu -> PTX for sm_80 and sm_90, validated by ptxas.
//! * `test`: build-ptx, then every test of the workspace.
//! * `demo`: compress a Llama-shaped layer of realistic weights, verify it,
//!   print the table; with a GPU, also the GPU tests and a short benchmark.
//! * `gpu-bundle`: release binaries + PTX into `dist/` for the GPU machine.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLCHAIN: &str = "1.95.0";
/// Register caps (`.maxnreg`) written into the PTX of some kernels, so that
/// enough blocks fit on a multiprocessor (256 threads a block: 64 registers
/// give 4 blocks, 80 give 3, 128 give 2).
const MAXNREG: [(&str, u32); 6] = [
    ("zs_gemm_r0_nb1", 80),
    ("zs_gemm_r0_nb2_d1", 80),
    ("zs_gemm_r0_nb1_d1c64", 64),
    ("zs_gemm_r0_nb2_d1c64", 64),
    ("zs_gemm_r0_nb4_d1jc80", 80),
    ("zs_gemm_r1_nb8", 128),
];

/// Insert `.maxnreg` after the parameter list of each capped kernel.
fn cap_registers(ptx: &str) -> Result<String> {
    let mut out = ptx.to_string();
    for (name, regs) in MAXNREG {
        let head = format!(".entry {name}(\n");
        let at = out
            .find(&head)
            .with_context(|| format!("kernel {name} not in the PTX"))?;
        // The parameter list ends at the first line starting with ')'; the
        // directive goes on the next line, before the body's '{'.
        let close = out[at..]
            .find("\n)")
            .with_context(|| format!("no parameter list end for {name}"))?
            + at;
        let eol = out[close + 1..]
            .find('\n')
            .with_context(|| format!("truncated PTX at {name}"))?
            + close
            + 1;
        out.insert_str(eol + 1, &format!(".maxnreg {regs}\n"));
    }
    Ok(out)
}
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn ensure_components() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output();
    let have = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "llvm-bitcode-linker", "llvm-tools"]
        .into_iter()
        .filter(|c| !have.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        let mut c = Command::new("rustup");
        c.args(["component", "add", "--toolchain", TOOLCHAIN])
            .args(&missing);
        run(&mut c).context("adding the toolchain components the kernel build needs")?;
    }
    Ok(())
}

/// A venv holding ptxas (pip package nvidia-cuda-nvcc-cu12).
fn ptxas() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("PTXAS") {
        return Ok(PathBuf::from(p));
    }
    let venv = root().join(".venv-ptx");
    let find = |v: &Path| -> Option<PathBuf> {
        let lib = v.join("lib");
        for py in std::fs::read_dir(lib).ok()? {
            let p = py
                .ok()?
                .path()
                .join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
            if p.exists() {
                return Some(p);
            }
        }
        None
    };
    if let Some(p) = find(&venv) {
        return Ok(p);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "nvidia-cuda-nvcc-cu12"]))?;
    find(&venv).context("ptxas not found after installing nvidia-cuda-nvcc-cu12")
}

fn build_ptx() -> Result<()> {
    ensure_components()?;
    let root = root();
    let out_dir = root.join("target/ptx");
    std::fs::create_dir_all(&out_dir)?;
    let ptxas = ptxas()?;
    for arch in ARCHS {
        let tdir = root.join(format!("target/nvptx-{arch}"));
        let mut c = Command::new("cargo");
        c.current_dir(&root)
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTFLAGS")
            .args([
                &format!("+{TOOLCHAIN}"),
                "rustc",
                "-p",
                "zipserv-kernels",
                "--release",
                "--target",
                "nvptx64-nvidia-cuda",
                "-Zbuild-std=core",
                "--crate-type",
                "cdylib",
                "--target-dir",
            ])
            .arg(&tdir)
            .args([
                "--",
                "-C",
                &format!("target-cpu={arch}"),
                "-C",
                "target-feature=+ptx80",
                // Fully unroll the fixed-trip loops over fragments, so that
                // accumulators stay in registers (no local memory).
                "-C",
                "llvm-args=-unroll-threshold=3000",
            ]);
        run(&mut c)?;
        let ptx = tdir.join("nvptx64-nvidia-cuda/release/zipserv_kernels.ptx");
        let dst = out_dir.join(format!("zipserv_kernels.{arch}.ptx"));
        let text =
            std::fs::read_to_string(&ptx).with_context(|| format!("reading {}", ptx.display()))?;
        std::fs::write(&dst, cap_registers(&text)?)?;
        let o = Command::new(&ptxas)
            .args([&format!("-arch={arch}"), "-v", "-o", "/dev/null"])
            .arg(&dst)
            .output()
            .context("running ptxas")?;
        let report = String::from_utf8_lossy(&o.stderr).to_string();
        std::fs::write(out_dir.join(format!("ptxas.{arch}.txt")), &report)?;
        if !o.status.success() {
            bail!("ptxas rejected {}:\n{report}", dst.display());
        }
        let regs: Vec<String> = report
            .lines()
            .filter(|l| l.contains("Used"))
            .map(|l| l.trim().to_string())
            .collect();
        eprintln!("ptxas {arch}: ok ({} kernels)", regs.len());
    }
    Ok(())
}

fn cargo_test(extra: &[String]) -> Result<()> {
    // --nocapture: the GPU test's "SKIPPED: <reason>" and the real-weights
    // measurement are printed, not swallowed.
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args(["test", "--workspace", "--release"])
        .args(extra)
        .args(["--", "--nocapture"]);
    run(&mut c)
}

fn demo() -> Result<()> {
    let root = root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "zipserv"]))?;
    let bin = root.join("target/release/zipserv");
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("llama8b-layer.safetensors");
    if !input.exists() {
        eprintln!(
            "writing a Llama-3.1-8B-shaped layer of Student-t(5) weights (std 0.02) to {}",
            input.display()
        );
        zipserv::synth::write_llama_layer(&input, 4096, 1024, 14336, 7)?;
    }
    let out = dir.join("llama8b-layer.zs.safetensors");
    run(Command::new(&bin)
        .arg("compress")
        .arg(&input)
        .arg("-o")
        .arg(&out))?;
    run(Command::new(&bin)
        .arg("verify")
        .arg(&out)
        .arg("--against")
        .arg(&input))?;
    run(Command::new(&bin).arg("inspect").arg(&out))?;
    let gpu = Command::new(&bin).args(["gpu-test", "--quick"]).status();
    match gpu {
        Ok(s) if s.success() => {
            run(Command::new(&bin).args(["bench", "--quick"]))?;
        }
        _ => eprintln!("(GPU part skipped: see the message above)"),
    }
    Ok(())
}

fn gpu_bundle() -> Result<()> {
    build_ptx()?;
    let root = root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "zipserv"]))?;
    let dist = root.join("dist");
    std::fs::create_dir_all(&dist)?;
    std::fs::copy(root.join("target/release/zipserv"), dist.join("zipserv"))?;
    for a in ARCHS {
        let f = format!("zipserv_kernels.{a}.ptx");
        std::fs::copy(root.join("target/ptx").join(&f), dist.join(&f))?;
    }
    // The GPU test binaries (cargo test --no-run), for running on the device.
    let o = Command::new("cargo")
        .current_dir(&root)
        .args([
            "test",
            "--release",
            "-p",
            "zipserv-tests",
            "--test",
            "gpu",
            "--no-run",
            "--message-format=json",
        ])
        .output()?;
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.contains("\"executable\":\"") && line.contains("\"name\":\"gpu\"") {
            let exe = line
                .split("\"executable\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            std::fs::copy(exe, dist.join("gpu-tests"))?;
        }
    }
    eprintln!("dist/ ready");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("build-ptx") => build_ptx(),
        Some("test") => {
            build_ptx()?;
            cargo_test(&args[1..])
        }
        Some("demo") => demo(),
        Some("gpu-bundle") => gpu_bundle(),
        _ => {
            eprintln!("usage: cargo xtask <build-ptx | test | demo | gpu-bundle>");
            std::process::exit(2)
        }
    }
}
