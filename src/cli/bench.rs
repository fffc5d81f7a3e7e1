//! `selfret bench`: performance tables measured on this machine (never asserted in tests).
//! One job, one file: each table (model, products, trie, query, train, eval) is a function
//! here, sharing the loading and printing helpers.

use crate::corpus::{load_path, Corpus, LoadOptions, Passage};
use crate::model::{LoraConfig, ModelBundle, ModelSource, TrainMode};
use crate::prompts::PromptCodec;
use crate::train::optim::AdamW;
use crate::train::{batch_grads, Example, Task};
use crate::trie::CorpusTrie;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use std::time::Instant;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    Model,
    /// Only the matrix-product tables of the model bench (no model load).
    Products,
    Trie,
    Query,
    Train,
    Eval,
    /// A run exported as a Hugging Face folder, read by selfret and by transformers (needs
    /// --run; not part of `all`).
    Export,
    All,
}

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "all")]
    pub kind: BenchKind,
    /// Model for the model bench.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: String,
    /// Folder with the shared evaluation sets.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Also run the PyTorch reference (bench/torch_reference.py, venv made by
    /// bench/setup-reference.sh) on the same shapes and print the ratio.
    #[arg(long)]
    pub reference: bool,
    /// Run directory for the query bench (default: the un-fine-tuned model over the NQ corpus)
    /// and the export bench.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Queries timed by the query bench.
    #[arg(long, default_value_t = 5)]
    pub queries: usize,
    /// Queries in the eval bench's fixed slice.
    #[arg(long, default_value_t = 50)]
    pub eval_queries: usize,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Passages of the trie bench's synthetic corpus (the real corpora's texts repeated under
    /// new titles); the paper's NQ corpus has about 1,000,000.
    #[arg(long, default_value_t = 100_000)]
    pub scale: usize,
}

/// Peak resident memory of this process, in MB (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resident memory now, MB (Linux; None elsewhere).
fn rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts the peak-memory mark afresh from the current resident memory (Linux: writing 5 to
/// clear_refs resets VmHWM), so one stage's own peak can be read after it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::new();
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// Runs the chosen benchmarks and prints their tables.
pub fn run(a: BenchArgs) -> Result<()> {
    if matches!(a.kind, BenchKind::Trie | BenchKind::All) {
        bench_trie(&a)?;
    }
    if matches!(a.kind, BenchKind::Model | BenchKind::All) {
        bench_model(&a)?;
    }
    if a.kind == BenchKind::Products {
        few_row_products(a.reps)?;
        large_products(a.reps)?;
        println!(
            "plain f32 matmul 1024x576 @ 576x1536 through the model's path: {:.0} GFLOP/s",
            gemm_gflops()?
        );
    }
    if matches!(a.kind, BenchKind::Train | BenchKind::All) {
        bench_train(&a)?;
    }
    if matches!(a.kind, BenchKind::Query | BenchKind::All) {
        bench_query(&a)?;
    }
    if matches!(a.kind, BenchKind::Eval | BenchKind::All) {
        bench_eval(&a)?;
    }
    if a.kind == BenchKind::Export {
        super::bench_export::bench_export(&a)?;
    }
    Ok(())
}

/// Plain f32 matmul throughput at a training-like shape, GFLOP/s, through the backend the model
/// uses (BLAS when loaded, else candle's gemm). The best of 15 runs: the machine's peak, so the
/// "matmul-only" times it yields are the strictest reference.
pub fn gemm_gflops() -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (1024, 576), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (576, 1536), &dev)?;
    crate::kernels::matmul::matmul(&a, &b, false, false)?;
    let mut s = f64::INFINITY;
    for _ in 0..15 {
        let t = Instant::now();
        crate::kernels::matmul::matmul(&a, &b, false, false)?;
        s = s.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * 1024.0 * 576.0 * 1536.0 / s / 1e9)
}

