//! The model-level operations behind the CLI: compress, decompress, inspect,
//! verify. Inputs are a `.safetensors` file or a Hugging Face model directory.
use crate::container::*;
use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use safetensors::tensor::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Progress reporting: total bytes known up front, then increments.
pub trait Progress: Sync {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64, _what: &str) {}
    fn finish(&self) {}
}
/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// What a compression did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    pub compressed: usize,
    pub kept: Vec<(String, String)>,
    pub original_bytes: u64,
    pub output_bytes: u64,
    /// Elements and stored bytes of the compressed tensors alone.
    pub compressed_elements: u64,
    pub compressed_stored_bytes: u64,
    pub high_freq: u64,
}

impl Summary {
    pub fn bits_per_weight(&self) -> f64 {
        if self.compressed_elements == 0 {
            0.0
        } else {
            self.compressed_stored_bytes as f64 * 8.0 / self.compressed_elements as f64
        }
    }
    pub fn coverage(&self) -> f64 {
        if self.compressed_elements == 0 {
            0.0
        } else {
            self.high_freq as f64 / self.compressed_elements as f64
        }
    }
    pub fn ratio(&self) -> f64 {
        if self.output_bytes == 0 {
            0.0
        } else {
            self.original_bytes as f64 / self.output_bytes as f64
        }
    }
    fn add(&mut self, o: Summary) {
        self.files += o.files;
        self.compressed += o.compressed;
        self.kept.extend(o.kept);
        self.original_bytes += o.original_bytes;
        self.output_bytes += o.output_bytes;
        self.compressed_elements += o.compressed_elements;
        self.compressed_stored_bytes += o.compressed_stored_bytes;
        self.high_freq += o.high_freq;
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn input_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Build a directory atomically: `work` fills a temporary directory beside
/// `output`, renamed into place when it succeeds. An existing non-empty
/// `output` is refused; no partial output is left if anything fails.
pub fn with_output_dir(output: &Path, work: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if output.exists() {
        let empty = std::fs::read_dir(output)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Error::invalid(format!(
                "{}: output directory exists and is not empty",
                output.display()
            )));
        }
    }
    let parent = parent_dir(output);
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix(".zipserv-dir-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    work(tmp.path())?;
    if output.exists() {
        std::fs::remove_dir(output).map_err(|e| Error::io(output, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, output).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        Error::io(output, e)
    })?;
    Ok(())
}

/// Copy the non-safetensors files of a model directory, rewriting the
/// safetensors index so that it names the tensors each output file holds.
fn copy_side_files(input: &Path, out: &Path, index: &HashMap<String, String>) -> Result<()> {
    for e in std::fs::read_dir(input).map_err(|e| Error::io(input, e))? {
        let p = e.map_err(|e| Error::io(input, e))?.path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !p.is_file() || name.ends_with(".safetensors") {
            continue;
        }
        let dst = out.join(&name);
        if name.ends_with(".safetensors.index.json") {
            let txt = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let mut js: serde_json::Value = serde_json::from_str(&txt)
                .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", p.display())))?;
            let map: BTreeMap<&String, &String> = index.iter().collect();
            js["weight_map"] = serde_json::to_value(map).unwrap();
            std::fs::write(&dst, serde_json::to_vec_pretty(&js).unwrap())
                .map_err(|e| Error::io(&dst, e))?;
        } else {
            std::fs::copy(&p, &dst).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Compress one safetensors file.
pub fn compress_file(
    input: &Path,
    output: &Path,
    progress: &dyn Progress,
) -> Result<(Summary, Vec<String>)> {
    if same_file(input, output) {
        return Err(Error::invalid(format!(
            "{}: output would overwrite the input",
            output.display()
        )));
    }
    let mf = MappedFile::open(input)?;
    let st = mf.tensors()?;
    if mf.zipserv_meta()?.is_some() {
        return Err(Error::invalid(format!(
            "{}: already compressed by zipserv",
            input.display()
        )));
    }
    let original_metadata = mf.metadata()?;
    let mut names: Vec<(String, usize)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().as_ptr() as usize))
        .collect();
    names.sort_by_key(|(_, p)| *p);
    let order: Vec<String> = names.into_iter().map(|(n, _)| n).collect();
    for n in &order {
        if n.contains(SEP) {
            return Err(Error::invalid(format!(
                "{}: tensor {n} uses the reserved marker {SEP}",
                input.display()
            )));
        }
    }
    let mut w =
        StreamingWriter::with_reserve(output, header_reserve(order.iter().map(|s| s.as_str())))?;
    let mut meta = ContainerMeta {
        format: "zipserv-tca-tbe".into(),
        version: FORMAT_VERSION,
        order: order.clone(),
        compressed: BTreeMap::new(),
        kept: BTreeMap::new(),
        original_metadata,
    };
    let mut sum = Summary {
        files: 1,
        ..Default::default()
    };
    let mut written = Vec::new();
    for name in &order {
        let t = st
            .tensor(name)
            .map_err(|e| Error::invalid(format!("{}: tensor {name}: {e}", input.display())))?;
        let bytes = t.data();
        sum.original_bytes += bytes.len() as u64;
        match unfit_reason(t.dtype(), t.shape()) {
            Some(reason) => {
                w.add(name, t.dtype(), t.shape().to_vec(), bytes)?;
                sum.kept.push((name.clone(), reason.clone()));
                meta.kept.insert(
                    name.clone(),
                    KeptMeta {
                        reason,
                        checksum: Some(checksum(bytes)),
                    },
                );
                written.push(name.clone());
            }
            None => {
                let bits = bf16_bits(bytes);
                let (rows, cols) = (t.shape()[0], t.shape()[1]);
                let m = crate::encode::encode(&bits, rows, cols).map_err(|e| {
                    Error::invalid(format!("{}: tensor {name}: {e}", input.display()))
                })?;
                let st_ = m.stats();
                sum.compressed += 1;
                sum.compressed_elements += st_.elements;
                sum.compressed_stored_bytes += st_.bytes;
                sum.high_freq += st_.high_freq;
                meta.compressed.insert(
                    name.clone(),
                    TensorMeta {
                        shape: vec![rows, cols],
                        dtype: "BF16".into(),
                        base_exp: m.base_exp,
                        max_hf: m.max_hf,
                        max_fb: m.max_fb,
                        high_freq: st_.high_freq,
                        checksum: checksum(bytes),
                    },
                );
                w.add_compressed(name, &m)?;
                written.extend(ARRAYS.iter().map(|a| format!("{name}{SEP}{a}")));
            }
        }
        progress.advance(bytes.len() as u64, name);
    }
    let mut md = BTreeMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(&meta).unwrap());
    sum.output_bytes = w.finish(md)?;
    Ok((sum, written))
}

/// Compress a file or a model directory.
pub fn compress(input: &Path, output: &Path, progress: &dyn Progress) -> Result<Summary> {
    let files = safetensors_files(input)?;
    progress.start(input_size(&files));
    let mut total = Summary::default();
    if input.is_file() {
        let (s, _) = compress_file(input, output, progress)?;
        total.add(s);
    } else {
        if same_file(input, output) {
            return Err(Error::invalid(format!(
                "{}: output would overwrite the input",
                output.display()
            )));
        }
        with_output_dir(output, |tmp| {
            let mut index = HashMap::new();
            for f in &files {
                let name = f.file_name().unwrap();
                let (s, written) = compress_file(f, &tmp.join(name), progress)?;
                for t in written {
                    index.insert(t, name.to_string_lossy().to_string());
                }
                total.add(s);
            }
            copy_side_files(input, tmp, &index)?;
            total.output_bytes = input_size(&safetensors_files(tmp)?);
            Ok(())
        })?;
    }
    progress.finish();
    Ok(total)
}

/// Decompress one file back to plain safetensors (bit-identical tensors).
pub fn decompress_file(
    input: &Path,
    output: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    if same_file(input, output) {
        return Err(Error::invalid(format!(
            "{}: output would overwrite the input",
            output.display()
        )));
    }
    let mf = MappedFile::open(input)?;
    let st = mf.tensors()?;
    let meta = mf.zipserv_meta()?.ok_or_else(|| {
        Error::invalid(format!(
            "{}: not a zipserv-compressed file",
            input.display()
        ))
    })?;
    let md_len: usize = meta
        .original_metadata
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    let reserve = header_reserve(meta.order.iter().map(|s| s.as_str())) + md_len as u64;
    let mut w = StreamingWriter::with_reserve(output, reserve)?;
    for name in &meta.order {
        if let Some(tm) = meta.compressed.get(name) {
            let bits = decode_checked(&st, name, tm).map_err(|e| prefix(input, e))?;
            w.add(
                name,
                Dtype::BF16,
                tm.shape.clone(),
                bytemuck::cast_slice(&bits),
            )?;
            progress.advance(bits.len() as u64 * 2, name);
        } else if let Some(km) = meta.kept.get(name) {
            let t = kept_checked(&st, name, km).map_err(|e| prefix(input, e))?;
            w.add(name, t.dtype(), t.shape().to_vec(), t.data())?;
            progress.advance(t.data().len() as u64, name);
        } else {
            return Err(Error::invalid(format!(
                "{}: tensor {name} is listed but not described",
                input.display()
            )));
        }
    }
    w.finish(meta.original_metadata.clone().unwrap_or_default())?;
    Ok(meta.order.clone())
}

fn prefix(file: &Path, e: Error) -> Error {
    match e {
        Error::Invalid(m) => Error::Invalid(format!("{}: {m}", file.display())),
        Error::Mismatch(m) => Error::Mismatch(format!("{}: {m}", file.display())),
        o => o,
    }
}

/// Decompress a file or a model directory.
pub fn decompress(input: &Path, output: &Path, progress: &dyn Progress) -> Result<()> {
    let files = safetensors_files(input)?;
    progress.start(input_size(&files));
    if input.is_file() {
        decompress_file(input, output, progress)?;
    } else {
        if same_file(input, output) {
            return Err(Error::invalid(format!(
                "{}: output would overwrite the input",
                output.display()
            )));
        }
        with_output_dir(output, |tmp| {
            let mut index = HashMap::new();
            for f in &files {
                let name = f.file_name().unwrap();
                for t in decompress_file(f, &tmp.join(name), progress)? {
                    index.insert(t, name.to_string_lossy().to_string());
                }
            }
            copy_side_files(input, tmp, &index)
        })?;
    }
    progress.finish();
    Ok(())
}

/// One row of `inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    pub file: String,
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub compressed: bool,
    pub base_exp: Option<u8>,
    pub coverage: Option<f64>,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub bits_per_weight: Option<f64>,
    pub note: Option<String>,
}

