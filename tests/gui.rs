//! Drives the real app through egui_kittest by widget labels: demo corpus, a short training run
//! with live loss points and a working Cancel, a query with ranked candidates and a score table,
//! and tau moving the scores without a model call.

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use selfret::app::{PanelKind, SelfretApp};
use std::time::{Duration, Instant};

fn wait_until(
    h: &mut Harness<'_, SelfretApp>,
    what: &str,
    secs: u64,
    done: impl Fn(&SelfretApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    h.run_ok();
}

/// The app as it starts, once it has loaded the demo corpus.
fn app_with_demo_corpus() -> Harness<'static, SelfretApp> {
    let mut h = Harness::builder()
        .with_size([1280.0, 900.0])
        .with_max_steps(8)
        .build_eframe(|cc| SelfretApp::new(cc));
    wait_until(&mut h, "the demo corpus", 60, |a| {
        a.shared.corpus.is_some() && !a.is_busy()
    });
    h
}

#[test]
fn corpus_train_cancel_query_and_rerank() {
    let run_dir = tempfile::tempdir().unwrap();
    let mut h = Harness::builder()
        .with_size([1280.0, 900.0])
        .with_max_steps(8)
        .build_eframe(|cc| SelfretApp::new(cc));

    // First start: the demo corpus loads by itself. (Its passages arrive before the job ends:
    // until then the busy app keeps the guide's demo button disabled.)
    wait_until(&mut h, "the demo corpus", 60, |a| {
        a.shared.corpus.is_some() && !a.is_busy()
    });
    assert!(h.state().shared.corpus.as_ref().unwrap().len() >= 60);
    h.get_by_label_contains("passages,").hover();
    // The guide shows the order of work: the corpus step is ticked, querying is not yet.
    let tick = |n: usize, name: &str| format!("{} {n} {name}", selfret::app::TICK);
    assert!(h.query_by_label(&tick(1, "Corpus")).is_some());
    assert!(h.query_by_label("4 Query").is_some());
    assert!(h.query_by_label(&tick(3, "Train")).is_none());
    assert!(h
        .query_by_label("Train the demo (SmolLM2, quick preset)")
        .is_some());

    // Every path field has a file-dialog button beside it.
    assert!(h.query_by_label("Browse corpus file").is_some());
    assert!(h.query_by_label("Browse corpus folder").is_some());

    // Search the passage table.
    h.get_by_label("Search passages").click();
    h.run_ok();
    h.get_by_label("Search passages").type_text("pagerank");
    h.run_ok();
    assert!(h.query_by_label("pagerank-1").is_some());

    // The first start's recipe is the demo's: SmolLM2 with the quick preset.
    assert!(h.state().shared.project.model_source.ends_with(".gguf"));
    assert_eq!(
        h.state().shared.project.preset,
        Some(selfret::worker::preset::Preset::Quick)
    );
    // Train: the presets fill the form; then a short run on the tiny model, cancelled while
    // it runs.
    h.get_by_role_and_label(Role::Button, "Train").click();
    h.run_ok();
    h.state_mut().shared.project.model_source = "tiny".into();
    // The guide's demo button asks before the demo's settings replace the user's.
    h.get_by_label("Train the demo (SmolLM2, quick preset)")
        .click();
    h.run_ok();
    assert!(h
        .query_by_label_contains("replaces the project's corpus")
        .is_some());
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    h.run_ok();
    assert!(h
        .query_by_label_contains("replaces the project's corpus")
        .is_none());
    assert_eq!(h.state().shared.project.model_source, "tiny");
    assert!(!h.state().is_busy());
    h.get_by_label("thorough").click();
    h.run_ok();
    assert_eq!(
        h.state().shared.project.preset,
        Some(selfret::worker::preset::Preset::Thorough)
    );
    h.get_by_label("quick").click();
    h.run_ok();
    {
        let p = &h.state().shared.project;
        assert_eq!(p.preset, Some(selfret::worker::preset::Preset::Quick));
        assert_eq!(
            p.sentences_per_passage, 0,
            "the preset indexes every sentence"
        );
        assert!(!p.lora, "the tiny model trains in full");
        assert!(p.epochs > 0.0);
    }
    {
        let app = h.state_mut();
        app.shared.project.run_dir = run_dir.path().join("run").display().to_string();
        app.shared.project.epochs = 0.0;
        app.shared.project.steps = 400;
        app.shared.project.batch_tokens = 512;
        app.shared.project.lr = 3e-3;
    }
    h.get_by_role_and_label(Role::Button, "Start").click();
    h.run_ok();
    wait_until(&mut h, "loss points", 240, |a| {
        a.panels.train.view.losses.len() >= 3
    });

    // Pause: the top bar and the Train panel say paused (no ETA), and no step is taken until
    // Continue.
    // The step in flight when Pause arrives still finishes (the top bar says so), then the
    // worker confirms the pause, and after that no step is taken.
    h.get_by_role_and_label(Role::Button, "Pause").click();
    h.run_ok();
    wait_until(&mut h, "the worker to confirm the pause", 120, |a| {
        a.panels.train.view.pause_taken
    });
    assert!(
        h.query_by_label_contains("paused at step").is_some(),
        "the top bar does not say paused"
    );
    assert!(h
        .query_by_label_contains("paused (Continue to go on)")
        .is_some());
    assert!(h.query_by_label_contains("tokens/s  ETA").is_none());
    let while_paused = h.state().panels.train.view.losses.len();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        h.state().panels.train.view.losses.len(),
        while_paused,
        "training went on while paused"
    );
    h.get_by_role_and_label(Role::Button, "Continue").click();
    h.run_ok();
    assert!(h.query_by_label_contains("paused at step").is_none());
    h.get_by_role_and_label(Role::Button, "Stop training")
        .click();
    h.run_ok();
    wait_until(&mut h, "the run to stop and the model to load", 240, |a| {
        !a.is_busy() && a.shared.session_info.is_some()
    });
    h.get_by_label("Log scale").click();
    h.run_ok();
    assert!(h.state().panels.train.view.log_scale);
    let steps = h.state().panels.train.view.losses.len();
    assert!(steps < 400, "cancel did not stop the run ({steps} steps)");
    assert!(matches!(
        h.state().panels.train.view.last,
        Some(selfret::train::TrainEvent::Finished {
            cancelled: true,
            ..
        })
    ));

    // Pseudo-queries: the loaded (tiny) model writes questions for a few passages; the kept
    // ones are saved as the query file training will use.
    h.get_by_label("Pseudo-queries (corpus without queries)")
        .click();
    h.run_ok();
    h.state_mut().panels.train.pseudo.opts.max_passages = 3;
    h.state_mut().panels.train.pseudo.opts.keep_top = 10;
    h.get_by_role_and_label(Role::Button, "Write pseudo-queries")
        .click();
    h.run_ok();
    wait_until(&mut h, "pseudo-queries", 120, |a| {
        !a.is_busy() && a.panels.train.pseudo.status.is_some()
    });
    let pseudo_file = run_dir.path().join("pseudo.jsonl");
    h.state_mut().panels.train.pseudo.path = pseudo_file.display().to_string();
    h.state_mut()
        .panels
        .train
        .pseudo
        .items
        .push(selfret::train::pseudo::PseudoQuery {
            query: selfret::train::data::Query {
                id: "typed".into(),
                question: "Who wrote the first web crawler?".into(),
                answers: vec![],
                positive_ids: vec!["web-crawlers-1".into()],
                answer_passage_ids: vec![],
                relevance: Default::default(),
            },
            rank: None,
            keep: true,
        });
    h.run_ok();
    h.get_by_role_and_label(Role::Button, "Save and train with them")
        .click();
    h.run_ok();
    let saved = selfret::train::data::load_queries(&pseudo_file).unwrap();
    assert!(saved
        .iter()
        .any(|q| q.question == "Who wrote the first web crawler?"));
    assert_eq!(
        h.state().shared.project.queries_path,
        pseudo_file.display().to_string()
    );

    // The model panel shows the loaded model's facts; the corpus panel the trie size.
    h.get_by_role_and_label(Role::Button, "Model").click();
    h.run_ok();
    assert!(h.query_by_label("parameters").is_some());
    // The trained run's model leaves as a Hugging Face folder.
    let hf = run_dir.path().join("hf");
    h.state_mut().panels.model.export_path = hf.display().to_string();
    h.get_by_role_and_label(Role::Button, "Export as Hugging Face folder")
        .click();
    h.run_ok();
    wait_until(&mut h, "the export", 120, |a| {
        !a.is_busy() && a.panels.model.export_status.is_some()
    });
    assert!(hf.join("model.safetensors").is_file() && hf.join("README.md").is_file());
    assert!(h
        .query_by_label_contains(&format!("wrote {}", hf.display()))
        .is_some());
    h.get_by_role_and_label(Role::Button, "Corpus").click();
    h.run_ok();
    assert!(h.query_by_label_contains("trie: 35 titles").is_some());

    // Query: ranked candidates and a score table.
    h.get_by_role_and_label(Role::Button, "Query").click();
    h.run_ok();
    assert_eq!(h.state().shared.project.panel, PanelKind::Query);
    h.get_by_label("Question").click();
    h.run_ok();
    h.get_by_label("Question").type_text("Who founded Google?");
    h.run_ok();
    // A budget below the demo corpus's 105 passages leaves some out, to explain below.
    h.state_mut().shared.project.retrieve.candidates = 100;
    h.get_by_role_and_label(Role::Button, "Search").click();
    h.run_ok();
    wait_until(&mut h, "the retrieval trace", 120, |a| {
        a.panels.query.trace_done && a.panels.query.trace.is_some()
    });
    let trace = h.state().panels.query.trace.clone().unwrap();
    assert!(!trace.ranking.is_empty());
    assert!(
        h.query_by_label("P(reject)").is_some(),
        "score table header missing"
    );
    assert!(h.query_by_label(&trace.ranking[0].passage_id).is_some());
    // The guide ticks training (a run was trained here) and querying.
    assert!(h.query_by_label(&tick(3, "Train")).is_some());
    assert!(h.query_by_label(&tick(4, "Query")).is_some());
    assert!(h.query_by_label(&tick(5, "Evaluate")).is_none());

    // Why not this passage? One the beams did not find is scored and placed in the ranking.
    let corpus = h.state().shared.corpus.clone().unwrap();
    let outsider = corpus
        .passages
        .iter()
        .find(|p| trace.candidates.iter().all(|c| c.passage_id != p.id))
        .map(|p| p.id.clone())
        .expect("a passage that is not a candidate");
    h.get_by_label("Passage id").click();
    h.run_ok();
    h.get_by_label("Passage id").type_text(&outsider);
    h.run_ok();
    h.get_by_role_and_label(Role::Button, "Why not this passage?")
        .click();
    h.run_ok();
    wait_until(&mut h, "the explanation", 120, |a| {
        !a.is_busy() && a.panels.query.explanation.is_some()
    });
    let e = h.state().panels.query.explanation.clone().unwrap();
    assert_eq!(e.passage_id, outsider);
    assert!(!e.was_candidate);
    let placed = e.placed.candidates.len();
    assert_eq!(placed, trace.candidates.len() + 1);
    assert!((1..=placed).contains(&e.rank));
    assert_eq!(e.placed.ranking[e.rank - 1].passage_id, outsider);
    assert!(h
        .query_by_label_contains(&format!("rank {} of {placed}", e.rank))
        .is_some());

    // Side by side with BM25: its top ten beside the model's, the overlap counted.
    h.get_by_label("Side by side with BM25").click();
    h.run_ok();
    wait_until(&mut h, "BM25's ranking", 60, |a| {
        !a.is_busy() && a.panels.query.bm25.is_some()
    });
    let (q, hits) = h.state().panels.query.bm25.clone().unwrap();
    assert_eq!(q, "Who founded Google?");
    assert_eq!(hits.len(), 10);
    assert!(h
        .query_by_label_contains("Side by side with BM25: ")
        .is_some());

    // A cited passage opens with the answer marked and a way back to the question.
    let ans = trace.answer.clone().expect("an answer");
    assert_eq!(ans.cited.len(), 1, "the answer cites its passage");
    h.get_by_label(&format!("[{}]", ans.cited[0])).click();
    h.run_ok();
    assert_eq!(h.state().shared.project.panel, PanelKind::Corpus);
    assert_eq!(
        h.state().panels.corpus.highlight.as_deref(),
        Some(ans.text.as_str())
    );
    h.get_by_label("Back to the query").click();
    h.run_ok();
    assert_eq!(h.state().shared.project.panel, PanelKind::Query);
    assert!(h.state().panels.query.trace.is_some());

    // Sort the score table by P(reject), then export the trace as JSON.
    h.get_by_label("P(reject)").click();
    h.run_ok();
    assert_eq!(h.state().panels.query.score_sort, (5, true));
    let export = run_dir.path().join("trace.json");
    h.state_mut().panels.query.export_path = export.display().to_string();
    h.get_by_role_and_label(Role::Button, "Export trace JSON")
        .click();
    h.run_ok();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    assert_eq!(json["query"], "Who founded Google?");
    assert!(json["ranking"].as_array().is_some_and(|r| !r.is_empty()));

    // Moving tau re-scores without the model (no job starts) and changes S_T.
    let before: Vec<f64> = trace.titles.iter().map(|t| t.s_t).collect();
    h.get_by_role_and_label(Role::Slider, "tau")
        .set_value_accesskit(4.0);
    h.run_ok();
    assert!(!h.state().is_busy());
    let after: Vec<f64> = h
        .state()
        .panels
        .query
        .trace
        .as_ref()
        .unwrap()
        .titles
        .iter()
        .map(|t| t.s_t)
        .collect();
    assert_eq!(h.state().panels.query.trace.as_ref().unwrap().tau, 4.0);
    if before.len() > 1 {
        assert_ne!(before, after, "tau did not change the title scores");
    }

    // Evaluate: Self-Retrieval and BM25 over a few demo queries, then click into one.
    h.get_by_role_and_label(Role::Button, "Evaluate").click();
    h.run_ok();
    h.state_mut().shared.project.eval.limit = 4;
    h.get_by_role_and_label(Role::Button, "Run evaluation")
        .click();
    h.run_ok();
    wait_until(&mut h, "evaluation results", 240, |a| {
        !a.is_busy() && !a.panels.evaluate.results.is_empty()
    });
    let systems: Vec<String> = h
        .state()
        .panels
        .evaluate
        .results
        .iter()
        .map(|s| s.system.clone())
        .collect();
    assert_eq!(systems, ["bm25", "self-retrieval"]);
    assert!(h.query_by_label("mrr@5").is_some());
    let first_q = h.state().panels.evaluate.results[1].queries[0]
        .question
        .clone();
    h.get_by_label(&first_q).click();
    h.run_ok();
    assert_eq!(h.state().shared.project.panel, PanelKind::Query);
    wait_until(&mut h, "the clicked query", 120, |a| {
        a.panels.query.trace_done
            && a.panels
                .query
                .trace
                .as_ref()
                .is_some_and(|t| t.query == first_q)
    });
    // The export note was about the earlier question's trace.
    assert!(h.query_by_label_contains("wrote ").is_none());
}

