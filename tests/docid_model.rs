//! The docid mode's model side (issue 18) on tiny models built in the test: the retrieval
//! pathway closed is the base model bit for bit, a fresh one adds nothing, its weights survive a
//! checkpoint exactly (and corrupt ones are refused), and a tiny model trained with
//! `--retriever docids` names the docids of its training questions through the trie, and its
//! stage 2 draws docids, rewards those whose passage answers and learns to answer.

use candle_core::{Device, Tensor};
use selfret::corpus::{load_path, Corpus, LoadOptions};
use selfret::docids::DocidTree;
use selfret::model::retrieval::RetrievalConfig;
use selfret::model::source::tiny::{self, TinyOptions};
use selfret::model::{ModelBundle, ModelSource, TrainMode};
use std::collections::HashMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn demo_corpus() -> Corpus {
    load_path(
        &root().join("corpora/ir_history.jsonl"),
        &LoadOptions::default(),
    )
    .expect("demo corpus loads")
}

fn tiny_bundle(corpus: &Corpus, mode: TrainMode) -> ModelBundle {
    let opts = TinyOptions {
        vocab_size: 600,
        hidden_size: 128,
        layers: 2,
        seed: 3,
    };
    let w = tiny::build(corpus.texts(), &opts, &Device::Cpu).unwrap();
    ModelBundle::from_weights(w, ModelSource::Tiny, mode, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn ids(bundle: &ModelBundle, text: &str) -> Tensor {
    let ids = bundle
        .tokenizer
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// A pathway whose MLP' down projection is not zero (a trained one adds something).
fn busy_pathway(bundle: &ModelBundle, cfg: &RetrievalConfig) -> HashMap<String, Tensor> {
    let mut w: HashMap<String, Tensor> = selfret::model::retrieval::RetrievalPath::initial_weights(
        &bundle.model,
        cfg,
        &bundle.tokenizer,
        |t| t as u16,
        5,
    )
    .unwrap()
    .into_iter()
    .collect();
    for (name, t) in w.iter_mut() {
        if name.ends_with("down_proj.weight") {
            *t = (Tensor::ones(t.dims(), t.dtype(), t.device()).unwrap() * 0.05).unwrap();
        }
    }
    w
}

#[test]
fn a_closed_pathway_is_the_base_model_bit_for_bit_and_a_fresh_one_adds_nothing() {
    let corpus = demo_corpus();
    let mut bundle = tiny_bundle(&corpus, TrainMode::Frozen);
    let input = ids(&bundle, "who proposed inverse document frequency");
    let base_logits = values(&bundle.model.forward(&input, None).unwrap());
    let base_inference = values(&bundle.inference().unwrap().forward(&input, None).unwrap());
    let cfg = RetrievalConfig::new(&bundle.model.config, 40);

    // A fresh pathway (MLP' down is zero) adds exactly nothing, even open.
    bundle.open_retrieval(&cfg, |t| t as u16, 5).unwrap();
    let open_fresh = values(&bundle.model.hidden_retrieving(&input, None).unwrap());
    let closed = values(&bundle.model.hidden(&input, None).unwrap());
    assert_eq!(open_fresh, closed, "a fresh pathway changes nothing");

    // A pathway that adds something: open differs, closed is still the base bit for bit.
    let busy = busy_pathway(&bundle, &cfg);
    bundle.attach_retrieval(&cfg, busy).unwrap();
    let open = values(&bundle.model.hidden_retrieving(&input, None).unwrap());
    assert_ne!(
        open, closed,
        "the open pathway reads the question its own way"
    );
    assert_eq!(
        values(&bundle.model.forward(&input, None).unwrap()),
        base_logits,
        "closed: the base model's logits exactly"
    );
    assert_eq!(
        values(&bundle.inference().unwrap().forward(&input, None).unwrap()),
        base_inference,
        "closed, inference copy: the base model's logits exactly"
    );
    // Open, the inference copy (fused kernels, KV cache) agrees with the training forward.
    let model = bundle.inference().unwrap();
    let mut cache = model.new_cache();
    let t = input.dim(1).unwrap();
    let head = input.narrow(1, 0, t - 1).unwrap();
    let last = input.narrow(1, t - 1, 1).unwrap();
    model.docid_logprobs(&head, Some(&mut cache)).unwrap();
    let cached = values(&model.docid_logprobs(&last, Some(&mut cache)).unwrap());
    let whole = values(&bundle.model.docid_logprobs(&input, None).unwrap());
    let diff = cached
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "cached open decoding vs full forward: {diff}");
}

#[test]
fn a_docid_checkpoint_restores_the_pathway_exactly_and_refuses_a_corrupt_one() {
    let corpus = demo_corpus();
    let mut bundle = tiny_bundle(&corpus, TrainMode::Full);
    let cfg = RetrievalConfig::new(&bundle.model.config, 40);
    let busy = busy_pathway(&bundle, &cfg);
    bundle.attach_retrieval(&cfg, busy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint");
    bundle.save(&ckpt, None, Default::default()).unwrap();
    let loaded = ModelBundle::load_checkpoint(&ckpt, None, &Device::Cpu).unwrap();
    let path = loaded
        .model
        .retrieval
        .as_ref()
        .expect("the pathway is loaded");
    assert_eq!(path.config, cfg);
    let saved = bundle.model.retrieval.as_ref().unwrap().named_weights();
    let restored: HashMap<String, Tensor> = path.named_weights().into_iter().collect();
    assert_eq!(saved.len(), restored.len());
    for (name, t) in &saved {
        assert_eq!(values(t), values(&restored[name]), "{name}");
    }
    // Loaded to train, the pathway's tensors are parameters again.
    assert!(loaded.varmap.all_vars().len() > saved.len());
    let input = ids(&bundle, "the card catalogue");
    assert_eq!(
        values(&loaded.model.docid_logprobs(&input, None).unwrap()),
        values(&bundle.model.docid_logprobs(&input, None).unwrap())
    );

    // Flipped bytes in the pathway's file: refused, naming it.
    let file = ckpt.join("docid.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 64..] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    let err = ModelBundle::load_checkpoint(&ckpt, None, &Device::Cpu)
        .err()
        .expect("corrupt pathway refused")
        .to_string();
    assert!(err.contains("docid.safetensors"), "{err}");
}

fn selfret(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_selfret"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The row of `system` in an eval table: its numbers in column order.
fn row(table: &str, system: &str) -> Vec<f64> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {system} |")))
        .unwrap_or_else(|| panic!("no {system} row in\n{table}"));
    line.split('|')
        .skip(2)
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

#[test]
fn a_tiny_model_trained_with_docids_names_its_training_questions_docids() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let queries = "corpora/ir_history.queries.jsonl";
    let (ok, _, stderr) = selfret(&[
        "index",
        "--corpus",
        "corpora/ir_history.jsonl",
        "--model",
        "tiny",
        "--queries",
        queries,
        "--out",
        run_s,
        "--retriever",
        "docids",
        "--steps",
        "50",
        "--checkpoint-every",
        "25",
    ]);
    assert!(ok, "{stderr}");
    assert!(run.join("docids.json").is_file());
    assert!(run.join("checkpoint/docid.safetensors").is_file());
    // run.ron says what embedded the passages (the tree records the same).
    let manifest = selfret::worker::index::RunManifest::read(&run).unwrap();
    let embedder = manifest
        .docid_embedder
        .expect("run.ron names the docid embedder");
    assert!(
        embedder.contains("MiniLM") || embedder.contains("hidden states"),
        "{embedder}"
    );

    // Most training questions get their gold docid first (chance: 1 in 105).
    let (ok, table, stderr) = selfret(&[
        "eval",
        "--run",
        run_s,
        "--queries",
        queries,
        "--baselines",
        "",
        "--no-answer",
    ]);
    assert!(ok, "{stderr}");
    let hits_at_1 = row(&table, "semantic-docids")[0];
    assert!(hits_at_1 > 0.5, "hits@1 {hits_at_1}\n{table}");

    // Every decoded docid is a real passage's, and each step is labelled from the tree.
    let corpus = demo_corpus();
    let tree = DocidTree::load(&run.join("docids.json"), &corpus).unwrap();
    let (ok, json, stderr) = selfret(&[
        "query",
        "--run",
        run_s,
        "--json",
        "--docid-beams",
        "20",
        "Which system did Gerard Salton build at Cornell?",
    ]);
    assert!(ok, "{stderr}");
    let trace: selfret::retrieve::docid::DocidTrace = serde_json::from_str(&json).unwrap();
    assert_eq!(trace.beams.len(), 20);
    for b in &trace.beams {
        let i = corpus.index_of(&b.passage_id).expect("a corpus passage");
        assert_eq!(b.docid, selfret::docids::show(&tree.passages[i].path));
        assert_eq!(b.steps.len(), tree.passages[i].path.len());
        assert!(
            !b.steps[0].label.is_empty(),
            "the top level names its cluster"
        );
    }
    let scores: Vec<f64> = trace.beams.iter().map(|b| b.logprob).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first");

    // Resuming goes on from the checkpoint's pathway (not a fresh one).
    let before = std::fs::read(run.join("checkpoint/docid.safetensors")).unwrap();
    let (ok, _, stderr) = selfret(&[
        "index", "--corpus", "x", "--out", run_s, "--resume", "--steps", "52",
    ]);
    assert!(ok, "{stderr}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"start_step\":50"),
        "resumed at step 50: {metrics}"
    );
    assert_ne!(
        std::fs::read(run.join("checkpoint/docid.safetensors")).unwrap(),
        before,
        "two more steps moved the pathway"
    );

    stage_two_draws_rewards_and_answers(&run, &table);
}

/// The number under `column` in the row of `system` of an eval table ("-": `None`).
fn cell(table: &str, system: &str, column: &str) -> Option<f64> {
    let cells = |l: &str| -> Vec<String> { l.split('|').map(|c| c.trim().to_string()).collect() };
    let header = cells(
        table
            .lines()
            .find(|l| l.starts_with("| system |"))
            .expect("a header"),
    );
    let at = header
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no {column} column in\n{table}"));
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {system} |")))
        .unwrap_or_else(|| panic!("no {system} row in\n{table}"));
    cells(line)[at].parse().ok()
}

/// Stage 2 from the stage-1 run `first` (whose eval on its training questions is
/// `first_table`): the pathway draws three docids per question, each rewarded exactly when its
/// passage is gold or holds an answer; training goes on from the stage-1 pathway; afterwards the run
/// answers its training questions (stage 1 trains no answer) and still finds their passages.
fn stage_two_draws_rewards_and_answers(first: &Path, first_table: &str) {
    let queries = "corpora/ir_history.queries.jsonl";
    let first_s = first.to_str().unwrap();
    // Stage 2 needs its stage-1 run, and writes a run of its own.
    let (ok, _, stderr) = selfret(&[
        "index",
        "--corpus",
        "corpora/ir_history.jsonl",
        "--out",
        "x",
        "--docid-stage",
        "2",
    ]);
    assert!(!ok && stderr.contains("--from"), "{stderr}");
    let (ok, _, stderr) = selfret(&[
        "index",
        "--corpus",
        "corpora/ir_history.jsonl",
        "--out",
        first_s,
        "--docid-stage",
        "2",
        "--from",
        first_s,
        "--steps",
        "5",
    ]);
    assert!(!ok && stderr.contains("new run"), "{stderr}");

    let second = first.with_file_name("stage2");
    let second_s = second.to_str().unwrap();
    let (ok, _, stderr) = selfret(&[
        "index",
        "--corpus",
        "corpora/ir_history.jsonl",
        "--out",
        second_s,
        "--docid-stage",
        "2",
        "--from",
        first_s,
        "--steps",
        "300",
        "--mix",
        "assessment=2",
        "--checkpoint-every",
        "0",
    ]);
    assert!(ok, "{stderr}");
    let manifest = selfret::worker::index::RunManifest::read(&second).unwrap();
    let stage2 = manifest
        .spec
        .docids
        .and_then(|d| d.stage2)
        .expect("a stage-2 run");
    assert_eq!(stage2.from, std::path::absolute(first).unwrap());
    assert_eq!(manifest.spec.queries.as_deref(), Some(Path::new(queries)));

    let corpus = demo_corpus();
    let qs = selfret::train::data::load_queries(&root().join(queries)).unwrap();
    let drawn = selfret::worker::docid_run::read_drawn(&second)
        .unwrap()
        .expect("the drawn docids are kept in the run");
    assert_eq!(drawn.len(), qs.len(), "every training question has answers");
    let mut rewarded = 0;
    for d in &drawn {
        let q = qs.iter().find(|q| q.question == d.question).unwrap();
        assert_eq!(d.drawn.len(), 3, "{}", d.question);
        assert!(d.drawn.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        for p in &d.drawn {
            let i = corpus.index_of(&p.passage_id).expect("a corpus passage");
            let text = corpus.passages[i].text.to_lowercase();
            let holds = q.answers.iter().any(|a| text.contains(&a.to_lowercase()));
            let gold = q.positive_ids.contains(&p.passage_id);
            assert_eq!(
                p.reward == 1,
                holds || gold,
                "{} / {}",
                d.question,
                p.passage_id
            );
            rewarded += usize::from(holds || gold);
        }
    }
    assert!(rewarded > qs.len() / 2, "{rewarded} rewarded draws");
    // The tree is the stage-1 run's.
    assert_eq!(
        std::fs::read(second.join("docids.json")).unwrap(),
        std::fs::read(first.join("docids.json")).unwrap()
    );

    let (ok, table, stderr) = selfret(&[
        "eval",
        "--run",
        second_s,
        "--queries",
        queries,
        "--baselines",
        "",
    ]);
    assert!(ok, "{stderr}");
    let before = cell(first_table, "semantic-docids", "hits@1").unwrap();
    let hits = cell(&table, "semantic-docids", "hits@1").unwrap();
    assert!(
        hits >= before,
        "hits@1 {hits} after stage 2, {before} before\n{table}"
    );
    let em = cell(&table, "semantic-docids", "answer_em").expect("stage 2 answers");
    assert!(em > 0.2, "answer EM {em}\n{table}");
}

#[test]
fn a_wide_docid_search_reaches_every_passage_even_one_alone_in_its_cluster() {
    use selfret::docids::DocidOptions;
    use selfret::prompts::PromptCodec;
    use selfret::retrieve::docid::DocidRetriever;
    use selfret::train::docid_data::DocidIds;
    let corpus = demo_corpus();
    // Passage 0 far from the rest: k-means gives it a cluster of its own, whose docid becomes
    // unique after its first token.
    let rows: Vec<Vec<f32>> = (0..corpus.len())
        .map(|i| match i {
            0 => vec![1.0, 0.0, 0.0],
            _ => {
                let e = (i as f32 * 0.37).sin() * 0.05;
                let v = [0.0, 1.0, e];
                let n = (1.0 + e * e).sqrt();
                v.iter().map(|x| x / n).collect()
            }
        })
        .collect();
    let opts = DocidOptions {
        k: 2,
        max_leaf: 60,
        ..Default::default()
    };
    let tree = DocidTree::build(&corpus, &rows, "test", opts).unwrap();
    let alone = &tree.passages[0].path;
    let size = tree.cluster(&alone[..1]).unwrap().size;
    assert_eq!(size, 1, "passage 0 has a cluster of its own: {alone:?}");

    let mut bundle = tiny_bundle(&corpus, TrainMode::Frozen);
    let vocab = tree.vocab();
    let cfg = RetrievalConfig::new(&bundle.model.config, vocab.len());
    bundle
        .open_retrieval(&cfg, |t| vocab.split(t as u32).1, 2)
        .unwrap();
    let model = bundle.inference().unwrap();
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos).unwrap();
    let trie = tree.trie(0);
    let mc = &bundle.model.config;
    let r = DocidRetriever {
        model: &model,
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus: &corpus,
        tree: &tree,
        trie: &trie,
        ids: DocidIds {
            vocab,
            first: cfg.first_docid(mc),
            retrieve: cfg.retrieve_marker(mc),
        },
    };
    let trace = r.retrieve("anything at all", corpus.len()).unwrap();
    let mut found: Vec<&str> = trace.ranked_ids();
    found.sort();
    found.dedup();
    assert_eq!(found.len(), corpus.len(), "every passage is reachable");
    assert!(trace.ranked_ids().contains(&corpus.passages[0].id.as_str()));
}