/// Describe every tensor of a compressed file or directory (reads metadata and
/// array sizes; decodes nothing).
pub fn inspect(input: &Path) -> Result<Vec<TensorInfo>> {
    let mut out = Vec::new();
    for f in safetensors_files(input)? {
        let mf = MappedFile::open(&f)?;
        let st = mf.tensors()?;
        let fname = f.display().to_string();
        let Some(meta) = mf.zipserv_meta()? else {
            for (name, t) in st.tensors() {
                out.push(TensorInfo {
                    file: fname.clone(),
                    shape: t.shape().to_vec(),
                    dtype: format!("{:?}", t.dtype()),
                    compressed: false,
                    base_exp: None,
                    coverage: None,
                    original_bytes: t.data().len() as u64,
                    stored_bytes: t.data().len() as u64,
                    bits_per_weight: None,
                    note: Some("not a zipserv file".into()),
                    name,
                });
            }
            continue;
        };
        for name in &meta.order {
            if let Some(tm) = meta.compressed.get(name) {
                let m = read_compressed(&st, name, tm).map_err(|e| prefix(&f, e))?;
                let s = m.stats();
                out.push(TensorInfo {
                    file: fname.clone(),
                    name: name.clone(),
                    shape: tm.shape.clone(),
                    dtype: tm.dtype.clone(),
                    compressed: true,
                    base_exp: Some(tm.base_exp),
                    coverage: Some(s.coverage()),
                    original_bytes: s.elements * 2,
                    stored_bytes: s.bytes,
                    bits_per_weight: Some(s.bits_per_weight()),
                    note: None,
                });
            } else {
                let t = st
                    .tensor(name)
                    .map_err(|_| Error::invalid(format!("{fname}: tensor {name} is missing")))?;
                out.push(TensorInfo {
                    file: fname.clone(),
                    name: name.clone(),
                    shape: t.shape().to_vec(),
                    dtype: format!("{:?}", t.dtype()),
                    compressed: false,
                    base_exp: None,
                    coverage: None,
                    original_bytes: t.data().len() as u64,
                    stored_bytes: t.data().len() as u64,
                    bits_per_weight: None,
                    note: meta.kept.get(name).map(|k| format!("kept: {}", k.reason)),
                });
            }
        }
    }
    Ok(out)
}

