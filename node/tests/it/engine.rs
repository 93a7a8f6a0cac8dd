//! The llama.cpp engine on the real demo model: continuous batching, token
//! streams, cancellation, the prompt cache and sampling.

use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, LoadError};
use cactus_node::inference::model_file::{ModelFileError, ModelSpec};
use cactus_node::inference::{
    Blocking, Engine, Event, Generation, InferenceError, Job, Rejected, STREAM_BUFFER, Stream,
};
use cactus_protocol::{Digest, FinishReason, PromptFormat, SamplingParams};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine_with(ctx_size: u32, slots: usize, queue: usize) -> Arc<LlamaEngine> {
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
            slots,
            queue,
            batch_size: 512,
        },
    )
    .unwrap()
}

fn engine(ctx_size: u32) -> Arc<LlamaEngine> {
    engine_with(ctx_size, 1, 1)
}

fn job(engine: &LlamaEngine, prompt: &str, sampling: SamplingParams) -> Job {
    Job {
        model: engine.models()[0].sha256,
        prompt: prompt.into(),
        format: PromptFormat::Chat,
        sampling,
        deadline: None,
        resume: None,
    }
}

fn raw(engine: &LlamaEngine, prompt: &str, max_tokens: u32) -> Job {
    Job {
        format: PromptFormat::Raw,
        ..job(
            engine,
            prompt,
            SamplingParams {
                max_tokens,
                ..SamplingParams::default()
            },
        )
    }
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::default()
    }
}

/// Reads a stream to its end: the token events and the final result.
fn drain(mut s: Stream) -> (Vec<Event>, Result<Generation, InferenceError>) {
    let mut tokens = Vec::new();
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Done(r) => return (tokens, r),
            e => tokens.push(e),
        }
    }
    panic!("the stream ended without a result");
}

/// Waits (bounded) until `cond` holds, polling the engine's state.
fn until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn greedy_generation_is_deterministic_and_counted() {
    let e = engine(512);
    let j = job(&e, "The three primary colours are", greedy(24));
    let a = e.generate(&j).unwrap();
    let b = e.generate(&j).unwrap();
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
        top_k: 40,
        min_p: 0.05,
        seed,
        ..SamplingParams::default()
    };
    let a = e
        .generate(&job(&e, "Once upon a time", sampling(7)))
        .unwrap();
    let b = e
        .generate(&job(&e, "Once upon a time", sampling(7)))
        .unwrap();
    assert_eq!(a.text, b.text);
}

#[test]
fn prompt_longer_than_context_is_a_typed_error() {
    let e = engine(64);
    let long = "cactus ".repeat(200);
    let err = e
        .generate(&job(&e, &long, SamplingParams::default()))
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::PromptTooLong { n_ctx: 64, .. }),
        "{err:?}"
    );
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
        e.generate(&j),
        Err(InferenceError::UnknownModel(_))
    ));
}

#[test]
fn concurrent_sequences_share_decode_steps() {
    let e = engine_with(512, 4, 0);
    let prompts = [
        "The capital of France is",
        "Water boils at a temperature of",
        "The largest planet in the solar system is",
        "A recipe for pancakes needs",
    ];
    let streams: Vec<Stream> = prompts
        .iter()
        .map(|p| e.submit(raw(&e, p, 24)).unwrap())
        .collect();
    // Every slot is taken and there is no queue: a fifth is refused at once.
    assert_eq!(e.submit(raw(&e, "x", 4)).unwrap_err(), Rejected::Busy);
    for s in streams {
        let (tokens, r) = drain(s);
        let g = r.unwrap();
        assert_eq!(tokens.len(), g.tokens.len());
        assert!(g.output_tokens > 0);
    }
    let stats = e.stats();
    assert!(
        stats.max_batch_sequences >= 2 && stats.shared_steps > 0,
        "{stats:?}"
    );
    assert_eq!(e.free_slots(), 4);
}

#[test]
fn a_stream_yields_tokens_whose_text_is_a_prefix_of_the_result() {
    let e = engine(512);
    let (tokens, r) = drain(e.submit(raw(&e, "The capital of France is", 24)).unwrap());
    let g = r.unwrap();
    let shown: String = tokens
        .iter()
        .map(|t| match t {
            Event::Token { text, .. } => text.as_str(),
            Event::Done(_) => "",
        })
        .collect();
    assert!(g.text.starts_with(&shown), "{shown:?} / {:?}", g.text);
    let ids: Vec<u32> = tokens
        .iter()
        .filter_map(|t| match t {
            Event::Token { id, .. } => Some(*id),
            Event::Done(_) => None,
        })
        .collect();
    assert_eq!(ids, g.tokens);
}

