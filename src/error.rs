//! The crate-wide error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in partlens, each variant naming what a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// An image could not be decoded (corrupt, truncated or of an unsupported format).
    #[error("{path}: cannot decode image: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// An annotation is missing, of the wrong size or type, or holds values it must not.
    #[error("{path}: {message}")]
    Annotation {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A dataset directory does not have the expected layout.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The dataset root.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime not available: {0}")]
    Runtime(String),
    /// A model file is unreadable, lacks a spec, or its graph does not match its spec.
    #[error("model {path}: {message}")]
    Model {
        /// The ONNX file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error reported by ONNX Runtime while building a session or running inference.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// The requested execution provider cannot be used.
    #[error("execution provider {provider}: {message}")]
    Device {
        /// The provider that was asked for, e.g. `cuda`.
        provider: String,
        /// Why it cannot run.
        message: String,
    },
    /// An index directory is damaged, truncated or of an unknown version.
    #[error("index {path}: {message}")]
    DataCorruption {
        /// The file inside the index that is damaged.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Parquet or Arrow operation failed.
    #[error("{path}: parquet: {message}")]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// The setup step (virtual environment, ONNX Runtime wheel, default models) failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A caller passed an argument that cannot be honoured.
    #[error("{0}")]
    InvalidArgument(String),
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::DataCorruption`] for `path`.
    pub fn corrupt(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::DataCorruption {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::Annotation`] for `path`.
    pub fn annotation(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Annotation {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::Model`] for `path`.
    pub fn model(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

impl<R> From<ort::Error<R>> for Error {
    fn from(e: ort::Error<R>) -> Self {
        Error::Ort(e.to_string())
    }
}

/// Adds the file name to I/O errors: `std::fs::read(p).at(p)?`.
pub trait IoContext<T> {
    /// Converts an `io::Result` into a [`Result`] naming `path`.
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
