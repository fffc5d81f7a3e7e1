//! Training runs on the tiny model: losses fall on every task, cancel + resume reproduces an
//! uninterrupted run, and an interrupted checkpoint write never leaves an unloadable run.

use candle_core::Device;
use selfret::corpus::{load_path, Corpus, LoadOptions};
use selfret::model::source::tiny::{self, TinyOptions};
use selfret::model::{ModelBundle, ModelSource, TrainMode};
use selfret::prompts::PromptCodec;
use selfret::train::data::{load_queries, TargetLength};
use selfret::train::{
    train, DataBuilder, DataOptions, Example, NoControl, Task, TrainConfig, TrainControl,
    TrainEvent,
};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn demo_corpus() -> Corpus {
    load_path(
        &root().join("corpora/ir_history.jsonl"),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn opts() -> TinyOptions {
    TinyOptions {
        vocab_size: 700,
        hidden_size: 128,
        layers: 2,
        seed: 5,
    }
}

/// A fresh tiny model built from the corpus, trained whole.
fn tiny_bundle(corpus: &Corpus) -> ModelBundle {
    let w = tiny::build(corpus.texts(), &opts(), &Device::Cpu).unwrap();
    ModelBundle::from_weights(w, ModelSource::Tiny, TrainMode::Full, &Device::Cpu).unwrap()
}

fn examples(corpus: &Corpus, b: &ModelBundle) -> Vec<Example> {
    let codec = PromptCodec::new(&b.tokenizer, b.special.eos).unwrap();
    let builder = DataBuilder {
        tokenizer: &b.tokenizer,
        codec: &codec,
        corpus,
        opts: DataOptions {
            target: TargetLength::FirstWords(16),
            negatives: 1,
            ..Default::default()
        },
    };
    let queries = load_queries(&root().join("corpora/ir_history.queries.jsonl")).unwrap();
    let mut ex = builder.indexing().unwrap();
    ex.extend(builder.retrieval(&queries).unwrap());
    ex.extend(builder.assessment(&queries, &Default::default()).unwrap());
    ex.extend(builder.reading(&queries).unwrap());
    ex
}

fn losses_of(events: &[TrainEvent]) -> Vec<(usize, Task, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step {
                step, task, loss, ..
            } => Some((*step, *task, *loss)),
            _ => None,
        })
        .collect()
}

