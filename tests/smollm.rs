//! Tests on the real SmolLM2-135M-Instruct GGUF (fetched by scripts/fetch-model.sh, which CI runs).

use candle_core::{Device, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;
use selfret::model::source::gguf::read_gguf_header;
use selfret::model::source::load_gguf;
use selfret::model::{ModelBundle, ModelSource, TrainMode};
use std::path::PathBuf;

fn gguf_path() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

const CHAT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

#[test]
fn dequantised_model_matches_quantized_llama_and_speaks_english() {
    let path = gguf_path();
    let dev = Device::Cpu;
    let w = load_gguf(&path, &dev).unwrap();
    let ids = w.tokenizer.encode(CHAT, false).unwrap().get_ids().to_vec();
    let bundle =
        ModelBundle::from_weights(w, ModelSource::Gguf(path.clone()), TrainMode::Frozen, &dev)
            .unwrap();
    let model = bundle.inference().unwrap();
    let input = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ours: Vec<f32> = model
        .next_token_logprobs(&input, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();

    let (content, mut file) = read_gguf_header(&path).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut file, &dev).unwrap();
    let ref_logits = reference.forward(&input, 0).unwrap().squeeze(0).unwrap();
    let ref_lp: Vec<f32> = candle_nn::ops::log_softmax(&ref_logits, D::Minus1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let max_diff = ours
        .iter()
        .zip(&ref_lp)
        .map(|(a, b)| (a - b).abs())
        .take(49152)
        .fold(0f32, f32::max);
    eprintln!("first-token log-prob max abs diff vs quantized_llama: {max_diff:.4}");
    assert_eq!(
        top_k(&ours, 5),
        top_k(&ref_lp, 5),
        "top-5 next tokens differ"
    );

    // Greedy decoding answers in English.
    let mut cache = model.new_cache();
    let mut lp = model.next_token_logprobs(&input, Some(&mut cache)).unwrap();
    let mut out = Vec::new();
    for _ in 0..12 {
        let next = lp.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
        if next == bundle.special.eos {
            break;
        }
        out.push(next);
        let t = Tensor::new(&[[next]], &dev).unwrap();
        lp = model.next_token_logprobs(&t, Some(&mut cache)).unwrap();
    }
    let text = bundle.tokenizer.decode(&out, true).unwrap();
    eprintln!("greedy answer: {text:?}");
    assert!(text.contains("Paris"), "unexpected answer {text:?}");
}

/// The large products of a prefill on AMX tiles (bf16x3) against plain f32 products, on the
/// real model over a prompt long enough to take that path: the log-probabilities at every
/// position agree closely and the most likely next token is the same everywhere.
#[test]
fn amx_prefill_matches_f32_products() {
    let path = gguf_path();
    let dev = Device::Cpu;
    let w = load_gguf(&path, &dev).unwrap();
    let text = CHAT.repeat(5);
    let ids = w
        .tokenizer
        .encode(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(ids.len() >= 64, "prompt of {} tokens", ids.len());
    let bundle =
        ModelBundle::from_weights(w, ModelSource::Gguf(path), TrainMode::Frozen, &dev).unwrap();
    let input = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let run = |amx: bool| -> (bool, Vec<Vec<f32>>) {
        let present = selfret::kernels::amx::set_enabled(amx);
        let model = bundle.inference().unwrap();
        let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        (present, lp.to_vec2().unwrap())
    };
    let (present, with_amx) = run(true);
    let (_, plain) = run(false);
    selfret::kernels::amx::set_enabled(true);
    if !present {
        eprintln!("no AMX on this CPU: both runs used f32 products");
    }
    let mut max_diff = 0f32;
    for (a, b) in with_amx.iter().zip(&plain) {
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
        assert_eq!(top_k(a, 1), top_k(b, 1), "argmax differs");
    }
    eprintln!(
        "AMX vs f32 log-prob max abs diff over {} positions: {max_diff:.2e}",
        ids.len()
    );
    assert!(
        max_diff < 5e-3,
        "AMX and f32 log-probs differ by {max_diff}"
    );
}

#[test]
fn gguf_tokenizer_round_trips_and_matches_reference_ids() {
    let path = gguf_path();
    let w = load_gguf(&path, &Device::Cpu).unwrap();
    let tok = &w.tokenizer;
    assert_eq!(
        tok.encode("Hello world!", false).unwrap().get_ids(),
        &[19556, 905, 17]
    );
    for text in [
        "plain ASCII text, with punctuation.",
        "accents: café, naïve, Spärck Jones, Ångström",
        "emoji 🎉🚀 and CJK 検索",
        "new\nlines\n\n and  double  spaces\tand tabs",
        "digits 1234567 and 3.14159",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Chat-template special tokens are single ids, with no stray leading space after them.
    let ids = tok.encode(CHAT, false).unwrap().get_ids().to_vec();
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], im_start);
    let system = tok.encode("system", false).unwrap().get_ids().to_vec();
    assert_eq!(&ids[1..1 + system.len()], system.as_slice());
    assert_eq!(w.special.eos, tok.token_to_id("<|im_end|>").unwrap());
    // The corpus fast path (per-word id cache, no Encoding) gives the regular path's ids, also
    // for texts holding special-token text, digits, emoji and runs of whitespace, and repeated
    // words that hit its cache.
    let corpus = selfret::corpus::load_path(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.jsonl"),
        &Default::default(),
    )
    .unwrap();
    let mut texts: Vec<String> = corpus
        .passages
        .iter()
        .map(|p| format!(" {}", p.text))
        .collect();
    for t in [
        " a passage that quotes <|im_end|> and <|im_start|>user in its text",
        " 1999 to 2024: 25 years,   three  spaces\n\nand 3.14159 🎉🚀 検索 Ångström",
        "",
        " the the the The THE the",
    ] {
        texts.push(t.to_string());
    }
    // The real corpora too, when the shared evaluation sets sit beside the project.
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    for name in ["nq_open_oracle", "squad_v1_dev"] {
        let path = shared.join(name).join("corpus.jsonl");
        if let Ok(c) = selfret::corpus::load_path(&path, &Default::default()) {
            texts.extend(c.passages.iter().map(|p| format!(" {}", p.text)));
            texts.extend(c.titles.iter().map(|t| format!(" {t}")));
        }
    }
    assert_eq!(
        selfret::model::tokenizer::pretok::ByteLevelWords::detect(tok),
        Some(selfret::model::tokenizer::pretok::ByteLevelWords { split_digits: true })
    );
    let fast = selfret::model::tokenizer::encode_many(tok, &texts).unwrap();
    for (t, ids) in texts.iter().zip(&fast) {
        assert_eq!(
            ids,
            &selfret::model::tokenizer::encode(tok, t).unwrap(),
            "{t}"
        );
    }
    assert_eq!(w.config.num_hidden_layers, 30);
    assert_eq!(w.config.hidden_size, 576);
}

/// The pretrained model writes titles for title-less passages and questions for passages; kept
/// questions are exactly those its own retrieval ranks within `keep_top`.
#[test]
fn model_writes_titles_and_filtered_pseudo_queries() {
    use selfret::train::pseudo::{save_pseudo_queries, PseudoOptions};
    use selfret::worker::session::QuerySession;
    let dir = tempfile::tempdir().unwrap();
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.jsonl");
    let untitled = dir.path().join("untitled.jsonl");
    let mut lines = String::new();
    for line in std::fs::read_to_string(&demo).unwrap().lines().take(3) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        lines.push_str(&serde_json::json!({"id": v["id"], "text": v["text"]}).to_string());
        lines.push('\n');
    }
    std::fs::write(&untitled, lines).unwrap();
    let source = ModelSource::Gguf(gguf_path());
    let s = QuerySession::open_untrained(&source, &untitled, None).unwrap();
    assert_eq!(s.corpus.untitled().len(), 3);
    let titled = dir.path().join("titled.jsonl");
    let n = s.write_titled_corpus(&titled, &mut |_, _| false).unwrap();
    assert_eq!(n, 3);
    let c = selfret::corpus::load_path(&titled, &Default::default()).unwrap();
    assert_eq!(c.len(), 3);
    assert!(c.untitled().is_empty(), "titles: {:?}", c.titles);
    for (p, orig) in c.passages.iter().zip(&s.corpus.passages) {
        assert_eq!(p.text, orig.text, "texts must be unchanged");
        assert!(p.title.split_whitespace().count() <= 12);
    }

    let opts = PseudoOptions {
        per_passage: 2,
        keep_top: 2,
        ..Default::default()
    };
    let qs = s.pseudo_queries(&opts, &mut |_, _| false).unwrap();
    assert!(!qs.is_empty(), "no questions written");
    for q in &qs {
        assert!(q.query.question.split_whitespace().count() >= 3);
        assert_eq!(q.keep, q.rank.is_some_and(|r| r <= 2), "{q:?}");
        assert_eq!(q.query.positive_ids.len(), 1);
    }
    let out = dir.path().join("pq.jsonl");
    let kept = save_pseudo_queries(&out, &qs).unwrap();
    assert_eq!(kept, qs.iter().filter(|q| q.keep).count());
    assert_eq!(
        selfret::train::data::load_queries(&out).unwrap().len(),
        kept
    );
}

/// A LoRA checkpoint over a GGUF base holds the adapters and a reference to the base (path,
/// size, checksum) instead of a 500 MB copy of it; it loads back to the same model, and a base
/// file that changed is refused by name.
#[test]
fn lora_checkpoints_reference_their_gguf_base() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    std::fs::copy(gguf_path(), &base).unwrap();
    let w = load_gguf(&base, &dev).unwrap();
    let mode = TrainMode::Lora(selfret::model::LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![selfret::model::Projection::Q],
    });
    let mut b = ModelBundle::from_weights(w, ModelSource::Gguf(base.clone()), mode, &dev).unwrap();
    // Non-zero adapters, so the check below sees them.
    for var in b.varmap.all_vars() {
        let t = var.as_tensor();
        var.set(&(t.ones_like().unwrap() * 0.01).unwrap()).unwrap();
    }
    b.step = 3;
    let ckpt = dir.path().join("checkpoint");
    b.save(&ckpt, None, Default::default()).unwrap();
    assert!(ckpt.join("base.ron").is_file());
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "the base was copied"
    );
    let size: u64 = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 20_000_000, "checkpoint of {size} bytes");

    let ids = Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap();
    let logits = |m: &ModelBundle| -> Vec<f32> {
        m.inference()
            .unwrap()
            .next_token_logprobs(&ids, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let re = ModelBundle::load_checkpoint(&ckpt, None, &dev).unwrap();
    assert_eq!(re.step, 3);
    let (a, r) = (logits(&b), logits(&re));
    let diff = a
        .iter()
        .zip(&r)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "reloaded model differs by {diff}");

    // A changed base is refused, naming the file.
    let mut bytes = std::fs::read(&base).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&base, &bytes).unwrap();
    let e = ModelBundle::load_checkpoint(&ckpt, None, &dev)
        .err()
        .expect("a changed base must be refused")
        .to_string();
    assert!(e.contains("base.gguf") && e.contains("changed"), "{e}");
}

