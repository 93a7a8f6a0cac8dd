//! Spot checks by replay on the real demo model: honest results pass the
//! tolerance, results of a substituted model (the demo model re-quantized to
//! Q2_K by llama.cpp's own quantizer) fail it, in the engine and across a
//! mesh of real nodes on loopback.

use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, quantize_q2k};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::inference::stub::Substitute;
use cactus_node::inference::{Blocking, Engine, Generation, Job};
use cactus_node::network::NetworkConfig;
use cactus_node::roles::router::Verification;
use cactus_node::{Node, NodeConfig, Role};
use cactus_protocol::fraud::{FraudReason, ReplayRequest};
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::{
    Digest, ModelId, PromptFormat, ReceiptBody, SamplingParams, TaskId, TaskSpec,
};
use libp2p::identity::Keypair;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TOLERANCE: f32 = Verification::DEFAULT_TOLERANCE;

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "A recipe for pancakes needs",
];

fn load(path: &Path, sha: Option<&str>) -> Arc<LlamaEngine> {
    LlamaEngine::load(
        &[ModelSpec {
            path: path.to_path_buf(),
            expected_sha256: sha.map(|s| s.parse().unwrap()),
        }],
        LlamaConfig {
            threads: 2,
            ctx_size: 512,
            gpu_layers: 0,
            ..LlamaConfig::default()
        },
    )
    .unwrap()
}

/// The demo model re-quantized to Q2_K, in `dir`.
fn substitute(dir: &Path) -> Arc<LlamaEngine> {
    let out = dir.join("substitute-q2_k.gguf");
    quantize_q2k(&super::model_path(), &out, 2).unwrap();
    load(&out, None)
}

fn request(
    model: &ModelId,
    prompt: &str,
    sampling: SamplingParams,
    g: &Generation,
) -> ReplayRequest {
    signed_request(model, prompt, sampling, g, |_| {})
}

/// A replay request for `g`, whose receipt (changed by `edit`) is signed by
/// a fresh orchestrator key.
fn signed_request(
    model: &ModelId,
    prompt: &str,
    sampling: SamplingParams,
    g: &Generation,
    edit: impl FnOnce(&mut ReceiptBody),
) -> ReplayRequest {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut body = ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([1; 16]),
        model: model.sha256,
        prompt_hash: Digest::of(prompt.as_bytes()),
        output_hash: Digest::of(g.text.as_bytes()),
        output_tokens_hash: Digest::of_tokens(&g.tokens),
        sampling,
        format: PromptFormat::Chat,
        finish: g.finish,
        prompt_tokens: g.prompt_tokens,
        output_tokens: g.output_tokens,
        compute_ms: 1,
        orchestrator: peer,
        router: peer,
        started_at_ms: 1,
        finished_at_ms: 2,
        delegation: None,
        resumed: None,
    };
    edit(&mut body);
    ReplayRequest {
        receipt: body.sign(&key).unwrap(),
        prompt: prompt.into(),
        tokens: g.tokens.clone(),
        text: g.text.clone(),
    }
}