#[test]
fn loss_falls_on_every_task() {
    let corpus = demo_corpus();
    let mut b = tiny_bundle(&corpus);
    let ex = examples(&corpus, &b);
    let cfg = TrainConfig {
        steps: 220,
        lr: 3e-3,
        batch_tokens: 1024,
        mix: selfret::train::TaskMix {
            reading: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut events = Vec::new();
    train(&mut b, &ex, &cfg, None, &mut NoControl, &mut |e| {
        events.push(e)
    })
    .unwrap();
    let l = losses_of(&events);
    for task in Task::ALL {
        let per: Vec<f64> = l.iter().filter(|x| x.1 == task).map(|x| x.2).collect();
        assert!(per.len() >= 20, "{task:?} got {} steps", per.len());
        let first: f64 = per[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = per[per.len() - 5..].iter().sum::<f64>() / 5.0;
        eprintln!("{}: {first:.3} -> {last:.3}", task.name());
        assert!(last < 0.5 * first, "{task:?} loss {first} -> {last}");
    }
}

/// The reading task trains exactly the rows the query likelihood reads: the passage in the
/// question prompt, then the question's tokens (and the end of text), one per gold passage.
#[test]
fn reading_examples_are_the_rows_the_query_likelihood_reads() {
    use selfret::retrieve::likelihood::{question_ids, reading_prompt};
    let corpus = demo_corpus();
    let b = tiny_bundle(&corpus);
    let queries = load_queries(&root().join("corpora/ir_history.queries.jsonl")).unwrap();
    let reading: Vec<Example> = examples(&corpus, &b)
        .into_iter()
        .filter(|e| e.task == Task::Reading)
        .collect();
    let golds: Vec<(&str, usize)> = queries
        .iter()
        .flat_map(|q| {
            q.positive_ids
                .iter()
                .filter_map(|id| corpus.index_of(id))
                .map(move |p| (q.question.as_str(), p))
        })
        .collect();
    assert_eq!(reading.len(), golds.len());
    assert!(!reading.is_empty());
    for (e, (question, p)) in reading.iter().zip(golds) {
        let passage = &corpus.passages[p];
        let prompt = reading_prompt(&b.tokenizer, &passage.title, &passage.text).unwrap();
        let mut target = question_ids(&b.tokenizer, question).unwrap();
        target.push(b.special.eos);
        assert_eq!(&e.ids[..e.target_start], prompt.as_slice());
        assert_eq!(&e.ids[e.target_start..], target.as_slice());
    }
}

struct CancelAt(usize, usize);
impl TrainControl for CancelAt {
    fn should_cancel(&mut self) -> bool {
        self.1 += 1;
        self.1 > self.0
    }
}

#[test]
fn cancel_then_resume_matches_an_uninterrupted_run() {
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    // One initial model, saved, so both runs start from identical weights and tokenizer.
    let b0 = tiny_bundle(&corpus);
    let init = dir.path().join("init");
    b0.save(&init, None, Default::default()).unwrap();
    let ex = examples(&corpus, &b0);
    let cfg = TrainConfig {
        steps: 24,
        lr: 2e-3,
        batch_tokens: 768,
        ..Default::default()
    };

    let mut full =
        ModelBundle::load_checkpoint(&init, Some(TrainMode::Full), &Device::Cpu).unwrap();
    let mut ev_full = Vec::new();
    let out_full = dir.path().join("full");
    train(
        &mut full,
        &ex,
        &cfg,
        Some(&out_full),
        &mut NoControl,
        &mut |e| ev_full.push(e),
    )
    .unwrap();

    let out = dir.path().join("interrupted");
    let mut part =
        ModelBundle::load_checkpoint(&init, Some(TrainMode::Full), &Device::Cpu).unwrap();
    let mut ev1 = Vec::new();
    train(
        &mut part,
        &ex,
        &cfg,
        Some(&out),
        &mut CancelAt(10, 0),
        &mut |e| ev1.push(e),
    )
    .unwrap();
    assert!(matches!(
        ev1.last(),
        Some(TrainEvent::Finished {
            step: 10,
            cancelled: true
        })
    ));
    drop(part);
    // The cancelled run left a loadable checkpoint at step 10; resume it to the end.
    let mut resumed = ModelBundle::load_checkpoint(&out, None, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 10);
    // The learning-curve clock is kept with the checkpoint, and a resume continues it.
    let clock_at_10 = resumed.training_seconds;
    assert!(clock_at_10 > 0.0, "the checkpoint keeps the training clock");
    let mut ev2 = Vec::new();
    train(
        &mut resumed,
        &ex,
        &cfg,
        Some(&out),
        &mut NoControl,
        &mut |e| ev2.push(e),
    )
    .unwrap();
    let finished = ModelBundle::load_checkpoint(&out, None, &Device::Cpu).unwrap();
    assert!(
        finished.training_seconds > clock_at_10,
        "the resume's clock starts at the checkpoint's: {} after {clock_at_10}",
        finished.training_seconds
    );
    let l_full = losses_of(&ev_full);
    let mut l_split = losses_of(&ev1);
    l_split.extend(losses_of(&ev2));
    assert_eq!(l_split.first().map(|x| x.0), Some(1));
    assert_eq!(
        l_split.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<_>>()
    );
    for (a, b) in l_full.iter().zip(&l_split) {
        assert_eq!(a.1, b.1, "different batches at step {}", a.0);
        assert!(
            (a.2 - b.2).abs() < 1e-3 * a.2.max(1.0),
            "step {}: {} vs {}",
            a.0,
            a.2,
            b.2
        );
    }
}

#[test]
fn interrupted_checkpoint_write_leaves_the_run_loadable() {
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_bundle(&corpus);
    let ckpt = dir.path().join("checkpoint");
    b.step = 7;
    b.save(&ckpt, None, Default::default()).unwrap();
    // A crash while writing the next checkpoint: a half-written folder beside the real one and a
    // half-written weights file (as the atomic writers name their temporaries).
    let partial = dir.path().join("checkpoint.tmp-99999");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(
        partial.join("model.safetensors"),
        b"\x10\x00\x00\x00partial",
    )
    .unwrap();
    std::fs::write(ckpt.join("model.safetensors.tmp-99999"), b"half").unwrap();
    let re = ModelBundle::load_checkpoint(&ckpt, None, &Device::Cpu).unwrap();
    assert_eq!(re.step, 7);
    // And the next save still succeeds and replaces the checkpoint.
    b.step = 8;
    b.save(&ckpt, None, Default::default()).unwrap();
    assert_eq!(
        ModelBundle::load_checkpoint(&ckpt, None, &Device::Cpu)
            .unwrap()
            .step,
        8
    );
}

/// A run with queries mines assessment negatives from the model's own wrong retrievals (kept in
/// the run for resume), holds out queries, and reports Hits@1/@5 through the retrieval path at
/// each evaluation; an epoch budget is turned into steps.
#[test]
fn run_mines_negatives_and_reports_hits_during_training() {
    use selfret::worker::index::{run_index, IndexSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = IndexSpec::new(root().join("corpora/ir_history.jsonl"), ModelSource::Tiny);
    spec.tiny = opts();
    spec.queries = Some(root().join("corpora/ir_history.queries.jsonl"));
    spec.data.mine_queries = 6;
    spec.data.sentences_per_passage = 1;
    spec.train.eval_every = 2;
    spec.train.eval_queries = 4;
    spec.train.epochs = Some(0.05);
    spec.train.batch_tokens = 512;
    let run = dir.path().join("run");
    let mut events = Vec::new();
    run_index(
        &spec,
        &run,
        false,
        &mut NoControl,
        &mut |e| events.push(e),
        None,
    )
    .unwrap();

    // The run's log replays every event (the app redraws an opened run's curves from it).
    let history = selfret::worker::index::read_history(&run);
    assert_eq!(history.len(), events.len());
    assert!(matches!(history.last(), Some(TrainEvent::Finished { .. })));
    let mined: std::collections::HashMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(run.join("mined_negatives.json")).unwrap())
            .unwrap();
    assert!(!mined.is_empty(), "no negatives mined");
    let queries = load_queries(spec.queries.as_ref().unwrap()).unwrap();
    for (question, ids) in &mined {
        let q = queries.iter().find(|q| &q.question == question).unwrap();
        assert!(ids.iter().all(|id| !q.positive_ids.contains(id)));
    }
    let Some(TrainEvent::Started { total_steps, .. }) = events.first() else {
        panic!("no start event");
    };
    assert!(*total_steps >= 1);
    let manifest = std::fs::read_to_string(run.join("run.ron")).unwrap();
    assert!(manifest.contains(&format!("steps: {total_steps},")));
    let hits: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Eval { metrics, .. } => metrics.get("hits@1").copied(),
            _ => None,
        })
        .collect();
    if *total_steps >= 2 {
        assert!(!hits.is_empty(), "no Hits@1 during training");
        assert!(hits.iter().all(|h| (0.0..=1.0).contains(h)));
    }
}

/// Examples cut at `max_len` before their target starts are left out instead of producing a
/// batch with no loss (a real SQuAD run stopped on one).
#[test]
fn examples_without_target_inside_max_len_are_skipped() {
    let corpus = demo_corpus();
    let mut b = tiny_bundle(&corpus);
    let mut ex: Vec<Example> = examples(&corpus, &b).into_iter().take(20).collect();
    for k in 0..30u32 {
        ex.push(Example {
            task: Task::Assessment,
            ids: (0..300).map(|i| (i * 7 + k) % 600 + 1).collect(),
            target_start: 290,
        });
    }
    let cfg = TrainConfig {
        steps: 6,
        batch_tokens: 1024,
        max_len: 128,
        ..Default::default()
    };
    let mut events = Vec::new();
    train(&mut b, &ex, &cfg, None, &mut NoControl, &mut |e| {
        events.push(e)
    })
    .unwrap();
    let steps = losses_of(&events);
    assert_eq!(steps.len(), 6);
    assert!(steps
        .iter()
        .all(|(_, t, l)| *t != Task::Assessment && l.is_finite()));
}

/// Corrupt or missing checkpoints are refused with the reason, never trained over: weight
/// bytes overwritten behind an intact header (NaN), a manifest that does not parse or is
/// missing, a weights file cut short, and a resume with nothing to resume from.
#[test]
fn corrupt_checkpoints_and_empty_resumes_are_refused() {
    use selfret::model::checkpoint::Manifest;
    use selfret::worker::index::{run_index, IndexSpec};
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    let b = tiny_bundle(&corpus);
    let good = dir.path().join("good");
    b.save(&good, None, Default::default()).unwrap();

    // NaN weights: the bytes after the safetensors header set to 0xff.
    let nan = dir.path().join("nan");
    copy_dir(&good, &nan);
    overwrite_tensor_bytes(&nan.join("model.safetensors"), 0xff);
    let e = ModelBundle::load_checkpoint(&nan, None, &Device::Cpu)
        .err()
        .expect("NaN weights must be refused")
        .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("model.safetensors"),
        "{e}"
    );
    // A checkpoint from before checksums were kept: the values themselves are checked.
    let mut manifest = Manifest::read(&nan).unwrap();
    manifest.checksums.clear();
    std::fs::write(nan.join("manifest.ron"), manifest.to_ron()).unwrap();
    let e = ModelBundle::load_checkpoint(&nan, None, &Device::Cpu)
        .err()
        .expect("NaN weights must be refused")
        .to_string();
    assert!(
        e.contains("non-finite") && e.contains("model.safetensors"),
        "{e}"
    );
    // The good checkpoint still loads.
    assert!(ModelBundle::load_checkpoint(&good, None, &Device::Cpu).is_ok());

    // A manifest that does not parse.
    std::fs::copy(
        good.join("model.safetensors"),
        nan.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(nan.join("manifest.ron"), "(garbage").unwrap();
    let e = ModelBundle::load_checkpoint(&nan, None, &Device::Cpu)
        .err()
        .expect("a garbage manifest must be refused")
        .to_string();
    assert!(e.contains("manifest.ron"), "{e}");

    // A weights file cut short (a copy interrupted, a full disk) and a folder whose manifest
    // is missing: both refused naming the file; the good checkpoint is untouched and loads.
    let cut = dir.path().join("cut");
    copy_dir(&good, &cut);
    let bytes = std::fs::read(cut.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let Err(e) = ModelBundle::load_checkpoint(&cut, None, &Device::Cpu) else {
        panic!("a truncated weights file must be refused");
    };
    let e = e.to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // (A full-weights checkpoint without it is a plain model folder and loads as one; adapters
    // without the manifest that names their rank and targets cannot.)
    let w = tiny::build(corpus.texts(), &opts(), &Device::Cpu).unwrap();
    let lora = TrainMode::Lora(selfret::model::LoraConfig {
        rank: 4,
        ..Default::default()
    });
    let bare = dir.path().join("bare");
    ModelBundle::from_weights(w, ModelSource::Tiny, lora, &Device::Cpu)
        .unwrap()
        .save(&bare, None, Default::default())
        .unwrap();
    assert!(ModelBundle::load_checkpoint(&bare, None, &Device::Cpu).is_ok());
    std::fs::remove_file(bare.join("manifest.ron")).unwrap();
    let Err(e) = ModelBundle::load_checkpoint(&bare, None, &Device::Cpu) else {
        panic!("a checkpoint without its manifest must be refused");
    };
    let e = e.to_string();
    assert!(e.contains("manifest.ron"), "{e}");
    assert!(ModelBundle::load_checkpoint(&good, None, &Device::Cpu).is_ok());

    // Resume of a run that has no checkpoint.
    let mut spec = IndexSpec::new(root().join("corpora/ir_history.jsonl"), ModelSource::Tiny);
    spec.tiny = opts();
    spec.train.steps = 2;
    let run = dir.path().join("empty-run");
    let Err(e) = run_index(&spec, &run, true, &mut NoControl, &mut |_| {}, None) else {
        panic!("a resume without a checkpoint must fail");
    };
    let e = e.to_string();
    assert!(e.contains("nothing to resume"), "{e}");
    assert!(
        !run.join("checkpoint").exists(),
        "a resume must not start over"
    );
}

/// Overwrites the tensor bytes of a safetensors file (after its header) with `byte`.
fn overwrite_tensor_bytes(path: &Path, byte: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for x in &mut bytes[8 + header..] {
        *x = byte;
    }
    std::fs::write(path, &bytes).unwrap();
}

/// Copies a checkpoint folder's files.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// Bytes that decode as finite numbers (0x41 repeated reads as 12.07) pass any check of the
/// values: the checksums the manifest keeps refuse them, in the weights, the adapters and the
/// optimiser state, and a resume over a corrupt optimiser leaves the checkpoint as it was.
#[test]
fn finite_garbage_in_any_checkpoint_file_is_refused() {
    use selfret::model::LoraConfig;
    use selfret::worker::index::{run_index, IndexSpec};
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    let w = tiny::build(corpus.texts(), &opts(), &Device::Cpu).unwrap();
    let lora = TrainMode::Lora(LoraConfig {
        rank: 4,
        ..Default::default()
    });
    let b = ModelBundle::from_weights(w, ModelSource::Tiny, lora, &Device::Cpu).unwrap();
    let good = dir.path().join("good");
    b.save(&good, None, Default::default()).unwrap();
    assert!(ModelBundle::load_checkpoint(&good, None, &Device::Cpu).is_ok());
    for file in ["model.safetensors", "adapter.safetensors"] {
        let bad = dir.path().join(format!("bad-{file}"));
        copy_dir(&good, &bad);
        overwrite_tensor_bytes(&bad.join(file), 0x41);
        let Err(e) = ModelBundle::load_checkpoint(&bad, None, &Device::Cpu) else {
            panic!("garbage in {file} must be refused");
        };
        let e = e.to_string();
        assert!(e.contains("checksum mismatch") && e.contains(file), "{e}");
    }
    // A checkpoint opened as a plain model folder would load unverified and without its
    // adapters: refused, pointing at the run.
    let folder_error = |dir: &Path| {
        let Err(e) = selfret::model::source::load_weights(
            &ModelSource::HfFolder(dir.into()),
            &Device::Cpu,
            None,
        ) else {
            panic!("{} must be refused as a model folder", dir.display());
        };
        e.to_string()
    };
    let e = folder_error(&good);
    assert!(e.contains("selfret checkpoint"), "{e}");
    // A plain Hugging Face folder (no checksums) with finite garbage in its weights.
    let plain = dir.path().join("plain");
    copy_dir(&good, &plain);
    std::fs::remove_file(plain.join("manifest.ron")).unwrap();
    std::fs::remove_file(plain.join("adapter.safetensors")).unwrap();
    overwrite_tensor_bytes(&plain.join("model.safetensors"), 0x7f);
    let e = folder_error(&plain);
    assert!(e.contains("non-finite"), "{e}");

    // A run whose optimiser state is then overwritten: the resume refuses, nothing is written.
    let mut spec = IndexSpec::new(root().join("corpora/ir_history.jsonl"), ModelSource::Tiny);
    spec.tiny = opts();
    spec.train.steps = 3;
    spec.train.batch_tokens = 512;
    spec.pseudo = None;
    let run = dir.path().join("run");
    run_index(&spec, &run, false, &mut NoControl, &mut |_| {}, None).unwrap();
    let ckpt = run.join("checkpoint");
    overwrite_tensor_bytes(&ckpt.join("optimizer.safetensors"), 0x41);
    let before = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    spec.train.steps = 5;
    let Err(e) = run_index(&spec, &run, true, &mut NoControl, &mut |_| {}, None) else {
        panic!("a resume over a corrupt optimiser state must fail");
    };
    let e = e.to_string();
    assert!(
        e.contains("optimizer.safetensors") && e.contains("checksum"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        before
    );
}

/// A learning rate that blows the weights up: training stops with a named error at the first
/// non-finite loss or gradient, and the checkpoint left behind is one of finite weights that
/// loads and verifies (nothing is saved after the divergence).
#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    use selfret::worker::index::{run_index, IndexSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = IndexSpec::new(root().join("corpora/ir_history.jsonl"), ModelSource::Tiny);
    spec.tiny = opts();
    spec.train.steps = 3;
    spec.train.clip = None;
    spec.train.batch_tokens = 512;
    spec.train.checkpoint_every = 1;
    spec.pseudo = None;
    let run = dir.path().join("run");
    run_index(&spec, &run, false, &mut NoControl, &mut |_| {}, None)
        .expect("three ordinary steps train");
    let ckpt = run.join("checkpoint");
    let good = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    // The same run resumed with a learning rate that blows the weights up.
    spec.train.steps = 40;
    spec.train.lr = 1e12;
    let Err(e) = run_index(&spec, &run, true, &mut NoControl, &mut |_| {}, None) else {
        panic!("a learning rate of 1e12 must diverge");
    };
    let e = e.to_string();
    assert!(e.contains("non-finite") || e.contains("loss became"), "{e}");
    let b = ModelBundle::load_checkpoint(&ckpt, None, &Device::Cpu)
        .expect("the checkpoint left behind loads and verifies");
    assert!(b.step >= 3 && b.step < 40, "step {}", b.step);
    if b.step == 3 {
        assert_eq!(
            std::fs::read(ckpt.join("model.safetensors")).unwrap(),
            good,
            "the good checkpoint is untouched"
        );
    }
}

/// The command line refuses what would train nothing or rank with broken temperatures, before
/// any work: a resume budget the run has already spent, NaN or negative tau and delta (in
/// `query` and `eval`), zero beams, an empty question.
#[test]
fn the_cli_refuses_budgets_and_parameters_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let bin = env!("CARGO_BIN_EXE_selfret");
    let corpus = root().join("corpora/ir_history.jsonl");
    let selfret = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let run_s = run.to_str().unwrap();
    let corpus_s = corpus.to_str().unwrap();
    let train_queries = root().join("corpora/ir_history.queries.jsonl");
    let queries_s = train_queries.to_str().unwrap();
    let (ok, err) = selfret(&[
        "index",
        "--corpus",
        corpus_s,
        "--model",
        "tiny",
        "--out",
        run_s,
        "--steps",
        "3",
        "--batch-tokens",
        "512",
        "--pseudo-per-passage",
        "0",
        "--queries",
        queries_s,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("loaded 105 passages"),
        "the load report: {err}"
    );
    // The run's exact training examples, exported: as many as the training started with.
    let data = dir.path().join("data.jsonl");
    let (ok, err) = selfret(&[
        "export-data",
        "--run",
        run_s,
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let history = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let started: serde_json::Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len() as u64,
        started["Started"]["examples"].as_u64().unwrap()
    );
    for l in &lines {
        assert!(["indexing", "retrieval", "assessment", "reading"]
            .contains(&l["task"].as_str().unwrap()));
        assert!(!l["completion"].as_str().unwrap().is_empty());
        assert!(l["completion_tokens"].as_u64().unwrap() >= 1);
    }
    assert!(lines.iter().any(|l| l["task"] == "retrieval"));
    let (ok, err) = selfret(&[
        "export-data",
        "--run",
        run_s,
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("exists"), "{err}");
    // "Why not this passage?" from the command line.
    let out = std::process::Command::new(bin)
        .args([
            "query",
            "--run",
            run_s,
            "card catalogues",
            "--explain",
            "card-catalogues-3",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("why not card-catalogues-3") && stdout.contains(" rank "),
        "{stdout}"
    );
    let (ok, err) = selfret(&[
        "index", "--corpus", corpus_s, "--out", run_s, "--resume", "--steps", "2",
    ]);
    assert!(!ok && err.contains("already taken 3 steps"), "{err}");
    // A finished run resumed with no new budget (or one of epochs it has already spent).
    for extra in [vec![], vec!["--epochs", "0.01"]] {
        let mut args = vec!["index", "--corpus", corpus_s, "--out", run_s, "--resume"];
        args.extend(extra.iter().copied());
        let (ok, err) = selfret(&args);
        assert!(
            !ok && err.contains("would train nothing"),
            "{extra:?}: {err}"
        );
    }
    // A corpus with a broken line: eval names it on stderr and goes on with the rest.
    let broken = dir.path().join("broken.jsonl");
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    text.insert_str(
        text.find('\n').unwrap() + 1,
        "{\"id\": \"x\", \"title\": \n",
    );
    std::fs::write(&broken, text).unwrap();
    let dev = root().join("corpora/ir_history.dev.jsonl");
    let (ok, err) = selfret(&[
        "eval",
        "--corpus",
        broken.to_str().unwrap(),
        "--queries",
        dev.to_str().unwrap(),
        "--baselines",
        "bm25",
        "--limit",
        "2",
    ]);
    assert!(
        ok && err.contains("loaded 105 passages")
            && err.contains("skipped 1")
            && err.contains("broken.jsonl:2"),
        "{err}"
    );
    // A query file none of whose gold passages is in the corpus: refused, not a table of 0s.
    let foreign = dir.path().join("foreign.jsonl");
    std::fs::write(
        &foreign,
        "{\"question\":\"a?\",\"positive_ids\":[\"nowhere-1\"]}\n",
    )
    .unwrap();
    let (ok, err) = selfret(&[
        "eval",
        "--run",
        run_s,
        "--queries",
        foreign.to_str().unwrap(),
        "--baselines",
        "bm25",
    ]);
    assert!(
        !ok && err.contains("foreign.jsonl") && err.contains("none of the 1 queries"),
        "{err}"
    );
    for bad in [
        vec!["--tau", "NaN"],
        vec!["--tau=-1"],
        vec!["--delta", "inf"],
        vec!["--delta", "NaN"],
        vec!["--delta=-5"],
        vec!["--titles", "0"],
        vec!["--passages", "0"],
    ] {
        let mut args = vec!["query", "--run", run_s, "card catalogues"];
        args.extend(bad.iter().copied());
        let (ok, err) = selfret(&args);
        assert!(
            !ok && (err.contains("must be") || err.contains("at least 1")),
            "{bad:?}: {err}"
        );
        let queries = root().join("corpora/ir_history.dev.jsonl");
        let mut args = vec![
            "eval",
            "--run",
            run_s,
            "--queries",
            queries.to_str().unwrap(),
        ];
        args.extend(bad.iter().copied());
        let (ok, err) = selfret(&args);
        assert!(
            !ok && (err.contains("must be") || err.contains("at least 1")),
            "eval {bad:?} must stop first: {err}"
        );
    }
    for blank in ["", "  "] {
        let (ok, err) = selfret(&["query", "--run", run_s, blank]);
        assert!(!ok && err.contains("empty"), "{blank:?}: {err}");
    }
    // The load report is kept with the run.
    let report = std::fs::read_to_string(run.join("load_report.txt")).unwrap();
    assert!(report.contains("loaded 105 passages"), "{report}");
    // Flipped weight bytes: the command refuses the checkpoint by name and exits non-zero.
    let copy = dir.path().join("copy");
    copy_dir(&run.join("checkpoint"), &copy.join("checkpoint"));
    std::fs::copy(run.join("run.ron"), copy.join("run.ron")).unwrap();
    overwrite_tensor_bytes(&copy.join("checkpoint/model.safetensors"), 0x41);
    let (ok, err) = selfret(&["query", "--run", copy.to_str().unwrap(), "card catalogues"]);
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    // A garbage run.ron: resume refuses, naming it, and leaves it as it was.
    std::fs::write(copy.join("run.ron"), "(spec: garbage").unwrap();
    let (ok, err) = selfret(&[
        "index",
        "--corpus",
        corpus_s,
        "--out",
        copy.to_str().unwrap(),
        "--resume",
        "--steps",
        "6",
    ]);
    assert!(!ok && err.contains("run.ron"), "{err}");
    assert_eq!(
        std::fs::read_to_string(copy.join("run.ron")).unwrap(),
        "(spec: garbage"
    );
}

/// A resume with another budget says so (the schedule follows it), and trains to it.
#[test]
fn a_resume_with_a_new_budget_says_so() {
    use selfret::worker::index::{run_index, IndexSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = IndexSpec::new(root().join("corpora/ir_history.jsonl"), ModelSource::Tiny);
    spec.tiny = opts();
    spec.train.steps = 2;
    spec.train.batch_tokens = 512;
    spec.pseudo = None;
    let run = dir.path().join("run");
    run_index(&spec, &run, false, &mut NoControl, &mut |_| {}, None).unwrap();
    spec.train.steps = 4;
    let mut events = Vec::new();
    run_index(
        &spec,
        &run,
        true,
        &mut NoControl,
        &mut |e| events.push(e),
        None,
    )
    .unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            TrainEvent::BudgetChanged {
                step: 2,
                planned_steps: 2,
                total_steps: 4
            }
        )),
        "{events:?}"
    );
    assert!(matches!(
        events.last(),
        Some(TrainEvent::Finished {
            step: 4,
            cancelled: false
        })
    ));
}

/// Stopping a run while another model is loaded for querying keeps that model, and the
/// worker says so; the stopped run's own checkpoint opens on request.
#[test]
fn a_stopped_run_keeps_the_loaded_model_and_says_so() {
    use selfret::worker::index::IndexSpec;
    use selfret::worker::{Control, Event, Job, SessionInfo, Worker};
    let dir = tempfile::tempdir().unwrap();
    let corpus = root().join("corpora/ir_history.jsonl");
    let worker = Worker::spawn(Box::new(|| {}));
    // Events until the job ends; the first loss point sends Stop.
    let until_finished = |stop_at_first_step: bool| -> Vec<SessionInfo> {
        let mut ready = Vec::new();
        let mut stopped = false;
        while let Some(e) = worker.recv() {
            match e {
                Event::SessionReady(info) => ready.push(info),
                Event::Train(TrainEvent::Step { .. }) if stop_at_first_step && !stopped => {
                    worker.control(Control::Cancel);
                    stopped = true;
                }
                Event::Error(e) => panic!("{e}"),
                Event::Finished => break,
                _ => {}
            }
        }
        ready
    };
    worker.submit(Job::OpenUntrained {
        source: ModelSource::Tiny,
        corpus: corpus.clone(),
    });
    let first = until_finished(false);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].run, None);

    let mut spec = IndexSpec::new(corpus, ModelSource::Tiny);
    spec.tiny = opts();
    spec.train.steps = 5000;
    spec.train.batch_tokens = 512;
    spec.pseudo = None;
    let run = dir.path().join("run");
    worker.submit(Job::Index {
        spec: Box::new(spec),
        run: run.clone(),
        resume: false,
    });
    let after_stop = until_finished(true);
    assert_eq!(after_stop.len(), 1, "one model announcement after the stop");
    let info = &after_stop[0];
    assert_eq!(info.run, None, "the stopped run replaced the loaded model");
    assert!(
        info.description.contains("still loaded") && info.description.contains("stopped at step"),
        "{}",
        info.description
    );
    assert_eq!(info.parameters, first[0].parameters);
    assert!(run.join("checkpoint/manifest.ron").is_file());

    worker.submit(Job::OpenRun(run.clone()));
    let opened = until_finished(false);
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].run.as_deref(), Some(run.as_path()));
}

