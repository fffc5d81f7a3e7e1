//! Tokenizers for every model source: rebuilt from GGUF metadata, read from `tokenizer.json`, or
//! trained on the corpus for the tiny model.

pub mod pretok;

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use pretok::ByteLevelWords;
use std::collections::HashMap;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{
    AddedToken, Model, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    Tokenizer,
};

/// The end-of-text marker of the tiny model's tokenizer (id 0).
pub const TINY_EOS: &str = "<|endoftext|>";

/// Builds a Hugging Face tokenizer equivalent to the one a GGUF file describes.
pub fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_gguf(content)
        .map_err(|e| Error::Tokenizer(format!("cannot rebuild tokenizer from GGUF: {e}")))?;
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str());
    // SmolLM's pre-tokenizer ("smollm") splits digits one by one and adds no prefix space; the
    // generic GPT-2 fallback would add a leading space and produce different ids.
    if pre == Some("smollm") {
        let seq = Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ]);
        tok.with_pre_tokenizer(Some(seq));
    }
    widen_cache(&mut tok);
    Ok(tok)
}

/// Word-to-ids cache entries kept by BPE models: a corpus has far more distinct words than the
/// default 10,000, and tokenizing it is most of the cost of building its trie.
pub const WORD_CACHE: usize = 200_000;

/// Gives a BPE tokenizer a word cache of [`WORD_CACHE`] entries.
pub fn widen_cache(tok: &mut Tokenizer) {
    let mut model = tok.get_model().clone();
    model.resize_cache(WORD_CACHE);
    tok.with_model(model);
}

/// Trains a byte-level BPE tokenizer on the corpus texts, for the from-scratch tiny model.
pub fn train_tiny_tokenizer<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
) -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let alphabet = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(TINY_EOS, true)])
        .initial_alphabet(alphabet)
        .build()
        .into();
    tok.train(&mut trainer, texts)?;
    Ok(tok)
}

/// Token ids the engine needs besides the text vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// Ends every corpus sequence in the trie and every training target.
    pub eos: u32,
    /// Used to pad batches (never attended to, never in the loss).
    pub pad: u32,
}

impl SpecialTokens {
    /// Picks the end-of-text token: the model's declared eos if given, else a known name.
    pub fn detect(tok: &Tokenizer, declared_eos: Option<u32>) -> Result<Self> {
        let eos = declared_eos
            .or_else(|| {
                [
                    "<|endoftext|>",
                    "<|im_end|>",
                    "</s>",
                    "<|end_of_text|>",
                    "<|eot_id|>",
                ]
                .iter()
                .find_map(|t| tok.token_to_id(t))
            })
            .ok_or_else(|| Error::Tokenizer("the tokenizer has no end-of-text token".into()))?;
        Ok(SpecialTokens { eos, pad: eos })
    }
}

/// Encodes text to ids without adding special tokens (prompts add their own).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode_fast(text, false)?.get_ids().to_vec())
}

/// Decodes ids to text, keeping special tokens visible only if asked.
pub fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String> {
    Ok(tok.decode(ids, skip_special)?)
}

/// Encodes many texts to exactly the ids [`encode`] gives, several times faster on a corpus.
///
/// The tokenizer's own pipeline builds a full `Encoding` per text (a `String` per token, offsets,
/// word ids) and that allocation dominates the cost of tokenizing a corpus. Here each text is
/// split into words (by [`pretok::ByteLevelWords`] when the tokenizer is byte-level BPE,
/// else by its own normalizer and pre-tokenizer), and each word is looked up in a per-thread
/// cache of ids before the model is asked. Texts
/// that contain an added token's text, or any text when added tokens are matched after
/// normalisation, take the regular path, so the ids are always the same.
pub fn encode_many(tok: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    let added = tok.get_added_tokens_decoder();
    let contents: Vec<String> = added.values().map(|t| t.content.clone()).collect();
    let regular_only = tok.get_truncation().is_some()
        || (tok.get_normalizer().is_some() && added.values().any(|t| t.normalized));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = texts.len().div_ceil(threads).max(1);
    let contents = &contents;
    let words = ByteLevelWords::detect(tok);
    std::thread::scope(|scope| {
        let workers: Vec<_> = texts
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut cache: HashMap<String, Vec<u32>> = HashMap::new();
                    part.iter()
                        .map(|text| {
                            if regular_only || contents.iter().any(|c| text.contains(c.as_str())) {
                                encode(tok, text)
                            } else {
                                encode_cached(tok, words, text, &mut cache)
                            }
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        for w in workers {
            let part = w
                .join()
                .map_err(|_| Error::Tokenizer("a tokenizing thread panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// One text through normalizer, pre-tokenizer and model, with ids cached per pre-token (word).
fn encode_cached(
    tok: &Tokenizer,
    words: Option<ByteLevelWords>,
    text: &str,
    cache: &mut HashMap<String, Vec<u32>>,
) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(text.len() / 3);
    let mut failed = None;
    let mut add = |piece: &str| {
        if let Some(known) = cache.get(piece) {
            ids.extend_from_slice(known);
            return;
        }
        match tok.get_model().tokenize(piece) {
            Ok(tokens) => {
                let new: Vec<u32> = tokens.into_iter().map(|t| t.id).collect();
                ids.extend_from_slice(&new);
                cache.insert(piece.to_string(), new);
            }
            Err(e) => failed = Some(e),
        }
    };
    match words {
        Some(w) => w.for_each_word(text, &mut add),
        None => {
            let mut pre = PreTokenizedString::from(text);
            if let Some(n) = tok.get_normalizer() {
                pre.normalize(|s| n.normalize(s))?;
            }
            if let Some(p) = tok.get_pre_tokenizer() {
                p.pre_tokenize(&mut pre)?;
            }
            for (piece, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::None) {
                add(piece);
            }
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ids),
    }
}
