//! The background worker: one thread that owns the model and runs every long job, talking to its
//! owner (GUI or CLI) only through crossbeam channels. Jobs come in on one channel; control
//! (cancel, pause, save now) on another that running jobs poll between steps; events go out.
//! The jobs themselves: [`index`] (the training pipeline into a run directory), [`session`]
//! (a model opened for querying), [`preset`] (the training recipes).

pub mod docid_run;
pub mod export;
pub mod index;
pub mod preset;
pub mod session;

use crate::corpus::{load_path, Corpus, LoadOptions};
use crate::model::ModelSource;
use crate::retrieve::{RetrievalTrace, RetrieveOptions};
use crate::train::{TrainControl, TrainEvent};
use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use index::IndexSpec;
use session::QuerySession;
use std::path::PathBuf;
use std::sync::Arc;

/// Docid beams of a question asked in the app.
const DOCID_BEAMS: usize = 10;

/// A job for the worker.
#[derive(Debug, Clone)]
pub enum Job {
    LoadCorpus(PathBuf, LoadOptions),
    Index {
        /// Boxed: the spec is by far the largest job.
        spec: Box<IndexSpec>,
        run: PathBuf,
        resume: bool,
    },
    OpenRun(PathBuf),
    OpenUntrained {
        source: ModelSource,
        corpus: PathBuf,
    },
    Query {
        text: String,
        opts: RetrieveOptions,
    },
    /// Evaluate the loaded model (if any) and baselines over a query file. Without a loaded
    /// model the baselines run over `corpus`.
    Eval {
        queries: PathBuf,
        corpus: PathBuf,
        limit: Option<usize>,
        plan: crate::eval::run::EvalPlan,
        self_retrieval: bool,
    },
    /// Write pseudo-queries with the loaded model over its corpus.
    PseudoQueries(crate::train::pseudo::PseudoOptions),
    /// Give title-less passages model-written titles; write the corpus to the path.
    GenerateTitles(PathBuf),
    /// Score one passage for the question of a trace ("why not this passage?").
    Explain {
        trace: Box<RetrievalTrace>,
        passage_id: String,
        opts: RetrieveOptions,
    },
    /// Write a run's model as a Hugging Face folder (an existing folder is refused).
    Export {
        run: PathBuf,
        out: PathBuf,
    },
    /// BM25's top passages for a question, to set beside the model's ranking.
    Bm25 {
        query: String,
        k: usize,
    },
}

/// One passage of BM25's ranking, as the Query panel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bm25Hit {
    pub passage_id: String,
    pub title: String,
}

/// Control of the running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Cancel,
    Pause,
    Resume,
    SaveNow,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A job started (its label, for the status bar).
    Started(String),
    /// The running job has taken a pause: the step in flight when Pause arrived is done and
    /// nothing more runs until Resume.
    Paused,
    CorpusLoaded(Arc<Corpus>),
    Train(TrainEvent),
    /// A model is loaded and queryable.
    SessionReady(SessionInfo),
    /// Partial (`done == false`) or final retrieval trace.
    Trace {
        trace: RetrievalTrace,
        done: bool,
    },
    /// A docid run's answer to a question: its docid beams.
    DocidTrace(Box<crate::retrieve::docid::DocidTrace>),
    EvalProgress {
        system: String,
        done: usize,
        total: usize,
    },
    EvalDone(Vec<crate::eval::SystemResult>),
    /// What the query file's check found (unknown gold ids, unscorable queries), for the user.
    EvalNotes(Vec<String>),
    /// Progress of a job that is not training or evaluation.
    Progress {
        label: String,
        done: usize,
        total: usize,
    },
    PseudoQueries(Vec<crate::train::pseudo::PseudoQuery>),
    /// The training history of an opened run (its `metrics.jsonl`), to redraw its curves.
    TrainHistory(Vec<TrainEvent>),
    /// A corpus with generated titles was written; `generated` titles are new.
    TitledCorpus {
        path: PathBuf,
        generated: usize,
    },
    /// Hub download progress: file, bytes so far, total bytes.
    Download {
        file: String,
        done: u64,
        total: u64,
    },
    /// How the model scores a chosen passage for the current question.
    Explanation(Box<crate::retrieve::Explanation>),
    /// A model was exported.
    Exported(export::ExportSummary),
    /// BM25's ranking for `query`, best first.
    Bm25 {
        query: String,
        hits: Vec<Bm25Hit>,
    },
    Error(String),
    /// The job ended (successfully, cancelled or failed).
    Finished,
}