/// Pauses after `pause_after` steps, asks for a checkpoint while paused, then goes on.
struct PauseAndSave {
    pause_after: usize,
    calls: usize,
    paused: bool,
    save: bool,
}
impl TrainControl for PauseAndSave {
    fn should_cancel(&mut self) -> bool {
        self.calls += 1;
        if self.calls == self.pause_after + 1 {
            // Paused, with "Save now" pressed meanwhile: return to let the trainer save.
            (self.paused, self.save) = (true, true);
        } else if self.paused {
            // The next call: Continue.
            self.paused = false;
        }
        false
    }
    fn save_requested(&mut self) -> bool {
        std::mem::take(&mut self.save)
    }
    fn is_paused(&self) -> bool {
        self.paused
    }
}

#[test]
fn a_checkpoint_asked_for_while_paused_is_written_before_the_next_step() {
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_bundle(&corpus);
    let ex = examples(&corpus, &b);
    let cfg = TrainConfig {
        steps: 6,
        lr: 2e-3,
        batch_tokens: 512,
        checkpoint_every: 0,
        ..Default::default()
    };
    let mut events = Vec::new();
    let mut control = PauseAndSave {
        pause_after: 3,
        calls: 0,
        paused: false,
        save: false,
    };
    train(
        &mut b,
        &ex,
        &cfg,
        Some(&dir.path().join("run")),
        &mut control,
        &mut |e| events.push(e),
    )
    .unwrap();
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, .. } => Some(format!("step {step}")),
            TrainEvent::Checkpoint { step, .. } => Some(format!("checkpoint {step}")),
            _ => None,
        })
        .collect();
    // Paused after step 3: its checkpoint comes before step 4, and the run then goes on to the
    // end (and saves there, as every run does).
    assert_eq!(
        order,
        [
            "step 1",
            "step 2",
            "step 3",
            "checkpoint 3",
            "step 4",
            "step 5",
            "step 6",
            "checkpoint 6"
        ]
    );
}

/// A periodic checkpoint that falls on the last step is the run's final one: written once.
#[test]
fn the_last_step_is_checkpointed_once() {
    let corpus = demo_corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_bundle(&corpus);
    let ex = examples(&corpus, &b);
    let cfg = TrainConfig {
        steps: 4,
        lr: 2e-3,
        batch_tokens: 512,
        checkpoint_every: 2,
        ..Default::default()
    };
    let mut events = Vec::new();
    train(
        &mut b,
        &ex,
        &cfg,
        Some(&dir.path().join("run")),
        &mut NoControl,
        &mut |e| events.push(e),
    )
    .unwrap();
    let saved: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Checkpoint { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(saved, [2, 4]);
}