fn bench_query(a: &BenchArgs) -> Result<()> {
    use crate::worker::session::QuerySession;
    let data = a.data.join("nq_open_oracle");
    let session = match &a.run {
        Some(run) => QuerySession::open_run(run)?,
        None => {
            let source: ModelSource = a.model.parse().map_err(anyhow::Error::msg)?;
            QuerySession::open_untrained(&source, &data.join("corpus.jsonl"), None)?
        }
    };
    let queries = crate::train::data::load_queries(&data.join("dev.jsonl"))?;
    let cfg = &session.model.config;
    let body = (cfg.parameter_count() - cfg.vocab_size * cfg.hidden_size) as f64;
    let head = (cfg.vocab_size * cfg.hidden_size) as f64;
    let gflops = gemm_gflops()?;
    println!(
        "\n## query ({} passages; {} queries from nq_open_oracle/dev; matmul {gflops:.0} GFLOP/s; {})",
        session.corpus.len(),
        a.queries,
        crate::kernels::blas_ffi::backend()
    );
    println!("| (i, j) | titles ms | passages ms | assessment ms | answer ms | total ms | model tokens | passes | matrix work alone ms | total / matrix work | FLOPs at peak ms | total / FLOPs at peak |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut totals = Vec::new();
    // One untimed query first (bench/hf_reference.py does the same): first calls pay for page
    // faults and lazy set-up that a running app has behind it.
    if let Some(q) = queries.first() {
        session.query(&q.question, &paper_pipeline(5, 10), &mut |_| {})?;
    }
    for (i, j) in [(5usize, 10usize), (10, 10)] {
        let opts = paper_pipeline(i, j);
        let mut rows: Vec<crate::retrieve::Timings> = Vec::new();
        for q in queries.iter().take(a.queries.max(1)) {
            rows.push(session.query(&q.question, &opts, &mut |_| {})?.timings);
        }
        // The same query's projections replayed alone (best of two): each product at its own
        // shape through the same kernels and weights, so a decoding step's product costs what
        // streaming its weights costs, as it would in any implementation.
        let mut replay_ms = Vec::new();
        for t in &rows {
            let mut best = f64::INFINITY;
            for _ in 0..2 {
                let start = Instant::now();
                for p in &t.passes {
                    session.model.matrix_work(p.rows, p.logit_rows)?;
                }
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            replay_ms.push(best);
        }
        let med =
            |f: &dyn Fn(&crate::retrieve::Timings) -> f64| median(rows.iter().map(f).collect());
        let total = med(&|t| t.titles_ms + t.passages_ms + t.assess_ms + t.answer_ms);
        let tokens = med(&|t| t.tokens_forwarded as f64);
        let passes = med(&|t| t.passes.len() as f64);
        let matrix_ms = median(replay_ms);
        let flops = med(&|t| 2.0 * (t.tokens_forwarded as f64 * body + t.logit_rows as f64 * head));
        let matmul_ms = flops / (gflops * 1e9) * 1e3;
        println!(
            "| ({i}, {j}) | {:.0} | {:.0} | {:.0} | {:.0} | {total:.0} | {tokens:.0} | {passes:.0} | {matrix_ms:.0} | {:.2} | {matmul_ms:.0} | {:.2} |",
            med(&|t| t.titles_ms),
            med(&|t| t.passages_ms),
            med(&|t| t.assess_ms),
            med(&|t| t.answer_ms),
            total / matrix_ms,
            total / matmul_ms
        );
        totals.push((format!("({i}, {j})"), total));
    }
    if session.reads_language() {
        bench_reading(&session, &queries[..a.queries.clamp(1, queries.len())])?;
    }
    if a.reference {
        let ModelSource::Gguf(path) = a.model.parse().map_err(anyhow::Error::msg)? else {
            anyhow::bail!("the reference pipeline needs a GGUF model");
        };
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = reference_python()?;
        let out = std::process::Command::new(python)
            .arg(root.join("bench/hf_reference.py"))
            .arg(path.parent().unwrap_or(std::path::Path::new(".")))
            .arg(path.file_name().unwrap_or_default())
            .arg(data.join("corpus.jsonl"))
            .arg(data.join("dev.jsonl"))
            .arg(a.queries.to_string())
            .arg(candle_core::utils::get_num_threads().to_string())
            .output()
            .context("running bench/hf_reference.py")?;
        if !out.status.success() {
            anyhow::bail!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
        println!("\n| (i, j) | HF titles ms | HF passages ms | HF assessment ms | HF answer ms | HF reference total ms | selfret total ms | speed-up |");
        println!("|---|---|---|---|---|---|---|---|");
        for (k, ours) in totals {
            let stage = |s: &str| r[&k][s].as_f64().unwrap_or(f64::NAN);
            if let Some(t) = r[&k]["total_ms"].as_f64() {
                println!(
                    "| {k} | {:.0} | {:.0} | {:.0} | {:.0} | {t:.0} | {ours:.0} | {:.2}x |",
                    stage("titles_ms"),
                    stage("passages_ms"),
                    stage("assess_ms"),
                    stage("answer_ms"),
                    t / ours
                );
            }
        }
    }
    Ok(())
}

pub(super) fn reference_python() -> Result<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let setup = std::process::Command::new("bash")
        .arg(root.join("bench/setup-reference.sh"))
        .output()
        .context("running bench/setup-reference.sh")?;
    if !setup.status.success() {
        anyhow::bail!(
            "reference setup failed: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&setup.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or("python3")
        .to_string())
}

/// Median seconds of one optimiser step (forward, backward, AdamW) on `batch`.
fn time_train_step(b: &ModelBundle, batch: &[&Example], reps: usize) -> Result<f64> {
    let mut opt = AdamW::new(&b.varmap, Default::default())?;
    time(reps, || {
        let (_, g) = batch_grads(&b.model, batch, b.special.pad, 512, 1.0)?;
        opt.step(&g, 1e-5, Some(1.0))?;
        Ok(())
    })
}

/// A docid run's warm-up step (the base frozen, the retrieval pathway trained) on a real batch
/// of the demo corpus's docid examples, by the hand-written pass and by autograd.
fn bench_docid_step(a: &BenchArgs, source: &ModelSource, corpus: &Corpus) -> Result<()> {
    use crate::docids::{DocidOptions, DocidTree};
    use crate::worker::docid_run::{docid_examples, open_pathway, DocidRun};
    let dev = Device::Cpu;
    let weights = crate::model::source::load_weights(source, &dev, None)?;
    let mut b = ModelBundle::from_weights(weights, source.clone(), TrainMode::Retrieval, &dev)?;
    // The tree's shape is all a training step sees of it: seeded vectors make one without
    // embedding the corpus first.
    let rows: Vec<Vec<f32>> = (0..corpus.len())
        .map(|i| {
            (0..16)
                .map(|j| ((i * 31 + j * 17) % 97) as f32 / 97.0)
                .collect()
        })
        .collect();
    let tree = DocidTree::build(corpus, &rows, "bench vectors", DocidOptions::default())?;
    open_pathway(&mut b, &DocidRun::default(), &tree, 7)?;
    let queries = crate::train::data::load_queries(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.queries.jsonl"),
    )?;
    let data = crate::train::DataOptions {
        sentences_per_passage: 1,
        ..Default::default()
    };
    let examples = docid_examples(&b, corpus, &tree, &data, &queries, &[])?;
    let cfg = crate::train::TrainConfig {
        batch_tokens: 2048,
        ..Default::default()
    };
    let plan = crate::train::plan_batches(&examples, &cfg);
    let Some(batch) = plan.first() else {
        return Ok(());
    };
    let refs: Vec<&Example> = batch.iter().map(|&i| &examples[i]).collect();
    let tokens: usize = refs.iter().map(|e| e.ids.len()).sum();
    let shape = format!("{} rows, {tokens} tokens", refs.len());
    let hand = time_train_step(&b, &refs, a.reps.min(2))?;
    println!(
        "| train step, docid pathway (base frozen), real docid batch | {shape} | {hand:.2} | {:.0} |",
        tokens as f64 / hand
    );
    let mut opt = AdamW::new(&b.varmap, Default::default())?;
    let auto = time(a.reps.min(2), || {
        let (_, g) = crate::train::autograd_grads(&b.model, &refs, b.special.pad, 512, 1.0)?;
        opt.step(&g, 1e-5, Some(1.0))?;
        Ok(())
    })?;
    println!(
        "| the same step through autograd | {shape} | {auto:.2} | {:.0} |",
        tokens as f64 / auto
    );
    Ok(())
}

/// The bench's model source, after printing a section header for it.
fn model_section(a: &BenchArgs, section: &str) -> Result<ModelSource> {
    let source: ModelSource = a.model.parse().map_err(anyhow::Error::msg)?;
    println!(
        "\n## {section}: {source} ({} threads; {})",
        candle_core::utils::get_num_threads(),
        crate::kernels::blas_ffi::backend()
    );
    println!("| work | shape | median s | tokens/s |");
    println!("|---|---|---|---|");
    Ok(source)
}

fn bench_model(a: &BenchArgs) -> Result<()> {
    let source = model_section(a, "model")?;
    let dev = Device::Cpu;
    let load =
        || crate::model::source::load_weights(&source, &dev, None).context("loading the model");
    let frozen = ModelBundle::from_weights(load()?, source.clone(), TrainMode::Frozen, &dev)?;
    let inf = frozen.inference()?;
    let v = inf.config.vocab_size as u32;
    let ids: Vec<u32> = (0..8 * 128)
        .map(|i| (i * 7919 % v as usize) as u32)
        .collect();
    let x = Tensor::from_vec(ids.clone(), (8, 128), &dev)?;
    let s = time(a.reps, || {
        inf.forward(&x, None)?;
        Ok(())
    })?;
    println!(
        "| forward (all logits) | 8 x 128 | {s:.2} | {:.0} |",
        1024.0 / s
    );
    let mut ours = vec![("forward", 1024.0 / s)];
    let s = time(a.reps, || {
        inf.hidden(&x, None)?;
        Ok(())
    })?;
    println!(
        "| forward (no vocab projection) | 8 x 128 | {s:.2} | {:.0} |",
        1024.0 / s
    );
    // 10-beam incremental decoding after a 64-token prompt.
    let prompt = Tensor::from_vec(ids[..64].to_vec(), (1, 64), &dev)?;
    let mut base = inf.new_cache();
    inf.forward(&prompt, Some(&mut base))?;
    let beams = base.select(&[0; 10])?;
    let s = time(a.reps, || {
        let mut c = beams.clone();
        for step in 0..16u32 {
            let t = Tensor::from_vec(
                (0..10)
                    .map(|b| (b * 31 + step * 17) % v)
                    .collect::<Vec<u32>>(),
                (10, 1),
                &dev,
            )?;
            inf.next_token_logprobs(&t, Some(&mut c))?;
            c = c.select(&[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])?;
        }
        Ok(())
    })?;
    println!(
        "| decode, 10 beams, KV cache | 10 x 1 x 16 steps | {:.3}/step | {:.0} |",
        s / 16.0,
        160.0 / s
    );
    ours.push(("decode", 160.0 / s));
    drop(inf);
    drop(frozen);
    few_row_products(a.reps)?;
    large_products(a.reps)?;
    if let Some(rss) = peak_rss_mb() {
        println!("peak RSS: {rss:.0} MB");
    }
    println!(
        "plain f32 matmul 1024x576 @ 576x1536 in the same run: {:.0} GFLOP/s",
        gemm_gflops()?
    );
    if a.reference {
        print_reference(&source, &ours)?;
    }
    Ok(())
}

/// Deterministic operand values in [-0.1, 0.1] for the product benches, repeating every
/// `period` (a prime, so rows do not line up).
fn bench_values(len: usize, period: usize) -> Vec<f32> {
    let half = (period / 2) as f32;
    (0..len)
        .map(|i| ((i % period) as f32 - half) / (10.0 * half))
        .collect()
}

/// The few-row kernel against the BLAS on the model's projection shapes, GFLOP/s (medians), to
/// show where `rows::max_rows` belongs on this CPU.
/// The header of a products table: one column per kernel for each (k -> n) shape.
fn products_header(shapes: &[(usize, usize)], kernels: &[&str]) {
    let cells: Vec<String> = shapes
        .iter()
        .flat_map(|(k, n)| kernels.iter().map(move |name| format!("{k}->{n} {name}")))
        .collect();
    println!("\n| rows m | {} |", cells.join(" | "));
    println!("|---|{}", "---|".repeat(cells.len()));
}

fn few_row_products(reps: usize) -> Result<()> {
    use crate::kernels::{blas_ffi, few_rows};
    if blas_ffi::blas().is_none() {
        return Ok(());
    }
    let shapes = [(576usize, 1536usize), (1536, 576), (576, 49152)];
    products_header(&shapes, &["row kernel", "BLAS"]);
    let weights: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(k, n)| bench_values(k * n, 97))
        .collect();
    for m in [1usize, 4, 10, 16, 32, 48, 64, 96] {
        let mut cells = Vec::new();
        for (&(k, n), w) in shapes.iter().zip(&weights) {
            let x = bench_values(m * k, 89);
            let flop = 2.0 * (m * k * n) as f64 / 1e9;
            let s = time(reps.max(5), || {
                std::hint::black_box(few_rows::matmul_nt(&x, k, w, k, m, k, n));
                Ok(())
            })?;
            cells.push(format!("{:.0}", flop / s));
            let s = time(reps.max(5), || {
                std::hint::black_box(blas_ffi::blas_nt(&x, w, m, k, n, false));
                Ok(())
            })?;
            cells.push(format!("{:.0}", flop / s));
        }
        println!("| {m} | {} |", cells.join(" | "));
    }
    println!("row kernel used up to m = {}", few_rows::max_rows());
    Ok(())
}

/// Large products (prefill, self-assessment, training) on AMX tiles against the f32 BLAS on the
/// model's shapes, GFLOP/s counted as f32 work (medians). Prints nothing without AMX.
fn large_products(reps: usize) -> Result<()> {
    use crate::kernels::{amx, blas_ffi, matmul};
    if blas_ffi::blas().is_none() || !amx::available() {
        println!("\nAMX: not available here (or SELFRET_AMX=off); large products use the BLAS");
        return Ok(());
    }
    let shapes = [(576usize, 1536usize), (1536, 576), (576, 576), (576, 49152)];
    products_header(&shapes, &["BLAS f32", "AMX", "AMX, weight packed once"]);
    for m in [64usize, 128, 512, 1024] {
        let mut cells = Vec::new();
        for &(k, n) in &shapes {
            let w = bench_values(k * n, 97);
            let x = bench_values(m * k, 89);
            let flop = 2.0 * (m * k * n) as f64 / 1e9;
            for use_amx in [false, true] {
                let s = time(reps.max(5), || {
                    std::hint::black_box(blas_ffi::blas_nt(&x, &w, m, k, n, use_amx));
                    Ok(())
                })?;
                cells.push(format!("{:.0}", flop / s));
            }
            let packs = matmul::WeightPacks::default();
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu)?;
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
            matmul::packed_product(&xt, &wt, true, &packs)?;
            let s = time(reps.max(5), || {
                std::hint::black_box(matmul::packed_product(&xt, &wt, true, &packs)?);
                Ok(())
            })?;
            cells.push(format!("{:.0}", flop / s));
        }
        println!("| {m} | {} |", cells.join(" | "));
    }
    Ok(())
}

fn print_reference(source: &ModelSource, ours: &[(&str, f64)]) -> Result<()> {
    let ModelSource::Gguf(path) = source else {
        anyhow::bail!("the PyTorch reference needs a GGUF model");
    };
    let reference = torch_reference(path)?;
    println!("\n| work | selfret tokens/s | PyTorch tokens/s | selfret / PyTorch |");
    println!("|---|---|---|---|");
    for (key, v) in ours {
        if let Some(t) = reference.get(*key).and_then(|x| x.as_f64()) {
            println!("| {key} | {v:.0} | {t:.0} | {:.2} |", v / t);
        }
    }
    Ok(())
}

/// Training throughput on the real model: the 4 x 128 shapes the PyTorch reference also runs,
/// then a packed batch of real indexing examples as `index` trains them (loss only on targets).
fn bench_train(a: &BenchArgs) -> Result<()> {
    let source = model_section(a, "train")?;
    let dev = Device::Cpu;
    let load =
        || crate::model::source::load_weights(&source, &dev, None).context("loading the model");
    let weights = load()?;
    let v = weights.config.vocab_size;
    let ids: Vec<u32> = (0..4 * 128).map(|i| (i * 7919 % v) as u32).collect();
    drop(weights);
    let mut ours = Vec::new();
    let train_ids: Vec<Vec<u32>> = (0..4)
        .map(|r| ids[r * 128..(r + 1) * 128].to_vec())
        .collect();
    let examples: Vec<Example> = train_ids
        .into_iter()
        .map(|ids| Example {
            task: Task::Indexing,
            ids,
            target_start: 0,
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    for (label, key, mode) in [
        ("train step, full", "train_full", TrainMode::Full),
        (
            "train step, LoRA r8 all",
            "train_lora",
            TrainMode::Lora(LoraConfig::default()),
        ),
    ] {
        let b = ModelBundle::from_weights(load()?, source.clone(), mode, &dev)?;
        let s = time_train_step(&b, &refs, a.reps.min(2))?;
        println!("| {label} | 4 x 128 | {s:.2} | {:.0} |", 512.0 / s);
        ours.push((key, 512.0 / s));
    }
    // Real examples: demo-corpus indexing items (sentence -> title + first 10 words), packed
    // into one 2048-token batch, LoRA r32 as the NQ run used.
    let corpus = load_path(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora/ir_history.jsonl"),
        &LoadOptions::default(),
    )?;
    let b = ModelBundle::from_weights(
        load()?,
        source.clone(),
        TrainMode::Lora(LoraConfig {
            rank: 32,
            alpha: 64.0,
            ..Default::default()
        }),
        &dev,
    )?;
    let codec = PromptCodec::new(&b.tokenizer, b.special.eos)?;
    let builder = crate::train::DataBuilder {
        tokenizer: &b.tokenizer,
        codec: &codec,
        corpus: &corpus,
        opts: crate::train::DataOptions {
            target: crate::train::data::TargetLength::FirstWords(10),
            sentences_per_passage: 1,
            ..Default::default()
        },
    };
    let real = builder.indexing()?;
    let cfg = crate::train::TrainConfig {
        batch_tokens: 2048,
        ..Default::default()
    };
    let plan = crate::train::plan_batches(&real, &cfg);
    if let Some(batch) = plan.first() {
        let refs: Vec<&Example> = batch.iter().map(|&i| &real[i]).collect();
        let tokens: usize = refs.iter().map(|e| e.ids.len()).sum();
        let targets: usize = refs.iter().map(|e| e.ids.len() - e.target_start).sum();
        let s = time_train_step(&b, &refs, a.reps.min(2))?;
        println!(
            "| train step, LoRA r32, real indexing batch | {} rows, {tokens} tokens ({targets} in the loss) | {s:.2} | {:.0} |",
            refs.len(),
            tokens as f64 / s
        );
    }
    bench_docid_step(a, &source, &corpus)?;
    if let Some(rss) = peak_rss_mb() {
        println!("peak RSS: {rss:.0} MB");
    }
    if a.reference {
        print_reference(&source, &ours)?;
    }
    Ok(())
}

/// The evaluation on a fixed small slice (first `--eval-queries` NQ dev queries): BM25, dense
/// when its model is present, and Self-Retrieval when `--run` is given.
fn bench_eval(a: &BenchArgs) -> Result<()> {
    use crate::eval::run::{run_eval, EvalPlan};
    let data = a.data.join("nq_open_oracle");
    let mut queries = crate::train::data::load_queries(&data.join("dev.jsonl"))?;
    queries.truncate(a.eval_queries);
    let session = match &a.run {
        Some(run) => Some(crate::worker::session::QuerySession::open_run(run)?),
        None => None,
    };
    let loaded;
    let corpus = match &session {
        Some(s) => &s.corpus,
        None => {
            loaded = load_path(&data.join("corpus.jsonl"), &LoadOptions::default())?;
            &loaded
        }
    };
    let dense_dir = crate::eval::dense::default_dir();
    let mut baselines = vec!["bm25".to_string()];
    if dense_dir.join("config.json").is_file() {
        baselines.push("dense".into());
    }
    let plan = EvalPlan {
        baselines,
        retrieve: crate::retrieve::RetrieveOptions {
            answer: false,
            ..Default::default()
        },
        dense_model: dense_dir,
        docid_beams: 10,
    };
    println!(
        "\n## eval: first {} queries of nq_open_oracle/dev{}",
        queries.len(),
        match &a.run {
            Some(r) => format!(", Self-Retrieval from {}", r.display()),
            None => " (no --run: baselines only)".into(),
        }
    );
    let systems = run_eval(
        session.as_ref(),
        corpus,
        &queries,
        &plan,
        &mut |_, _, _| {},
        &mut || false,
        &mut |_, _| {},
    )?;
    println!("{}", crate::eval::table(&systems));
    Ok(())
}

fn torch_reference(gguf: &std::path::Path) -> Result<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = reference_python()?;
    let dir = gguf.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let name = gguf
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let out = std::process::Command::new(python)
        .arg(root.join("bench/torch_reference.py"))
        .arg(&dir)
        .arg(&name)
        .arg(candle_core::utils::get_num_threads().to_string())
        .output()
        .context("running bench/torch_reference.py")?;
    if !out.status.success() {
        anyhow::bail!(
            "torch reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("{}");
    Ok(serde_json::from_str(line)?)
}

fn scaled_corpus(sources: &[Corpus], n: usize) -> Corpus {
    let mut passages = Vec::with_capacity(n);
    let mut round = 0;
    'outer: loop {
        for c in sources {
            for p in &c.passages {
                if passages.len() >= n {
                    break 'outer;
                }
                passages.push(Passage {
                    id: format!("{}~{round}", p.id),
                    title: format!("{} ({round})", p.title),
                    text: p.text.clone(),
                });
            }
        }
        round += 1;
    }
    Corpus::from_passages(passages, vec![])
}

/// Corpora larger than this skip the `tokenizers` crate comparison column of `bench trie`.
const CRATE_COMPARISON_MAX: usize = 100_000;

fn bench_trie(a: &BenchArgs) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut corpora: Vec<(String, Corpus)> = vec![(
        "demo (corpora/ir_history.jsonl)".into(),
        load_path(
            &root.join("corpora/ir_history.jsonl"),
            &LoadOptions::default(),
        )?,
    )];
    for name in ["nq_open_oracle", "squad_v1_dev"] {
        let p = a.data.join(name).join("corpus.jsonl");
        if p.is_file() {
            corpora.push((name.to_string(), load_path(&p, &LoadOptions::default())?));
        } else {
            eprintln!("skipping {name}: {} not found", p.display());
        }
    }
    let sources: Vec<Corpus> = corpora.iter().map(|(_, c)| c.clone()).collect();
    let synthetic = scaled_corpus(&sources, a.scale);
    let load = time_jsonl_load(&synthetic)?;
    corpora.push((format!("synthetic {} passages", a.scale), synthetic));
    // The SmolLM2 tokenizer when present (what a real run uses), else a tiny one.
    let source: ModelSource = a.model.parse().unwrap_or(ModelSource::Tiny);
    let (tok, eos) = match &source {
        ModelSource::Gguf(p) if p.is_file() => {
            let (content, _) = crate::model::source::gguf::read_gguf_header(p)?;
            let tok = crate::model::tokenizer::tokenizer_from_gguf(&content)?;
            let eos = crate::model::SpecialTokens::detect(&tok, None)?.eos;
            (tok, eos)
        }
        _ => {
            let t = crate::model::tokenizer::train_tiny_tokenizer(sources[0].texts(), 4096)?;
            let eos = t
                .token_to_id(crate::model::tokenizer::TINY_EOS)
                .unwrap_or(0);
            (t, eos)
        }
    };
    let codec = PromptCodec::new(&tok, eos)?;
    println!("\n## trie (tokenizer of {source})");
    println!("| corpus | passages | titles | corpus tokens | nodes | bytes | bytes/token | x(4 B/token) | build s | build peak MB | tokenizers crate alone s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // The peak over the whole bench, kept across the per-build resets below.
    let mut whole_peak = 0.0f64;
    for (name, c) in &corpora {
        let tok = tok.clone();
        whole_peak = whole_peak.max(peak_rss_mb().unwrap_or(0.0));
        // The build's own peak: the mark restarts from what is resident now (the corpora).
        let before = rss_mb().filter(|_| reset_peak_rss());
        let t0 = Instant::now();
        let trie = CorpusTrie::build(c, &tok, &codec)?;
        let secs = t0.elapsed().as_secs_f64();
        let build_peak = match (before, peak_rss_mb()) {
            (Some(b), Some(p)) => format!("{:.0}", p - b),
            _ => "-".into(),
        };
        let s = trie.stats();
        drop(trie);
        // For comparison: the passages tokenized by the `tokenizers` crate's own batch encoder
        // (the build uses the word-cached fast path, same ids), with a fresh clone (the BPE word
        // cache must start empty). It keeps a full `Encoding` of every passage at once: past
        // `CRATE_COMPARISON_MAX` passages it is not run (at 1M it ran for over ten minutes).
        let tokenizing = if c.passages.len() <= CRATE_COMPARISON_MAX {
            let t0 = Instant::now();
            let texts: Vec<String> = c.passages.iter().map(|p| format!(" {}", p.text)).collect();
            tok.clone()
                .encode_batch_fast(texts, false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let secs = t0.elapsed().as_secs_f64();
            whole_peak = whole_peak.max(peak_rss_mb().unwrap_or(0.0));
            format!("{secs:.2}")
        } else {
            "not run".into()
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {secs:.2} | {build_peak} | {tokenizing} |",
            s.passages,
            s.titles,
            s.corpus_tokens,
            s.nodes,
            s.bytes,
            s.bytes_per_token(),
            s.bytes_per_token() / 4.0
        );
    }
    let (bytes, secs) = load;
    println!(
        "\nThe synthetic corpus as a {} MB JSONL file loads in {secs:.2} s (`corpus::load_path`); \
         peak memory of the whole bench {:.0} MB.",
        bytes / 1_000_000,
        whole_peak.max(peak_rss_mb().unwrap_or(0.0))
    );
    Ok(())
}

/// Writes `corpus` as JSONL to a temporary file and times loading it back: (file bytes, s).
fn time_jsonl_load(corpus: &Corpus) -> Result<(u64, f64)> {
    // Removed however this ends: at a million passages the file is hundreds of MB.
    let file = tempfile::Builder::new()
        .prefix("selfret-scale-")
        .suffix(".jsonl")
        .tempfile()?;
    let path = file.path().to_path_buf();
    {
        let f = file.reopen().with_context(|| path.display().to_string())?;
        let mut w = std::io::BufWriter::new(f);
        for p in &corpus.passages {
            serde_json::to_writer(
                &mut w,
                &serde_json::json!({"id": p.id, "title": p.title, "text": p.text}),
            )?;
            std::io::Write::write_all(&mut w, b"\n")?;
        }
        std::io::Write::flush(&mut w)?;
    }
    let bytes = std::fs::metadata(&path)
        .with_context(|| path.display().to_string())?
        .len();
    let t0 = Instant::now();
    let loaded = load_path(&path, &LoadOptions::default())?;
    let secs = t0.elapsed().as_secs_f64();
    drop(file);
    anyhow::ensure!(
        loaded.len() >= corpus.len(),
        "the synthetic corpus lost passages on loading ({} of {})",
        loaded.len(),
        corpus.len()
    );
    Ok((bytes, secs))
}

/// The pipeline `bench/hf_reference.py` replays (the paper's: titles, passages, self-assessment,
/// answer; no query likelihood), so the two timings compare the same work.
/// The query likelihood over a question's 100 candidates (BM25's top 100 stand in for the
/// pipeline's): read from scratch, then continuing the kept readings for the same question
/// and for the next question over the same passages (another question on the same topic).
fn bench_reading(
    session: &crate::worker::session::QuerySession,
    queries: &[crate::train::data::Query],
) -> Result<()> {
    const PASSAGES: usize = 100;
    println!("\n## query likelihood over {PASSAGES} passages (reading cache)");
    println!("| question | read from scratch ms | same question, readings kept ms | next question, same passages ms | tokens from scratch | tokens kept | kept MB |");
    println!("|---|---|---|---|---|---|---|");
    let r = session.retriever();
    for (k, q) in queries.iter().enumerate() {
        let passages = session.bm25_top(&q.question, PASSAGES);
        let next = &queries[(k + 1) % queries.len()].question;
        session.reading.clear();
        let mut cold = crate::retrieve::Timings::default();
        let start = Instant::now();
        r.query_logprobs(&session.model, &q.question, &passages, &mut cold)?;
        let cold_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut warm = crate::retrieve::Timings::default();
        let start = Instant::now();
        r.query_logprobs(&session.model, &q.question, &passages, &mut warm)?;
        let warm_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        r.query_logprobs(&session.model, next, &passages, &mut Default::default())?;
        let next_ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "| {} | {cold_ms:.0} | {warm_ms:.0} | {next_ms:.0} | {} | {} | {} |",
            k + 1,
            cold.tokens_forwarded,
            warm.tokens_forwarded,
            session.reading.stats().bytes >> 20
        );
    }
    session.reading.clear();
    Ok(())
}

fn paper_pipeline(titles: usize, passages: usize) -> crate::retrieve::RetrieveOptions {
    crate::retrieve::RetrieveOptions {
        titles,
        passages,
        // j beams per title, as the reference does (not the candidate budget).
        candidates: 0,
        assess: true,
        likelihood: false,
        ..Default::default()
    }
}