/// The query likelihood reads a language model's understanding: with no training at all,
/// SmolLM2 finds the demo's new (dev) questions likelier after their own passage than after the
/// passages of the same and other titles, for most of them.
#[test]
fn query_likelihood_of_the_untrained_model_prefers_the_gold_passage() {
    use selfret::worker::session::QuerySession;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = ModelSource::Gguf(gguf_path());
    let s = QuerySession::open_untrained(&source, &root.join("corpora/ir_history.jsonl"), None)
        .unwrap();
    let queries =
        selfret::train::data::load_queries(&root.join("corpora/ir_history.dev.jsonl")).unwrap();
    assert!(s.reads_language());
    let n = s.corpus.len();
    let (mut first, mut total) = (0, 0);
    for q in queries.iter().step_by(4).take(10) {
        let gold = s.corpus.index_of(&q.positive_ids[0]).unwrap();
        // The gold passage, its title's neighbours and passages spread over the corpus.
        let mut cands = vec![gold];
        for &t in &s.corpus.by_title[s.corpus.title_of[gold]] {
            if t != gold {
                cands.push(t);
            }
        }
        for k in 1..5 {
            let other = (gold + k * n / 5) % n;
            if !cands.contains(&other) {
                cands.push(other);
            }
        }
        let r = s.retriever();
        let ql = r
            .query_logprobs(r.model, &q.question, &cands, &mut Default::default())
            .unwrap();
        assert!(ql.iter().all(|v| v.is_finite() && *v < 0.0), "{ql:?}");
        let best = (0..ql.len())
            .max_by(|&a, &b| ql[a].total_cmp(&ql[b]))
            .unwrap();
        first += (best == 0) as usize;
        total += 1;
    }
    eprintln!("gold passage likeliest for {first}/{total} questions");
    assert!(first * 10 >= total * 6, "{first}/{total}");
}

