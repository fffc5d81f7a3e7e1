//! Free text generation with the same model: the writing tasks around retrieval (titles for
//! title-less passages, pseudo-queries for corpora without queries). One prompt is run once and
//! its KV cache forked for several samples, which then decode as one batch.

use crate::error::Result;
use crate::model::tokenizer::{decode, encode};
use crate::model::Llama;
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::Rng;
use tokenizers::Tokenizer;

/// How to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0: greedy; otherwise softmax temperature for sampling.
    pub temperature: f64,
    /// Sample only among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Stop a sample at its first newline.
    pub single_line: bool,
    /// Also stop a sample once a token brings this character (a question's `?`: what follows
    /// is cut anyway, and every step costs the whole batch).
    pub stop_after: Option<char>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 32,
            temperature: 0.0,
            top_k: 40,
            single_line: true,
            stop_after: None,
        }
    }
}

/// Wraps an instruction in the model's chat format when its tokenizer has one (ChatML, as in
/// SmolLM2 and Qwen2), so instruction-tuned models answer as they were taught; otherwise the
/// plain text followed by `lead` (e.g. "Question:") is the prompt.
pub fn instruction_prompt(tok: &Tokenizer, instruction: &str, lead: &str) -> String {
    if tok.token_to_id("<|im_start|>").is_some() && tok.token_to_id("<|im_end|>").is_some() {
        format!("<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n{lead}")
    } else {
        format!("{instruction}\n\n{lead}")
    }
}

/// Generates `samples` continuations of `prompt` (text). The prompt is encoded with special
/// tokens parsed, forwarded once, and its cache shared by every sample.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    eos: u32,
    prompt: &str,
    samples: usize,
    opts: &GenerateOptions,
    rng: &mut StdRng,
) -> Result<Vec<String>> {
    let ids = encode(tok, prompt)?;
    Ok(generate_batch(model, tok, eos, &[ids], samples, opts, rng)?
        .pop()
        .unwrap_or_default())
}

/// Generates `samples` continuations of each prompt (token ids, all of one length, so they run
/// as one batch with shared positions: callers cut prompts to a common length). The prompts are
/// forwarded together, each cache forked per sample, and every sample decodes in one batch;
/// finished samples leave the batch once enough of them are done. Returns the samples of each
/// prompt, in order.
pub fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    eos: u32,
    prompts: &[Vec<u32>],
    samples: usize,
    opts: &GenerateOptions,
    rng: &mut StdRng,
) -> Result<Vec<Vec<String>>> {
    let Some(len) = prompts.first().map(|p| p.len()) else {
        return Ok(Vec::new());
    };
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(crate::error::Error::invalid(
            "batched prompts must be non-empty and of one length",
        ));
    }
    let stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "</s>"]
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .chain(std::iter::once(eos))
        .collect();
    let per = samples.max(1);
    let n = prompts.len() * per;
    let device = model.device();
    let mut cache = model.new_cache();
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let input = Tensor::from_vec(flat, (prompts.len(), len), device)?;
    let first = model
        .next_token_logprobs(&input, Some(&mut cache))?
        .to_vec2::<f32>()?;
    // Row r of the batch is sample r % per of prompt r / per.
    let fork: Vec<u32> = (0..n).map(|r| (r / per) as u32).collect();
    let mut cache = cache.select(&fork)?;
    let mut lp: Vec<Vec<f32>> = fork.iter().map(|&p| first[p as usize].clone()).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    // Batch row -> sample; rows of finished samples are dropped from time to time.
    let mut live: Vec<usize> = (0..n).collect();
    for step in 0..opts.max_tokens {
        let mut next = Vec::with_capacity(live.len());
        for (row, &i) in live.iter().enumerate() {
            let t = if done[i] {
                eos
            } else {
                pick(&lp[row], opts, rng)
            };
            if !done[i] {
                if stop_ids.contains(&t) {
                    done[i] = true;
                } else {
                    out[i].push(t);
                    // Only the new token can bring a stop: decode it alone, not the text.
                    if opts.single_line || opts.stop_after.is_some() {
                        let piece = decode(tok, &[t], true)?;
                        let stop = (opts.single_line && piece.contains('\n'))
                            || opts.stop_after.is_some_and(|c| piece.contains(c));
                        done[i] |= stop;
                    }
                }
            }
            next.push(t);
        }
        let still: Vec<usize> = (0..live.len()).filter(|&r| !done[live[r]]).collect();
        if still.is_empty() || step + 1 == opts.max_tokens {
            break;
        }
        // Dropping rows copies the cache: worth it once a quarter of the batch has finished.
        if still.len() * 4 <= live.len() * 3 {
            let keep: Vec<u32> = still.iter().map(|&r| r as u32).collect();
            cache = cache.select(&keep)?;
            next = still.iter().map(|&r| next[r]).collect();
            live = still.iter().map(|&r| live[r]).collect();
        }
        let input = Tensor::from_vec(next, (live.len(), 1), device)?;
        lp = model
            .next_token_logprobs(&input, Some(&mut cache))?
            .to_vec2::<f32>()?;
    }
    let texts: Vec<String> = out
        .iter()
        .map(|ids| {
            let text = decode(tok, ids, true)?;
            let text = if opts.single_line {
                text.lines().next().unwrap_or("").to_string()
            } else {
                text
            };
            Ok(text.trim().to_string())
        })
        .collect::<Result<_>>()?;
    Ok(texts.chunks(per).map(|c| c.to_vec()).collect())
}