#[test]
fn a_cancelled_task_frees_its_slot_within_one_decode_step() {
    let e = engine_with(512, 1, 0);
    let mut s = e
        .submit(raw(&e, "Count from one to a thousand:", 400))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(s.blocking_next(), Some(Event::Token { .. })));
    }
    let at_cancel = e.stats().steps;
    drop(s);
    until("the slot to be free", || e.free_slots() == 1);
    let steps = e.stats().steps - at_cancel;
    assert!(steps <= 1, "{steps} decode steps after the cancel");
    // The slot takes new work at once.
    let g = e.generate(&raw(&e, "Hello", 4)).unwrap();
    assert!(g.output_tokens > 0);
}

#[test]
fn a_passed_deadline_ends_the_task_with_its_own_error() {
    let e = engine_with(512, 1, 0);
    let mut j = raw(&e, "Count from one to a thousand:", 400);
    j.deadline = Some(Instant::now() + Duration::from_millis(300));
    let (_, r) = drain(e.submit(j).unwrap());
    assert!(matches!(r, Err(InferenceError::DeadlineExceeded)), "{r:?}");
    until("the slot to be free", || e.free_slots() == 1);
}

#[test]
fn a_reader_that_stops_pauses_only_its_own_sequence() {
    let e = engine_with(512, 2, 0);
    let mut slow = e
        .submit(raw(&e, "Count from one to a thousand:", 300))
        .unwrap();
    let fast = e.submit(raw(&e, "The capital of France is", 200)).unwrap();
    let (_, r) = drain(fast);
    assert!(r.is_ok());
    // The unread stream holds at most its buffer: its sequence paused
    // instead of generating on.
    let mut buffered = 0;
    while let Some(ev) = slow.try_next() {
        assert!(matches!(ev, Event::Token { .. }));
        buffered += 1;
    }
    assert!(buffered <= STREAM_BUFFER, "{buffered} events buffered");
    // Reading again resumes it to the end.
    let (rest, r) = drain(slow);
    let g = r.unwrap();
    assert_eq!(buffered + rest.len(), g.tokens.len());
}

#[test]
fn a_chat_continuation_reuses_the_cached_prefix() {
    let e = engine_with(1024, 2, 0);
    let first = "Question: what is the capital of France?\nAnswer:";
    let a = e.generate(&raw(&e, first, 16)).unwrap();
    assert_eq!(a.cached_tokens, 0);
    let cache = e.cache();
    let next = format!("{first}{}\nQuestion: and of Italy?\nAnswer:", a.text);
    let model = e.models()[0].sha256;
    assert!(
        cache.iter().any(|c| c.matches(&model, next.as_bytes())),
        "the advertised cache does not match the next turn: {cache:?}"
    );
    let b = e.generate(&raw(&e, &next, 8)).unwrap();
    assert!(
        b.cached_tokens >= a.prompt_tokens,
        "{} of {} prompt tokens reused",
        b.cached_tokens,
        b.prompt_tokens
    );
    assert!(e.stats().cached_prompt_tokens >= u64::from(b.cached_tokens));
}

#[test]
fn stop_strings_cut_the_text() {
    let e = engine(512);
    let plain = e.generate(&raw(&e, "One, two, three, four,", 24)).unwrap();
    assert!(plain.text.contains(','), "{:?}", plain.text);
    let mut j = raw(&e, "One, two, three, four,", 24);
    j.sampling.stop = vec![",".into()];
    let g = e.generate(&j).unwrap();
    assert_eq!(g.finish, FinishReason::Stop);
    assert!(!g.text.contains(','), "{:?}", g.text);
}

#[test]
fn logit_bias_bans_a_token() {
    let e = engine(512);
    let plain = e.generate(&raw(&e, "The capital of France is", 4)).unwrap();
    let first = plain.tokens[0];
    let mut j = raw(&e, "The capital of France is", 4);
    j.sampling.logit_bias = vec![(first, -100.0)];
    let g = e.generate(&j).unwrap();
    assert_ne!(g.tokens[0], first);
}

