//! The JSON the `cactus-node` subcommands print, as serde structs: one place
//! for every field name that scripts (and the e2e tests) parse.

use cactus_protocol::fraud::FraudEvidence;
use cactus_protocol::merkle::{AnchorProof, Proof, ReceiptBundle, Step};
use cactus_protocol::messages::{RouterStatus, TaskResult};
use cactus_protocol::reputation::Reputation;
use cactus_protocol::{Digest, Receipt, Wire};
use serde::{Deserialize, Serialize};

/// A receipt: every body field, both signatures in hex, and the whole framed
/// receipt in hex (`frame_hex`) for anyone to decode and re-verify.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptJson {
    pub version: u16,
    pub task_id: String,
    pub model_sha256: String,
    pub prompt_sha256: String,
    pub output_sha256: String,
    pub sampling: SamplingJson,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub compute_ms: u64,
    pub orchestrator: String,
    pub router: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub orchestrator_sig: String,
    pub router_sig: Option<String>,
    pub verified: bool,
    pub frame_hex: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SamplingJson {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl From<&Receipt> for ReceiptJson {
    fn from(r: &Receipt) -> Self {
        let b = &r.body;
        Self {
            version: b.version,
            task_id: b.task_id.to_hex(),
            model_sha256: b.model.to_hex(),
            prompt_sha256: b.prompt_hash.to_hex(),
            output_sha256: b.output_hash.to_hex(),
            sampling: SamplingJson {
                max_tokens: b.sampling.max_tokens,
                temperature: b.sampling.temperature,
                top_p: b.sampling.top_p,
                seed: b.sampling.seed,
            },
            prompt_tokens: b.prompt_tokens,
            output_tokens: b.output_tokens,
            compute_ms: b.compute_ms,
            orchestrator: b.orchestrator.to_string(),
            router: b.router.to_string(),
            started_at_ms: b.started_at_ms,
            finished_at_ms: b.finished_at_ms,
            orchestrator_sig: hex::encode(&r.orchestrator_sig),
            router_sig: r.router_sig.as_ref().map(|s| hex::encode(s.as_slice())),
            verified: r.verify().is_ok(),
            frame_hex: r.encode().map(hex::encode).unwrap_or_default(),
        }
    }
}

/// `cactus-node infer --json`.
#[derive(Debug, Clone, Serialize)]
pub struct InferJson {
    pub text: String,
    /// Why generation stopped, as the protocol names it (`Stop`, `Length`).
    pub finish: String,
    pub orchestrator: String,
    pub router: String,
    /// Tokens produced by an orchestrator that failed mid-stream before this
    /// one resumed the task (0 when it ran in one go); the receipt covers
    /// only the tokens after them.
    pub resumed_tokens: usize,
    pub receipt: ReceiptJson,
}

impl From<&TaskResult> for InferJson {
    fn from(r: &TaskResult) -> Self {
        Self {
            text: r.full_text(),
            finish: format!("{:?}", r.finish),
            orchestrator: r.receipt.body.orchestrator.to_string(),
            router: r.receipt.body.router.to_string(),
            resumed_tokens: r.resumed.as_ref().map_or(0, |x| x.tokens.len()),
            receipt: ReceiptJson::from(&r.receipt),
        }
    }
}

/// A receipt bundle, as `cactus-node receipt get` writes it and `receipt
/// verify` reads it back: the receipt's frame in hex and, once anchored, the
/// batch index, root and inclusion path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleJson {
    /// Informative only: the frame is what counts.
    #[serde(default)]
    pub task_id: String,
    pub receipt: String,
    #[serde(default)]
    pub anchor: Option<AnchorJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnchorJson {
    pub index: u64,
    pub root: String,
    pub leaf_index: u64,
    pub leaves: u64,
    pub path: Vec<StepJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepJson {
    pub sibling: String,
    /// Whether the sibling is on the left.
    pub left: bool,
}

/// Longest inclusion path accepted: a tree of 2^64 leaves.
const MAX_PATH: usize = 64;

/// Why a receipt file does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("not a receipt file")]
    Json(#[source] serde_json::Error),
    #[error("field {field:?} is not hex")]
    Hex {
        field: &'static str,
        #[source]
        source: hex::FromHexError,
    },
    #[error("field {0:?} is not 32 bytes")]
    DigestLength(&'static str),
    #[error("the anchor path has over {MAX_PATH} steps")]
    PathTooLong,
    #[error("receipt")]
    Receipt(#[source] cactus_protocol::DecodeError),
}

impl From<&ReceiptBundle> for BundleJson {
    fn from(b: &ReceiptBundle) -> Self {
        Self {
            task_id: b.receipt.body.task_id.to_hex(),
            receipt: b.receipt.encode().map(hex::encode).unwrap_or_default(),
            anchor: b.anchor.as_ref().map(|a| AnchorJson {
                index: a.anchor_index,
                root: a.root.to_hex(),
                leaf_index: a.proof.index,
                leaves: a.proof.leaves,
                path: a
                    .proof
                    .path
                    .iter()
                    .map(|s| StepJson {
                        sibling: s.sibling.to_hex(),
                        left: s.left,
                    })
                    .collect(),
            }),
        }
    }
}

fn digest(field: &'static str, s: &str) -> Result<Digest, BundleError> {
    let bytes = hex::decode(s).map_err(|source| BundleError::Hex { field, source })?;
    Ok(Digest(
        bytes
            .try_into()
            .map_err(|_| BundleError::DigestLength(field))?,
    ))
}

impl BundleJson {
    /// Parses a receipt file's text.
    pub fn parse(text: &str) -> Result<ReceiptBundle, BundleError> {
        serde_json::from_str::<Self>(text)
            .map_err(BundleError::Json)?
            .decode()
    }

    /// The bundle this describes.
    pub fn decode(&self) -> Result<ReceiptBundle, BundleError> {
        let frame = hex::decode(&self.receipt).map_err(|source| BundleError::Hex {
            field: "receipt",
            source,
        })?;
        let receipt = Receipt::decode(&frame).map_err(BundleError::Receipt)?;
        let anchor = match &self.anchor {
            None => None,
            Some(a) if a.path.len() > MAX_PATH => return Err(BundleError::PathTooLong),
            Some(a) => Some(AnchorProof {
                anchor_index: a.index,
                root: digest("root", &a.root)?,
                proof: Proof {
                    index: a.leaf_index,
                    leaves: a.leaves,
                    path: a
                        .path
                        .iter()
                        .map(|s| {
                            Ok(Step {
                                sibling: digest("sibling", &s.sibling)?,
                                left: s.left,
                            })
                        })
                        .collect::<Result<_, BundleError>>()?,
                },
            }),
        };
        Ok(ReceiptBundle { receipt, anchor })
    }
}

/// `cactus-node account --json`: an account on the cluster's ledger.
#[derive(Debug, Clone, Serialize)]
pub struct AccountJson {
    /// The account, 0x-prefixed hex.
    pub account: String,
    /// Balance outside the vault.
    pub balance: u64,
    /// Whether it is registered as an orchestrator.
    pub registered: bool,
    /// Active stake.
    pub stake: u64,
    /// Stake unbonding.
    pub unbonding: u64,
    /// When the unbonding stake may be withdrawn (Unix seconds).
    pub unlock_at: u64,
    /// Deposited, as a client, at the ledger's router.
    pub deposit: u64,
    /// The most it pays per work unit as a client (`null`: no cap).
    pub max_price_per_unit: Option<u64>,
}

impl From<&cactus_protocol::messages::AccountView> for AccountJson {
    fn from(v: &cactus_protocol::messages::AccountView) -> Self {
        let o = v.orchestrator.as_ref();
        Self {
            account: v.account.to_hex(),
            balance: v.balance,
            registered: o.is_some(),
            stake: o.map_or(0, |o| o.stake),
            unbonding: o.map_or(0, |o| o.unbonding),
            unlock_at: o.map_or(0, |o| o.unlock_at),
            deposit: v.deposit,
            max_price_per_unit: (v.max_price_per_unit != cactus_protocol::contract::NO_CAP)
                .then_some(v.max_price_per_unit),
        }
    }
}

impl std::fmt::Display for AccountJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "account {}\nbalance {}\ndeposit at the ledger's router {}",
            self.account, self.balance, self.deposit
        )?;
        if let Some(cap) = self.max_price_per_unit {
            write!(f, "\nprice cap {cap} per work unit")?;
        }
        if self.registered {
            write!(
                f,
                "\nstake {}\nunbonding {} (withdrawable from {})",
                self.stake, self.unbonding, self.unlock_at
            )?;
        } else {
            write!(f, "\nnot registered as an orchestrator")?;
        }
        Ok(())
    }
}

/// `cactus-node status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusJson {
    pub router_account: String,
    pub authorized: bool,
    pub min_stake: Option<u64>,
    pub stake_held: u64,
    pub pending_payments: u64,
    pub vault_balance: u64,
    pub receipts: u64,
    pub pending_anchor: u64,
    pub anchors: u64,
    pub orchestrators: Vec<OrchestratorJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrchestratorJson {
    pub peer: Option<String>,
    pub account: String,
    pub stake: Option<u64>,
    pub unbonding: Option<u64>,
    pub successes: Option<u64>,
    pub failures: Option<u64>,
    pub compute_ms: Option<u64>,
    pub reputation: Option<ReputationJson>,
}

/// A router's record of an orchestrator; counts are decayed, so fractional
/// (the protocol keeps them in thousandths).
#[derive(Debug, Clone, Serialize)]
pub struct ReputationJson {
    pub successes: f64,
    pub timeouts: f64,
    pub bad_results: f64,
    pub refusals: f64,
    pub disconnects: f64,
    pub ms_per_token: Option<u64>,
    pub rtt_ms: Option<u64>,
}

/// A count kept in thousandths, as a number.
pub fn thousandths(x: u64) -> f64 {
    x as f64 / 1000.0
}

impl From<&Reputation> for ReputationJson {
    fn from(r: &Reputation) -> Self {
        Self {
            successes: thousandths(r.successes),
            timeouts: thousandths(r.timeouts),
            bad_results: thousandths(r.bad_results),
            refusals: thousandths(r.refusals),
            disconnects: thousandths(r.disconnects),
            ms_per_token: r.ms_per_token,
            rtt_ms: r.rtt_ms,
        }
    }
}

impl From<&RouterStatus> for StatusJson {
    fn from(s: &RouterStatus) -> Self {
        let (stake_held, pending_payments, vault_balance) = s.totals;
        Self {
            router_account: s.router_account.to_hex(),
            authorized: s.authorized,
            min_stake: s.config.as_ref().map(|c| c.min_stake),
            stake_held,
            pending_payments,
            vault_balance,
            receipts: s.receipts,
            pending_anchor: s.pending_anchor,
            anchors: s.anchors,
            orchestrators: s
                .orchestrators
                .iter()
                .map(|o| {
                    let r = o.record.as_ref();
                    OrchestratorJson {
                        peer: o.peer.map(|p| p.to_string()),
                        account: o.account.to_hex(),
                        stake: r.map(|r| r.stake),
                        unbonding: r.map(|r| r.unbonding),
                        successes: r.map(|r| r.successes),
                        failures: r.map(|r| r.failures),
                        compute_ms: r.map(|r| r.compute_ms),
                        reputation: o.reputation.as_ref().map(ReputationJson::from),
                    }
                })
                .collect(),
        }
    }
}

/// `cactus-node fraud --json`: one line per piece of evidence.
#[derive(Debug, Clone, Serialize)]
pub struct FraudJson {
    pub task_id: String,
    pub accused: String,
    pub model_sha256: String,
    pub router: String,
    pub tolerance: f32,
    pub issued_at_ms: u64,
    pub evidence_hash: String,
    /// `ok`, or why the evidence does not check out.
    pub verified: String,
    pub reports: Vec<ReplayReportJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReportJson {
    pub verifier: String,
    /// Why the findings count as fraud; `null` when they do not.
    pub verdict: Option<String>,
    pub max_gap: f32,
    pub mismatches: u32,
    pub positions: u32,
    pub text_matches: bool,
    pub worst: Vec<GapJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapJson {
    pub position: u32,
    pub token: u32,
    pub expected: u32,
    pub gap: f32,
}

impl From<&FraudEvidence> for FraudJson {
    fn from(e: &FraudEvidence) -> Self {
        let b = &e.body.receipt.body;
        Self {
            task_id: b.task_id.to_hex(),
            accused: b.orchestrator.to_string(),
            model_sha256: b.model.to_hex(),
            router: e.body.router.to_string(),
            tolerance: e.body.tolerance,
            issued_at_ms: e.body.issued_at_ms,
            evidence_hash: e.hash().map(|h| h.to_hex()).unwrap_or_default(),
            verified: e
                .verify()
                .map_or_else(|err| err.to_string(), |()| "ok".into()),
            reports: e
                .body
                .reports
                .iter()
                .map(|r| {
                    let f = &r.body.findings;
                    ReplayReportJson {
                        verifier: r.body.verifier.to_string(),
                        verdict: f.judge(b, e.body.tolerance).err().map(|r| r.to_string()),
                        max_gap: f.max_gap,
                        mismatches: f.mismatches,
                        positions: f.positions,
                        text_matches: f.text_matches,
                        worst: f
                            .worst
                            .iter()
                            .map(|w| GapJson {
                                position: w.position,
                                token: w.token,
                                expected: w.expected,
                                gap: w.gap,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::contract::Address;
    use cactus_protocol::messages::OrchestratorStatus;

    #[test]
    fn status_json_keeps_its_field_names() {
        let s = RouterStatus {
            router_account: Address([1; 32]),
            authorized: true,
            config: None,
            orchestrators: vec![OrchestratorStatus {
                peer: None,
                account: Address([2; 32]),
                record: None,
                reputation: Some(Reputation {
                    successes: 1_500,
                    ..Reputation::default()
                }),
            }],
            totals: (20_000, 3, 7),
            receipts: 2,
            pending_anchor: 1,
            anchors: 1,
        };
        let v = serde_json::to_value(StatusJson::from(&s)).unwrap();
        assert_eq!(v["stake_held"], 20_000);
        assert_eq!(v["pending_payments"], 3);
        assert_eq!(v["vault_balance"], 7);
        assert_eq!(v["receipts"], 2);
        assert_eq!(v["anchors"], 1);
        let o = &v["orchestrators"][0];
        assert_eq!(o["account"], Address([2; 32]).to_hex());
        assert!(o["successes"].is_null() && o["peer"].is_null());
        assert_eq!(o["reputation"]["successes"], 1.5);
    }

    #[test]
    fn a_bundle_without_an_anchor_reads_back_and_bad_hex_is_named() {
        let e = BundleJson::parse("{\"receipt\": \"00\", \"anchor\": null}").unwrap_err();
        assert!(matches!(e, BundleError::Receipt(_)), "{e:?}");
        let e = BundleJson::parse("{\"receipt\": \"xy\"}").unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::Hex {
                    field: "receipt",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = BundleJson::parse("[]").unwrap_err();
        assert!(matches!(e, BundleError::Json(_)), "{e:?}");
    }
}
