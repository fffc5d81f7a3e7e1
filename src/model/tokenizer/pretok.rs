//! A fast path for the byte-level BPE pre-tokenizer (GPT-2 style word splitting, optionally with
//! every digit on its own) that SmolLM2, the tiny model and many llama-family tokenizers use.
//!
//! Tokenizing a corpus is the dominant cost of building its trie, and inside the `tokenizers`
//! crate most of that time is allocation: every word becomes a `NormalizedString` with per-byte
//! alignments. Here words are found by one regex pass over the text and mapped to the byte-level
//! alphabet into a reused buffer. It is used only when the tokenizer's configuration is exactly
//! one it implements; tests compare its ids with the tokenizer's own on real corpora.

use regex::Regex;
use std::sync::LazyLock;
use tokenizers::Tokenizer;

/// GPT-2's word pattern without its look-ahead (`\s+(?!\S)`), which [`ByteLevelWords`] emulates:
/// the regex crate has no look-around.
static WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("the word pattern is valid")
});

/// The byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes for
/// the code points from 256 upwards, in byte order. BPE vocabularies are written in it.
static BYTE_CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
});

/// The word splitting of a byte-level BPE tokenizer, recognised from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteLevelWords {
    /// Every numeric character is a word of its own (the `Digits` pre-tokenizer in front).
    pub split_digits: bool,
}

impl ByteLevelWords {
    /// The fast path for `tok`, when its normalizer and pre-tokenizer are exactly what this
    /// implements: no normalizer, and `ByteLevel` (no prefix space, GPT-2 regex) alone or after
    /// `Digits` with individual digits.
    pub fn detect(tok: &Tokenizer) -> Option<Self> {
        if tok.get_normalizer().is_some() {
            return None;
        }
        let pre = serde_json::to_value(tok.get_pre_tokenizer()?).ok()?;
        let byte_level = |v: &serde_json::Value| {
            v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] == true
        };
        if byte_level(&pre) {
            return Some(ByteLevelWords {
                split_digits: false,
            });
        }
        match (pre["type"].as_str(), pre["pretokenizers"].as_array()) {
            (Some("Sequence"), Some(parts))
                if parts.len() == 2
                    && parts[0]["type"] == "Digits"
                    && parts[0]["individual_digits"] == true
                    && byte_level(&parts[1]) =>
            {
                Some(ByteLevelWords { split_digits: true })
            }
            _ => None,
        }
    }

    /// Calls `word` with each word of `text`, already in the byte-level alphabet (the string the
    /// BPE model looks up), in order.
    pub fn for_each_word(&self, text: &str, mut word: impl FnMut(&str)) {
        let mut buf = String::new();
        let mut emit = |piece: &str| {
            buf.clear();
            buf.extend(piece.bytes().map(|b| BYTE_CHARS[b as usize]));
            word(&buf);
        };
        if !self.split_digits {
            split_words(text, &mut emit);
            return;
        }
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c.is_numeric() {
                if start < i {
                    split_words(&text[start..i], &mut emit);
                }
                let end = i + c.len_utf8();
                emit(&text[i..end]);
                start = end;
            }
        }
        if start < text.len() {
            split_words(&text[start..], &mut emit);
        }
    }
}

/// GPT-2's splitting of `text` into words. A run of whitespace followed by more text leaves its
/// last character to the next word (`\s+(?!\S)`), so " the" keeps its space.
fn split_words(text: &str, emit: &mut impl FnMut(&str)) {
    let mut pos = 0;
    while pos < text.len() {
        let Some(m) = WORDS.find_at(text, pos) else {
            emit(&text[pos..]);
            return;
        };
        if m.start() > pos {
            emit(&text[pos..m.start()]);
        }
        let piece = m.as_str();
        let mut end = m.end();
        if end < text.len() && piece.chars().all(char::is_whitespace) {
            // Followed by a non-space: give back the last whitespace character.
            if let Some((last, _)) = piece.char_indices().last().filter(|(i, _)| *i > 0) {
                end = m.start() + last;
            }
        }
        emit(&text[m.start()..end]);
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, split_digits: bool) -> Vec<String> {
        let mut out = Vec::new();
        ByteLevelWords { split_digits }.for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn splits_like_gpt2() {
        // 'Ġ' is the space byte, 'Ċ' the newline byte in the byte-level alphabet.
        assert_eq!(
            words("Hello  world's\n\nend ", false),
            ["Hello", "Ġ", "Ġworld", "'s", "Ċ", "Ċ", "end", "Ġ"]
        );
        assert_eq!(words("a 123b", true), ["a", "Ġ", "1", "2", "3", "b"]);
        assert_eq!(words("a 123b", false), ["a", "Ġ123", "b"]);
        assert_eq!(words("x\t !?", false), ["x", "ĉ", "Ġ!?"]);
        assert!(words("", true).is_empty());
    }
}
