//! `query`: retrieve passages for one question and answer it, printing every ranking term; and
//! the beam and ranking flags that `query` and `eval` share.

use super::ModelChoice;
use crate::retrieve::{AnswerReader, RetrieveOptions};
use anyhow::Result;

/// Beams and ranking weights, shared by `query` and `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct RankArgs {
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_TITLES)]
    pub titles: usize,
    /// Passage beams per title when the candidate budget is 0 (the paper's j).
    #[arg(long, default_value_t = 10)]
    pub passages: usize,
    /// Candidate budget: every passage of each title beam is a candidate, titles in the order
    /// of --title-prior while their passages fit (the first always). 0: --passages beams per
    /// title instead.
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_CANDIDATES)]
    pub candidates: usize,
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_TAU)]
    pub tau: f64,
    #[arg(long, default_value_t = 0.4)]
    pub delta: f64,
    /// Weight of the passage's own likelihood in the ranking within a title (0: the paper's
    /// formula).
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_PASSAGE_WEIGHT)]
    pub passage_weight: f64,
    /// Weight of the query likelihood (how likely the question is after each candidate
    /// passage) in the ranking (0: not used).
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_QUERY_WEIGHT)]
    pub query_weight: f64,
    /// Do not read the query likelihood (faster; the ranking of the paper and the passage term).
    #[arg(long)]
    pub no_likelihood: bool,
    /// Read the query likelihood with the fine-tuned weights (the default for runs trained with
    /// the reading task; otherwise the base model reads it).
    #[arg(long, conflicts_with = "likelihood_base")]
    pub likelihood_tuned: bool,
    /// Read the query likelihood with the base model (the default, except for runs trained
    /// with the reading task, whose own weights read it by default).
    #[arg(long)]
    pub likelihood_base: bool,
    /// Run self-assessment (the paper's P(reject) for every candidate; off by default).
    #[arg(long)]
    pub assess: bool,
    /// Docid beams (runs of the docid mode).
    #[arg(long, default_value_t = 10)]
    pub docid_beams: usize,
    /// Who reads the answer: `auto` (the run's own weights when it trained answers, the base
    /// model otherwise), `trained` (the self-assessment format) or `base` (the base model,
    /// asked in its instruction format).
    #[arg(long, value_enum, default_value_t = AnswerReader::Auto)]
    pub answer_reader: AnswerReader,
    /// How much of each title's prior (its log-probability after an empty question) comes off
    /// its search score before the candidate budget picks titles (0: the beam order).
    #[arg(long, default_value_t = crate::retrieve::options::DEFAULT_TITLE_PRIOR)]
    pub title_prior: f64,
    /// Passages the base model reads an answer from (the top ones; it copies the answer from
    /// one of them). The trained format reads the top passage alone.
    #[arg(long, default_value_t = 1)]
    pub answer_passages: usize,
}

impl RankArgs {
    /// The retrieval options these flags set for a model opened as `session` (who reads the
    /// query likelihood, unless a flag says, follows how its run was trained).
    pub fn options_for(
        &self,
        session: Option<&crate::worker::session::QuerySession>,
    ) -> RetrieveOptions {
        let mut o = self.options();
        if !self.likelihood_tuned && !self.likelihood_base {
            if let Some(s) = session {
                o.likelihood_base = s.likelihood_base_default();
            }
        }
        o
    }

    /// The retrieval options these flags set (the rest at their defaults).
    pub fn options(&self) -> RetrieveOptions {
        RetrieveOptions {
            titles: self.titles,
            passages: self.passages,
            candidates: self.candidates,
            tau: self.tau,
            delta: self.delta,
            passage_weight: self.passage_weight,
            query_weight: self.query_weight,
            likelihood: !self.no_likelihood,
            likelihood_base: !self.likelihood_tuned,
            assess: self.assess,
            answer_reader: self.answer_reader,
            title_prior: self.title_prior,
            answer_passages: self.answer_passages,
            ..Default::default()
        }
    }
}

/// Arguments of `query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub source: ModelChoice,
    /// Passages to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print the whole retrieval trace as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also show how the model scores this passage (by id) and where it would rank: "why not
    /// this passage?".
    #[arg(long, value_name = "PASSAGE_ID")]
    pub explain: Option<String>,
}