/// The window icon built into the binary decodes, is square and is not blank; the desktop entry
/// beside it names the program and the icon.
#[test]
fn the_window_has_an_icon_and_a_desktop_entry() {
    let icon = selfret::app::window_icon().expect("assets/icon.png decodes");
    assert_eq!((icon.width, icon.height), (128, 128));
    assert_eq!(icon.rgba.len(), 128 * 128 * 4);
    let opaque = icon.rgba.chunks(4).filter(|px| px[3] == 255).count();
    assert!(
        opaque > 128 * 128 / 2,
        "the icon is mostly transparent: {opaque} opaque pixels"
    );
    let entry = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/selfret.desktop"),
    )
    .expect("assets/selfret.desktop");
    for line in [
        "[Desktop Entry]",
        "Exec=selfret",
        "Icon=selfret",
        "Type=Application",
    ] {
        assert!(entry.lines().any(|l| l == line), "missing `{line}`");
    }
}

/// Start into a folder that holds a trained model asks first, and nothing trains until the
/// user chooses; "Use a new folder" then trains beside it and leaves the old one untouched.
#[test]
fn start_asks_before_training_over_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("run");
    std::fs::create_dir_all(old.join("checkpoint")).unwrap();
    std::fs::write(old.join("checkpoint/manifest.ron"), "(kept)").unwrap();
    let mut h = app_with_demo_corpus();
    h.get_by_role_and_label(Role::Button, "Train").click();
    h.run_ok();
    {
        let p = &mut h.state_mut().shared.project;
        p.model_source = "tiny".into();
        p.run_dir = old.display().to_string();
        p.epochs = 0.0;
        p.steps = 2;
        p.batch_tokens = 256;
        p.pseudo_per_passage = 0;
    }
    h.get_by_role_and_label(Role::Button, "Start").click();
    h.run_ok();
    assert!(
        !h.state().is_busy(),
        "nothing may train before the user chooses"
    );
    assert!(h.query_by_label("Overwrite").is_some());
    h.get_by_label("Use a new folder").click();
    h.run_ok();
    let fresh = dir.path().join("run-2");
    assert_eq!(
        h.state().shared.project.run_dir,
        fresh.display().to_string()
    );
    wait_until(&mut h, "the new run", 120, |a| !a.is_busy());
    assert!(
        fresh.join("checkpoint/manifest.ron").is_file(),
        "{:?}",
        h.state().shared.errors
    );
    assert_eq!(
        std::fs::read_to_string(old.join("checkpoint/manifest.ron")).unwrap(),
        "(kept)"
    );
}