#[test]
fn a_grammar_constrains_the_output() {
    let e = engine(512);
    let mut j = raw(&e, "Is the sky blue? Answer yes or no:", 8);
    j.sampling.grammar = Some("root ::= \" \"? (\"yes\" | \"no\")".into());
    let g = e.generate(&j).unwrap();
    assert!(
        ["yes", "no", " yes", " no"].contains(&g.text.as_str()),
        "{:?}",
        g.text
    );
    let mut bad = raw(&e, "hi", 4);
    bad.sampling.grammar = Some("root ::= (".into());
    assert!(matches!(e.generate(&bad), Err(InferenceError::Grammar)));
    // The engine goes on serving.
    assert!(e.generate(&raw(&e, "hi", 2)).is_ok());
}

#[test]
fn top_logprobs_come_with_each_token_when_asked() {
    let e = engine(512);
    let mut j = raw(&e, "The capital of France is", 6);
    j.sampling.n_probs = 3;
    let g = e.generate(&j).unwrap();
    assert_eq!(g.logprobs.len(), g.tokens.len());
    for (lp, &t) in g.logprobs.iter().zip(&g.tokens) {
        assert_eq!(lp.token, t);
        assert_eq!(lp.top.len(), 3);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        // Greedy: the token is the most likely one.
        assert_eq!(lp.top[0].0, t);
        assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].1).abs() < 1e-4);
    }
}

#[test]
fn a_json_schema_constrains_the_output_to_a_matching_document() {
    use cactus_node::inference::grammar;
    let e = engine(512);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "capital": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]},
            "population_millions": {"type": "integer"}
        },
        "required": ["capital", "population_millions"]
    });
    let mut j = raw(&e, "The capital of France as JSON:", 48);
    j.sampling.grammar = Some(grammar::json_schema(&schema).unwrap());
    let g = e.generate(&j).unwrap();
    assert_eq!(g.finish, FinishReason::EndOfGeneration, "{:?}", g.text);
    let v: serde_json::Value = serde_json::from_str(&g.text).unwrap();
    assert!(["Paris", "Rome", "Berlin"].contains(&v["capital"].as_str().unwrap()));
    assert!(v["population_millions"].is_i64(), "{v}");
    let mut j = raw(&e, "A JSON object describing a cat:", 64);
    j.sampling.grammar = Some(grammar::json_object());
    let g = e.generate(&j).unwrap();
    if g.finish == FinishReason::EndOfGeneration {
        let v: serde_json::Value = serde_json::from_str(&g.text).unwrap();
        assert!(v.is_object(), "{v}");
    } else {
        assert!(g.text.trim_start().starts_with('{'), "{:?}", g.text);
    }
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_while_others_keep_generating() {
    let spec = ModelSpec {
        path: super::model_path(),
        expected_sha256: Some(super::DEMO_SHA256.parse().unwrap()),
    };
    let e = LlamaEngine::load(
        &[spec],
        LlamaConfig {
            threads: 2,
            ctx_size: 4096,
            gpu_layers: 0,
            slots: 2,
            queue: 0,
            batch_size: 256,
        },
    )
    .unwrap();
    let mut a = e
        .submit(raw(&e, "Count from one to a thousand:", 400))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(a.blocking_next(), Some(Event::Token { .. })));
    }
    // About 2000 prompt tokens: eight or more chunks of at most 255 beside
    // the running sequence's next token.
    let long = "The cactus stood in the desert and waited for rain. ".repeat(160);
    let mut b = e.submit(raw(&e, &long, 4)).unwrap();
    let (mut before, mut first) = (0usize, false);
    while !first {
        match b.blocking_next() {
            Some(Event::Token { .. }) => first = true,
            other => panic!("{other:?}"),
        }
    }
    while let Some(ev) = a.try_next() {
        assert!(matches!(ev, Event::Token { .. }), "{ev:?}");
        before += 1;
    }
    assert!(
        before >= 6,
        "the running sequence got {before} tokens while the long prompt was prefilled"
    );
}

