//! Training: masked next-token loss over examples of the three tasks, a deterministic batch
//! schedule (length-bucketed, token budget per batch), AdamW with warmup + cosine decay and
//! clipping, checkpoints, and events for whoever watches (GUI, CLI). The training loop is one
//! job and stays in one file; the examples are built in [`data`], the optimiser is [`optim`],
//! the questions the base model writes are [`pseudo`].

pub mod beir;
pub mod data;
pub mod docid_data;
pub mod optim;
pub mod pseudo;

pub use data::{DataBuilder, DataOptions, Example, Query, Task};

use crate::error::{Error, Result};
use crate::model::{Llama, ModelBundle};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, D};
use optim::{AdamW, AdamWConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Relative weight of each task in the batch schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskMix {
    pub indexing: f64,
    pub retrieval: f64,
    pub assessment: f64,
    /// The reading task (passage -> question); absent in runs made before it existed.
    #[serde(default)]
    pub reading: f64,
}

impl Default for TaskMix {
    fn default() -> Self {
        TaskMix {
            indexing: 1.0,
            retrieval: 1.0,
            assessment: 1.0,
            reading: 0.0,
        }
    }
}

impl TaskMix {
    fn weight(&self, t: Task) -> f64 {
        match t {
            Task::Indexing => self.indexing,
            Task::Retrieval => self.retrieval,
            Task::Assessment => self.assessment,
            Task::Reading => self.reading,
        }
    }
}

/// Hyperparameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps in total.
    pub steps: usize,
    pub lr: f64,
    /// Fraction of steps with linear warmup.
    pub warmup: f64,
    /// Token budget per batch (longest sequence x rows).
    pub batch_tokens: usize,
    /// Longest sequence kept (longer examples are cut at the end).
    pub max_len: usize,
    pub grad_accum: usize,
    pub clip: Option<f64>,
    pub mix: TaskMix,
    pub seed: u64,
    pub adamw: AdamWConfig,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Evaluate the loss per task on held-out examples every N steps (0: never). Held-out
    /// examples (every 50th, at most 64 per task) are then left out of training.
    #[serde(default)]
    pub eval_every: usize,
    /// Passes over the examples; when set, `steps` is derived from it once the examples exist.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Training queries held out to measure Hits@1 through the retrieval path at each
    /// evaluation (0: none).
    #[serde(default)]
    pub eval_queries: usize,
    /// Keep a copy of the model after this many minutes of training each (beside the
    /// checkpoint, as `checkpoint-{m}min`): the points of a learning curve.
    #[serde(default)]
    pub snapshot_minutes: Vec<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            lr: 1e-3,
            warmup: 0.05,
            batch_tokens: 2048,
            max_len: 384,
            grad_accum: 1,
            clip: Some(1.0),
            mix: TaskMix::default(),
            seed: 1,
            adamw: AdamWConfig::default(),
            checkpoint_every: 0,
            eval_every: 0,
            epochs: None,
            eval_queries: 8,
            snapshot_minutes: Vec::new(),
        }
    }
}