#[test]
fn honest_results_pass_the_replay_and_a_substituted_model_fails_it() {
    let honest = load(&super::model_path(), Some(super::DEMO_SHA256));
    let real = honest.models()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cheat = substitute(dir.path());
    let greedy = SamplingParams {
        max_tokens: 64,
        ..SamplingParams::default()
    };
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: 7,
        ..greedy.clone()
    };
    let mut caught = 0;
    for prompt in PROMPTS {
        for sampling in [greedy.clone(), sampled.clone()] {
            let job = Job {
                model: real.sha256,
                prompt: prompt.into(),
                format: PromptFormat::Chat,
                sampling: sampling.clone(),
                deadline: None,
                resume: None,
            };
            let g = honest.generate(&job).unwrap();
            let req = request(&real, prompt, sampling.clone(), &g);
            req.validate().unwrap();
            let f = honest.replay_blocking(&req).unwrap();
            println!(
                "honest  {prompt:?} t={}: max gap {:.3}, {} of {} differ",
                sampling.temperature.clone(),
                f.max_gap,
                f.mismatches,
                f.positions
            );
            assert_eq!(f.judge(&req.receipt.body, TOLERANCE), Ok(()), "{f:?}");
            assert_eq!(f.positions, g.output_tokens);

            if sampling.is_greedy() {
                // Serves the substitute while claiming the real model: the
                // fraud spot checks exist for.
                let c = Substitute::new(Arc::clone(&cheat) as Arc<dyn Engine>, real.clone())
                    .generate(&job)
                    .unwrap();
                let req = request(&real, prompt, sampling, &c);
                let f = honest.replay_blocking(&req).unwrap();
                println!(
                    "cheater {prompt:?}: max gap {:.3}, {} of {} differ",
                    f.max_gap, f.mismatches, f.positions
                );
                if matches!(
                    f.judge(&req.receipt.body, TOLERANCE),
                    Err(FraudReason::OffModel { .. } | FraudReason::Stop { .. })
                ) {
                    caught += 1;
                }
            }
        }
    }
    // Measured on the demo model: Q2_K substitutes go past 1.0 on 19 of 20
    // 128-token answers (Q4_0 on 18 of 20); honest replays stay <= 0.6.
    assert!(caught >= 3, "only {caught} of 4 substituted answers caught");

    // Tampered text, tampered tokens and a wrong prompt count are caught
    // whatever the logits say.
    let job = Job {
        model: real.sha256,
        prompt: PROMPTS[0].into(),
        format: PromptFormat::Chat,
        sampling: greedy.clone(),
        deadline: None,
        resume: None,
    };
    let g = honest.generate(&job).unwrap();
    let mut req = request(&real, PROMPTS[0], greedy.clone(), &g);
    req.text.push('!');
    let f = honest.replay_blocking(&req).unwrap();
    assert_eq!(
        f.judge(&req.receipt.body, TOLERANCE),
        Err(FraudReason::TextMismatch)
    );
    // Two tokens swapped for others: the text no longer decodes from them,
    // and the model would not have picked them.
    let mut swapped = g.clone();
    swapped.tokens[2] = swapped.tokens[2].wrapping_add(7);
    swapped.tokens[5] = 9_999_999; // not even in the vocabulary
    let req = request(&real, PROMPTS[0], greedy.clone(), &swapped);
    let f = honest.replay_blocking(&req).unwrap();
    assert!(!f.text_matches);
    assert!(f.max_gap > TOLERANCE, "{f:?}");
    assert!(f.judge(&req.receipt.body, TOLERANCE).is_err());
    let req = signed_request(&real, PROMPTS[0], greedy.clone(), &g, |b| {
        b.prompt_tokens += 1
    });
    let f = honest.replay_blocking(&req).unwrap();
    assert!(matches!(
        f.judge(&req.receipt.body, TOLERANCE),
        Err(FraudReason::PromptTokens { .. })
    ));
}