/// What the front end shows about the loaded model and its corpus trie.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// One line: source and training state.
    pub description: String,
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub vocab_size: usize,
    pub context: usize,
    /// Bytes of f32 weights (inference copy).
    pub weight_bytes: usize,
    pub trie: crate::trie::corpus_trie::TrieStats,
    /// Whether the base model reads the query likelihood by default for this model.
    pub likelihood_base_default: bool,
    /// The run folder the loaded model came from (`None`: untrained or an exported folder).
    pub run: Option<PathBuf>,
    /// A docid run's tree (the session retrieves by docid).
    pub docid_tree: Option<Arc<crate::docids::DocidTree>>,
}

impl SessionInfo {
    fn of(s: &QuerySession, description: String) -> Self {
        let cfg = &s.model.config;
        SessionInfo {
            description,
            parameters: cfg.parameter_count(),
            trainable_parameters: s.bundle.trainable_parameters(),
            vocab_size: cfg.vocab_size,
            context: cfg.max_position_embeddings,
            weight_bytes: cfg.parameter_count() * 4,
            trie: s.trie.stats(),
            likelihood_base_default: s.likelihood_base_default(),
            run: s.run.clone(),
            docid_tree: s.docids.as_ref().map(|d| Arc::new(d.tree.clone())),
        }
    }
}

/// Handle held by the front end.
pub struct Worker {
    jobs: Sender<Job>,
    control: Sender<Control>,
    events: Receiver<Event>,
}

struct ChannelControl<'a> {
    rx: Receiver<Control>,
    paused: bool,
    save: bool,
    /// Tells the front end a pause has taken hold (no work in flight any more).
    announce: &'a dyn Fn(Event),
}

impl ChannelControl<'_> {
    /// True when the job should stop. While paused it blocks, returning only to stop, to go
    /// on, or (`wake_to_save`, training) to let a checkpoint asked for meanwhile be written,
    /// still paused.
    fn drain(&mut self, wake_to_save: bool) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Control::Cancel) => return true,
                Ok(Control::Pause) => self.paused = true,
                Ok(Control::Resume) => self.paused = false,
                Ok(Control::SaveNow) => self.save = true,
                Err(TryRecvError::Empty) => {
                    if !self.paused || (wake_to_save && self.save) {
                        return false;
                    }
                    // Paused: say so, then wait for the next control message instead of
                    // spinning.
                    (self.announce)(Event::Paused);
                    match self.rx.recv() {
                        Ok(Control::Cancel) | Err(_) => return true,
                        Ok(Control::Resume) => self.paused = false,
                        Ok(Control::Pause) => {}
                        Ok(Control::SaveNow) => self.save = true,
                    }
                }
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }
}

impl TrainControl for ChannelControl<'_> {
    fn should_cancel(&mut self) -> bool {
        self.drain(true)
    }
    fn save_requested(&mut self) -> bool {
        std::mem::take(&mut self.save)
    }
    fn is_paused(&self) -> bool {
        self.paused
    }
}

impl Worker {
    /// Starts the worker thread. `notify` is called after every event (the GUI requests a repaint).
    pub fn spawn(notify: Box<dyn Fn() + Send>) -> Worker {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (ctl_tx, ctl_rx) = unbounded::<Control>();
        let (ev_tx, ev_rx) = unbounded::<Event>();
        std::thread::Builder::new()
            .name("selfret-worker".into())
            .spawn(move || {
                let send = |e: Event| {
                    let _ = ev_tx.send(e);
                    notify();
                };
                let mut session: Option<QuerySession> = None;
                let mut control = ChannelControl {
                    rx: ctl_rx,
                    paused: false,
                    save: false,
                    announce: &send,
                };
                for job in job_rx {
                    // Stale control messages from an earlier job must not cancel this one.
                    while control.rx.try_recv().is_ok() {}
                    control.paused = false;
                    control.save = false;
                    run_job(job, &mut session, &mut control, &send);
                    send(Event::Finished);
                }
            })
            .expect("spawning the worker thread");
        Worker {
            jobs: job_tx,
            control: ctl_tx,
            events: ev_rx,
        }
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) {
        let _ = self.jobs.send(job);
    }

