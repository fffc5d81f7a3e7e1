//! A model ready to train or query: the network, its trainable parameters and tokenizer, built
//! from loaded weights in a training mode, saved and loaded as checkpoint folders.

use super::checkpoint::{self, Manifest, ADAPTER, BASE_REF, DOCID, MANIFEST, OPTIMIZER, WEIGHTS};
use super::retrieval::{RetrievalConfig, RetrievalPath};
use super::source::{self, LoadedWeights, ModelSource};
use super::{Llama, LoraConfig, SpecialTokens};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tokenizers::Tokenizer;

/// Which parameters training may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum TrainMode {
    /// No parameters: inference only.
    #[default]
    Frozen,
    /// Every weight (needed for the from-scratch tiny model).
    Full,
    /// Only low-rank adapters; the base stays frozen.
    Lora(LoraConfig),
    /// Only the retrieval pathway (a docid run's warm-up); the base stays frozen.
    Retrieval,
}

impl TrainMode {
    /// The base weights stay as loaded: a checkpoint references or copies them once.
    pub fn base_frozen(&self) -> bool {
        matches!(self, TrainMode::Lora(_) | TrainMode::Retrieval)
    }
}

/// A model ready to train or query: the network, the trainable parameters, the tokenizer.
pub struct ModelBundle {
    /// The (possibly trainable) network; use [`ModelBundle::inference`] for decoding.
    pub model: Llama,
    /// The trainable parameters (all weights in `Full`, adapters in `Lora`, none in `Frozen`).
    pub varmap: VarMap,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub source: ModelSource,
    pub mode: TrainMode,
    /// Optimiser steps already taken (from a checkpoint).
    pub step: u64,
    /// Seconds spent training those steps, over every session of the run (the learning-curve
    /// snapshots' clock, which a resume continues).
    pub training_seconds: f64,
}

