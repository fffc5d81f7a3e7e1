//! The prompt formats, defined once and shared by training, the corpus trie and retrieval, so the
//! sequences the model learns are exactly the sequences the trie allows at query time.
//!
//! Following the paper's public code, a retrieval sequence is
//! `Question: {query}\n\n Related document title:` + ` {title}\n Related document content:` +
//! ` {passage}<eos>`. Each segment is tokenized on its own and the ids concatenated, so a segment
//! has the same ids in every context.

use crate::error::Result;
use crate::model::tokenizer::encode;
use tokenizers::Tokenizer;

/// Opens every query prompt.
pub const QUERY_PREFIX: &str = "Question: ";
/// Ends the query prompt; the title follows.
pub const TITLE_CUE: &str = "\n\n Related document title:";
/// Ends the title segment; the passage follows.
pub const CONTENT_CUE: &str = "\n Related document content:";
/// Ends the query prompt of the docid mode; the `<retrieve>` marker and the docid follow.
pub const DOCID_CUE: &str = "\n\n Related document id:";
/// Asks the model to judge the passage (self-assessment).
pub const ASSESS_CUE: &str = "\n\n Can the document answer the question?";
/// Acceptance verdict; the answer follows it.
pub const ACCEPT: &str = " Yes, it can answer the question. Answer:";
/// Rejection verdict.
pub const REJECT: &str = " No, it cannot answer the question.";

/// Tokenized prompt pieces for one tokenizer.
#[derive(Debug, Clone)]
pub struct PromptCodec {
    pub content_cue: Vec<u32>,
    pub assess_cue: Vec<u32>,
    pub accept: Vec<u32>,
    pub reject: Vec<u32>,
    pub eos: u32,
}

impl PromptCodec {
    /// Tokenizes the fixed pieces once.
    pub fn new(tok: &Tokenizer, eos: u32) -> Result<Self> {
        Ok(PromptCodec {
            content_cue: encode(tok, CONTENT_CUE)?,
            assess_cue: encode(tok, ASSESS_CUE)?,
            accept: encode(tok, ACCEPT)?,
            reject: encode(tok, REJECT)?,
            eos,
        })
    }

    /// `Question: {query}\n\n Related document title:`
    pub fn query(&self, tok: &Tokenizer, query: &str) -> Result<Vec<u32>> {
        encode(tok, &format!("{QUERY_PREFIX}{}{TITLE_CUE}", clean(query)))
    }

    /// `Question: {query}\n\n Related document id:` (the docid mode; the caller appends the
    /// `<retrieve>` marker, which is not a base token).
    pub fn docid_query(&self, tok: &Tokenizer, query: &str) -> Result<Vec<u32>> {
        encode(tok, &format!("{QUERY_PREFIX}{}{DOCID_CUE}", clean(query)))
    }

    /// ` {title}\n Related document content:` (the title trie's items).
    pub fn title(&self, tok: &Tokenizer, title: &str) -> Result<Vec<u32>> {
        let mut ids = encode(tok, &format!(" {}", clean(title)))?;
        ids.extend_from_slice(&self.content_cue);
        Ok(ids)
    }

    /// ` {passage}<eos>` (a title's passage trie items).
    pub fn passage(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let mut ids = encode(tok, &format!(" {}", text.trim()))?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// ` {answer}<eos>` after the acceptance verdict.
    pub fn answer(&self, tok: &Tokenizer, answer: &str) -> Result<Vec<u32>> {
        let mut ids = encode(tok, &format!(" {}", clean(answer)))?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// Position of the first token where acceptance and rejection differ: the verdict is read
    /// from the model's distribution there.
    pub fn verdict_split(&self) -> usize {
        self.accept
            .iter()
            .zip(&self.reject)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// Collapses whitespace (titles and queries are single-line in every prompt).
pub fn clean(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Longest passage excerpt, in tokens, a question prompt carries.
pub const EXCERPT_TOKENS: usize = 256;

/// A question-writing prompt in three token pieces: the instruction and title, the passage
/// excerpt, and the cue the question follows. The base model writes pseudo-queries after it,
/// and retrieval reads how likely the user's question is after it (query likelihood), so both
/// ask the model the same thing.
#[derive(Debug, Clone)]
pub struct QuestionPrompt {
    pub head: Vec<u32>,
    pub body: Vec<u32>,
    pub tail: Vec<u32>,
}

impl QuestionPrompt {
    pub fn new(tok: &Tokenizer, title: &str, text: &str) -> Result<Self> {
        // The model's own prompt format, around a marker where the excerpt goes.
        const MARK: &str = "\u{1}EXCERPT\u{1}";
        let prompt = crate::generate::instruction_prompt(
            tok,
            &format!(
                "Read the passage and write one short question that it answers.\n\nTitle: {}\nPassage:{MARK}",
                clean(title)
            ),
            "Question:",
        );
        let (head, tail) = prompt.split_once(MARK).unwrap_or((prompt.as_str(), ""));
        let mut body = encode(tok, &format!(" {}", text.trim()))?;
        body.truncate(EXCERPT_TOKENS);
        Ok(QuestionPrompt {
            head: encode(tok, head)?,
            body,
            tail: encode(tok, tail)?,
        })
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.body.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The prompt cut to `len` tokens by shortening the excerpt.
    pub fn ids(&self, len: usize) -> Vec<u32> {
        let keep = len.saturating_sub(self.head.len() + self.tail.len());
        let mut ids = self.head.clone();
        ids.extend_from_slice(&self.body[..keep.min(self.body.len())]);
        ids.extend_from_slice(&self.tail);
        ids
    }

    /// The whole prompt.
    pub fn full(&self) -> Vec<u32> {
        self.ids(self.len())
    }
}
