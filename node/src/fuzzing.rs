//! Entry points for the fuzz targets in `fuzz/` at the repository root:
//! each takes untrusted bytes the way the node does and returns a typed
//! result. Built only with the `test-utils` feature; not a stable API.

use crate::api::error::ApiError;
use crate::api::openai::{self, ChatRequest, CompletionRequest, Prepared, Sampling};
use crate::cli::commands::Cli;
use crate::cli::config::{self, ConfigError};
use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::path::Path;

pub use crate::network::fuzzing::{
    GossipOutcome, GossipTopic, codec_read_request, codec_read_response, gossip_validate,
    stream_read_frames, stream_read_request,
};

/// The OpenAI endpoint a body is posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// Turns a request body into the task it asks for, as the API does after
/// the key check: the body cap ([`crate::api::MAX_BODY_BYTES`], which axum
/// enforces before the handler), the sampling fields, then the endpoint's
/// own fields.
pub fn http_request(endpoint: Endpoint, body: &[u8]) -> Result<Prepared, ApiError> {
    if body.len() > crate::api::MAX_BODY_BYTES {
        return Err(ApiError::too_large(None, "the body is over the cap"));
    }
    let sampling = openai::parse::<Sampling>(body)?;
    match endpoint {
        Endpoint::Completions => openai::parse::<CompletionRequest>(body)?.prepare(&sampling),
        Endpoint::Chat => openai::parse::<ChatRequest>(body)?.prepare(&sampling),
    }
}

/// Reads the config file at `path` as `cactus-node --config <path> args...`
/// does, then parses the resulting command line with clap. The outer
/// `Result` is the config reader's verdict, the inner one clap's.
pub fn config_file(
    path: &Path,
    args: &[&str],
) -> Result<Result<Box<Cli>, clap::Error>, ConfigError> {
    let mut argv: Vec<OsString> = vec!["cactus-node".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.push("--config".into());
    argv.push(path.as_os_str().to_owned());
    let argv = config::effective_args(&Cli::command(), argv, |_| None)?;
    Ok(Cli::try_parse_from(argv).map(Box::new))
}

/// Parses a config file's text alone ([`config::parse`]).
pub fn config_text(text: &str) -> Result<Vec<config::Setting>, ConfigError> {
    config::parse(Path::new("fuzz.conf"), text)
}
