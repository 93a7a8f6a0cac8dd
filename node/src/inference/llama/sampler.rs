//! The sampler a task's parameters ask for, the distance of a token from
//! what that sampler could pick (for replays), and log-probabilities.
//!
//! Two stages, in llama.cpp's usual order: *shaping* (logit bias, the
//! repeat / presence / frequency penalties, the grammar) changes logits;
//! *choosing* (top-k, top-p, min-p, temperature, then a seeded draw, or
//! greedy) picks among them. Generation runs both as one chain; a replay
//! runs them apart so that it can measure a token against the shaped logits
//! and feed the sampler the tokens that were actually returned.

use super::super::{InferenceError, TokenLogprobs};
use cactus_protocol::SamplingParams;
use cactus_protocol::params::PENALTY_LAST_N;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

/// llama.cpp seeds are 32-bit: the task's 64-bit seed, folded.
fn seed32(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

fn shape_stages(
    model: &LlamaModel,
    s: &SamplingParams,
) -> Result<Vec<LlamaSampler>, InferenceError> {
    let n_vocab = model.n_vocab();
    let mut stages = Vec::new();
    // Ids outside the vocabulary are ignored: llama.cpp indexes by them.
    let biases: Vec<LlamaLogitBias> = s
        .logit_bias
        .iter()
        .filter(|(t, _)| i64::from(*t) < i64::from(n_vocab))
        .map(|&(t, b)| LlamaLogitBias::new(LlamaToken::new(t as i32), b))
        .collect();
    if !biases.is_empty() {
        stages.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if s.has_penalties() {
        stages.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_LAST_N as i32,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if let Some(g) = &s.grammar {
        stages.push(LlamaSampler::grammar(model, g, "root").map_err(|_| InferenceError::Grammar)?);
    }
    Ok(stages)
}

fn choose_stages(s: &SamplingParams) -> Vec<LlamaSampler> {
    if s.is_greedy() {
        return vec![LlamaSampler::greedy()];
    }
    let mut stages = Vec::new();
    if s.top_k > 0 {
        stages.push(LlamaSampler::top_k(s.top_k.min(i32::MAX as u32) as i32));
    }
    if s.top_p < 1.0 {
        stages.push(LlamaSampler::top_p(s.top_p, 1));
    }
    if s.min_p > 0.0 {
        stages.push(LlamaSampler::min_p(s.min_p, 1));
    }
    stages.push(LlamaSampler::temp(s.temperature));
    stages.push(LlamaSampler::dist(seed32(s.seed)));
    stages
}

/// Whether `s` picks the most likely token of the raw logits: greedy, with
/// nothing shaping them. Such a task is sampled by [`argmax`] rather than
/// by llama.cpp's chain, which first copies the whole vocabulary into a
/// candidate array for every token (262,144 entries for Gemma 3: about 1 %
/// of a decode step's time on the demo model).
pub(super) fn plain_greedy(s: &SamplingParams) -> bool {
    s.is_greedy() && s.logit_bias.is_empty() && !s.has_penalties() && s.grammar.is_none()
}

/// The token llama.cpp's greedy sampler picks from `logits`, without its
/// candidate array: the first of the largest. A NaN never wins, except in
/// first place, where that sampler starts and no logit compares greater.
pub(super) fn argmax(logits: &[f32]) -> usize {
    const LANES: usize = 16;
    match logits.first() {
        Some(first) if !first.is_nan() => {}
        _ => return 0,
    }
    // Lane-wise maxima first (the loop vectorizes), then the first logit
    // equal to the largest.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (best, &x) in lanes.iter_mut().zip(chunk) {
            if x > *best {
                *best = x;
            }
        }
    }
    let most = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    logits.iter().position(|&x| x == most).unwrap_or(0)
}

/// The whole chain, for generation.
pub(super) fn generation(
    model: &LlamaModel,
    s: &SamplingParams,
) -> Result<LlamaSampler, InferenceError> {
    let mut stages = shape_stages(model, s)?;
    stages.extend(choose_stages(s));
    Ok(LlamaSampler::chain_simple(stages))
}

/// Feeds `chain` the tokens a resumed task continues from (so that its
/// penalties and grammar are where the earlier generation left them) and
/// returns their bytes. A token outside the vocabulary, or one the grammar
/// forbids at its place, is refused before llama.cpp sees it.
pub(super) fn resume(
    model: &LlamaModel,
    s: &SamplingParams,
    chain: &mut LlamaSampler,
    tokens: &[u32],
) -> Result<Vec<u8>, InferenceError> {
    let n_vocab = model.n_vocab().max(0) as u32;
    let bad = |m: &str| InferenceError::BadPrompt(m.into());
    // The grammar alone, to test each token before the chain accepts it.
    let mut grammar = match &s.grammar {
        Some(g) => {
            Some(LlamaSampler::grammar(model, g, "root").map_err(|_| InferenceError::Grammar)?)
        }
        None => None,
    };
    let mut bytes = Vec::new();
    for &t in tokens {
        if t >= n_vocab {
            return Err(bad("a resumed token is outside the vocabulary"));
        }
        let token = LlamaToken::new(t as i32);
        if let Some(g) = &mut grammar {
            let mut one =
                LlamaTokenDataArray::from_iter([LlamaTokenData::new(token, 0.0, 0.0)], false);
            one.apply_sampler(g);
            if one
                .data
                .first()
                .is_none_or(|d| d.logit() == f32::NEG_INFINITY)
            {
                return Err(bad("a resumed token breaks the grammar"));
            }
            g.accept(token);
        }
        chain.accept(token);
        bytes.extend_from_slice(&model.vocab().token_to_piece(token, false, None));
    }
    Ok(bytes)
}

/// Shaping and choosing apart, for replays; shaping is `None` when the task
/// asks for none.
pub(super) fn replay(
    model: &LlamaModel,
    s: &SamplingParams,
) -> Result<(Option<LlamaSampler>, LlamaSampler), InferenceError> {
    let shape = shape_stages(model, s)?;
    let shape = (!shape.is_empty()).then(|| LlamaSampler::chain_simple(shape));
    Ok((shape, LlamaSampler::chain_simple(choose_stages(s))))
}

/// Candidates sorted first when looking for a top-p nucleus.
const NUCLEUS_HEAD: usize = 1024;

/// How far `token` is from what the sampler could pick, in logits, given the
/// shaped logits: for greedy decoding the top logit minus the token's; for
/// sampling how far the token's logit falls below the lowest logit that
/// survives top-k, top-p and min-p (0 when it survives). Truncation sees
/// untempered logits, as the chain's stages do.
pub(super) fn gap(logits: &[f32], token: usize, s: &SamplingParams) -> f32 {
    let Some(&own) = logits.get(token) else {
        return f32::INFINITY;
    };
    if own == f32::NEG_INFINITY || own.is_nan() {
        return f32::INFINITY;
    }
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if s.is_greedy() {
        return top - own;
    }
    let n = logits.len();
    let mut floor = f32::NEG_INFINITY;
    if s.min_p > 0.0 {
        floor = floor.max(top + s.min_p.ln());
    }
    let k = if s.top_k > 0 {
        (s.top_k as usize).min(n)
    } else {
        n
    };
    if k < n || s.top_p < 1.0 {
        // The top-k set, or (without top-k) a head that nearly always holds
        // the nucleus of a large vocabulary; the rest is sorted only if the
        // mass is not reached.
        let mut sorted: Vec<f32> = logits.to_vec();
        let head = if k < n { k } else { NUCLEUS_HEAD.min(n) };
        if head < n {
            sorted.select_nth_unstable_by(head - 1, |a, b| b.total_cmp(a));
        }
        sorted[..head].sort_unstable_by(|a, b| b.total_cmp(a));
        if k < n {
            floor = floor.max(sorted[k - 1]);
        }
        if s.top_p < 1.0 {
            let z: f64 = sorted[..k].iter().map(|&l| f64::from(l - top).exp()).sum();
            let head_mass: f64 = sorted[..head]
                .iter()
                .map(|&l| f64::from(l - top).exp() / z)
                .sum();
            if head_mass < f64::from(s.top_p) && head < k {
                sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            }
            let mut mass = 0.0f64;
            let mut nucleus = top;
            for &l in &sorted[..k] {
                nucleus = l;
                mass += f64::from(l - top).exp() / z;
                if mass >= f64::from(s.top_p) {
                    break;
                }
            }
            floor = floor.max(nucleus);
        }
    }
    (floor - own).max(0.0)
}

/// The log-probability of `token` and the `n` most likely tokens under
/// `logits` (the model's own distribution, before sampling).
pub(super) fn logprobs(logits: &[f32], token: usize, n: usize) -> TokenLogprobs {
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| f64::from(l - top).exp()).sum();
    let lse = top + z.ln() as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == n && best.last().is_some_and(|&(_, b)| l <= b) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(n);
        }
    }
    TokenLogprobs {
        token: token as u32,
        logprob: logits.get(token).map_or(f32::NEG_INFINITY, |&l| l - lse),
        top: best.into_iter().map(|(t, l)| (t, l - lse)).collect(),
        pieces: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What llama.cpp's greedy sampler does over its candidate array.
    fn greedy_reference(logits: &[f32]) -> usize {
        let mut selected = 0;
        for (i, &x) in logits.iter().enumerate().skip(1) {
            if x > logits[selected] {
                selected = i;
            }
        }
        selected
    }

    #[test]
    fn argmax_picks_what_llama_cpps_greedy_sampler_picks() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![1.0],
            vec![0.0, 3.0, 3.0, 1.0],
            vec![nan, 5.0, 9.0],
            vec![1.0, nan, 9.0, nan],
            vec![f32::NEG_INFINITY; 40],
            vec![-0.0, 0.0],
            vec![2.0, inf, inf],
            (0..1000)
                .map(|i| ((i * 7919) % 1013) as f32 / 10.0)
                .collect(),
            (0..262_144).map(|i| (i as f32 * 0.37).sin()).collect(),
        ];
        for logits in cases {
            let want = if logits.is_empty() {
                0
            } else {
                greedy_reference(&logits)
            };
            assert_eq!(
                argmax(&logits),
                want,
                "{:?}",
                &logits[..logits.len().min(8)]
            );
        }
        // The largest at every place of a chunk and of the remainder.
        for at in 0..37 {
            let mut logits = vec![0.5f32; 37];
            logits[at] = 2.0;
            assert_eq!(argmax(&logits), at);
        }
    }

    #[test]
    fn only_unshaped_greedy_sampling_skips_the_chain() {
        let greedy = SamplingParams::default();
        assert!(plain_greedy(&greedy));
        let warm = SamplingParams {
            temperature: 0.7,
            ..SamplingParams::default()
        };
        let penalised = SamplingParams {
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        };
        let biased = SamplingParams {
            logit_bias: vec![(5, -100.0)],
            ..SamplingParams::default()
        };
        for s in [warm, penalised, biased] {
            assert!(!plain_greedy(&s));
        }
    }
}
