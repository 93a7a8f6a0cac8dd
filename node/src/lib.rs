//! A Cactus node.
//!
//! One library, three roles on one libp2p mesh:
//!
//! - **orchestrators** serve GGUF models with llama.cpp, run tasks on a
//!   bounded worker pool and sign a receipt for each;
//! - **routers** take clients' tasks, pick an orchestrator from the capability
//!   adverts they hear, check the result, countersign the receipt and keep it
//!   in a crash-safe receipt log;
//! - **bootstrap** nodes help peers find each other.
//!
//! Code map (layers only point down): [`network`] owns the swarm
//! (behaviours, event loop, gossip validation, reachability) and never calls
//! into the roles; [`roles`] holds what each role does with the events the
//! network hands it; [`inference`] is the engine and the worker pool;
//! [`chain`] the settlement backends (embedded chain, Aptos);
//! [`receipt_log`] the router's receipt log; [`node`] starts and stops it
//! all; [`client`] submits tasks; [`report`] builds status, audits and
//! diagnoses for the command line; [`cli`] is the command line; [`time`] the
//! clock.

pub mod api;
pub mod chain;
pub mod cli;
pub mod client;
#[cfg(feature = "test-utils")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod inference;
pub mod metrics;
pub mod network;
pub mod node;
pub mod receipt_log;
pub mod report;
pub mod roles;
#[cfg(test)]
mod test_support;
pub mod time;

pub use cactus_protocol as protocol;
pub use node::{Node, NodeConfig, Role};