impl ModelBundle {
    /// Builds the network over loaded weights in the requested training mode.
    pub fn from_weights(
        w: LoadedWeights,
        source: ModelSource,
        mode: TrainMode,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let mut model = match &mode {
            TrainMode::Full => {
                {
                    let mut data = varmap
                        .data()
                        .lock()
                        .map_err(|_| Error::invalid("parameter store poisoned"))?;
                    for (k, t) in w.tensors {
                        data.insert(k, Var::from_tensor(&t)?);
                    }
                }
                Llama::load(
                    VarBuilder::from_varmap(&varmap, DType::F32, device),
                    &w.config,
                )?
            }
            _ => Llama::load(
                VarBuilder::from_tensors(w.tensors, DType::F32, device),
                &w.config,
            )?,
        };
        if let TrainMode::Lora(cfg) = &mode {
            model.add_lora(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        }
        Ok(ModelBundle {
            model,
            varmap,
            tokenizer: w.tokenizer,
            special: w.special,
            source,
            mode,
            step: 0,
            training_seconds: 0.0,
        })
    }

    /// An inference copy of the network (adapters merged, no autograd, fused kernels).
    pub fn inference(&self) -> Result<Llama> {
        self.model.for_inference()
    }

    /// Writes a checkpoint folder atomically. In LoRA mode the frozen base is written once (kept
    /// from the previous checkpoint when present) and the adapters beside it.
    pub fn save(
        &self,
        dir: &Path,
        corpus_fingerprint: Option<String>,
        hyperparameters: BTreeMap<String, String>,
    ) -> Result<()> {
        self.save_with(dir, corpus_fingerprint, hyperparameters, Vec::new())
    }

    /// [`ModelBundle::save`] with more tensor files in the same folder (the optimiser's state),
    /// written and checksummed with the weights, so the folder is replaced as one.
    pub fn save_with(
        &self,
        dir: &Path,
        corpus_fingerprint: Option<String>,
        hyperparameters: BTreeMap<String, String>,
        extra: Vec<(&str, Vec<(String, candle_core::Tensor)>)>,
    ) -> Result<()> {
        self.refuse_non_finite_parameters()?;
        let mut manifest = Manifest {
            source: self.source.to_string(),
            mode: self.mode.clone(),
            step: self.step,
            training_seconds: self.training_seconds,
            special: self.special,
            corpus_fingerprint,
            hyperparameters,
            checksums: BTreeMap::new(),
            retrieval: self.model.retrieval.as_ref().map(|p| p.config.clone()),
        };
        let previous_base = dir.join(WEIGHTS);
        let lora = matches!(self.mode, TrainMode::Lora(_));
        checkpoint::write_dir_atomic(dir, |tmp| {
            std::fs::write(tmp.join("config.json"), self.model.config.to_json())
                .map_err(|e| Error::io(tmp.join("config.json"), e))?;
            self.tokenizer
                .save(tmp.join("tokenizer.json"), false)
                .map_err(|e| Error::bad_file(tmp.join("tokenizer.json"), e.to_string()))?;
            match (&self.mode, &self.source) {
                // A GGUF base is referenced, not copied: checkpoints hold the adapters alone.
                (mode, ModelSource::Gguf(path)) if mode.base_frozen() => {
                    let base = checkpoint::BaseRef::of(path)?;
                    std::fs::write(tmp.join(checkpoint::BASE_REF), base.to_ron())
                        .map_err(|e| Error::io(tmp.join(checkpoint::BASE_REF), e))?;
                    match lora {
                        true => {
                            checkpoint::save_tensors(&tmp.join(ADAPTER), self.model.lora_weights())
                        }
                        false => Ok(()),
                    }
                }
                (mode, _) if mode.base_frozen() => {
                    let base_unchanged = Manifest::read(dir)
                        .is_ok_and(|m| m.source == manifest.source && m.mode.base_frozen());
                    if base_unchanged && previous_base.is_file() {
                        std::fs::copy(&previous_base, tmp.join(WEIGHTS))
                            .map_err(|e| Error::io(&previous_base, e))?;
                    } else {
                        let base = self.model.without_lora();
                        checkpoint::save_tensors(&tmp.join(WEIGHTS), base.named_weights()?)?;
                    }
                    match lora {
                        true => {
                            checkpoint::save_tensors(&tmp.join(ADAPTER), self.model.lora_weights())
                        }
                        false => Ok(()),
                    }
                }
                _ => checkpoint::save_tensors(&tmp.join(WEIGHTS), self.model.named_weights()?),
            }?;
            if let Some(path) = &self.model.retrieval {
                checkpoint::save_tensors(&tmp.join(DOCID), path.named_weights())?;
            }
            for (name, tensors) in extra {
                checkpoint::save_tensors(&tmp.join(name), tensors)?;
            }
            // The manifest last, with the checksum of every tensor file beside it: a loader
            // then refuses bytes changed after this point (finite garbage included).
            manifest.checksums = checkpoint::tensor_checksums(tmp)?;
            std::fs::write(tmp.join(MANIFEST), manifest.to_ron())
                .map_err(|e| Error::io(tmp.join(MANIFEST), e))
        })
    }

    /// Refuses to write parameters holding NaN or infinity: a checkpoint must stay loadable, so
    /// a run that diverged keeps its last good one.
    fn refuse_non_finite_parameters(&self) -> Result<()> {
        for var in self.varmap.all_vars() {
            if !all_finite(var.as_tensor())? {
                return Err(Error::invalid(
                    "the trained parameters became non-finite (NaN or infinity); nothing was \
                     saved, the last checkpoint stays: lower the learning rate and resume",
                ));
            }
        }
        Ok(())
    }

    /// The weights a checkpoint folder's model starts from: its own files, or the GGUF base
    /// its `base.ron` names (verified against the checksum first).
    fn checkpoint_base(dir: &Path, device: &Device) -> Result<LoadedWeights> {
        match checkpoint::BaseRef::read(dir)? {
            Some(base) => {
                base.verify(dir)?;
                let w = source::load_weights(&ModelSource::Gguf(base.path.clone()), device, None)?;
                refuse_non_finite(&base.path, &w.tensors)?;
                Ok(w)
            }
            // The folder loader refuses non-finite weights itself.
            None => source::load_hf_folder(dir, device),
        }
    }

    /// Loads a checkpoint folder written by [`ModelBundle::save`] (or any HF folder). `mode`
    /// overrides the saved training mode (e.g. `Frozen` to only query); `None` keeps it.
    pub fn load_checkpoint(dir: &Path, mode: Option<TrainMode>, device: &Device) -> Result<Self> {
        // A folder without a manifest is a plain HF folder; a manifest that does not parse is
        // an error, not a reason to guess.
        let manifest = match dir.join(MANIFEST).is_file() {
            true => Some(Manifest::read(dir)?),
            false => None,
        };
        // Adapters, a base reference or optimiser state mark a selfret checkpoint: without its
        // manifest the training mode is unknown and the adapters would be dropped in silence.
        let own_files = [ADAPTER, BASE_REF, OPTIMIZER, DOCID];
        if let (None, Some(found)) = (&manifest, own_files.iter().find(|f| dir.join(f).is_file())) {
            return Err(Error::bad_file(
                dir.join(MANIFEST),
                format!(
                    "missing: the folder holds a checkpoint's {found} but not the manifest that \
                     says its training mode, step and checksums; restore it or resume from \
                     another checkpoint"
                ),
            ));
        }
        if let Some(m) = &manifest {
            m.verify_file(dir, WEIGHTS)?;
            m.verify_file(dir, ADAPTER)?;
            m.verify_file(dir, DOCID)?;
        }
        let w = Self::checkpoint_base(dir, device)?;
        let saved_mode = manifest
            .as_ref()
            .map(|m| m.mode.clone())
            .unwrap_or_default();
        let mode = mode.unwrap_or_else(|| saved_mode.clone());
        let adapter_path = dir.join(ADAPTER);
        let mut bundle = match (&saved_mode, adapter_path.is_file()) {
            (TrainMode::Lora(lcfg), true) => {
                let adapters =
                    candle_core::safetensors::load(&adapter_path, device).map_err(|e| {
                        Error::bad_file(&adapter_path, format!("unreadable adapter weights: {e}"))
                    })?;
                refuse_non_finite(&adapter_path, &adapters)?;
                Self::with_saved_adapters(w, lcfg, adapters, &mode, device)?
            }
            _ => Self::from_weights(w, ModelSource::HfFolder(dir.to_path_buf()), mode, device)?,
        };
        bundle.source = ModelSource::HfFolder(dir.to_path_buf());
        if let Some(cfg) = manifest.as_ref().and_then(|m| m.retrieval.as_ref()) {
            let file = dir.join(DOCID);
            let tensors = candle_core::safetensors::load(&file, device).map_err(|e| {
                Error::bad_file(&file, format!("unreadable retrieval pathway: {e}"))
            })?;
            refuse_non_finite(&file, &tensors)?;
            bundle
                .attach_retrieval(cfg, tensors)
                .map_err(|e| Error::bad_file(&file, e.to_string()))?;
        }
        if let Some(m) = &manifest {
            bundle.step = m.step;
            bundle.training_seconds = m.training_seconds;
            if let Ok(src) = m.source.parse() {
                bundle.source = src;
            }
        }
        Ok(bundle)
    }

    fn with_saved_adapters(
        w: LoadedWeights,
        lcfg: &LoraConfig,
        adapters: HashMap<String, candle_core::Tensor>,
        mode: &TrainMode,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let mut model = Llama::load(
            VarBuilder::from_tensors(w.tensors, DType::F32, device),
            &w.config,
        )?;
        let trainable = matches!(mode, TrainMode::Lora(_));
        if trainable {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("parameter store poisoned"))?;
            for (k, t) in &adapters {
                data.insert(k.clone(), Var::from_tensor(t)?);
            }
        }
        let vb = if trainable {
            VarBuilder::from_varmap(&varmap, DType::F32, device)
        } else {
            VarBuilder::from_tensors(adapters, DType::F32, device)
        };
        // Kept unmerged even when frozen: the inference copy merges them, and the base stays
        // available beneath (the query likelihood can read with it).
        model.add_lora(lcfg, vb)?;
        Ok(ModelBundle {
            model,
            varmap,
            tokenizer: w.tokenizer,
            special: w.special,
            source: ModelSource::Tiny,
            mode: mode.clone(),
            step: 0,
            training_seconds: 0.0,
        })
    }