/// Real nodes on loopback: a router replaying every result, two honest
/// orchestrators and one serving the substitute under the real model's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_catches_and_slashes_a_substituted_model() {
    let dir = tempfile::tempdir().unwrap();
    let honest = load(&super::model_path(), Some(super::DEMO_SHA256));
    let real = honest.models()[0].clone();
    let cheat: Arc<dyn Engine> = Arc::new(Substitute::new(substitute(dir.path()), real.clone()));
    let net = |bootstrap| NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        ..NetworkConfig::default()
    };
    let router = Node::start(
        NodeConfig {
            role: Role::Router,
            data_dir: dir.path().join("router"),
            network: net(vec![]),
            verification: Verification {
                share_ppm: 1_000_000,
                ..Verification::default()
            },
            ..NodeConfig::default()
        },
        Keypair::generate_ed25519(),
        None,
    )
    .await
    .unwrap();
    let addr = router.listen_addrs().await.unwrap()[0].clone();
    let mut orchestrators = Vec::new();
    for engine in [honest.clone() as Arc<dyn Engine>, honest.clone(), cheat] {
        let node = Node::start(
            NodeConfig {
                network: net(vec![addr.clone()]),
                data_dir: dir.path().join(format!("o{}", orchestrators.len())),
                ..NodeConfig::default()
            },
            Keypair::generate_ed25519(),
            Some(engine),
        )
        .await
        .unwrap();
        orchestrators.push(node);
    }
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, router.wait_for_orchestrators(3))
        .await
        .unwrap()
        .unwrap();
    let cheater = orchestrators[2].peer_id();
    let client = Node::start(
        NodeConfig {
            role: Role::Client,
            data_dir: dir.path().join("client"),
            network: net(vec![]),
            ..NodeConfig::default()
        },
        Keypair::generate_ed25519(),
        None,
    )
    .await
    .unwrap();
    client.network().dial(addr).await.unwrap();
    let (ledger, server) = (router.peer_id(), router.peer_id());
    cactus_node::client::fund_from_faucet(client.network(), ledger, server, 1_000_000)
        .await
        .unwrap();

    let mut evidence = Vec::new();
    // The cheater is drawn for about one task in seven once the honest
    // orchestrators have a record (an unknown speed scores half): enough
    // tasks that missing it is rarer than one run in ten thousand. The loop
    // ends as soon as it is caught.
    for i in 0..64 {
        let spec = TaskSpec {
            model: Some(real.sha256.to_hex()),
            prompt: PROMPTS[i % PROMPTS.len()].into(),
            format: PromptFormat::Chat,
            sampling: SamplingParams {
                max_tokens: 64,
                ..SamplingParams::default()
            },
            max_price_per_unit: None,
            request_id: None,
        };
        let result = tokio::time::timeout(
            limit,
            cactus_node::client::submit_to(client.network(), router.peer_id(), spec),
        )
        .await
        .unwrap()
        .unwrap();
        // A substitute's answer close enough to the model's passes (the
        // tolerance is for the whole result, not for each token); the
        // cheater is caught on the first one that is not.
        result.receipt.verify().unwrap();
        evidence = router.fraud_evidence(8).await.unwrap();
        if !evidence.is_empty() {
            break;
        }
    }
    assert_eq!(evidence.len(), 1, "the cheater was never picked");
    let e = &evidence[0];
    e.verify().unwrap();
    assert_eq!(e.accused(), cheater);
    assert_eq!(e.body.reports.len(), 2);
    let chain = router.chain().unwrap();
    let record = chain
        .orchestrator(cactus_node::chain::default_account(&cheater))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.stake, 9_000);
    client.shutdown().await;
    for o in orchestrators {
        o.shutdown().await;
    }
    router.shutdown().await;
}

#[test]
fn honest_results_pass_the_replay_under_every_sampling_option() {
    let honest = load(&super::model_path(), Some(super::DEMO_SHA256));
    let real = honest.models()[0].clone();
    let base = SamplingParams {
        max_tokens: 32,
        ..SamplingParams::default()
    };
    let cases = [
        SamplingParams {
            repeat_penalty: 1.3,
            presence_penalty: 0.4,
            logit_bias: vec![(236764, -5.0), (506, 2.0)],
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.7,
            top_k: 30,
            min_p: 0.05,
            frequency_penalty: 0.3,
            seed: 11,
            ..base.clone()
        },
        SamplingParams {
            stop: vec![".".into()],
            ..base.clone()
        },
        SamplingParams {
            grammar: Some("root ::= [A-Za-z ]+ \".\"".into()),
            ..base.clone()
        },
    ];
    for sampling in cases {
        let job = Job {
            model: real.sha256,
            prompt: PROMPTS[1].into(),
            format: PromptFormat::Chat,
            sampling: sampling.clone(),
            deadline: None,
            resume: None,
        };
        let g = honest.generate(&job).unwrap();
        let req = request(&real, PROMPTS[1], sampling.clone(), &g);
        let f = honest.replay_blocking(&req).unwrap();
        assert_eq!(
            f.judge(&req.receipt.body, TOLERANCE),
            Ok(()),
            "{sampling:?}: {f:?}"
        );
        if !sampling.stop.is_empty() {
            assert_eq!(g.finish, cactus_protocol::FinishReason::Stop, "{g:?}");
            // Text past the stop string is not what the tokens say.
            let mut longer = req.clone();
            longer.text.push('.');
            let f = honest.replay_blocking(&longer).unwrap();
            assert!(!f.text_matches);
        }
    }
}
