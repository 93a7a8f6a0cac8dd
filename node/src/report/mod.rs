//! What the `cactus-node` subcommands report, built here so that the binary
//! only parses arguments and prints: a router's [`status`], the [`audit`] of a
//! receipt file, the doctor's network [`diagnose`], and the JSON
//! [`output`] of every `--json` flag.

pub mod audit;
pub mod diagnose;
pub mod output;
pub mod status;

use crate::client::{self, ClientError};
use cactus_protocol::messages::{Query, QueryAnswer};
use libp2p::Multiaddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a running router could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    #[error("give --bootstrap <multiaddr>, --router <multiaddr> or --data-dir <dir>")]
    NoSource,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the router answered another question")]
    Unexpected,
}

/// Joins the mesh through `bootstrap` (or straight to `router`), asks a
/// router one question and leaves.
pub async fn ask_router(
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    timeout: Duration,
    q: Query,
) -> Result<QueryAnswer, AskError> {
    if bootstrap.is_empty() && router.is_none() {
        return Err(AskError::NoSource);
    }
    let (node, router) = client::connect(bootstrap, router, timeout).await?;
    let answer = tokio::time::timeout(timeout, client::query(node.network(), router, q)).await;
    node.shutdown().await;
    Ok(answer.map_err(|_| AskError::Timeout(timeout))??)
}

/// Why a small file (a config or receipt file) could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
}

/// Reads a text file of at most `max` bytes.
pub fn read_small_file(path: &Path, max: u64) -> Result<String, FileError> {
    let read = |source| FileError::Read {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(read)?.len() > max {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    std::fs::read_to_string(path).map_err(read)
}