    /// Gives the model a fresh retrieval pathway (see [`RetrievalPath::initial_weights`]);
    /// docid token `t` starts from the embedding of the number `docid_index(t)`.
    pub fn open_retrieval(
        &mut self,
        cfg: &RetrievalConfig,
        docid_index: impl Fn(usize) -> u16,
        seed: u64,
    ) -> Result<()> {
        let weights =
            RetrievalPath::initial_weights(&self.model, cfg, &self.tokenizer, docid_index, seed)?;
        self.attach_retrieval(cfg, weights.into_iter().collect())
    }

    /// Attaches a retrieval pathway from its tensors: trainable (in the parameter store) unless
    /// the bundle is frozen.
    pub fn attach_retrieval(
        &mut self,
        cfg: &RetrievalConfig,
        tensors: HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        let device = self.model.device().clone();
        let vb = if matches!(self.mode, TrainMode::Frozen) {
            VarBuilder::from_tensors(tensors, DType::F32, &device)
        } else {
            {
                let mut data = self
                    .varmap
                    .data()
                    .lock()
                    .map_err(|_| Error::invalid("parameter store poisoned"))?;
                for (k, t) in &tensors {
                    data.insert(k.clone(), Var::from_tensor(t)?);
                }
            }
            VarBuilder::from_varmap(&self.varmap, DType::F32, &device)
        };
        self.model.retrieval = Some(RetrievalPath::load(vb, &self.model.config, cfg)?);
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn trainable_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// Whether a tensor holds no NaN or infinity: one pass, its sum (either would make it so).
fn all_finite(t: &candle_core::Tensor) -> Result<bool> {
    Ok(t.to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_finite())
}

/// Refuses weights holding NaN or infinity (overwritten bytes behind an intact header load
/// "fine" and turn every score into NaN): one pass over each tensor, its sum.
pub(crate) fn refuse_non_finite(
    file: &Path,
    tensors: &HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    for (name, t) in tensors {
        if !all_finite(t)? {
            return Err(Error::bad_file(
                file,
                format!("tensor `{name}` holds non-finite values (NaN or infinity): the file is corrupt; use an earlier checkpoint or retrain"),
            ));
        }
    }
    Ok(())
}
