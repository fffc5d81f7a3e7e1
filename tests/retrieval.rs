//! The retrieval path end to end on a tiny model built and trained in the test.

use candle_core::Device;
use selfret::corpus::sentences::split_sentences;
use selfret::corpus::{load_path, Corpus, LoadOptions};
use selfret::model::source::tiny::{self, TinyOptions};
use selfret::model::{ModelBundle, ModelSource, TrainMode};
use selfret::prompts::PromptCodec;
use selfret::retrieve::{AnswerReader, RetrieveOptions, StepKind};
use selfret::train::data::TargetLength;
use selfret::train::{train, DataBuilder, DataOptions, NoControl, TrainConfig, TrainEvent};
use selfret::worker::session::QuerySession;

fn demo_corpus() -> Corpus {
    load_path(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpora/ir_history.jsonl")
            .as_path(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn bundle_for(corpus: &Corpus, mode: TrainMode) -> ModelBundle {
    let opts = TinyOptions {
        vocab_size: 800,
        hidden_size: 128,
        layers: 2,
        seed: 11,
    };
    tiny_bundle(corpus, &opts, mode)
}

fn tiny_bundle(corpus: &Corpus, opts: &TinyOptions, mode: TrainMode) -> ModelBundle {
    let w = tiny::build(corpus.texts(), opts, &Device::Cpu).unwrap();
    ModelBundle::from_weights(w, ModelSource::Tiny, mode, &Device::Cpu).unwrap()
}

#[test]
fn untrained_model_returns_only_real_passages() {
    let corpus = demo_corpus();
    let s = QuerySession::new(bundle_for(&corpus, TrainMode::Frozen), corpus.clone()).unwrap();
    let (b, codec) = (&s.bundle, &s.codec);
    // A tiny model reads no language: the entry points leave the query likelihood out for it.
    assert!(!s.reads_language());
    assert!(!s.options_for_model(&RetrieveOptions::default()).likelihood);
    let opts = RetrieveOptions {
        titles: 4,
        passages: 3,
        max_answer_tokens: 4,
        ..Default::default()
    };
    // An empty question and meaningless weights are refused with a message.
    let err = s.query("  ", &opts, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    for bad in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
        let o = RetrieveOptions {
            tau: bad,
            ..opts.clone()
        };
        let err = s.query("BM25", &o, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("tau"), "{err}");
    }
    let zero = RetrieveOptions {
        passages: 0,
        ..opts.clone()
    };
    assert!(s.query("BM25", &zero, &mut |_| {}).is_err());
    for q in [
        "who invented the inverted index",
        "ÜNICODE ✓ query 123",
        "BM25",
    ] {
        let mut stages = 0;
        let trace = s.query(q, &opts, &mut |_| stages += 1).unwrap();
        assert!(stages >= 3, "progress reported {stages} times");
        assert!(!trace.ranking.is_empty());
        assert!(trace.titles.len() <= 4);
        let mut seen = std::collections::HashSet::new();
        for c in &trace.candidates {
            let p = &corpus.passages[c.passage_index];
            assert_eq!(c.text, p.text, "returned text differs from the corpus");
            assert_eq!(c.passage_id, p.id);
            assert_eq!(
                c.title,
                corpus.titles[trace.titles[c.title_rank].title_index]
            );
            assert!(seen.insert(c.passage_id.clone()), "duplicate candidate");
            // The expansion spells the passage exactly: chosen/forced tokens then auto-complete.
            let toks: Vec<u32> = c.steps.iter().map(|s| s.token).collect();
            assert_eq!(toks, codec.passage(&b.tokenizer, &p.text).unwrap());
            assert!(c.steps.iter().any(|s| s.kind != StepKind::AutoComplete));
            assert!((0.0..=1.0).contains(&c.p_reject));
        }
        // The candidate budget (100) holds these titles whole: every passage of each is read.
        for (k, t) in trace.titles.iter().enumerate() {
            let read = trace
                .candidates
                .iter()
                .filter(|c| c.title_rank == k)
                .count();
            assert_eq!(read, corpus.by_title[t.title_index].len(), "title {k}");
        }
        // A budget of 2: at most 2 passages, of the titles the plan keeps.
        let small = RetrieveOptions {
            candidates: 2,
            ..opts.clone()
        };
        let t_small = s.query(q, &small, &mut |_| {}).unwrap();
        assert!(!t_small.candidates.is_empty() && t_small.candidates.len() <= 2);
        let sizes: Vec<usize> = t_small
            .titles
            .iter()
            .map(|t| corpus.by_title[t.title_index].len())
            .collect();
        for (k, (width, _)) in small.passage_searches(&sizes).into_iter().enumerate() {
            let read = t_small
                .candidates
                .iter()
                .filter(|c| c.title_rank == k)
                .count();
            assert_eq!(read, width.min(sizes[k]), "budget 2, title {k}");
        }
        let total: f64 = trace.titles.iter().map(|t| t.s_t).sum();
        assert!((total - 1.0).abs() < 1e-9);
        for w in trace.ranking.windows(2) {
            assert!(w[0].s >= w[1].s);
        }
        // Re-ranking with new temperatures needs no model and keeps the same candidates.
        let mut t2 = trace.clone();
        t2.rerank(selfret::retrieve::score::RankWeights {
            tau: 5.0,
            delta: 0.05,
            passage_weight: 0.5,
            query_weight: 2.0,
        });
        assert_eq!(t2.candidates.len(), trace.candidates.len());
        assert!(trace.answer.is_some());
        // The pass log that `bench query` replays covers every forward pass.
        let t = &trace.timings;
        assert_eq!(t.passes.len(), t.forward_calls);
        let rows: usize = t.passes.iter().map(|p| p.rows).sum();
        let logit_rows: usize = t.passes.iter().map(|p| p.logit_rows).sum();
        assert_eq!((rows, logit_rows), (t.tokens_forwarded, t.logit_rows));
        assert!(t.passes.iter().all(|p| p.logit_rows <= p.rows));
    }
}

#[test]
fn trained_tiny_model_retrieves_its_own_sentences() {
    let full = demo_corpus();
    let sub: Vec<_> = full.passages[..20].to_vec();
    let corpus = Corpus::from_passages(sub, vec![]);
    let mut b = bundle_for(&corpus, TrainMode::Full);
    let codec = PromptCodec::new(&b.tokenizer, b.special.eos).unwrap();
    let data = DataBuilder {
        tokenizer: &b.tokenizer,
        codec: &codec,
        corpus: &corpus,
        opts: DataOptions {
            target: TargetLength::FirstWords(12),
            sentences_per_passage: 8,
            ..Default::default()
        },
    };
    let examples = data.indexing().unwrap();
    let cfg = TrainConfig {
        steps: 250,
        lr: 3e-3,
        batch_tokens: 1536,
        ..Default::default()
    };
    let mut losses = Vec::new();
    train(&mut b, &examples, &cfg, None, &mut NoControl, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            losses.push(loss)
        }
    })
    .unwrap();
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    eprintln!("indexing loss {first:.3} -> {last:.3}");
    assert!(
        last < first * 0.3,
        "loss did not fall enough: {first} -> {last}"
    );

    let s = QuerySession::new(b, corpus.clone()).unwrap();
    let opts = RetrieveOptions {
        titles: 3,
        passages: 3,
        assess: false,
        answer: false,
        // A tiny model knows no language: it is tested on the retrieval pathway alone.
        likelihood: false,
        ..Default::default()
    };
    let (mut hits, mut total) = (0, 0);
    for (i, p) in corpus.passages.iter().enumerate() {
        let Some(sentence) = split_sentences(&p.text)
            .into_iter()
            .find(|s| s.split_whitespace().count() >= 6)
        else {
            continue;
        };
        let trace = s.query(&sentence, &opts, &mut |_| {}).unwrap();
        total += 1;
        if trace.ranking.first().map(|x| x.passage_id.as_str())
            == Some(corpus.passages[i].id.as_str())
        {
            hits += 1;
        }
    }
    let rate = hits as f64 / total as f64;
    eprintln!("Hits@1 on own sentences: {hits}/{total} = {rate:.2}");
    assert!(rate >= 0.8, "Hits@1 {rate}");

    // With self-assessment on, an assessment this model was never trained on gives P(reject)
    // values that cannot tell a title's passages apart: ranked by them alone (the paper's S_P)
    // the gold passage is first about as often as chance; the passage term (the model's own
    // likelihood of the passage) puts it first.
    let assessed = RetrieveOptions {
        assess: true,
        ..opts.clone()
    };
    let (mut paper_hits, mut passage_hits) = (0, 0);
    for p in &corpus.passages {
        let Some(sentence) = split_sentences(&p.text)
            .into_iter()
            .find(|s| s.split_whitespace().count() >= 6)
        else {
            continue;
        };
        let mut trace = s.query(&sentence, &assessed, &mut |_| {}).unwrap();
        let first = |t: &selfret::retrieve::RetrievalTrace| {
            t.ranking.first().map(|x| x.passage_id.clone()) == Some(p.id.clone())
        };
        let w = trace.weights();
        trace.rerank(selfret::retrieve::score::RankWeights {
            passage_weight: 0.0,
            ..w
        });
        paper_hits += first(&trace) as usize;
        trace.rerank(selfret::retrieve::score::RankWeights {
            passage_weight: 1.0,
            ..w
        });
        passage_hits += first(&trace) as usize;
    }
    let (paper, passage) = (
        paper_hits as f64 / total as f64,
        passage_hits as f64 / total as f64,
    );
    eprintln!("with assessment: paper's S {paper:.2}, with the passage term {passage:.2}");
    assert!(passage >= 0.8, "passage term Hits@1 {passage}");
    assert!(
        passage >= paper + 0.2,
        "passage term {passage} vs paper {paper}"
    );
}

#[test]
fn single_item_tries_are_auto_completed() {
    // Title "Solo" has one passage (its passage trie is unique at the root) and the corpus has
    // two titles; every candidate must still come back whole.
    let p = |id: &str, title: &str, text: &str| selfret::corpus::Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    };
    let corpus = Corpus::from_passages(
        vec![
            p(
                "a",
                "Solo",
                "The only passage under this title talks about lighthouses.",
            ),
            p(
                "b",
                "Pair",
                "First of two passages, about harbours and ships.",
            ),
            p(
                "c",
                "Pair",
                "Second of two passages, about tides and moons.",
            ),
        ],
        vec![],
    );
    let b = bundle_for(&demo_corpus(), TrainMode::Frozen);
    let s = QuerySession::new(b, corpus.clone()).unwrap();
    let assessed = RetrieveOptions {
        assess: true,
        ..Default::default()
    };
    let trace = s.query("lighthouses", &assessed, &mut |_| {}).unwrap();
    assert_eq!(trace.titles.len(), 2);
    let mut ids: Vec<&str> = trace.ranked_ids();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    let solo = trace
        .candidates
        .iter()
        .find(|c| c.passage_id == "a")
        .unwrap();
    assert!(solo.steps.iter().all(|s| s.kind == StepKind::AutoComplete));
    // "Solo" needs no passage search, so with self-assessment on it skips the title batch and
    // its verdict row reads its auto-completed title tokens: the same scores as the title batch
    // gives them with self-assessment off.
    let unassessed = RetrieveOptions {
        assess: false,
        ..Default::default()
    };
    let off = s.query("lighthouses", &unassessed, &mut |_| {}).unwrap();
    assert_eq!(trace.titles.len(), off.titles.len());
    for (a, b) in trace.titles.iter().zip(&off.titles) {
        assert_eq!(a.title, b.title);
        for (x, y) in a.steps.iter().zip(&b.steps) {
            let (x, y) = (x.logprob.unwrap(), y.logprob.unwrap());
            assert!((x - y).abs() < 1e-4, "{}: {x} vs {y}", a.title);
        }
        assert!((a.logprob - b.logprob).abs() < 1e-3);
        assert!((a.norm_prob - b.norm_prob).abs() < 1e-4);
    }
}

