//! Cuts documents into passages of roughly `min_words..=max_words` words on sentence boundaries.

use super::sentences::split_sentences;
use serde::{Deserialize, Serialize};

/// Passage size limits in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOptions {
    pub min_words: usize,
    pub max_words: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            min_words: 100,
            max_words: 200,
        }
    }
}

/// Groups sentences into chunks: a chunk closes once it has `min_words` and the next sentence
/// would push it past `max_words`; a sentence longer than `max_words` is cut by words. A short
/// final remainder is merged into the previous chunk when the result stays within bounds.
pub fn chunk_text(text: &str, opts: ChunkOptions) -> Vec<String> {
    let max = opts.max_words.max(1);
    let mut pieces: Vec<Vec<&str>> = Vec::new();
    let sentences = split_sentences(text);
    let mut current: Vec<&str> = Vec::new();
    for s in &sentences {
        let words: Vec<&str> = s.split_whitespace().collect();
        if words.len() > max {
            if !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            for w in words.chunks(max) {
                pieces.push(w.to_vec());
            }
            continue;
        }
        if (current.len() + words.len() > max || current.len() >= opts.min_words)
            && !current.is_empty()
        {
            pieces.push(std::mem::take(&mut current));
        }
        current.extend(words);
    }
    if !current.is_empty() {
        let merge = pieces
            .last()
            .is_some_and(|p| current.len() < opts.min_words / 2 && p.len() + current.len() <= max);
        if merge {
            if let Some(last) = pieces.last_mut() {
                last.extend(current);
            }
        } else {
            pieces.push(current);
        }
    }
    pieces.into_iter().map(|p| p.join(" ")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_bounds_and_sentences() {
        let sentence = "This sentence has exactly eight words in it.";
        let text = vec![sentence; 60].join(" ");
        let chunks = chunk_text(&text, ChunkOptions::default());
        assert!(chunks.len() >= 2);
        for c in &chunks {
            let n = c.split_whitespace().count();
            assert!(n <= 200, "{n}");
            assert!(c.ends_with('.'));
        }
        let total: usize = chunks.iter().map(|c| c.split_whitespace().count()).sum();
        assert_eq!(total, 480);
    }

    #[test]
    fn overlong_sentence_is_cut() {
        let text = vec!["word"; 450].join(" ");
        let chunks = chunk_text(
            &text,
            ChunkOptions {
                min_words: 100,
                max_words: 200,
            },
        );
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| c.split_whitespace().count())
            .collect();
        assert_eq!(sizes, [200, 200, 50]);
    }
}
