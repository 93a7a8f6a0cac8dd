use super::sampler::gap;
use cactus_protocol::SamplingParams;

fn sampled(top_p: f32) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p,
        ..SamplingParams::default()
    }
}

#[test]
fn greedy_gap_is_the_distance_to_the_top_logit() {
    let logits = [1.0, 3.5, 2.0];
    let greedy = SamplingParams::default();
    assert_eq!(gap(&logits, 1, &greedy), 0.0);
    assert_eq!(gap(&logits, 2, &greedy), 1.5);
    assert_eq!(gap(&logits, 9, &greedy), f32::INFINITY);
}

#[test]
fn sampled_gap_is_the_distance_below_the_nucleus_whatever_the_vocabulary_size() {
    // Two likely tokens, then a long tail: with top_p 0.5 the nucleus is
    // the top token alone; with 0.99 it reaches into the tail.
    let mut logits = vec![-10.0f32; 300_000];
    logits[7] = 10.0;
    logits[8] = 9.0;
    logits[9] = -9.0;
    assert_eq!(gap(&logits, 7, &sampled(0.5)), 0.0);
    assert_eq!(gap(&logits, 8, &sampled(0.5)), 1.0);
    assert_eq!(gap(&logits, 8, &sampled(0.9)), 0.0);
    assert_eq!(gap(&logits, 9, &sampled(0.9)), 18.0);
    // A nucleus beyond the sorted head (a flat distribution) is still
    // found: every token is inside it.
    let flat = vec![0.0f32; 300_000];
    assert_eq!(gap(&flat, 123_456, &sampled(0.99)), 0.0);
    // top_p = 1 keeps every token.
    assert_eq!(gap(&logits, 9, &sampled(1.0)), 0.0);
}

#[test]
fn top_k_and_min_p_raise_the_floor() {
    let logits = [5.0f32, 4.0, 3.0, 2.0, 1.0];
    let k2 = SamplingParams {
        top_k: 2,
        ..sampled(1.0)
    };
    assert_eq!(gap(&logits, 1, &k2), 0.0);
    assert_eq!(gap(&logits, 3, &k2), 2.0);
    // min_p = e^-1.5: tokens within 1.5 logits of the top survive.
    let m = SamplingParams {
        min_p: (-1.5f32).exp(),
        ..sampled(1.0)
    };
    assert_eq!(gap(&logits, 1, &m), 0.0);
    assert!((gap(&logits, 3, &m) - 1.5).abs() < 1e-5);
    // A token the grammar or a bias of -inf removed is never acceptable.
    let masked = [5.0f32, f32::NEG_INFINITY];
    assert_eq!(gap(&masked, 1, &sampled(1.0)), f32::INFINITY);
}

#[test]
fn logprobs_are_a_log_softmax_with_the_top_tokens_first() {
    let logits = [0.0f32, 2.0, 1.0];
    let lp = super::sampler::logprobs(&logits, 2, 2);
    let z: f32 = logits.iter().map(|l| l.exp()).sum();
    assert!((lp.logprob - (1.0 - z.ln())).abs() < 1e-5);
    assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
}