/// Batched self-assessment (candidates grouped by length, right-padded, continuing the title's
/// cache) gives each candidate the P(reject) of reading it alone from scratch, and the answer
/// that continues the verdict's cache is the answer read from the passage from scratch.
#[test]
fn batched_verdicts_and_reused_answer_match_reading_each_passage_alone() {
    let corpus = demo_corpus();
    // Four heads sharing two key/value heads: cut and forked caches are then strided views.
    let opts = TinyOptions {
        vocab_size: 800,
        hidden_size: 256,
        layers: 2,
        seed: 5,
    };
    let bundle = tiny_bundle(&corpus, &opts, TrainMode::Frozen);
    assert_eq!(bundle.model.config.num_kv_heads(), 2);
    // The demo corpus (three passages a title: every title's passages are searched), then the
    // same passages each under a title of its own (no search: titles are scored from their
    // verdict rows).
    let own_titles: Vec<selfret::corpus::Passage> = corpus
        .passages
        .iter()
        .map(|p| selfret::corpus::Passage {
            title: format!("{} ({})", p.title, p.id),
            ..p.clone()
        })
        .collect();
    let separate = Corpus::from_passages(own_titles, vec![]);
    let s = QuerySession::new(bundle, corpus.clone()).unwrap();
    check_against_reading_alone(&s, &corpus);
    let s = QuerySession::new(s.bundle, separate.clone()).unwrap();
    check_against_reading_alone(&s, &separate);
}

