//! Errors of the zipserv library.
use thiserror::Error;

/// Everything that can go wrong while reading, checking or decoding.
#[derive(Debug, Error)]
pub enum Error {
    /// The input breaks the format contract (shape, counts, offsets, metadata).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Decoded data does not match its checksum or a reference.
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// I/O failure, with the path involved.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything from the GPU runtime.
    #[error("gpu: {0}")]
    Gpu(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    /// Process exit code for the CLI: 1 for a mismatch, 2 for unreadable or
    /// invalid input and everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Mismatch(_) => 1,
            _ => 2,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
