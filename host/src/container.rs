//! Compressed models as standard safetensors files.
//!
//! Each compressed matrix `W` becomes the tensors `W.__zs__.bitmap1|2|3` (U64),
//! `.sign_mantissa` (U8), `.fallback` (U16), `.offsets_block` and
//! `.offsets_warp` (I32, `[n, 2]`). `__metadata__["zipserv"]` holds a JSON
//! [`ContainerMeta`]: format version, the original name, shape, dtype, base
//! exponent, counts and an xxh3-64 checksum of the original bytes of every
//! compressed tensor. Tensors that do not fit version 1 are copied unchanged.
use crate::error::{Error, Result};
use crate::format::{check_shape, CompressedMatrix, FORMAT_VERSION};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Key of the zipserv entry in `__metadata__`.
pub const META_KEY: &str = "zipserv";
/// Marker between a tensor name and its array name.
pub const SEP: &str = ".__zs__.";
/// Array names of a compressed matrix, in storage order.
pub const ARRAYS: [&str; 7] = [
    "bitmap1",
    "bitmap2",
    "bitmap3",
    "offsets_block",
    "offsets_warp",
    "fallback",
    "sign_mantissa",
];

/// Description of one compressed tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub base_exp: u8,
    pub max_hf: i32,
    pub max_fb: i32,
    pub high_freq: u64,
    /// `xxh3-64` of the original little-endian bytes, as 16 hex digits.
    pub checksum: String,
}

/// A tensor kept unchanged, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeptMeta {
    pub reason: String,
    /// `xxh3-64` of the tensor's bytes.
    #[serde(default)]
    pub checksum: Option<String>,
}

/// The JSON in `__metadata__["zipserv"]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerMeta {
    pub format: String,
    pub version: u32,
    /// Original tensor names, in their original order.
    pub order: Vec<String>,
    pub compressed: BTreeMap<String, TensorMeta>,
    pub kept: BTreeMap<String, KeptMeta>,
    /// The input file's own `__metadata__`, restored on decompression.
    #[serde(default)]
    pub original_metadata: Option<BTreeMap<String, String>>,
}

pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Why a tensor cannot be stored in version 1, or `None` if it can.
pub fn unfit_reason(dtype: Dtype, shape: &[usize]) -> Option<String> {
    if dtype != Dtype::BF16 {
        return Some(format!("dtype {dtype:?} (only BF16 is compressed)"));
    }
    if shape.len() != 2 {
        return Some(format!(
            "{}-D tensor (only matrices are compressed)",
            shape.len()
        ));
    }
    // The format's own reason: a dimension not a multiple of 64, or more
    // elements than its 32-bit offsets address.
    check_shape(shape[0], shape[1]).err().map(|e| match e {
        crate::Error::Invalid(msg) => msg,
        other => other.to_string(),
    })
}

/// Little-endian bytes as `u16` values: borrowed when aligned (the usual case
/// for a memory-mapped safetensors file), copied otherwise.
pub fn bf16_bits(bytes: &[u8]) -> std::borrow::Cow<'_, [u16]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) => std::borrow::Cow::Borrowed(v),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BOOL => "BOOL",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::I16 => "I16",
        Dtype::U16 => "U16",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I32 => "I32",
        Dtype::U32 => "U32",
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::I64 => "I64",
        Dtype::U64 => "U64",
        _ => "UNKNOWN",
    }
}

