//! The llama.cpp engine on the real demo model.

use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, LoadError};
use cactus_node::inference::model_file::{ModelFileError, ModelSpec};
use cactus_node::inference::{Engine, InferenceError, Job, WorkerPool};
use cactus_protocol::{Digest, FinishReason, PromptFormat, SamplingParams};
use std::sync::Arc;

fn engine(ctx_size: u32) -> Arc<LlamaEngine> {
    let spec = ModelSpec {
        path: super::model_path(),
        expected_sha256: Some(super::DEMO_SHA256.parse().unwrap()),
    };
    LlamaEngine::load(
        &[spec],
        LlamaConfig {
            threads: 2,
            ctx_size,
            gpu_layers: 0,
        },
    )
    .unwrap()
}

fn job(engine: &LlamaEngine, prompt: &str, sampling: SamplingParams) -> Job {
    Job {
        model: engine.models()[0].sha256,
        prompt: prompt.into(),
        format: PromptFormat::Chat,
        sampling,
    }
}

#[test]
fn greedy_generation_is_deterministic_and_counted() {
    let e = engine(512);
    let sampling = SamplingParams {
        max_tokens: 24,
        ..SamplingParams::default()
    };
    let j = job(&e, "The three primary colours are", sampling);
    let a = e.generate(&j, &|| false).unwrap();
    let b = e.generate(&j, &|| false).unwrap();
    assert!(!a.text.trim().is_empty());
    assert_eq!(a.text, b.text);
    assert!(a.output_tokens > 0 && a.output_tokens <= 24);
    assert!(a.prompt_tokens >= 5);
    if a.finish == FinishReason::MaxTokens {
        assert_eq!(a.output_tokens, 24);
    }
}

#[test]
fn seeded_sampling_repeats_with_the_seed() {
    let e = engine(512);
    let sampling = |seed| SamplingParams {
        max_tokens: 16,
        temperature: 0.9,
        top_p: 0.95,
        seed,
    };
    let a = e
        .generate(&job(&e, "Once upon a time", sampling(7)), &|| false)
        .unwrap();
    let b = e
        .generate(&job(&e, "Once upon a time", sampling(7)), &|| false)
        .unwrap();
    assert_eq!(a.text, b.text);
}

#[test]
fn prompt_longer_than_context_is_a_typed_error() {
    let e = engine(64);
    let long = "cactus ".repeat(200);
    let err = e
        .generate(&job(&e, &long, SamplingParams::default()), &|| false)
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::PromptTooLong { n_ctx: 64, .. }),
        "{err:?}"
    );
}

#[test]
fn cancellation_stops_generation() {
    let e = engine(512);
    let sampling = SamplingParams {
        max_tokens: 200,
        ..SamplingParams::default()
    };
    let err = e
        .generate(&job(&e, "Count to a thousand:", sampling), &|| true)
        .unwrap_err();
    assert!(matches!(err, InferenceError::Cancelled), "{err:?}");
}

#[test]
fn hash_mismatch_and_unknown_model_are_refused() {
    let spec = ModelSpec {
        path: super::model_path(),
        expected_sha256: Some(Digest::of(b"not the model")),
    };
    let err = LlamaEngine::load(&[spec], LlamaConfig::default()).unwrap_err();
    assert!(
        matches!(err, LoadError::File(ModelFileError::HashMismatch { .. })),
        "{err}"
    );

    let e = engine(128);
    let mut j = job(&e, "hi", SamplingParams::default());
    j.model = Digest::of(b"other");
    assert!(matches!(
        e.generate(&j, &|| false),
        Err(InferenceError::UnknownModel(_))
    ));
}

#[tokio::test]
async fn worker_pool_runs_the_real_engine() {
    let e = engine(512);
    let pool = WorkerPool::new(e.clone(), 1, 1);
    let sampling = SamplingParams {
        max_tokens: 8,
        ..SamplingParams::default()
    };
    let direct = e
        .generate(&job(&e, "Paris is the capital of", sampling), &|| false)
        .unwrap();
    let pooled = pool
        .try_submit(job(&e, "Paris is the capital of", sampling))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(direct.text, pooled.text);
    pool.shutdown();
}
