//! Checks on a GGUF file before llama.cpp sees it: it exists, it is GGUF, and
//! its SHA-256 is what the operator expects.

use cactus_protocol::{Digest, ModelId};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// A model named on the command line: `<FILE>` or `<FILE>:<SHA256>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Path of the GGUF file.
    pub path: PathBuf,
    /// Expected SHA-256; when absent the file's hash becomes its identity.
    pub expected_sha256: Option<Digest>,
}

impl FromStr for ModelSpec {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((path, hash)) = s.rsplit_once(':')
            && let Ok(d) = hash.parse::<Digest>()
        {
            return Ok(Self {
                path: PathBuf::from(path),
                expected_sha256: Some(d),
            });
        }
        Ok(Self {
            path: PathBuf::from(s),
            expected_sha256: None,
        })
    }
}

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// No such file.
    #[error("model file {0} does not exist (check --model)")]
    NotFound(PathBuf),
    /// The file does not start with the GGUF magic.
    #[error("{0} is not a GGUF file (llama.cpp models are .gguf)")]
    NotGguf(PathBuf),
    /// The file's hash is not the expected one.
    #[error("{path} has sha256 {actual}, expected {expected} (corrupt or wrong download)")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Expected hash.
        expected: Digest,
        /// Actual hash.
        actual: Digest,
    },
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Checks `spec` and returns the model's identity: its name (the file stem) and
/// hash. Reads the whole file once to hash it.
pub fn verify(spec: &ModelSpec) -> Result<ModelId, ModelFileError> {
    let path = spec.path.as_path();
    let io_err = |source| ModelFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ModelFileError::NotFound(path.into()));
        }
        Err(e) => return Err(io_err(e)),
    };
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == GGUF_MAGIC => {}
        Ok(()) => return Err(ModelFileError::NotGguf(path.into())),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(ModelFileError::NotGguf(path.into()));
        }
        Err(e) => return Err(io_err(e)),
    }
    let mut hasher = Sha256::new();
    hasher.update(magic);
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut progress = Progress::new(path, size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    let actual = Digest(hasher.finalize().into());
    if let Some(expected) = spec.expected_sha256
        && expected != actual
    {
        return Err(ModelFileError::HashMismatch {
            path: path.into(),
            expected,
            actual,
        });
    }
    Ok(ModelId {
        name: model_name(path),
        sha256: actual,
    })
}

/// How often long work says how far it has got.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Says every [`PROGRESS_EVERY`] how far hashing a file has got: nothing for
/// a file hashed faster than that.
struct Progress {
    name: String,
    size: u64,
    done: u64,
    last: std::time::Instant,
}

impl Progress {
    fn new(path: &Path, size: u64) -> Self {
        Self {
            name: model_name(path),
            size: size.max(1),
            done: 4,
            last: std::time::Instant::now(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = std::time::Instant::now();
            tracing::info!(
                model = %self.name,
                mib = self.size >> 20,
                "hashing: {} %",
                self.done * 100 / self.size
            );
        }
    }
}

/// The name a model is announced under: its file name without `.gguf`.
pub fn model_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    name.strip_suffix(".gguf")
        .map(str::to_owned)
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn spec_parses_optional_hash() {
        let h = Digest::of(b"x");
        let s: ModelSpec = format!("/m/a.gguf:{h}").parse().unwrap();
        assert_eq!(s.path, PathBuf::from("/m/a.gguf"));
        assert_eq!(s.expected_sha256, Some(h));
        let s: ModelSpec = "/m/we:ird.gguf".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("/m/we:ird.gguf"));
        assert_eq!(s.expected_sha256, None);
    }

    #[test]
    fn typed_errors_for_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ModelSpec {
            path: dir.path().join("nope.gguf"),
            expected_sha256: None,
        };
        assert!(matches!(verify(&missing), Err(ModelFileError::NotFound(_))));

        let not_gguf = dir.path().join("x.gguf");
        std::fs::write(&not_gguf, b"PK\x03\x04 zip").unwrap();
        let spec = ModelSpec {
            path: not_gguf,
            expected_sha256: None,
        };
        assert!(matches!(verify(&spec), Err(ModelFileError::NotGguf(_))));

        let tiny = dir.path().join("t.gguf");
        File::create(&tiny).unwrap().write_all(b"GG").unwrap();
        let spec = ModelSpec {
            path: tiny,
            expected_sha256: None,
        };
        assert!(matches!(verify(&spec), Err(ModelFileError::NotGguf(_))));

        let good = dir.path().join("good.gguf");
        std::fs::write(&good, b"GGUF rest of file").unwrap();
        let id = verify(&ModelSpec {
            path: good.clone(),
            expected_sha256: None,
        })
        .unwrap();
        assert_eq!(id.name, "good");
        assert_eq!(id.sha256, Digest::of(b"GGUF rest of file"));
        let wrong = ModelSpec {
            path: good,
            expected_sha256: Some(Digest::of(b"other")),
        };
        assert!(matches!(
            verify(&wrong),
            Err(ModelFileError::HashMismatch { .. })
        ));
    }
}