/// The docid mode's pathway on the real model: closed, SmolLM2 reads as before (the docid
/// tokens live in their own table, the tied embedding untouched); open, a pathway that
/// adds something changes the next-token reading; and a docid checkpoint over the GGUF base
/// references the base and restores the pathway exactly.
#[test]
fn a_closed_retrieval_pathway_leaves_smollm2_as_it_was() {
    use selfret::model::retrieval::{RetrievalConfig, RetrievalPath};
    let path = gguf_path();
    let dev = Device::Cpu;
    let w = load_gguf(&path, &dev).unwrap();
    let ids = w.tokenizer.encode(CHAT, false).unwrap().get_ids().to_vec();
    let mut bundle = ModelBundle::from_weights(
        w,
        ModelSource::Gguf(path.clone()),
        TrainMode::Retrieval,
        &dev,
    )
    .unwrap();
    let input = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let read = |m: &selfret::model::Llama| -> Vec<f32> {
        m.next_token_logprobs(&input, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let before = read(&bundle.inference().unwrap());
    let cfg = RetrievalConfig::new(&bundle.model.config, 52);
    assert_eq!(
        cfg.heads_per_kv(&bundle.model.config),
        2,
        "4 heads over 3 kv heads: 6"
    );
    let mut weights: std::collections::HashMap<String, Tensor> =
        RetrievalPath::initial_weights(&bundle.model, &cfg, &bundle.tokenizer, |t| t as u16, 1)
            .unwrap()
            .into_iter()
            .collect();
    for (name, t) in weights.iter_mut() {
        if name.ends_with("down_proj.weight") {
            *t = (Tensor::ones(t.dims(), t.dtype(), &dev).unwrap() * 0.01).unwrap();
        }
    }
    bundle.attach_retrieval(&cfg, weights).unwrap();
    let model = bundle.inference().unwrap();
    // Closed, the pass runs the base model's code alone. Two inference passes of the real
    // model can differ in the last bits (the CPU kernels share the work among threads as they
    // free up; measured up to 1.9e-4 on log-probs of magnitude ~30 with other work on the
    // cores), so this compares within float rounding, a hundredth of what opening the pathway
    // moves (checked below); the tiny model's test checks bit equality through the training
    // pass.
    let closed_logprobs = read(&model);
    let max_abs_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let drift = max_abs_diff(&closed_logprobs, &before);
    assert!(
        drift < 1e-3,
        "closed: the base model's reading (max diff {drift})"
    );
    let open: Vec<f32> = model
        .hidden_retrieving(&input, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let closed: Vec<f32> = model
        .hidden(&input, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let opened = max_abs_diff(&open, &closed);
    assert!(
        opened > 0.1,
        "open, the pathway adds to every layer (max change {opened})"
    );

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint");
    bundle.save(&ckpt, None, Default::default()).unwrap();
    assert!(
        ckpt.join("base.ron").is_file(),
        "the GGUF base is referenced"
    );
    assert!(!ckpt.join("model.safetensors").exists());
    let loaded = ModelBundle::load_checkpoint(&ckpt, Some(TrainMode::Frozen), &dev).unwrap();
    let docid = |m: &selfret::model::Llama| -> Vec<f32> {
        m.docid_logprobs(&input, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let restored: std::collections::HashMap<String, Tensor> = loaded
        .model
        .retrieval
        .as_ref()
        .unwrap()
        .named_weights()
        .into_iter()
        .collect();
    for (name, t) in bundle.model.retrieval.as_ref().unwrap().named_weights() {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = restored[&name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name} restored exactly");
    }
    // The same weights read the same docid distribution (to the product kernels' rounding:
    // a fresh copy packs its weights for the AMX tiles on first use).
    let (a, b) = (docid(&loaded.inference().unwrap()), docid(&model));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-3,
        "docid log-probabilities after reload differ by {diff}"
    );
}

/// A LoRA run on SmolLM2, exported as a Hugging Face folder (adapters merged, GGUF's q/k
/// layout undone) and opened as a plain model over the same corpus, ranks and scores as the run.
#[test]
fn an_exported_smollm2_run_ranks_as_its_run() {
    use selfret::retrieve::RetrieveOptions;
    use selfret::worker::index::{run_index, IndexSpec};
    use selfret::worker::session::QuerySession;
    let dir = tempfile::tempdir().unwrap();
    // A dozen demo passages keep the trie and the query likelihood small.
    let demo = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.jsonl"),
    )
    .unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let lines: Vec<&str> = demo.lines().take(12).collect();
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
    let mut spec = IndexSpec::new(corpus.clone(), ModelSource::Gguf(gguf_path()));
    spec.lora = Some(selfret::model::LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    });
    spec.train.steps = 2;
    spec.train.batch_tokens = 512;
    spec.train.lr = 1e-3;
    spec.pseudo = None;
    let run = dir.path().join("run");
    run_index(
        &spec,
        &run,
        false,
        &mut selfret::train::NoControl,
        &mut |_| {},
        None,
    )
    .unwrap();
    let out = dir.path().join("hf");
    let summary = selfret::worker::export::export_run(&run, "checkpoint", &out, false).unwrap();
    assert!(summary.merged_lora);

    let from_run = QuerySession::open_run(&run).unwrap();
    let from_folder =
        QuerySession::open_untrained(&ModelSource::HfFolder(out), &corpus, None).unwrap();
    let opts = RetrieveOptions {
        answer: false,
        titles: 4,
        candidates: 6,
        ..Default::default()
    };
    let q = "What did the first library card catalogues look like?";
    let a = from_run
        .query(q, &from_run.options_for_model(&opts), &mut |_| {})
        .unwrap();
    let b = from_folder
        .query(q, &from_folder.options_for_model(&opts), &mut |_| {})
        .unwrap();
    assert!(a.ranking.len() >= 2, "{} candidates", a.ranking.len());
    let ids = |t: &selfret::retrieve::RetrievalTrace| -> Vec<String> {
        t.ranking.iter().map(|r| r.passage_id.clone()).collect()
    };
    assert_eq!(ids(&a), ids(&b));
    for (x, y) in a.ranking.iter().zip(&b.ranking) {
        assert!(
            (x.s - y.s).abs() < 1e-6,
            "{}: S {} against {}",
            x.passage_id,
            x.s,
            y.s
        );
    }
}