/// Learning rate at `step` (0-based): linear warmup then cosine decay to 10% of the peak.
pub fn lr_at(step: usize, cfg: &TrainConfig) -> f64 {
    let total = cfg.steps.max(1) as f64;
    let warm = (cfg.warmup * total).max(1.0);
    let s = step as f64;
    if s < warm {
        return cfg.lr * (s + 1.0) / warm;
    }
    let progress = ((s - warm) / (total - warm).max(1.0)).min(1.0);
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Plans every batch of the run up front from the seed, so a resumed run sees exactly the batches
/// an uninterrupted one would. Each batch holds examples of one task (so losses are per task),
/// of similar length, within the token budget. With `epochs` set the run is a sequence of
/// epochs ([`epoch_plan`]): every example is seen in every epoch. Otherwise tasks are
/// interleaved by weight for `steps` steps, each task's batches cycled.
pub fn plan_batches(examples: &[Example], cfg: &TrainConfig) -> Vec<Vec<usize>> {
    let wanted = cfg.steps * cfg.grad_accum.max(1);
    if cfg.epochs.is_some() {
        let mut plan = Vec::with_capacity(wanted);
        let mut epoch = 0u64;
        while plan.len() < wanted {
            let next = epoch_plan(examples, cfg, epoch);
            if next.is_empty() {
                break;
            }
            plan.extend(next);
            epoch += 1;
        }
        plan.truncate(wanted);
        return plan;
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let per_task = task_batches(examples, cfg, &mut rng);
    if per_task.is_empty() {
        return Vec::new();
    }
    // Interleave tasks by weight (smooth weighted round-robin), cycling each task's batches.
    let mut plan = Vec::with_capacity(cfg.steps * cfg.grad_accum.max(1));
    let tasks: Vec<Task> = per_task.keys().copied().collect();
    let weights: Vec<f64> = tasks.iter().map(|&t| cfg.mix.weight(t)).collect();
    let total: f64 = weights.iter().sum();
    let mut credit = vec![0f64; tasks.len()];
    let mut cursor = vec![0usize; tasks.len()];
    while plan.len() < cfg.steps * cfg.grad_accum.max(1) {
        for (c, w) in credit.iter_mut().zip(&weights) {
            *c += w;
        }
        let k = (0..tasks.len())
            .max_by(|&a, &b| credit[a].total_cmp(&credit[b]))
            .unwrap_or(0);
        credit[k] -= total;
        let list = &per_task[&tasks[k]];
        plan.push(list[cursor[k] % list.len()].clone());
        cursor[k] += 1;
    }
    plan
}

/// One epoch: every batch of every task, a task of weight w taking w passes over its batches
/// (2: twice; 0.5: half of them, different halves in different epochs), all shuffled together.
/// Batches are cut anew each epoch (the seed and the epoch number choose them).
pub fn epoch_plan(examples: &[Example], cfg: &TrainConfig, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let per_task = task_batches(examples, cfg, &mut rng);
    let mut plan = Vec::new();
    for (task, batches) in per_task {
        // A task with a weight is never left out by rounding.
        let n = ((cfg.mix.weight(task) * batches.len() as f64).round() as usize).max(1);
        plan.extend(batches.iter().cycle().take(n).cloned());
    }
    plan.shuffle(&mut rng);
    plan
}

/// Optimiser steps in one epoch ([`epoch_plan`]), for `--epochs`.
pub fn batches_per_epoch(examples: &[Example], cfg: &TrainConfig) -> usize {
    epoch_plan(examples, cfg, 0)
        .len()
        .div_ceil(cfg.grad_accum.max(1))
}

fn task_batches(
    examples: &[Example],
    cfg: &TrainConfig,
    rng: &mut StdRng,
) -> BTreeMap<Task, Vec<Vec<usize>>> {
    let mut per_task: BTreeMap<Task, Vec<Vec<usize>>> = BTreeMap::new();
    for task in Task::ALL {
        let mut idx: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].task == task)
            .collect();
        if idx.is_empty() || cfg.mix.weight(task) <= 0.0 {
            continue;
        }
        idx.shuffle(rng);
        // Length buckets: sort windows of the shuffled list by length, then cut by budget.
        let mut batches = Vec::new();
        for window in idx.chunks(256) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| examples[i].ids.len());
            let mut cur: Vec<usize> = Vec::new();
            let mut longest = 0;
            for i in w {
                let len = examples[i].ids.len().min(cfg.max_len);
                let new_longest = longest.max(len);
                if !cur.is_empty() && new_longest * (cur.len() + 1) > cfg.batch_tokens {
                    batches.push(std::mem::take(&mut cur));
                    longest = 0;
                }
                longest = longest.max(len);
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
        }
        batches.shuffle(rng);
        per_task.insert(task, batches);
    }
    per_task
}

/// A batch laid out for the model: input ids (rows, t), and the flat positions that carry
/// loss with the token each must predict.
struct PackedBatch {
    input: Tensor,
    positions: Vec<u32>,
    targets: Vec<u32>,
}

