//! Checkpoint I/O: `model.safetensors` under the Hugging Face Llama tensor names, `config.json`
//! beside it. Loading checks every tensor the config implies for presence and shape before any
//! is used and names the first offender; writes are atomic (temporary file, fsync, rename), so
//! a crash never leaves a checkpoint that loads wrong.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use dynact_files::{atomic_write, atomic_write_bytes};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::init::ShapeRecorder;
use crate::param_kind::ParamKind;
use crate::transformer::Transformer;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";

/// Every tensor the model of `cfg` is made of, with its shape, in construction order.
pub fn expected_tensors(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    cfg.validate()?;
    let recorder = ShapeRecorder::default();
    let seen = recorder.seen.clone();
    let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu);
    Transformer::new(cfg, vb)?;
    let list = seen.lock().expect("recorder lock poisoned").clone();
    Ok(list)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    }
}

/// Saves the parameters of `varmap` (f32) as safetensors, tensors sorted by name, with the
/// `{"format": "pt"}` metadata that `transformers` expects.
pub fn save_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut v: Vec<_> = data
            .iter()
            .map(|(k, var)| (k.clone(), var.as_tensor().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    save_tensors(&tensors, path)
}

/// Saves named tensors as safetensors, atomically.
pub fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    save_tensors_with_metadata(tensors, &[], path)
}

/// Saves named tensors as safetensors, atomically, with `metadata` besides `{"format": "pt"}`.
pub fn save_tensors_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: &[(&str, &str)],
    path: &Path,
) -> Result<()> {
    let tensors = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let mut metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    metadata.insert("format".to_string(), "pt".to_string());
    atomic_write(path, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k, t)), Some(metadata), tmp)
            .map_err(std::io::Error::other)
    })
    .map_err(write_err(path))
}

/// transformers' remote code for dynActGLU, written beside every dynActGLU checkpoint:
/// `config.json`'s `auto_map` names these classes, so
/// `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it.
pub const HF_REMOTE_CODE: [(&str, &str); 2] = [
    (
        "configuration_dynact_llama.py",
        include_str!("../hf/configuration_dynact_llama.py"),
    ),
    (
        "modeling_dynact_llama.py",
        include_str!("../hf/modeling_dynact_llama.py"),
    ),
];

/// Writes what transformers needs beside the weights of a checkpoint folder: `config.json`,
/// and for dynActGLU the remote code its `auto_map` names.
pub fn save_checkpoint_config(cfg: &ModelConfig, dir: &Path) -> Result<()> {
    save_config(cfg, &dir.join(CONFIG_FILE))?;
    if cfg.ffn == crate::FfnKind::Dynactglu {
        for (name, code) in HF_REMOTE_CODE {
            let path = dir.join(name);
            atomic_write_bytes(&path, code.as_bytes()).map_err(write_err(&path))?;
        }
    }
    Ok(())
}

pub fn save_config(cfg: &ModelConfig, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(&cfg.to_hf_json()).expect("config serialises");
    atomic_write_bytes(path, text.as_bytes()).map_err(write_err(path))
}

pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    ModelConfig::from_hf_json(&text).map_err(|message| ModelError::BadConfigJson {
        path: path.to_path_buf(),
        message,
    })
}

/// The weight files of a checkpoint folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.is_file() {
        return Err(ModelError::Io {
            op: "read",
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in this folder"),
            ),
        });
    }
    Ok(index_shard_names(&index)?
        .into_iter()
        .map(|f| dir.join(f))
        .collect())
}

/// The shard file names a `model.safetensors.index.json` lists (sorted, each once).
pub fn index_shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let bad = |message: String| ModelError::BadSafetensors {
        path: index.to_path_buf(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(bad("it lists no weight files".into()));
    }
    Ok(names)
}

/// Tensors some exporters write that the model derives itself, safe to skip.
fn is_derived_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Where each tensor of a set of shards is: the shard's index, the tensor's shape and dtype.
type ShardIndex = HashMap<String, (usize, Vec<usize>, safetensors::Dtype)>;