#[test]
fn chat_turns_are_rendered_and_a_bad_turn_list_is_a_typed_error() {
    let e = engine(1024);
    let turns = serde_json::json!([
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}
    ]);
    let mut j = job(&e, &turns.to_string(), greedy(8));
    j.format = PromptFormat::Messages;
    let g = e.generate(&j).unwrap();
    assert!(g.output_tokens > 0 && g.prompt_tokens > 20, "{g:?}");
    j.prompt = "not a list of turns".into();
    assert!(matches!(e.generate(&j), Err(InferenceError::BadPrompt(_))));
    j.prompt = "[]".into();
    assert!(matches!(e.generate(&j), Err(InferenceError::BadPrompt(_))));
}

#[test]
fn a_resumed_generation_continues_from_the_tokens_it_is_given() {
    let e = engine(512);
    let j = job(&e, "Count from one to twenty in words:", greedy(24));
    let (events, whole) = drain(e.submit(j.clone()).unwrap());
    let whole = whole.unwrap();
    assert_eq!(whole.finish, FinishReason::MaxTokens, "{whole:?}");
    // What a client was shown of the first 8 tokens, before their
    // orchestrator failed.
    let shown: String = events[..8]
        .iter()
        .map(|ev| match ev {
            Event::Token { text, .. } => text.as_str(),
            Event::Done(_) => "",
        })
        .collect();
    let resume = cactus_protocol::Resume {
        tokens: whole.tokens[..8].to_vec(),
        shown: shown.clone(),
    };
    let resumed = e
        .generate(&Job {
            sampling: greedy(16),
            resume: Some(Box::new(resume.clone())),
            ..j.clone()
        })
        .unwrap();
    // Greedy: it goes on as the first generation did, and only its own
    // tokens are counted (the resumed ones are prefilled, as prompt).
    assert_eq!(resumed.tokens[0], whole.tokens[8]);
    assert_eq!(resumed.output_tokens, 16);
    assert_eq!(resumed.prompt_tokens, whole.prompt_tokens + 8);
    // A shown text that is not the tokens' text, or a token outside the
    // vocabulary, is refused before it reaches llama.cpp.
    let lie = cactus_protocol::Resume {
        shown: format!("{shown}!"),
        ..resume.clone()
    };
    let bad = e.generate(&Job {
        resume: Some(Box::new(lie)),
        ..j.clone()
    });
    assert!(matches!(bad, Err(InferenceError::BadPrompt(_))), "{bad:?}");
    let outside = cactus_protocol::Resume {
        tokens: vec![u32::MAX - 1],
        shown: String::new(),
    };
    let bad = e.generate(&Job {
        resume: Some(Box::new(outside)),
        ..j
    });
    assert!(matches!(bad, Err(InferenceError::BadPrompt(_))), "{bad:?}");
}

/// Two models on one engine: its one decode thread takes turns between
/// them, and each answers while the other generates exactly what it
/// answers alone; stopping the engine ends its thread.
#[test]
fn two_models_on_one_engine_take_turns_and_answer_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second-q2_k.gguf");
    cactus_node::inference::llama::quantize_q2k(&super::model_path(), &second, 2).unwrap();
    let spec = |path| ModelSpec {
        path,
        expected_sha256: None,
    };
    let e = LlamaEngine::load(
        &[spec(super::model_path()), spec(second)],
        LlamaConfig {
            threads: 2,
            ctx_size: 512,
            gpu_layers: 0,
            slots: 2,
            queue: 2,
            batch_size: 512,
        },
    )
    .unwrap();
    let models: Vec<_> = e.models().iter().map(|m| m.sha256).collect();
    assert_eq!(models.len(), 2);
    let on = |i: usize| Job {
        model: models[i],
        ..raw(&e, "The capital of France is", 24)
    };
    let alone: Vec<Generation> = (0..2).map(|i| e.generate(&on(i)).unwrap()).collect();
    assert_ne!(alone[0].tokens, alone[1].tokens, "two different models");
    // Both at once, each with a second task of its own.
    let streams: Vec<Stream> = [0, 1, 0, 1]
        .iter()
        .map(|&i| e.submit(on(i)).unwrap())
        .collect();
    for (k, s) in streams.into_iter().enumerate() {
        let g = drain(s).1.unwrap();
        assert_eq!(g.tokens, alone[k % 2].tokens, "model {}", k % 2);
    }
    assert_eq!(e.free_slots(), 4);
    e.shutdown();
    assert_eq!(e.submit(on(0)).unwrap_err(), Rejected::Stopped);
}