/// An evaluation whose query file names passages the corpus lacks says so in the Evaluate
/// panel, naming them, and scores the rest.
#[test]
fn evaluate_names_gold_ids_missing_from_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("q.jsonl");
    std::fs::write(
        &queries,
        "{\"id\":\"q1\",\"question\":\"Who proposed inverse document frequency?\",\"positive_ids\":[\"tf-idf-1\"]}\n\
         {\"id\":\"q2\",\"question\":\"What is missing here?\",\"positive_ids\":[\"no-such-passage\"]}\n",
    )
    .unwrap();
    let mut h = app_with_demo_corpus();
    h.get_by_role_and_label(Role::Button, "Evaluate").click();
    h.run_ok();
    {
        let e = &mut h.state_mut().shared.project.eval;
        e.queries_path = queries.display().to_string();
        e.self_retrieval = false;
        e.bm25 = true;
        e.dense = false;
        e.reader = false;
        e.limit = 0;
    }
    h.get_by_role_and_label(Role::Button, "Run evaluation")
        .click();
    h.run_ok();
    wait_until(&mut h, "the BM25 results", 60, |a| {
        !a.is_busy() && !a.panels.evaluate.results.is_empty()
    });
    assert!(h.query_by_label_contains("no-such-passage").is_some());
    assert_eq!(
        h.state().panels.evaluate.results[0].metrics["unscorable"],
        1.0
    );
}