/// Maps every file of `files` into memory and lists the tensors each holds.
fn map_shards(files: &[PathBuf]) -> Result<(Vec<memmap2::Mmap>, ShardIndex)> {
    let mut found = ShardIndex::new();
    let mut buffers = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the file is opened read-only and checkpoints are not modified in place
        // (every writer renames a new file over the old one).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
            ModelError::BadSafetensors {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        for (name, view) in st.tensors() {
            found.insert(name, (i, view.shape().to_vec(), view.dtype()));
        }
        buffers.push(mmap);
    }
    Ok((buffers, found))
}

/// The first tensor of `expected` that `found` lacks or holds in another shape, as an error.
fn check_present(expected: &[(String, Vec<usize>)], found: &ShardIndex) -> Result<()> {
    for (name, shape) in expected {
        match found.get(name) {
            None => {
                return Err(ModelError::MissingTensor {
                    name: name.clone(),
                    expected: shape.clone(),
                })
            }
            Some((_, got, _)) if got != shape => {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: got.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The first (by name) tensor of `found` that the model of `config` has no use for, as an
/// error with a hint when the config explains it.
fn check_no_unexpected(
    expected: &[(String, Vec<usize>)],
    found: &ShardIndex,
    config: &ModelConfig,
) -> Result<()> {
    let mut unexpected: Vec<&String> = found
        .keys()
        .filter(|n| !expected.iter().any(|(e, _)| e == *n) && !is_derived_buffer(n))
        // Tied checkpoints sometimes carry a copy of the embedding as lm_head.
        .filter(|n| !(config.tie_word_embeddings && n.as_str() == "lm_head.weight"))
        .collect();
    unexpected.sort();
    if let Some(name) = unexpected.first() {
        let hint = if ParamKind::of(name) == ParamKind::DynActScalar {
            format!(
                " (a dynActGLU parameter, but the config says ffn = {})",
                config.ffn.name()
            )
        } else if name.as_str() == "lm_head.weight" {
            " (the config says tie_word_embeddings = true)".to_string()
        } else {
            String::new()
        };
        return Err(ModelError::UnexpectedTensor {
            name: name.to_string(),
            hint,
        });
    }
    Ok(())
}

/// The tensors of `expected`, read from the mapped shards, widened to f32 and moved to
/// `device`, as `Var`s.
fn load_vars(
    expected: &[(String, Vec<usize>)],
    found: &ShardIndex,
    buffers: &[memmap2::Mmap],
    device: &Device,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock poisoned");
        for (name, _) in expected {
            let (file_index, _, dtype) = &found[name];
            if !matches!(
                dtype,
                safetensors::Dtype::F32 | safetensors::Dtype::BF16 | safetensors::Dtype::F16
            ) {
                return Err(ModelError::UnsupportedDtype {
                    name: name.clone(),
                    dtype: format!("{dtype:?}"),
                });
            }
            let st = safetensors::SafeTensors::deserialize(&buffers[*file_index])
                .expect("validated above");
            let view = st.tensor(name).expect("listed above");
            let tensor = candle_core::safetensors::Load::load(&view, &Device::Cpu)?
                .to_dtype(DType::F32)?
                .to_device(device)?;
            data.insert(name.clone(), Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

/// Model parameters read from disk and checked against a config, as f32 `Var`s.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub varmap: VarMap,
}

impl Checkpoint {
    /// Loads and validates `files` (one or several safetensors shards) against `config`.
    /// bf16 and f16 weights are widened to f32. Every expected tensor is checked for presence
    /// and shape, and every present one for being expected, before any is read.
    pub fn load(files: &[PathBuf], config: ModelConfig, device: &Device) -> Result<Checkpoint> {
        let expected = expected_tensors(&config)?;
        let (buffers, found) = map_shards(files)?;
        check_present(&expected, &found)?;
        check_no_unexpected(&expected, &found, &config)?;
        let varmap = load_vars(&expected, &found, &buffers, device)?;
        Ok(Checkpoint { config, varmap })
    }

    /// Loads a checkpoint folder (config.json + model.safetensors or shards).
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Checkpoint> {
        let config = read_config(&dir.join(CONFIG_FILE))?;
        Checkpoint::load(&weight_files(dir)?, config, device)
    }

    /// The model over these parameters (sharing them: training it updates this checkpoint).
    pub fn model(&self, device: &Device) -> Result<Transformer> {
        let vb = VarBuilder::from_varmap(&self.varmap, DType::F32, device);
        Ok(Transformer::new(&self.config, vb)?)
    }

    /// A model for inference only: it reads the same parameters, detached, so forward passes
    /// record no autograd graph (less bookkeeping and memory than [`Checkpoint::model`]). On a
    /// CPU its linear layers hold transposed copies of their weights, and on AVX-512 packed
    /// ones too ([`crate::layers::Linear::from_weight`]; an FFN's gate and up weights one
    /// stacked copy, [`crate::layers::Linear::stacked`], and, for an input of 512 or fewer,
    /// one pack of both) while the rest
    /// shares the parameters' storage, so make a new one after training changes them.
    pub fn inference_model(&self, device: &Device) -> Result<Transformer> {
        let tensors: HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Transformer::new(&self.config, vb)?)
    }

    /// Writes `config.json` and `model.safetensors` into `dir`.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        save_weights(&self.varmap, &dir.join(WEIGHTS_FILE))?;
        save_checkpoint_config(&self.config, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::expected_tensors;
    use crate::config::{FfnKind, ModelConfig};
    use crate::param_kind::ParamKind::{self, *};

    /// Every tensor of `cfg` by name, with its kind, written out by hand.
    fn listed(cfg: &ModelConfig) -> Vec<(String, ParamKind)> {
        let mut list = vec![("model.embed_tokens.weight".to_string(), Embedding)];
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            list.push((format!("{l}.input_layernorm.weight"), Norm));
            for p in ["q", "k", "v", "o"] {
                list.push((format!("{l}.self_attn.{p}_proj.weight"), Matrix));
            }
            list.push((format!("{l}.post_attention_layernorm.weight"), Norm));
            for p in ["gate", "up", "down"] {
                list.push((format!("{l}.mlp.{p}_proj.weight"), Matrix));
            }
            if cfg.ffn == FfnKind::Dynactglu {
                list.push((format!("{l}.mlp.act_fn.alpha"), DynActScalar));
                list.push((format!("{l}.mlp.act_fn.beta"), DynActScalar));
            }
        }
        list.push(("model.norm.weight".to_string(), Norm));
        if !cfg.tie_word_embeddings {
            list.push(("lm_head.weight".to_string(), Matrix));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The trainer's weight-decay rule as it stood before it asked `ParamKind`.
    fn name_rule_decays(name: &str, rank: usize, decay_embeddings: bool) -> bool {
        if rank < 2 || name.contains("act_fn.") || name.contains("norm") {
            return false;
        }
        decay_embeddings || !name.contains("embed_tokens")
    }

    #[test]
    fn every_model_tensor_has_its_kind() {
        for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
            for tie_word_embeddings in [false, true] {
                let cfg = ModelConfig {
                    ffn,
                    tie_word_embeddings,
                    num_hidden_layers: 2,
                    ..ModelConfig::default()
                };
                let what = format!("{ffn:?}, tied = {tie_word_embeddings}");
                let mut tensors = expected_tensors(&cfg).unwrap();
                tensors.sort();
                let names: Vec<&String> = tensors.iter().map(|(n, _)| n).collect();
                let list = listed(&cfg);
                assert_eq!(
                    names,
                    list.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "{what}"
                );
                for ((name, shape), (_, kind)) in tensors.iter().zip(&list) {
                    assert_eq!(ParamKind::of(name), *kind, "{name} ({what})");
                    let rank = shape.len();
                    assert_eq!(rank >= 2, matches!(kind, Matrix | Embedding), "{name} rank");
                    for decay_embeddings in [false, true] {
                        assert_eq!(
                            kind.decays(decay_embeddings),
                            name_rule_decays(name, rank, decay_embeddings),
                            "{name} decay_embeddings = {decay_embeddings}"
                        );
                    }
                    assert_eq!(kind.decayed_by_default(), kind.decays(false), "{name}");
                }
            }
        }
    }
}