/// A memory-mapped safetensors file.
pub struct MappedFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; zipserv never writes to its inputs.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }
    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.map).map_err(|e| {
            Error::invalid(format!(
                "{}: not a valid safetensors file: {e}",
                self.path.display()
            ))
        })
    }
    /// The file's `__metadata__`.
    pub fn metadata(&self) -> Result<Option<BTreeMap<String, String>>> {
        let (_, m) = SafeTensors::read_metadata(&self.map).map_err(|e| {
            Error::invalid(format!(
                "{}: not a valid safetensors file: {e}",
                self.path.display()
            ))
        })?;
        Ok(m.metadata()
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
    /// The zipserv description, if this is a compressed file.
    pub fn zipserv_meta(&self) -> Result<Option<ContainerMeta>> {
        let Some(md) = self.metadata()? else {
            return Ok(None);
        };
        let Some(js) = md.get(META_KEY) else {
            return Ok(None);
        };
        let meta: ContainerMeta = serde_json::from_str(js).map_err(|e| {
            Error::invalid(format!(
                "{}: zipserv metadata is not valid: {e}",
                self.path.display()
            ))
        })?;
        if meta.version != FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "{}: format version {} is not supported (this zipserv reads version {FORMAT_VERSION})",
                self.path.display(),
                meta.version
            )));
        }
        Ok(Some(meta))
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new temporary output file beside `dest` (renamed into place when complete).
fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(dest);
    // Readable like any other model file once renamed into place (the
    // default for temporary files is owner-only).
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(".zipserv-out-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Write `bytes` to `path` atomically (a temporary file beside it, synced,
/// then renamed), creating the parent directory if needed.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut t = temp_beside(path)?;
    t.write_all(bytes).map_err(|e| Error::io(t.path(), e))?;
    t.as_file().sync_all().map_err(|e| Error::io(t.path(), e))?;
    t.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Write a whole safetensors file from in-memory `(name, dtype, shape, bytes)`
/// tensors and `__metadata__` entries, atomically.
pub fn write_file(
    path: &Path,
    tensors: &[(&str, Dtype, Vec<usize>, &[u8])],
    metadata: &[(&str, &str)],
) -> Result<u64> {
    let mut w = StreamingWriter::with_reserve(path, header_reserve(tensors.iter().map(|t| t.0)))?;
    for (name, dtype, shape, bytes) in tensors {
        w.add(name, *dtype, shape.clone(), bytes)?;
    }
    w.finish(
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Writes a safetensors file: tensor data streams into a temporary file beside
/// the destination, after room reserved for the header; the header, padded
/// with spaces (valid JSON whitespace) to fill that room, is written once all
/// sizes are known, and the file is renamed into place at the end. A header
/// larger than the reserve falls back to copying the data behind it.
pub struct StreamingWriter {
    dest: PathBuf,
    file: tempfile::NamedTempFile,
    data: BufWriter<File>,
    reserve: u64,
    entries: Vec<(String, &'static str, Vec<usize>, u64, u64)>,
    pos: u64,
}

/// Header room for a file of `names` tensors: generous, since unused room
/// costs only spaces.
pub fn header_reserve<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    8192 + names
        .into_iter()
        .map(|n| 12 * n.len() as u64 + 1600)
        .sum::<u64>()
}

impl StreamingWriter {
    /// A writer with a default 64 KiB header reserve.
    pub fn new(dest: &Path) -> Result<Self> {
        Self::with_reserve(dest, 64 << 10)
    }

    pub fn with_reserve(dest: &Path, reserve: u64) -> Result<Self> {
        let file = temp_beside(dest)?;
        let reserve = reserve.div_ceil(8) * 8;
        let mut f = file.reopen().map_err(|e| Error::io(file.path(), e))?;
        f.seek(SeekFrom::Start(reserve))
            .map_err(|e| Error::io(file.path(), e))?;
        Ok(StreamingWriter {
            dest: dest.to_path_buf(),
            data: BufWriter::with_capacity(1 << 22, f),
            file,
            reserve,
            entries: Vec::new(),
            pos: 0,
        })
    }

    pub fn add(&mut self, name: &str, dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Result<()> {
        self.data
            .write_all(bytes)
            .map_err(|e| Error::io(self.file.path(), e))?;
        let end = self.pos + bytes.len() as u64;
        self.entries
            .push((name.to_string(), dtype_name(dtype), shape, self.pos, end));
        self.pos = end;
        Ok(())
    }

    /// Add the arrays of a compressed matrix under `name`.
    pub fn add_compressed(&mut self, name: &str, m: &CompressedMatrix) -> Result<()> {
        let n = |a: &str| format!("{name}{SEP}{a}");
        let nbt = m.num_bt();
        self.add(
            &n("bitmap1"),
            Dtype::U64,
            vec![m.bitmap1.len()],
            bytemuck::cast_slice(&m.bitmap1),
        )?;
        self.add(
            &n("bitmap2"),
            Dtype::U64,
            vec![m.bitmap2.len()],
            bytemuck::cast_slice(&m.bitmap2),
        )?;
        self.add(
            &n("bitmap3"),
            Dtype::U64,
            vec![m.bitmap3.len()],
            bytemuck::cast_slice(&m.bitmap3),
        )?;
        self.add(
            &n("offsets_block"),
            Dtype::I32,
            vec![nbt + 1, 2],
            bytemuck::cast_slice(&m.offsets_block),
        )?;
        self.add(
            &n("offsets_warp"),
            Dtype::I32,
            vec![nbt * 4, 2],
            bytemuck::cast_slice(&m.offsets_warp),
        )?;
        self.add(
            &n("fallback"),
            Dtype::U16,
            vec![m.fallback.len()],
            bytemuck::cast_slice(&m.fallback),
        )?;
        self.add(
            &n("sign_mantissa"),
            Dtype::U8,
            vec![m.sign_mantissa.len()],
            &m.sign_mantissa,
        )?;
        Ok(())
    }

    /// Write the header, then rename the file into place. Returns its size.
    pub fn finish(mut self, metadata: BTreeMap<String, String>) -> Result<u64> {
        let path = self.file.path().to_path_buf();
        self.data.flush().map_err(|e| Error::io(&path, e))?;
        drop(self.data);
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&metadata).unwrap(),
            );
        }
        for (name, dtype, shape, a, b) in &self.entries {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        let mut hjson = serde_json::to_vec(&header).unwrap();
        let total;
        if 8 + hjson.len() as u64 <= self.reserve {
            hjson.resize(self.reserve as usize - 8, b' ');
            let mut f = self.file.as_file();
            f.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(&path, e))?;
            f.write_all(&(hjson.len() as u64).to_le_bytes())
                .map_err(|e| Error::io(&path, e))?;
            f.write_all(&hjson).map_err(|e| Error::io(&path, e))?;
            total = self.reserve + self.pos;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
            self.file
                .persist(&self.dest)
                .map_err(|e| Error::io(&self.dest, e.error))?;
        } else {
            // The header outgrew its room: copy the data behind a fitted header.
            while !(8 + hjson.len()).is_multiple_of(8) {
                hjson.push(b' ');
            }
            let out = temp_beside(&self.dest)?;
            {
                let mut w = BufWriter::with_capacity(1 << 22, out.as_file());
                w.write_all(&(hjson.len() as u64).to_le_bytes())
                    .map_err(|e| Error::io(out.path(), e))?;
                w.write_all(&hjson).map_err(|e| Error::io(out.path(), e))?;
                let mut src = self.file.reopen().map_err(|e| Error::io(&path, e))?;
                src.seek(SeekFrom::Start(self.reserve))
                    .map_err(|e| Error::io(&path, e))?;
                std::io::copy(&mut (&mut src).take(self.pos), &mut w)
                    .map_err(|e| Error::io(out.path(), e))?;
                w.flush().map_err(|e| Error::io(out.path(), e))?;
            }
            out.as_file()
                .sync_all()
                .map_err(|e| Error::io(out.path(), e))?;
            out.persist(&self.dest)
                .map_err(|e| Error::io(&self.dest, e.error))?;
            total = 8 + hjson.len() as u64 + self.pos;
        }
        Ok(total)
    }
}

/// Read and validate the compressed matrix `name` of a file.
pub fn read_compressed(
    st: &SafeTensors<'_>,
    name: &str,
    meta: &TensorMeta,
) -> Result<CompressedMatrix> {
    let get = |a: &str, dtype: Dtype, elem: usize| -> Result<&[u8]> {
        let full = format!("{name}{SEP}{a}");
        let t = st
            .tensor(&full)
            .map_err(|_| Error::invalid(format!("tensor {name}: array {a} is missing")))?;
        if t.dtype() != dtype {
            return Err(Error::invalid(format!(
                "tensor {name}: array {a} has dtype {:?}, expected {dtype:?}",
                t.dtype()
            )));
        }
        if t.data().len() % elem != 0 {
            return Err(Error::invalid(format!(
                "tensor {name}: array {a} has a ragged length"
            )));
        }
        Ok(t.data())
    };
    if meta.shape.len() != 2 || meta.dtype != "BF16" {
        return Err(Error::invalid(format!(
            "tensor {name}: metadata describes {:?} {}, expected a BF16 matrix",
            meta.shape, meta.dtype
        )));
    }
    let (rows, cols) = (meta.shape[0], meta.shape[1]);
    check_shape(rows, cols).map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
    let pairs = |b: &[u8]| -> Vec<[i32; 2]> {
        bytemuck::pod_collect_to_vec::<u8, [i32; 2]>(&b[..b.len() / 8 * 8])
    };
    let ob = get("offsets_block", Dtype::I32, 8)?;
    let ow = get("offsets_warp", Dtype::I32, 8)?;
    let m = CompressedMatrix {
        rows,
        cols,
        base_exp: meta.base_exp,
        bitmap1: bytemuck::pod_collect_to_vec(get("bitmap1", Dtype::U64, 8)?),
        bitmap2: bytemuck::pod_collect_to_vec(get("bitmap2", Dtype::U64, 8)?),
        bitmap3: bytemuck::pod_collect_to_vec(get("bitmap3", Dtype::U64, 8)?),
        sign_mantissa: get("sign_mantissa", Dtype::U8, 1)?.to_vec(),
        fallback: bytemuck::pod_collect_to_vec(get("fallback", Dtype::U16, 2)?),
        offsets_block: pairs(ob),
        offsets_warp: pairs(ow),
        max_hf: meta.max_hf,
        max_fb: meta.max_fb,
    };
    m.validate()
        .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
    Ok(m)
}

/// Decode `name` and check it against its recorded checksum.
pub fn decode_checked(st: &SafeTensors<'_>, name: &str, meta: &TensorMeta) -> Result<Vec<u16>> {
    let m = read_compressed(st, name, meta)?;
    let bits = crate::decode::decode(&m)?;
    let sum = checksum(bytemuck::cast_slice(&bits));
    if sum != meta.checksum {
        return Err(Error::Mismatch(format!(
            "tensor {name}: decoded checksum {sum} differs from the recorded {}",
            meta.checksum
        )));
    }
    Ok(bits)
}

/// The bytes of kept tensor `name`, checked against its recorded checksum.
pub fn kept_checked<'a>(
    st: &'a SafeTensors<'_>,
    name: &str,
    meta: &KeptMeta,
) -> Result<safetensors::tensor::TensorView<'a>> {
    let t = st
        .tensor(name)
        .map_err(|_| Error::invalid(format!("tensor {name} is missing")))?;
    if let Some(want) = &meta.checksum {
        let got = checksum(t.data());
        if &got != want {
            return Err(Error::Mismatch(format!(
                "tensor {name}: checksum {got} differs from the recorded {want}"
            )));
        }
    }
    Ok(t)
}

/// The safetensors files of a path: the file itself, or the `*.safetensors`
/// files of a directory (sorted).
pub fn safetensors_files(path: &Path) -> Result<Vec<PathBuf>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::invalid(format!(
            "{}: directory holds no .safetensors file",
            path.display()
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reserve_and_its_overflow_both_give_valid_files() {
        let d = tempfile::tempdir().unwrap();
        for reserve in [16u64, 1 << 16] {
            let p = d.path().join(format!("r{reserve}.safetensors"));
            let mut w = StreamingWriter::with_reserve(&p, reserve).unwrap();
            w.add("a", Dtype::U8, vec![3], &[1, 2, 3]).unwrap();
            w.add("b", Dtype::U16, vec![2], &[4, 0, 5, 0]).unwrap();
            let mut md = BTreeMap::new();
            md.insert("k".to_string(), "v".repeat(100));
            let size = w.finish(md).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len() as u64, size);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("a").unwrap().data(), &[1, 2, 3]);
            assert_eq!(st.tensor("b").unwrap().data(), &[4, 0, 5, 0]);
        }
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".zipserv")
            })
            .collect();
        assert!(left.is_empty());
    }
}