/// A failed evaluation keeps the previous table; its error is shown in the Evaluate panel only
/// (the side bar marks the panel), in the app's wording with the path, and Dismiss closes it.
#[test]
fn a_failed_evaluation_keeps_the_previous_table_and_its_error_can_be_dismissed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app_with_demo_corpus();
    h.get_by_role_and_label(Role::Button, "Evaluate").click();
    h.run_ok();
    {
        let e = &mut h.state_mut().shared.project.eval;
        e.self_retrieval = false;
        e.bm25 = true;
        e.dense = false;
        e.reader = false;
        e.limit = 5;
    }
    h.get_by_role_and_label(Role::Button, "Run evaluation")
        .click();
    h.run_ok();
    wait_until(&mut h, "the BM25 results", 60, |a| {
        !a.is_busy() && !a.panels.evaluate.results.is_empty()
    });
    let first = h.state().panels.evaluate.results.clone();

    let missing = dir.path().join("missing.jsonl");
    h.state_mut().shared.project.eval.queries_path = missing.display().to_string();
    h.get_by_role_and_label(Role::Button, "Run evaluation")
        .click();
    h.run_ok();
    wait_until(&mut h, "the failed run", 60, |a| !a.is_busy());
    assert_eq!(h.state().panels.evaluate.results, first);
    assert!(h.query_by_label("mrr@5").is_some(), "the table is gone");
    let wording = format!("error: {}: no such file or folder", missing.display());
    assert!(h.query_by_label(&wording).is_some(), "no `{wording}`");
    assert!(h.query_by_label_contains("the last one failed").is_some());

    // Another panel does not show it; the side bar marks the Evaluate panel.
    h.get_by_role_and_label(Role::Button, "Corpus").click();
    h.run_ok();
    assert!(h.query_by_label(&wording).is_none());
    assert!(h.query_by_label("(!)").is_some());

    h.get_by_role_and_label(Role::Button, "Evaluate").click();
    h.run_ok();
    h.get_by_role_and_label(Role::Button, "Dismiss").click();
    h.run_ok();
    assert!(h.query_by_label(&wording).is_none());
    assert!(h.query_by_label("(!)").is_none());
    assert!(h.state().shared.errors.is_empty());
}

