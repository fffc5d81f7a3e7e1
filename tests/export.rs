//! A run's model exported as a Hugging Face folder: the standard files, LoRA merged, and loaded
//! back with `--model FOLDER` it ranks exactly as the run does.

use selfret::model::source::tiny::TinyOptions;
use selfret::model::{LoraConfig, ModelSource};
use selfret::retrieve::RetrieveOptions;
use selfret::train::NoControl;
use selfret::worker::export::export_run;
use selfret::worker::index::{run_index, IndexSpec};
use selfret::worker::session::QuerySession;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn an_exported_folder_ranks_as_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = root().join("corpora/ir_history.jsonl");
    let mut spec = IndexSpec::new(corpus.clone(), ModelSource::Tiny);
    spec.tiny = TinyOptions {
        vocab_size: 700,
        hidden_size: 128,
        layers: 2,
        seed: 5,
    };
    // LoRA on the tiny model, trained a few steps at a high rate: the adapters move, so the
    // export has something to merge.
    spec.lora = Some(LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    });
    spec.train.steps = 4;
    spec.train.batch_tokens = 512;
    spec.train.lr = 1e-2;
    spec.pseudo = None;
    spec.queries = Some(root().join("corpora/ir_history.queries.jsonl"));
    let run = dir.path().join("run");
    run_index(&spec, &run, false, &mut NoControl, &mut |_| {}, None).unwrap();

    let out = dir.path().join("hf");
    let summary = export_run(&run, "checkpoint", &out, false).unwrap();
    assert!(summary.merged_lora);
    assert_eq!(summary.step, 4);
    for f in selfret::model::export::EXPORTED_FILES {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(out.join("selfret-run.ron").is_file());
    let note = selfret::worker::export::ExportManifest::read(&out)
        .unwrap()
        .expect("selfret.ron");
    assert!(!note.reads_language, "a tiny model reads no language");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert!(config["eos_token_id"].is_u64());
    let names: Vec<String> = safetensors::SafeTensors::deserialize(
        &std::fs::read(out.join("model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .map(String::from)
    .collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(
        names.iter().all(|n| !n.contains("lora")),
        "adapters must be merged, not exported beside: {names:?}"
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("merged into the weights") && card.contains("Related document title:"));

    // Nothing is overwritten without asking, and never the run itself.
    let again = export_run(&run, "checkpoint", &out, false).unwrap_err();
    assert!(again.to_string().contains("exists"), "{again}");
    for inside in [run.clone(), run.join("checkpoint")] {
        let e = export_run(&run, "checkpoint", &inside, true).unwrap_err();
        assert!(e.to_string().contains("folder of its own"), "{e}");
        assert!(run.join("checkpoint/manifest.ron").is_file());
    }
    // Another corpus is refused: the trie would not be the one the model learned.
    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        "{\"id\":\"a\",\"title\":\"A\",\"text\":\"Something else entirely, written for this test.\"}\n",
    )
    .unwrap();
    let Err(e) = QuerySession::open_untrained(&ModelSource::HfFolder(out.clone()), &other, None)
    else {
        panic!("another corpus must be refused");
    };
    assert!(e.to_string().contains("not the corpus"), "{e}");

    // The folder, opened as a plain model over the corpus, ranks and scores as the run.
    let from_run = QuerySession::open_run(&run).unwrap();
    let from_folder =
        QuerySession::open_untrained(&ModelSource::HfFolder(out.clone()), &corpus, None).unwrap();
    let opts = RetrieveOptions {
        answer: false,
        ..Default::default()
    };
    for q in [
        "Who proposed inverse document frequency?",
        "card catalogues",
    ] {
        // As the CLI and the app run them: each session sets the options its model needs.
        let a = from_run
            .query(q, &from_run.options_for_model(&opts), &mut |_| {})
            .unwrap();
        let b = from_folder
            .query(q, &from_folder.options_for_model(&opts), &mut |_| {})
            .unwrap();
        let ranking = |t: &selfret::retrieve::RetrievalTrace| -> Vec<(String, f64)> {
            t.ranking
                .iter()
                .map(|r| (r.passage_id.clone(), r.s))
                .collect()
        };
        assert!(!a.ranking.is_empty());
        assert_eq!(ranking(&a), ranking(&b), "{q}");
    }
}