/// Runs `query`.
pub fn query(a: QueryArgs) -> Result<()> {
    let session = a.source.open(false)?;
    if session.docids.is_some() {
        if a.explain.is_some() {
            anyhow::bail!(
                "--explain scores a passage through titles and passages; this run retrieves by docid"
            );
        }
        let max = RetrieveOptions::default().max_answer_tokens;
        if let Some(trace) = session.docid_query(
            &a.question,
            a.rank.docid_beams,
            Some(max),
            a.rank.answer_passages,
        ) {
            return print_docids(&a, &trace?);
        }
    }
    let opts = session.options_for_model(&a.rank.options_for(Some(&session)));
    let trace = session.query(&a.question, &opts, &mut |_| {})?;
    let explanation = match &a.explain {
        Some(id) => Some(session.explain(&trace, id, &opts)?),
        None => None,
    };
    if a.json {
        match &explanation {
            Some(e) => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"trace": trace, "explain": e}))?
            ),
            None => println!("{}", serde_json::to_string_pretty(&trace)?),
        }
        return Ok(());
    }
    println!("query: {}", trace.query);
    println!(
        "{:>4}  {:<8}  {:<8}  {:<8}  {:<8}  {:<8}  {:<14}  title",
        "rank", "S", "S_T", "S_gen", "S_P", "S_Q", "passage"
    );
    for (i, r) in trace.ranking.iter().take(a.top).enumerate() {
        println!(
            "{:>4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<14}  {}",
            i + 1,
            r.s,
            r.s_t,
            r.s_gen,
            r.s_p,
            r.s_q,
            r.passage_id,
            r.title
        );
        let words: Vec<&str> = r.text.split_whitespace().take(30).collect();
        println!(
            "      {}{}",
            words.join(" "),
            if r.text.split_whitespace().count() > 30 {
                " ..."
            } else {
                ""
            }
        );
    }
    if let Some(ans) = &trace.answer {
        println!(
            "answer ({}): {} [{}]",
            ans.reader.label(),
            ans.text,
            ans.cited.join(", ")
        );
        if ans.read.len() > 1 {
            println!("read from: {}", ans.read.join(", "));
        }
    }
    let t = &trace.timings;
    println!("time: {}", t.summary(", "));
    if let Some(e) = &explanation {
        print_explanation(e, trace.candidates.len());
    }
    Ok(())
}

/// The "why not this passage?" report: the title and passage forced through the tries, each
/// term, and the rank it would take.
fn print_explanation(e: &crate::retrieve::Explanation, candidates: usize) {
    println!();
    println!("why not {} ({}):", e.passage_id, e.title);
    let beams = match e.title_beam_rank {
        Some(r) => format!("title beam {r}"),
        None => "not among the title beams".to_string(),
    };
    println!(
        "  title: log P {:.3}, per token {:.3} ({beams}; its probability places it {} among the beams' titles)",
        e.title_logprob, e.title_norm_prob, e.title_place
    );
    let steps = |steps: &[crate::retrieve::TokenStep]| {
        steps
            .iter()
            .map(|s| match s.logprob {
                Some(lp) if s.alternatives > 1 => {
                    format!(
                        "{:?} {lp:.2} (trie {:.2} of {})",
                        s.piece, s.trie_logprob, s.alternatives
                    )
                }
                Some(lp) => format!("{:?} {lp:.2}", s.piece),
                None => format!("{:?}", s.piece),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  title tokens: {}", steps(&e.title_steps));
    let shown: Vec<_> = e.passage_steps.iter().take(12).cloned().collect();
    println!(
        "  passage: log P_trie {:.3}; first tokens: {}{}",
        e.passage_logprob,
        steps(&shown),
        if e.passage_steps.len() > 12 {
            ", ..."
        } else {
            ""
        }
    );
    println!(
        "  query likelihood {:.3}, P(reject) {:.3}",
        e.query_logprob, e.p_reject
    );
    println!(
        "  S {:.4} (S_T {:.4}, S_gen {:.4}, S_P {:.4}, S_Q {:.4}): rank {} of {}{}",
        e.s,
        e.s_t,
        e.s_gen,
        e.s_p,
        e.s_q,
        e.rank,
        e.placed.candidates.len(),
        if e.was_candidate {
            String::from(" (it was a candidate)")
        } else {
            format!(" (not among the {candidates} candidates; placed with them)")
        }
    );
}

/// `query` on a run of the docid mode: the docid beams, each step's cluster and probability.
fn print_docids(a: &QueryArgs, trace: &crate::retrieve::docid::DocidTrace) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
        return Ok(());
    }
    println!("query: {}", trace.query);
    println!(
        "{:>4}  {:<10}  {:<10}  {:<14}  title",
        "rank", "log P", "docid", "passage"
    );
    for (i, b) in trace.beams.iter().take(a.top).enumerate() {
        println!(
            "{:>4}  {:<10.4}  {:<10}  {:<14}  {}",
            i + 1,
            b.logprob,
            b.docid,
            b.passage_id,
            b.title
        );
        for s in &b.steps {
            let what = match s.label.is_empty() {
                true => "(passage in its leaf)".to_string(),
                false => s.label.join(", "),
            };
            println!(
                "        level {} index {:<3} log P {:<8.4} {}",
                s.level, s.index, s.logprob, what
            );
        }
    }
    if let Some(ans) = &trace.answer {
        println!("answer: {} [{}]", ans.text, ans.passage_id);
        if ans.read.len() > 1 {
            println!("read from: {}", ans.read.join(", "));
        }
    }
    println!("time: {:.0} ms", trace.ms);
    Ok(())
}