/// log P(ids[start..] | ids[..start]) with the whole sequence read in one unbatched pass.
fn span_logprob_alone(s: &QuerySession, ids: &[u32], start: usize) -> f64 {
    use candle_core::{Tensor, D};
    let n = ids.len();
    let input = Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu).unwrap();
    let lp = candle_nn::ops::log_softmax(&s.model.forward(&input, None).unwrap(), D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (start..n).map(|p| lp[p - 1][ids[p] as usize] as f64).sum()
}

fn check_against_reading_alone(s: &QuerySession, corpus: &Corpus) {
    use candle_core::{Tensor, D};
    let tok = &s.bundle.tokenizer;
    let codec = &s.codec;
    let split = codec.verdict_split();
    let opts = RetrieveOptions {
        titles: 4,
        passages: 4,
        max_answer_tokens: 6,
        assess: true,
        likelihood: true,
        ..Default::default()
    };
    for q in [
        "who invented the inverted index",
        "relevance feedback in SMART",
    ] {
        let trace = s.query(q, &opts, &mut |_| {}).unwrap();
        let lengths: std::collections::HashSet<usize> =
            trace.candidates.iter().map(|c| c.steps.len()).collect();
        assert!(
            lengths.len() > 1,
            "candidates of one length test no padding"
        );
        // Title scores: the beam's own log-probabilities plus the auto-completed tokens' from
        // the batched title pass add up to log P(title | query) read in one pass.
        for t in &trace.titles {
            let prompt = codec.query(tok, q).unwrap();
            let title: Vec<u32> = t.steps.iter().map(|st| st.token).collect();
            let ids: Vec<u32> = prompt.iter().chain(&title).copied().collect();
            let alone = span_logprob_alone(s, &ids, prompt.len());
            assert!(
                (alone - t.logprob).abs() < 1e-3,
                "{}: {} vs alone {alone}",
                t.title,
                t.logprob
            );
        }
        for c in &trace.candidates {
            let mut ids = codec.query(tok, q).unwrap();
            ids.extend(codec.title(tok, &c.title).unwrap());
            ids.extend(c.steps.iter().map(|st| st.token));
            ids.extend_from_slice(&codec.assess_cue);
            ids.extend_from_slice(&codec.accept[..split]);
            let n = ids.len();
            let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
            let logits = s.model.forward(&input, None).unwrap();
            let last = logits.squeeze(0).unwrap().get(n - 1).unwrap();
            let lp: Vec<f32> = candle_nn::ops::log_softmax(&last, D::Minus1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let (a, r) = (
                lp[codec.accept[split] as usize] as f64,
                lp[codec.reject[split] as usize] as f64,
            );
            let alone = 1.0 / (1.0 + (a - r).exp());
            assert!(
                (alone - c.p_reject).abs() < 1e-4,
                "{}: batched P(reject) {} vs alone {alone}",
                c.passage_id,
                c.p_reject
            );
            // The query likelihood, batched and right-padded, against its row read alone.
            let prompt = selfret::prompts::QuestionPrompt::new(tok, &c.title, &c.text).unwrap();
            let cut = prompt.head.len()
                + prompt.tail.len()
                + selfret::retrieve::likelihood::LIKELIHOOD_EXCERPT;
            let mut ids = prompt.ids(cut.min(prompt.len()));
            let start = ids.len();
            let question = selfret::model::tokenizer::encode(tok, &format!(" {q}")).unwrap();
            ids.extend(&question);
            let alone = span_logprob_alone(s, &ids, start) / question.len() as f64;
            assert!(
                (alone - c.query_logprob).abs() < 1e-3,
                "{}: batched query likelihood {} vs alone {alone}",
                c.passage_id,
                c.query_logprob
            );
        }
        let top = &trace.ranking[0].passage_id;
        let pidx = corpus.passages.iter().position(|p| &p.id == top).unwrap();
        // A model built from the corpus answers in the trained format unless told otherwise.
        assert_eq!(
            s.answer_reader(AnswerReader::Auto).unwrap(),
            AnswerReader::Trained
        );
        let (alone, from) = s
            .retriever()
            .answer_from(q, &[pidx], AnswerReader::Trained, opts.max_answer_tokens)
            .unwrap();
        assert_eq!(from, pidx);
        let answer = trace.answer.unwrap();
        assert_eq!(answer.cited, vec![top.clone()]);
        assert_eq!(answer.text, alone);
        // The instructed answer reads its own prompt, not the verdict's cache: the pipeline's
        // answer is the one read from the passage alone.
        let instructed = RetrieveOptions {
            answer_reader: AnswerReader::Base,
            ..opts.clone()
        };
        let trace = s.query(q, &instructed, &mut |_| {}).unwrap();
        let top = &trace.ranking[0].passage_id;
        let pidx = corpus.passages.iter().position(|p| &p.id == top).unwrap();
        let (alone, _) = s
            .retriever()
            .answer_from(q, &[pidx], AnswerReader::Base, opts.max_answer_tokens)
            .unwrap();
        assert_eq!(trace.answer.unwrap().text, alone);
        // It is words of the cited passage: decoding is constrained to the passage's spans.
        assert!(
            corpus.passages[pidx].text.contains(&alone),
            "{alone:?} is not in {}",
            corpus.passages[pidx].id
        );
        // Read from the top three, the answer is words of the one it cites, among them.
        let three = RetrieveOptions {
            answer_passages: 3,
            ..instructed.clone()
        };
        let trace = s.query(q, &three, &mut |_| {}).unwrap();
        let answer = trace.answer.clone().unwrap();
        let top3: Vec<String> = trace
            .ranking
            .iter()
            .take(3)
            .map(|r| r.passage_id.clone())
            .collect();
        assert_eq!(answer.read, top3);
        assert_eq!(answer.cited.len(), 1);
        assert!(top3.contains(&answer.cited[0]));
        let cited = corpus.index_of(&answer.cited[0]).unwrap();
        assert!(
            corpus.passages[cited].text.contains(&answer.text),
            "{:?} is not in {}",
            answer.text,
            answer.cited[0]
        );
        let idx: Vec<usize> = top3.iter().map(|id| corpus.index_of(id).unwrap()).collect();
        let (alone, from) = s
            .retriever()
            .answer_from(q, &idx, AnswerReader::Base, opts.max_answer_tokens)
            .unwrap();
        assert_eq!((alone, from), (answer.text, cited));
    }
    // The second question continued passages the first had read (and matched reading alone).
    assert!(s.reading.stats().hits > 0, "{:?}", s.reading.stats());
}

/// One evaluation runs BM25, the retriever + reader baseline (BM25's top passage answered by the
/// model) and Self-Retrieval over the same queries; the reader answers every query and ranks
/// exactly as BM25 does.
#[test]
fn evaluation_runs_baselines_reader_and_self_retrieval_together() {
    use selfret::eval::run::{run_eval, EvalPlan};
    let corpus = demo_corpus();
    let s = QuerySession::new(bundle_for(&corpus, TrainMode::Frozen), corpus.clone()).unwrap();
    let queries = selfret::train::data::load_queries(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.queries.jsonl"),
    )
    .unwrap();
    let queries = &queries[..4];
    let plan = EvalPlan {
        baselines: vec!["bm25".into(), "bm25+reader".into()],
        retrieve: RetrieveOptions {
            titles: 2,
            passages: 2,
            max_answer_tokens: 3,
            ..Default::default()
        },
        dense_model: Default::default(),
        docid_beams: 10,
    };
    let systems = run_eval(
        Some(&s),
        &s.corpus,
        queries,
        &plan,
        &mut |_, _, _| {},
        &mut || false,
        &mut |_, _| {},
    )
    .unwrap();
    let names: Vec<&str> = systems.iter().map(|s| s.system.as_str()).collect();
    assert_eq!(names, ["bm25", "bm25+reader", "self-retrieval"]);
    for (a, b) in systems[0].queries.iter().zip(&systems[1].queries) {
        assert_eq!(a.ranked, b.ranked);
        assert!(b.answer.is_some());
    }
    assert_eq!(systems[0].metrics["hits@1"], systems[1].metrics["hits@1"]);
    assert!(systems[1].metrics.contains_key("answer_em"));
}

#[test]
fn explaining_a_passage_reproduces_a_candidate_and_places_an_outsider() {
    let corpus = demo_corpus();
    let s = QuerySession::new(bundle_for(&corpus, TrainMode::Frozen), corpus.clone()).unwrap();
    let opts = RetrieveOptions {
        titles: 2,
        passages: 2,
        assess: true,
        answer: false,
        ..Default::default()
    };
    let trace = s
        .query(
            "who proposed inverse document frequency",
            &opts,
            &mut |_| {},
        )
        .unwrap();
    // A candidate: the forced pass gives the numbers the beams gave, and the same rank.
    let c = &trace.candidates[0];
    let e = s.explain(&trace, &c.passage_id, &opts).unwrap();
    assert!(e.was_candidate);
    assert_eq!(e.rank, c.rank);
    assert_eq!(e.placed.candidates.len(), trace.candidates.len());
    assert_eq!(e.title_beam_rank, Some(c.title_rank + 1));
    let title = &trace.titles[c.title_rank];
    assert!(
        (e.title_norm_prob - title.norm_prob).abs() < 2e-3,
        "{} vs {}",
        e.title_norm_prob,
        title.norm_prob
    );
    assert!(
        (e.passage_logprob - c.passage_logprob).abs() < 2e-3,
        "{} vs {}",
        e.passage_logprob,
        c.passage_logprob
    );
    assert!((e.p_reject - c.p_reject).abs() < 1e-9);
    let toks: Vec<u32> = e.passage_steps.iter().map(|st| st.token).collect();
    assert_eq!(toks, s.codec.passage(&s.bundle.tokenizer, &c.text).unwrap());

    // A passage the beams did not reach: scored and placed among the candidates.
    let outsider = corpus
        .passages
        .iter()
        .find(|p| trace.candidates.iter().all(|c| c.passage_id != p.id))
        .unwrap();
    let e = s.explain(&trace, &outsider.id, &opts).unwrap();
    assert!(!e.was_candidate);
    assert_eq!(e.placed.candidates.len(), trace.candidates.len() + 1);
    assert!((1..=e.placed.candidates.len()).contains(&e.rank));
    let placed = e
        .placed
        .candidates
        .iter()
        .find(|c| c.passage_id == outsider.id)
        .unwrap();
    assert_eq!((placed.s, placed.rank), (e.s, e.rank));
    assert!((0.0..=1.0).contains(&e.p_reject) && e.p_reject != 0.5);
    assert!(e.title_steps.iter().all(|st| st.logprob.is_some()));
    let total: f64 = e.placed.titles.iter().map(|t| t.s_t).sum();
    assert!((total - 1.0).abs() < 1e-9);
    // Every other candidate is still there.
    for c in &trace.candidates {
        assert!(e
            .placed
            .candidates
            .iter()
            .any(|p| p.passage_id == c.passage_id));
    }
    let err = s
        .explain(&trace, "no-such-id", &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-id"), "{err}");
}

/// The budget's titles are searched exactly in one teacher-forced batch: the same passages,
/// the same log-probabilities token by token and the same steps as a full beam search of each
/// title's passage trie wide enough to hold all its passages (the other code path).
#[test]
fn exact_passage_batch_matches_a_full_beam_search() {
    let corpus = demo_corpus();
    let opts = TinyOptions {
        vocab_size: 800,
        hidden_size: 256,
        layers: 2,
        seed: 5,
    };
    let s = QuerySession::new(tiny_bundle(&corpus, &opts, TrainMode::Frozen), corpus).unwrap();
    let budget = RetrieveOptions {
        titles: 6,
        likelihood: false,
        answer: false,
        ..Default::default()
    };
    let searched = RetrieveOptions {
        candidates: 0,
        passages: 100,
        passage_beam: true,
        ..budget.clone()
    };
    for q in [
        "who invented the inverted index",
        "card catalogues in libraries",
    ] {
        let a = s.query(q, &budget, &mut |_| {}).unwrap();
        let b = s.query(q, &searched, &mut |_| {}).unwrap();
        assert!(
            a.candidates.len() > a.titles.len(),
            "titles of several passages"
        );
        let key = |t: &selfret::retrieve::RetrievalTrace| {
            type Key = (String, Vec<u32>, Vec<Option<f32>>, Vec<u32>, f64);
            let mut v: Vec<Key> = t
                .candidates
                .iter()
                .map(|c| {
                    (
                        c.passage_id.clone(),
                        c.steps.iter().map(|st| st.token).collect(),
                        c.steps.iter().map(|st| st.logprob).collect(),
                        c.steps.iter().map(|st| st.alternatives).collect(),
                        c.generated_logprob,
                    )
                })
                .collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        let (ka, kb) = (key(&a), key(&b));
        assert_eq!(ka.len(), kb.len(), "{q}");
        for (x, y) in ka.iter().zip(&kb) {
            assert_eq!((&x.0, &x.1, &x.3), (&y.0, &y.1, &y.3), "{q}");
            assert!((x.4 - y.4).abs() < 1e-3, "{q} {}: {} vs {}", x.0, x.4, y.4);
            for (p, r) in x.2.iter().zip(&y.2) {
                match (p, r) {
                    (Some(p), Some(r)) => assert!((p - r).abs() < 1e-3, "{q} {}", x.0),
                    (None, None) => {}
                    _ => panic!("{q} {}: scored steps differ", x.0),
                }
            }
        }
    }
}

/// Each title's prior is its search score after an empty question, recorded for every title a
/// query reads; weighed in, it reorders the titles before the candidate budget takes them.
#[test]
fn title_priors_reorder_titles_before_the_budget() {
    let corpus = demo_corpus();
    let s = QuerySession::new(bundle_for(&corpus, TrainMode::Frozen), corpus.clone()).unwrap();
    let plain = RetrieveOptions {
        answer: false,
        likelihood: false,
        candidates: 6,
        title_prior: 0.0,
        ..Default::default()
    };
    let q = "Who proposed inverse document frequency?";
    let before = s.query(q, &plain, &mut |_| {}).unwrap();
    // Every title of the demo is read (35 titles, a beam of 2,500), each with its prior.
    assert_eq!(before.titles.len(), corpus.titles.len());
    let priors = s.title_priors().unwrap().to_vec();
    assert_eq!(priors.len(), corpus.titles.len());
    for t in &before.titles {
        assert_eq!(t.prior_logprob, Some(priors[t.title_index]));
        assert!(t.search_logprob <= 0.0 && priors[t.title_index] <= 0.0);
    }
    // Weight 0: the beam order, by search score.
    assert!(before
        .titles
        .windows(2)
        .all(|w| w[0].search_logprob >= w[1].search_logprob));
    // The prior of a title is what a search after the empty question scores it by: with the
    // full weight, the order is by the difference.
    let weighted = RetrieveOptions {
        title_prior: 1.0,
        ..plain.clone()
    };
    let after = s.query(q, &weighted, &mut |_| {}).unwrap();
    let key =
        |t: &selfret::retrieve::trace::TitleCandidate| t.search_logprob - t.prior_logprob.unwrap();
    assert!(after.titles.windows(2).all(|w| key(&w[0]) >= key(&w[1])));
    let order = |t: &selfret::retrieve::RetrievalTrace| -> Vec<usize> {
        t.titles.iter().map(|x| x.title_index).collect()
    };
    assert_ne!(order(&before), order(&after), "the prior moved no title");
    // The budget's candidates follow the new order: the first title's passages are candidates.
    let first = after.titles[0].title_index;
    assert!(after
        .candidates
        .iter()
        .any(|c| corpus.title_of[c.passage_index] == first));
    let bad = RetrieveOptions {
        title_prior: f64::NAN,
        ..plain
    };
    assert!(s.query(q, &bad, &mut |_| {}).is_err());
}
