//! The `zipserv` command-line tool.
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use zipserv::ops::{self, Progress};

mod llm;

#[derive(Parser)]
#[command(
    name = "zipserv",
    version,
    about = "Lossless compression of BF16 LLM weights (TCA-TBE, ZipServ)"
)]
struct Cli {
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compress a .safetensors file or a Hugging Face model directory.
    Compress {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Restore the original tensors, bit-identical, as plain safetensors.
    Decompress {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Per tensor: shape, dtype, base exponent, window coverage, bits per weight.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Decode every tensor and check checksums (and, with --against, bit equality).
    /// Exit code 0: all good, 1: a mismatch, 2: unreadable or invalid input.
    Verify {
        file: PathBuf,
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// GPU benchmark of the decompressor and ZipGEMM against cuBLAS.
    Bench(zipserv::gpu::bench::BenchArgs),
    /// GPU correctness tests (bit-exact decompression, GEMM against an FP64 reference).
    GpuTest(zipserv::gpu::bench::TestArgs),
    /// Convert a llama-architecture GGUF file (quantized or not) into a BF16
    /// model directory (safetensors, config.json, tokenizer.json).
    ImportGguf {
        gguf: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Generate text with a Llama-family model directory, compressed or not.
    Generate(llm::GenerateArgs),
    /// Greedy generation with compressed and with BF16 weights of one model,
    /// compared token for token (divergences explained by logit margins).
    Compare(llm::CompareArgs),
    /// End-to-end decode benchmark: a Llama-shaped model with synthetic
    /// weights, compressed vs BF16, tokens/s and weight memory.
    BenchE2e(llm::BenchE2eArgs),
}

struct Bar(Option<ProgressBar>);
impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn advance(&self, bytes: u64, what: &str) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
            b.set_message(what.to_string());
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn bar(quiet: bool) -> Bar {
    if quiet {
        return Bar(None);
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    Bar(Some(b))
}

fn gib(b: u64) -> String {
    format!("{:.3} GiB", b as f64 / (1u64 << 30) as f64)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Compress { input, output } => {
            let t = std::time::Instant::now();
            let s = ops::compress(&input, &output, &bar(cli.quiet))?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "compressed {} tensors, kept {} unchanged, {} file(s)",
                s.compressed,
                s.kept.len(),
                s.files
            );
            // Kept tensors grouped by reason (a model has dozens of norms).
            let mut by_reason: Vec<(&String, Vec<&String>)> = Vec::new();
            for (n, why) in &s.kept {
                match by_reason.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, names)) => names.push(n),
                    None => by_reason.push((why, vec![n])),
                }
            }
            for (why, names) in by_reason {
                match names.len() {
                    1 => println!("  kept {}: {why}", names[0]),
                    k => println!("  kept {k} tensors ({}, ...): {why}", names[0]),
                }
            }
            println!("original   {}", gib(s.original_bytes));
            println!(
                "compressed {}  (ratio {:.3}x, {:.1}% of the original)",
                gib(s.output_bytes),
                s.ratio(),
                100.0 / s.ratio().max(1e-12)
            );
            println!(
                "compressed tensors: {:.3} bits/weight, mean window coverage {:.2}%",
                s.bits_per_weight(),
                100.0 * s.coverage()
            );
            println!(
                "{:.2} s, {:.2} GB/s of input",
                secs,
                s.original_bytes as f64 / secs / 1e9
            );
        }
        Cmd::Decompress { input, output } => {
            ops::decompress(&input, &output, &bar(cli.quiet))?;
            println!("wrote {}", output.display());
        }
        Cmd::Inspect { file, json } => {
            let rows = ops::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap());
            } else {
                println!(
                    "{:<48} {:>14} {:>5} {:>5} {:>8} {:>7}",
                    "tensor", "shape", "dtype", "B", "coverage", "bits/w"
                );
                let (mut o, mut s, mut e, mut sb) = (0u64, 0u64, 0u64, 0u64);
                for r in &rows {
                    let shape = r
                        .shape
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("x");
                    match (r.base_exp, r.coverage, r.bits_per_weight) {
                        (Some(b), Some(c), Some(bw)) => {
                            println!(
                                "{:<48} {:>14} {:>5} {:>5} {:>7.2}% {:>7.3}",
                                r.name,
                                shape,
                                r.dtype,
                                b,
                                100.0 * c,
                                bw
                            );
                            e += r.original_bytes / 2;
                            sb += r.stored_bytes;
                        }
                        _ => println!(
                            "{:<48} {:>14} {:>5} {}",
                            r.name,
                            shape,
                            r.dtype,
                            r.note.clone().unwrap_or_default()
                        ),
                    }
                    o += r.original_bytes;
                    s += r.stored_bytes;
                }
                println!(
                    "total: {} tensors, original {}, stored {}, ratio {:.3}x; compressed tensors {:.3} bits/weight",
                    rows.len(),
                    gib(o),
                    gib(s),
                    o as f64 / s.max(1) as f64,
                    if e > 0 { sb as f64 * 8.0 / e as f64 } else { 0.0 }
                );
            }
        }
        Cmd::Verify { file, against } => {
            let r = ops::verify(&file, against.as_deref(), &bar(cli.quiet))?;
            println!(
                "ok: {} tensors ({} compressed) decoded, checksums match{}",
                r.tensors,
                r.compressed,
                if against.is_some() {
                    format!(", {} bit-identical to the original", r.compared)
                } else {
                    String::new()
                }
            );
        }
        Cmd::Bench(a) => zipserv::gpu::bench::bench(&a)?,
        Cmd::GpuTest(a) => zipserv::gpu::bench::gpu_test(&a)?,
        Cmd::ImportGguf { gguf, output } => llm::import_gguf(&gguf, &output, cli.quiet)?,
        Cmd::Generate(a) => llm::generate(&a, cli.quiet)?,
        Cmd::Compare(a) => llm::compare(&a, cli.quiet)?,
        Cmd::BenchE2e(a) => llm::bench_e2e(&a, cli.quiet)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zipserv: error: {e:#}");
            let code = e
                .downcast_ref::<zipserv::Error>()
                .map(|z| z.exit_code())
                .unwrap_or(2);
            ExitCode::from(code as u8)
        }
    }
}