fn pick(logprobs: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logprobs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    if opts.top_k > 0 && opts.top_k < order.len() {
        order.select_nth_unstable_by(opts.top_k, |&a, &b| logprobs[b].total_cmp(&logprobs[a]));
        order.truncate(opts.top_k);
    }
    let t = opts.temperature as f32;
    let max = order
        .iter()
        .map(|&i| logprobs[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = order
        .iter()
        .map(|&i| ((logprobs[i] - max) / t).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    // Also catches a NaN total.
    if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return argmax();
    }
    let mut x = rng.random::<f32>() * total;
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return order[k] as u32;
        }
        x -= w;
    }
    order.last().map(|&i| i as u32).unwrap_or_else(argmax)
}

/// Cleans a generated title: one line, no quotes or trailing punctuation, at most 12 words.
pub fn tidy_title(raw: &str) -> String {
    let line: String = raw
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| *c != '\u{FFFD}' && !c.is_control())
        .collect();
    let line = line
        .as_str()
        .trim()
        .trim_start_matches("Title:")
        .trim()
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#')
        .trim_end_matches(['.', ':', ';', ','])
        .trim();
    line.split_whitespace()
        .take(12)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A title for a passage written by the model (greedy), or `None` when it produced nothing
/// usable.
pub fn title_for(model: &Llama, tok: &Tokenizer, eos: u32, text: &str) -> Result<Option<String>> {
    let excerpt: Vec<&str> = text.split_whitespace().take(160).collect();
    let prompt = instruction_prompt(
        tok,
        &format!(
            "Write a short title (at most eight words) for this passage.\n\nPassage: {}",
            excerpt.join(" ")
        ),
        "Title:",
    );
    let opts = GenerateOptions {
        max_tokens: 20,
        ..Default::default()
    };
    let mut rng = rand::SeedableRng::seed_from_u64(0);
    let raw = generate(model, tok, eos, &prompt, 1, &opts, &mut rng)?;
    let t = tidy_title(raw.first().map(String::as_str).unwrap_or(""));
    Ok((!t.is_empty()).then_some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_tidied() {
        assert_eq!(
            tidy_title("  \"The Cranfield Experiments.\"\nmore"),
            "The Cranfield Experiments"
        );
        assert_eq!(tidy_title("Title: **Boolean search**"), "Boolean search");
        assert_eq!(
            tidy_title("one two three four five six seven eight nine ten eleven twelve thirteen"),
            "one two three four five six seven eight nine ten eleven twelve"
        );
        assert_eq!(tidy_title("   "), "");
    }

    #[test]
    fn greedy_pick_is_argmax_and_sampling_respects_top_k() {
        let lp = [-3.0f32, -0.1, -2.0, -5.0];
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(1);
        let greedy = GenerateOptions::default();
        assert_eq!(pick(&lp, &greedy, &mut rng), 1);
        let top2 = GenerateOptions {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        for _ in 0..200 {
            let t = pick(&lp, &top2, &mut rng);
            assert!(t == 1 || t == 2, "token {t} is outside the top 2");
        }
    }
}