    /// Sends a control message to the running job.
    pub fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Events since the last call (never blocks).
    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Blocks for the next event (for the CLI and tests).
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }
}

/// Turns Hub download callbacks into events, at most one per percent per file.
fn download_reporter<'a>(send: &'a dyn Fn(Event)) -> impl FnMut(&str, u64, u64) + 'a {
    let mut last: Option<(String, u64)> = None;
    move |file: &str, done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(0);
        if last.as_ref().is_some_and(|(f, p)| f == file && *p == pct) {
            return;
        }
        last = Some((file.to_string(), pct));
        send(Event::Download {
            file: file.to_string(),
            done,
            total,
        });
    }
}

/// The loaded model, or the error that says how to get one.
fn loaded(session: &Option<QuerySession>) -> crate::Result<&QuerySession> {
    session
        .as_ref()
        .ok_or_else(|| crate::Error::invalid("no model loaded: train or open a run first"))
}

fn run_job(
    job: Job,
    session: &mut Option<QuerySession>,
    control: &mut ChannelControl,
    send: &dyn Fn(Event),
) {
    let result: crate::Result<()> = (|| match job {
        Job::LoadCorpus(path, opts) => {
            send(Event::Started(format!("loading {}", path.display())));
            let c = load_path(&path, &opts)?;
            send(Event::CorpusLoaded(Arc::new(c)));
            Ok(())
        }
        Job::Index { spec, run, resume } => {
            send(Event::Started("training".into()));
            let mut dl = download_reporter(send);
            let mut stopped_at = None;
            let result = index::run_index(
                &spec,
                &run,
                resume,
                control,
                &mut |e| {
                    if let TrainEvent::Finished {
                        step,
                        cancelled: true,
                    } = e
                    {
                        stopped_at = Some(step);
                    }
                    send(Event::Train(e))
                },
                Some(&mut dl),
            );
            crate::kernels::release_memory();
            result?;
            // A stopped run does not silently replace the model that answers queries: the one
            // loaded before stays, and says so.
            if let (Some(step), Some(s)) = (stopped_at, session.as_ref()) {
                let d = format!(
                    "{} (still loaded: training stopped at step {step}; open {} to query the stopped run)",
                    s.bundle.source,
                    run.display()
                );
                send(Event::SessionReady(SessionInfo::of(s, d)));
                return Ok(());
            }
            let s = QuerySession::open_run(&run)?;
            let d = match stopped_at {
                Some(step) => format!("{} (stopped at step {step})", spec.model),
                None => format!("{} (trained, step {})", spec.model, s.bundle.step),
            };
            send(Event::SessionReady(SessionInfo::of(&s, d)));
            *session = Some(s);
            Ok(())
        }
        Job::OpenRun(run) => {
            send(Event::Started(format!("opening {}", run.display())));
            let history = index::read_history(&run);
            if !history.is_empty() {
                send(Event::TrainHistory(history));
            }
            let s = QuerySession::open_run(&run)?;
            let d = format!("{} (step {})", run.display(), s.bundle.step);
            send(Event::SessionReady(SessionInfo::of(&s, d)));
            *session = Some(s);
            Ok(())
        }
        Job::OpenUntrained { source, corpus } => {
            send(Event::Started(format!("loading {source}")));
            let mut dl = download_reporter(send);
            let s = QuerySession::open_untrained(&source, &corpus, Some(&mut dl))?;
            let d = format!("{source} (not fine-tuned)");
            send(Event::SessionReady(SessionInfo::of(&s, d)));
            *session = Some(s);
            Ok(())
        }
        Job::Query { text, opts } => {
            send(Event::Started(format!("query: {text}")));
            let s = loaded(session)?;
            let answer = opts.answer.then_some(opts.max_answer_tokens);
            if let Some(trace) = s.docid_query(&text, DOCID_BEAMS, answer, opts.answer_passages) {
                send(Event::DocidTrace(Box::new(trace?)));
                return Ok(());
            }
            let opts = s.options_for_model(&opts);
            let trace = s.query(&text, &opts, &mut |t| {
                send(Event::Trace {
                    trace: t.clone(),
                    done: false,
                })
            })?;
            send(Event::Trace { trace, done: true });
            Ok(())
        }
        Job::Explain {
            trace,
            passage_id,
            opts,
        } => {
            send(Event::Started(format!("scoring {passage_id}")));
            let s = loaded(session)?;
            let opts = s.options_for_model(&opts);
            let e = s.explain(&trace, &passage_id, &opts)?;
            send(Event::Explanation(Box::new(e)));
            Ok(())
        }
        Job::Export { run, out } => {
            send(Event::Started(format!("exporting to {}", out.display())));
            let s = export::export_run(&run, "checkpoint", &out, false)?;
            send(Event::Exported(s));
            Ok(())
        }
        Job::Bm25 { query, k } => {
            let s = loaded(session)?;
            let hits = s
                .bm25_top(&query, k)
                .into_iter()
                .map(|i| {
                    let p = &s.corpus.passages[i];
                    Bm25Hit {
                        passage_id: p.id.clone(),
                        title: p.title.clone(),
                    }
                })
                .collect();
            send(Event::Bm25 { query, hits });
            Ok(())
        }
        Job::Eval {
            queries,
            corpus,
            limit,
            plan,
            self_retrieval,
        } => {
            send(Event::Started(format!("evaluating {}", queries.display())));
            let mut qs = crate::train::data::load_queries(&queries)?;
            if let Some(n) = limit {
                qs.truncate(n);
            }
            let s = if self_retrieval {
                session.as_ref()
            } else {
                None
            };
            let loaded;
            let corpus = match s {
                Some(s) => &s.corpus,
                None => {
                    loaded = load_path(&corpus, &LoadOptions::default())?;
                    &loaded
                }
            };
            let check = crate::eval::check_queries(&mut qs, corpus);
            let notes = check.report();
            if !notes.is_empty() {
                send(Event::EvalNotes(notes));
            }
            check
                .refuse_if_nothing_scorable(qs.len())
                .map_err(|e| crate::Error::bad_file(&queries, e.to_string()))?;
            let systems = crate::eval::run::run_eval(
                s,
                corpus,
                &qs,
                &plan,
                &mut |system, done, total| {
                    // Every query would flood the GUI; report in steps.
                    if done == total || done % 5 == 0 {
                        send(Event::EvalProgress {
                            system: system.to_string(),
                            done,
                            total,
                        })
                    }
                },
                &mut || control.drain(false),
                &mut |_, _| {},
            )?;
            send(Event::EvalDone(systems));
            Ok(())
        }
        Job::PseudoQueries(opts) => {
            send(Event::Started("writing pseudo-queries".into()));
            let s = session.as_ref().ok_or_else(|| {
                crate::Error::invalid(
                    "no model loaded: load a pretrained model (Model panel) to write questions",
                )
            })?;
            let qs = s.pseudo_queries(&opts, &mut |done, total| {
                send(Event::Progress {
                    label: "pseudo-queries".into(),
                    done,
                    total,
                });
                control.drain(false)
            })?;
            send(Event::PseudoQueries(qs));
            Ok(())
        }
        Job::GenerateTitles(out) => {
            send(Event::Started("writing titles".into()));
            let s = session.as_ref().ok_or_else(|| {
                crate::Error::invalid("no model loaded: load a pretrained model to write titles")
            })?;
            let generated = s.write_titled_corpus(&out, &mut |done, total| {
                send(Event::Progress {
                    label: "titles".into(),
                    done,
                    total,
                });
                control.drain(false)
            })?;
            send(Event::TitledCorpus {
                path: out,
                generated,
            });
            Ok(())
        }
    })();
    if let Err(e) = result {
        send(Event::Error(e.to_string()));
    }
}