/// The ranking's symbols explain themselves: hovering tau, delta, the title prior or the answer
/// passages shows a plain tooltip that is not there before.
#[test]
fn the_ranking_sliders_have_plain_tooltips() {
    let mut h = app_with_demo_corpus();
    h.get_by_role_and_label(Role::Button, "Query").click();
    h.run_ok();
    for (slider, words) in [
        ("tau", "lower trusts the model's top title more"),
        ("delta", "verdict (can this passage answer the question?)"),
        (
            "title prior",
            "a title it writes whatever is asked is discounted",
        ),
        ("answer passages", "it copies the answer from one of them"),
    ] {
        assert!(
            h.query_by_label_contains(words).is_none(),
            "the {slider} tooltip shows before hovering"
        );
        h.get_by_role_and_label(Role::Slider, slider).hover();
        // Past the tooltip delay (each step is a quarter second).
        h.run_steps(4);
        assert!(
            h.query_by_label_contains(words).is_some(),
            "hovering {slider} shows no tooltip"
        );
    }
}

/// A project file whose temperature is NaN parses as RON but cannot rank: Open project refuses
/// it, naming the file and the field, and keeps the project that was open; the same file with a
/// sound tau then opens.
#[test]
fn a_project_file_with_a_nan_tau_is_refused_and_the_open_project_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("project.ron");
    let mut h = app_with_demo_corpus();
    h.state_mut().project_file = file.display().to_string();
    h.get_by_role_and_label(Role::Button, "Save project")
        .click();
    h.run_ok();
    let saved = std::fs::read_to_string(&file).expect("the project was saved");
    let tau_line = saved
        .lines()
        .find(|l| l.trim_start().starts_with("tau:"))
        .expect("the project file names tau");
    let tau_before = h.state().shared.project.retrieve.tau;

    std::fs::write(&file, saved.replace(tau_line, "        tau: NaN,")).unwrap();
    h.state_mut().shared.project.steps = 123;
    h.get_by_role_and_label(Role::Button, "Open project")
        .click();
    h.run_ok();
    let e = h
        .state()
        .shared
        .errors
        .get(selfret::app::ErrorPlace::Project)
        .expect("a NaN tau must be refused")
        .to_string();
    assert!(
        e.contains("project.ron") && e.contains("tau must be a finite number"),
        "{e}"
    );
    assert_eq!(
        h.state().shared.project.steps,
        123,
        "the open project was replaced"
    );
    assert_eq!(h.state().shared.project.retrieve.tau, tau_before);

    std::fs::write(&file, saved.replace(tau_line, "        tau: 0.5,")).unwrap();
    h.get_by_role_and_label(Role::Button, "Open project")
        .click();
    h.run_ok();
    assert!(h
        .state()
        .shared
        .errors
        .get(selfret::app::ErrorPlace::Project)
        .is_none());
    assert_eq!(h.state().shared.project.retrieve.tau, 0.5);
    assert_ne!(h.state().shared.project.steps, 123);
}

