//! A Cactus node.
//!
//! One library, three roles on one libp2p mesh:
//!
//! - **orchestrators** serve GGUF models with llama.cpp, run tasks on a
//!   bounded worker pool and sign a receipt for each;
//! - **routers** take clients' tasks, pick an orchestrator from the capability
//!   adverts they hear, check the result, countersign the receipt and keep it
//!   in a crash-safe ledger;
//! - **bootstrap** nodes help peers find each other.
//!
//! Code map: [`network`] owns the swarm (behaviours, event loop, codec);
//! [`roles`] holds what each role does with its events; [`inference`] is the
//! engine and the worker pool; [`ledger`] the receipt log; [`node`] starts and
//! stops it all; [`client`] submits tasks; [`cli`] is the command line.

pub mod chain;
pub mod cli;
pub mod client;
pub mod identity;
pub mod inference;
pub mod network;
pub mod node;
pub mod receipt_log;
pub mod report;
pub mod roles;
pub mod time;

pub use cactus_protocol as protocol;
pub use node::{Node, NodeConfig, Role};