fn pack_batch(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    max_len: usize,
) -> Result<PackedBatch> {
    let len = examples
        .iter()
        .map(|e| e.ids.len().min(max_len))
        .max()
        .unwrap_or(0);
    if len < 2 {
        return Err(Error::invalid("batch of empty examples"));
    }
    let t = len - 1;
    let mut input = Vec::with_capacity(examples.len() * t);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (r, e) in examples.iter().enumerate() {
        let ids = &e.ids[..e.ids.len().min(max_len)];
        for p in 0..t {
            input.push(ids.get(p).copied().unwrap_or(pad));
            // Position p predicts token p + 1.
            if p + 1 < ids.len() && p + 1 >= e.target_start {
                positions.push((r * t + p) as u32);
                targets.push(ids[p + 1]);
            }
        }
    }
    if positions.is_empty() {
        return Err(Error::invalid("batch has no target tokens"));
    }
    let input = Tensor::from_vec(input, (examples.len(), t), model.device())?;
    Ok(PackedBatch {
        input,
        positions,
        targets,
    })
}

/// Mean cross-entropy over the target tokens of a batch, as a tensor autograd can
/// differentiate. The vocabulary projection runs only at positions that carry loss.
pub fn batch_loss(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    max_len: usize,
) -> Result<Tensor> {
    let PackedBatch {
        input,
        positions,
        mut targets,
    } = pack_batch(model, examples, pad, max_len)?;
    let dev = model.device();
    // Docid examples (their targets are docid tokens, after the base vocabulary) are read with
    // the retrieval pathway open and scored by the docid head.
    let vocab = model.config.vocab_size as u32;
    let retrieving = model.retrieval.is_some() && targets.iter().any(|&t| t >= vocab);
    let hidden = match retrieving {
        true => model.hidden_retrieving(&input, None)?,
        false => model.hidden(&input, None)?,
    };
    let h = hidden.dim(D::Minus1)?;
    let pos = Tensor::new(positions.as_slice(), dev)?;
    let picked = hidden
        .reshape((input.elem_count(), h))?
        .index_select(&pos, 0)?;
    let logits = match (retrieving, &model.retrieval) {
        (true, Some(path)) => {
            if targets.iter().any(|&t| t < vocab) {
                return Err(Error::invalid(
                    "a batch mixes docid targets with word targets",
                ));
            }
            targets.iter_mut().for_each(|t| *t -= vocab);
            path.docid_logits(&picked)?
        }
        _ => model.logits(&picked)?,
    };
    if crate::kernels::supported(&logits) {
        return Ok(crate::kernels::loss::cross_entropy(&logits, &targets)?);
    }
    let targets = Tensor::new(targets.as_slice(), dev)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

/// The batch's mean loss and the gradients of `seed * loss` for every trainable weight: what
/// one training micro-batch needs. On the CPU this is the hand-written backward pass
/// ([`crate::model::backward`]); elsewhere candle's autograd over [`batch_loss`].
pub fn batch_grads(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    max_len: usize,
    seed: f64,
) -> Result<(f64, GradStore)> {
    crate::kernels::on_pool(|| batch_grads_here(model, examples, pad, max_len, seed))
}

fn batch_grads_here(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    max_len: usize,
    seed: f64,
) -> Result<(f64, GradStore)> {
    if crate::model::backward::supported(model) {
        let b = pack_batch(model, examples, pad, max_len)?;
        let (loss, grads) = crate::model::backward::loss_and_grads(
            model,
            &b.input,
            &b.positions,
            &b.targets,
            seed as f32,
        )?;
        return Ok((loss as f64, grads));
    }
    autograd_grads(model, examples, pad, max_len, seed)
}

/// [`batch_grads`] through candle's autograd over [`batch_loss`]: the path for other devices
/// and dtypes, and the reference the hand-written pass is measured against.
pub fn autograd_grads(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    max_len: usize,
    seed: f64,
) -> Result<(f64, GradStore)> {
    let loss = batch_loss(model, examples, pad, max_len)?;
    let value = loss.to_scalar::<f32>()? as f64;
    let loss = if seed != 1.0 { (loss * seed)? } else { loss };
    Ok((value, loss.backward()?))
}

/// Splits off the held-out slice (only when periodic evaluation is on).
fn split_held_out(examples: &[Example], cfg: &TrainConfig) -> (Vec<Example>, Vec<Example>) {
    if cfg.eval_every == 0 {
        return (examples.to_vec(), Vec::new());
    }
    let mut per_task: BTreeMap<Task, usize> = BTreeMap::new();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, e) in examples.iter().enumerate() {
        let n = per_task.entry(e.task).or_default();
        if i % 50 == 25 && *n < 64 {
            *n += 1;
            held.push(e.clone());
        } else {
            train.push(e.clone());
        }
    }
    (train, held)
}