#[test]
fn a_docid_run_trains_from_the_train_panel_and_answers_with_docid_paths() {
    let run_dir = tempfile::tempdir().unwrap();
    let mut h = app_with_demo_corpus();
    h.get_by_role_and_label(Role::Button, "Train").click();
    h.run_ok();
    h.get_by_label("semantic docids (Retrieval as Reasoning)")
        .click();
    h.run_ok();
    assert!(h.state().shared.project.retrieve_by_docids);
    {
        let app = h.state_mut();
        let p = &mut app.shared.project;
        p.model_source = "tiny".into();
        p.queries_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpora/ir_history.queries.jsonl")
            .display()
            .to_string();
        p.run_dir = run_dir.path().join("docids").display().to_string();
        p.epochs = 0.0;
        p.steps = 30;
        p.lr = 1e-3;
        p.pseudo_per_passage = 0;
    }
    h.get_by_role_and_label(Role::Button, "Start").click();
    h.run_ok();
    wait_until(&mut h, "the docid run and its model", 900, |a| {
        !a.is_busy()
            && a.shared
                .session
                .as_ref()
                .is_some_and(|s| s.docid_tree.is_some())
    });
    assert!(run_dir.path().join("docids/docids.json").is_file());

    // The Corpus panel browses the docid tree.
    h.get_by_role_and_label(Role::Button, "Corpus").click();
    h.run_ok();
    h.get_by_label("Docid tree").click();
    h.run_ok();
    assert!(h.query_by_label_contains("passages in").is_some());

    // The Query panel draws the docid beams as paths with their clusters' labels.
    h.get_by_role_and_label(Role::Button, "Query").click();
    h.run_ok();
    h.get_by_label("Question").click();
    h.run_ok();
    h.get_by_label("Question")
        .type_text("Who proposed inverse document frequency?");
    h.run_ok();
    h.get_by_role_and_label(Role::Button, "Search").click();
    h.run_ok();
    wait_until(&mut h, "the docid beams", 60, |a| {
        a.panels.query.docid_trace.is_some()
    });
    let trace = h.state().panels.query.docid_trace.clone().unwrap();
    assert_eq!(trace.beams.len(), 10);
    assert!(h.query_by_label_contains("Docid beams for").is_some());
    let first = &trace.beams[0];
    assert!(h
        .query_by_label_contains(&format!("1. {}  {}", first.docid, first.passage_id))
        .is_some());
    assert!(h.query_all_by_label_contains("level 0 index").count() >= 3);

    // Stage 2 continues the stage-1 run from the Train panel into a run of its own.
    h.get_by_role_and_label(Role::Button, "Train").click();
    h.run_ok();
    h.get_by_label("2: LoRA + answers from drawn docids")
        .click();
    h.run_ok();
    assert!(h.state().shared.project.docid_stage2);
    assert!(h
        .query_by_role_and_label(Role::Button, "Browse stage-1 run")
        .is_some());
    {
        let p = &mut h.state_mut().shared.project;
        p.docid_stage1_run = run_dir.path().join("docids").display().to_string();
        p.run_dir = run_dir.path().join("stage2").display().to_string();
        p.steps = 10;
    }
    h.get_by_role_and_label(Role::Button, "Start").click();
    h.run_ok();
    wait_until(&mut h, "the stage-2 run", 900, |a| {
        !a.is_busy()
            && run_dir
                .path()
                .join("stage2/checkpoint/manifest.ron")
                .is_file()
    });
    let drawn = selfret::worker::docid_run::read_drawn(&run_dir.path().join("stage2"))
        .unwrap()
        .expect("the draws are kept in the run");
    // Every training question has answers; the panel's runs hold 8 out for the live probe.
    assert_eq!(drawn.len(), 52);
    assert!(drawn.iter().all(|d| d.drawn.len() == 3));
    let m = selfret::worker::index::RunManifest::read(&run_dir.path().join("stage2")).unwrap();
    let stage2 = m.spec.docids.and_then(|d| d.stage2).expect("a stage-2 run");
    assert_eq!(
        stage2.from,
        std::path::absolute(run_dir.path().join("docids")).unwrap()
    );
}