/// Result of `verify`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub tensors: usize,
    pub compressed: usize,
    pub compared: usize,
}

/// Decode every tensor and check its checksum; with `against`, also compare
/// every tensor bit for bit with the original file or directory.
pub fn verify(
    input: &Path,
    against: Option<&Path>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let files = safetensors_files(input)?;
    progress.start(input_size(&files));
    let originals: Vec<MappedFile> = match against {
        Some(a) => safetensors_files(a)?
            .iter()
            .map(|f| MappedFile::open(f))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let orig_st: Vec<_> = originals
        .iter()
        .map(|m| m.tensors())
        .collect::<Result<_>>()?;
    let mut orig_names: HashMap<String, usize> = HashMap::new();
    for (i, st) in orig_st.iter().enumerate() {
        for n in st.names() {
            orig_names.insert(n.to_string(), i);
        }
    }
    let mut rep = VerifyReport::default();
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let mf = MappedFile::open(f)?;
        let st = mf.tensors()?;
        let meta = mf.zipserv_meta()?.ok_or_else(|| {
            Error::invalid(format!("{}: not a zipserv-compressed file", f.display()))
        })?;
        for name in &meta.order {
            rep.tensors += 1;
            seen.insert(name.clone());
            let (bytes, dtype, shape): (Vec<u8>, Dtype, Vec<usize>) =
                if let Some(tm) = meta.compressed.get(name) {
                    rep.compressed += 1;
                    let bits = decode_checked(&st, name, tm).map_err(|e| prefix(f, e))?;
                    (
                        bytemuck::cast_slice(&bits).to_vec(),
                        Dtype::BF16,
                        tm.shape.clone(),
                    )
                } else if let Some(km) = meta.kept.get(name) {
                    let t = kept_checked(&st, name, km).map_err(|e| prefix(f, e))?;
                    (t.data().to_vec(), t.dtype(), t.shape().to_vec())
                } else {
                    return Err(Error::invalid(format!(
                        "{}: tensor {name} is listed but not described",
                        f.display()
                    )));
                };
            progress.advance(bytes.len() as u64, name);
            if against.is_some() {
                let Some(&i) = orig_names.get(name) else {
                    return Err(Error::Mismatch(format!(
                        "tensor {name} is not in the original"
                    )));
                };
                let o = orig_st[i].tensor(name).unwrap();
                if o.dtype() != dtype || o.shape() != shape.as_slice() {
                    return Err(Error::Mismatch(format!(
                        "tensor {name}: dtype or shape differs from the original"
                    )));
                }
                if o.data() != bytes.as_slice() {
                    let first = o
                        .data()
                        .iter()
                        .zip(&bytes)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(Error::Mismatch(format!(
                        "tensor {name}: differs from the original at byte {first}"
                    )));
                }
                rep.compared += 1;
            }
        }
    }
    if against.is_some() {
        if let Some(missing) = orig_names.keys().find(|n| !seen.contains(*n)) {
            return Err(Error::Mismatch(format!(
                "tensor {missing} of the original is missing"
            )));
        }
    }
    progress.finish();
    Ok(rep)
}