/// Mean loss per task over held-out examples (no gradient).
fn held_out_losses(
    model: &Llama,
    held: &[Example],
    pad: u32,
    cfg: &TrainConfig,
) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for task in Task::ALL {
        let ex: Vec<&Example> = held.iter().filter(|e| e.task == task).collect();
        if ex.is_empty() {
            continue;
        }
        let (mut sum, mut n) = (0.0, 0usize);
        for chunk in ex.chunks(16) {
            let l = batch_loss(model, chunk, pad, cfg.max_len)?.detach();
            sum += l.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            n += chunk.len();
        }
        out.insert(task.name().to_string(), sum / n as f64);
    }
    Ok(out)
}

/// What a training run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrainEvent {
    /// Work before the first step (writing pseudo-queries, mining negatives): `done` of
    /// `total` items.
    Preparing {
        stage: String,
        done: usize,
        total: usize,
    },
    Started {
        total_steps: usize,
        start_step: usize,
        examples: usize,
    },
    /// A resumed run's budget differs from the one it was planned with: it goes on to
    /// `total_steps` from `step` (its schedule follows), where it was planned for
    /// `planned_steps`.
    BudgetChanged {
        step: usize,
        planned_steps: usize,
        total_steps: usize,
    },
    Step {
        step: usize,
        task: Task,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_s: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    /// Mean loss per task on the held-out examples.
    Eval {
        step: usize,
        losses: BTreeMap<String, f64>,
        /// Retrieval metrics on held-out queries (e.g. `hits@1`), when measured.
        #[serde(default)]
        metrics: BTreeMap<String, f64>,
    },
    Finished {
        step: usize,
        cancelled: bool,
    },
}

/// Control flags checked between steps.
pub trait TrainControl {
    /// True when the run should stop (after saving).
    fn should_cancel(&mut self) -> bool {
        false
    }
    /// True when a checkpoint should be written now.
    fn save_requested(&mut self) -> bool {
        false
    }
    /// True while the run is paused: [`Self::should_cancel`] returned only to let a checkpoint
    /// asked for meanwhile be written, and no step may run yet.
    fn is_paused(&self) -> bool {
        false
    }
    /// Extra metrics at each evaluation (e.g. Hits@1 through the retrieval path), measured on
    /// the model as it is now.
    fn evaluate(&mut self, _bundle: &ModelBundle) -> Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
}

/// Where the snapshot after `minutes` of training goes, beside the checkpoint folder `dir`.
pub fn snapshot_dir(dir: &std::path::Path, minutes: f64) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!("{name}-{minutes}min"))
}

/// Never cancels.
pub struct NoControl;
impl TrainControl for NoControl {}

