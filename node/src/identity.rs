//! The node's libp2p identity: an ed25519 keypair kept in the data dir,
//! readable by its owner only. It signs receipts, so losing it loses nothing
//! already signed, but leaking it lets others sign as this node.

use libp2p::identity::Keypair;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File name of the keypair inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";
/// Largest identity file read (a protobuf-encoded ed25519 keypair is 68 bytes).
const MAX_IDENTITY_BYTES: u64 = 4096;

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{path}: {source} (check --data-dir)")]
    Io {
        /// The file or dir.
        path: PathBuf,
        /// Why the read or write failed.
        source: io::Error,
    },
    /// The file is not a keypair.
    #[error("{0} is not a libp2p keypair; move it away to create a new identity")]
    Corrupt(PathBuf),
}

/// Loads the keypair in `data_dir`, creating the dir and a new ed25519 keypair
/// when missing. The file is written to a temporary name, synced and renamed,
/// so a crash never leaves half a key.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    create_private_dir(data_dir).map_err(io_err(data_dir))?;
    let path = data_dir.join(IDENTITY_FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            if meta.len() > MAX_IDENTITY_BYTES {
                return Err(IdentityError::Corrupt(path));
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            Keypair::from_protobuf_encoding(&bytes).map_err(|_| IdentityError::Corrupt(path))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|_| IdentityError::Corrupt(path.clone()))?;
            let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
            write_private(&tmp, &bytes).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            tracing::info!(peer_id = %key.public().to_peer_id(), path = %path.display(), "created a new node identity");
            Ok(key)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let a = load_or_create(&data).unwrap();
        let b = load_or_create(&data).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(data.join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(
            load_or_create(&data),
            Err(IdentityError::Corrupt(_))
        ));
    }
}