/// Trains `bundle` on `examples` from its current step up to `cfg.steps`, checkpointing into
/// `out` (if given) every `checkpoint_every` steps, on request and at the end.
pub fn train(
    bundle: &mut ModelBundle,
    examples: &[Example],
    cfg: &TrainConfig,
    out: Option<&std::path::Path>,
    control: &mut dyn TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<()> {
    if matches!(bundle.mode, crate::model::TrainMode::Frozen) {
        return Err(Error::invalid(
            "the model is frozen: choose full or LoRA training",
        ));
    }
    // An example cut at `max_len` before its target begins teaches nothing (and a batch of
    // them has no loss at all): leave those out.
    let usable: Vec<Example> = examples
        .iter()
        .filter(|e| e.target_start < e.ids.len().min(cfg.max_len))
        .cloned()
        .collect();
    if usable.len() < examples.len() {
        tracing::warn!(
            "{} of {} examples have no target within max_len {} and are left out",
            examples.len() - usable.len(),
            examples.len(),
            cfg.max_len
        );
    }
    let (train_set, held_out) = split_held_out(&usable, cfg);
    let examples = train_set.as_slice();
    let plan = plan_batches(examples, cfg);
    if plan.is_empty() {
        return Err(Error::invalid("no training examples"));
    }
    let mut opt = AdamW::new(&bundle.varmap, cfg.adamw)?;
    if let Some(dir) = out {
        let state_path = dir.join(crate::model::checkpoint::OPTIMIZER);
        if bundle.step > 0 && state_path.is_file() {
            if let Ok(m) = crate::model::checkpoint::Manifest::read(dir) {
                m.verify_file(dir, crate::model::checkpoint::OPTIMIZER)?;
            }
            let state = candle_core::safetensors::load(&state_path, &candle_core::Device::Cpu)
                .map_err(|e| Error::bad_file(&state_path, e.to_string()))?;
            opt.load_state(&state)?;
        }
    }
    let start = bundle.step as usize;
    on_event(TrainEvent::Started {
        total_steps: cfg.steps,
        start_step: start,
        examples: examples.len(),
    });
    let accum = cfg.grad_accum.max(1);
    let t0 = Instant::now();
    let trained_before = bundle.training_seconds;
    let mut tokens_done = 0usize;
    let save_to = |dir: &std::path::Path,
                   bundle: &ModelBundle,
                   opt: &AdamW,
                   on_event: &mut dyn FnMut(TrainEvent)|
     -> Result<()> {
        let mut hp = BTreeMap::new();
        hp.insert("lr".into(), cfg.lr.to_string());
        hp.insert("steps".into(), cfg.steps.to_string());
        hp.insert("batch_tokens".into(), cfg.batch_tokens.to_string());
        bundle.save_with(
            dir,
            None,
            hp,
            vec![(crate::model::checkpoint::OPTIMIZER, opt.state_tensors()?)],
        )?;
        on_event(TrainEvent::Checkpoint {
            step: bundle.step as usize,
            path: dir.to_path_buf(),
        });
        Ok(())
    };
    // The step of the last checkpoint this session wrote.
    let mut saved_at: Option<u64> = None;
    let mut snapshots: Vec<f64> = cfg.snapshot_minutes.clone();
    snapshots.sort_by(|a, b| b.total_cmp(a));
    let save =
        |bundle: &ModelBundle, opt: &AdamW, on_event: &mut dyn FnMut(TrainEvent)| -> Result<()> {
            match out {
                Some(dir) => save_to(dir, bundle, opt, on_event),
                None => Ok(()),
            }
        };
    let mut cancelled = false;
    for step in start..cfg.steps {
        // While paused, a checkpoint asked for is written at once, not after the next step.
        let cancel = loop {
            if control.should_cancel() {
                break true;
            }
            if !control.is_paused() {
                break false;
            }
            if control.save_requested() {
                save(bundle, &opt, on_event)?;
                saved_at = Some(bundle.step);
            }
        };
        if cancel {
            cancelled = true;
            break;
        }
        let lr = lr_at(step, cfg);
        let mut loss_sum = 0f64;
        let mut task = Task::Indexing;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        for micro in 0..accum {
            let batch: Vec<&Example> = plan[step * accum + micro]
                .iter()
                .map(|&i| &examples[i])
                .collect();
            task = batch[0].task;
            tokens_done += batch
                .iter()
                .map(|e| e.ids.len().min(cfg.max_len))
                .sum::<usize>();
            let (loss, g) = batch_grads(
                &bundle.model,
                &batch,
                bundle.special.pad,
                cfg.max_len,
                1.0 / accum as f64,
            )?;
            loss_sum += loss;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for var in bundle.varmap.all_vars() {
                        if let Some(new) = g.get(var.as_tensor()) {
                            let sum = match acc.get(var.as_tensor()) {
                                Some(old) => (old + new)?,
                                None => new.clone(),
                            };
                            acc.insert(var.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let grads = grads.ok_or_else(|| Error::invalid("no gradients"))?;
        // A non-finite loss would write NaN weights into the next checkpoint: stop here, the
        // last checkpoint stays as it was.
        if !loss_sum.is_finite() {
            return Err(Error::invalid(format!(
                "the training loss became {loss_sum} at step {}: training stopped before the \
                 update, and the last checkpoint (step {start} or later) is kept; lower the \
                 learning rate or check the data",
                step + 1
            )));
        }
        let grad_norm = opt.step(&grads, lr, cfg.clip)?;
        if !grad_norm.is_finite() {
            return Err(Error::invalid(format!(
                "the gradient became non-finite at step {}: training stopped and nothing was \
                 saved after it (the last checkpoint is kept); lower the learning rate",
                step + 1
            )));
        }
        bundle.step = (step + 1) as u64;
        let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
        let done = (step + 1 - start) as f64;
        on_event(TrainEvent::Step {
            step: step + 1,
            task,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
            tokens_per_s: tokens_done as f64 / elapsed,
            eta_s: elapsed / done * (cfg.steps - step - 1) as f64,
        });
        if cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 {
            let losses = if held_out.is_empty() {
                BTreeMap::new()
            } else {
                held_out_losses(&bundle.model, &held_out, bundle.special.pad, cfg)?
            };
            let metrics = control.evaluate(bundle)?;
            if !losses.is_empty() || !metrics.is_empty() {
                on_event(TrainEvent::Eval {
                    step: step + 1,
                    losses,
                    metrics,
                });
            }
        }
        // Learning-curve snapshots: the model as it is after m minutes of training, counted
        // over every session of a resumed run.
        bundle.training_seconds = trained_before + t0.elapsed().as_secs_f64();
        while let (Some(&m), Some(dir)) = (snapshots.last(), out) {
            if bundle.training_seconds < m * 60.0 {
                break;
            }
            snapshots.pop();
            // An existing snapshot (a resume that repeats steps after it) is kept, not replaced.
            let snap = snapshot_dir(dir, m);
            if !snap.exists() {
                save_to(&snap, bundle, &opt, on_event)?;
            }
        }
        let periodic = cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0;
        if periodic || control.save_requested() {
            save(bundle, &opt, on_event)?;
            saved_at = Some(bundle.step);
        }
    }
    // The last step's checkpoint is written once (a periodic one may already hold it).
    if saved_at != Some(bundle.step) {
        save(bundle, &opt, on_event)?;
    }
    on_event(TrainEvent::Finished {
        step: bundle.step as usize,
        cancelled,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<Example> {
        let mut out = Vec::new();
        for (task, n) in [
            (Task::Indexing, 40),
            (Task::Retrieval, 10),
            (Task::Assessment, 6),
        ] {
            for k in 0..n {
                out.push(Example {
                    task,
                    ids: vec![1; 8 + k % 5],
                    target_start: 2,
                });
            }
        }
        out
    }

    #[test]
    fn an_epoch_sees_every_example_as_often_as_its_task_weight_says() {
        let ex = examples();
        let cfg = TrainConfig {
            batch_tokens: 40,
            epochs: Some(2.0),
            mix: TaskMix {
                indexing: 1.0,
                retrieval: 2.0,
                assessment: 0.5,
                reading: 0.0,
            },
            ..Default::default()
        };
        let epoch = epoch_plan(&ex, &cfg, 0);
        let mut seen = vec![0usize; ex.len()];
        for b in &epoch {
            assert!(
                b.iter().all(|&i| ex[i].task == ex[b[0]].task),
                "one task per batch"
            );
            for &i in b {
                seen[i] += 1;
            }
        }
        for (i, e) in ex.iter().enumerate() {
            match e.task {
                Task::Indexing => assert_eq!(seen[i], 1, "indexing example {i}"),
                Task::Retrieval => assert_eq!(seen[i], 2, "retrieval example {i}"),
                Task::Assessment => assert!(seen[i] <= 1),
                // Weight 0: never planned.
                Task::Reading => assert_eq!(seen[i], 0),
            }
        }
        let assessed: usize = (0..ex.len())
            .filter(|&i| ex[i].task == Task::Assessment)
            .map(|i| seen[i])
            .sum();
        assert!(
            (2..=4).contains(&assessed),
            "half the assessment examples: {assessed}"
        );
        // Steps for two epochs: the plan is two epochs long, the second cut differently.
        let steps = 2 * batches_per_epoch(&ex, &cfg);
        let plan = plan_batches(
            &ex,
            &TrainConfig {
                steps,
                ..cfg.clone()
            },
        );
        assert_eq!(plan.len(), steps);
        assert_eq!(plan[..epoch.len()], epoch[..]);
        assert_ne!(epoch_plan(&ex, &cfg, 1), epoch);
    }
}
