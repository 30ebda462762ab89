//! Checkpoints: Hugging Face Llama tensor names, a save/load round trip that gives the same
//! logits, and loading errors that name the tensor at fault.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{ids, max_abs_diff, tiny};
use dynact_model::checkpoint::{save_tensors, CONFIG_FILE, HF_REMOTE_CODE, WEIGHTS_FILE};
use dynact_model::{expected_tensors, init_model, Checkpoint, FfnKind, ForwardCtx, ModelError};

#[test]
fn tensor_names_are_the_llama_ones() {
    let names: Vec<String> = expected_tensors(&tiny(FfnKind::Dynactglu))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.mlp.act_fn.alpha",
        "model.layers.1.mlp.act_fn.beta",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert!(names.contains(&n.to_string()), "missing {n} in {names:?}");
    }
    assert_eq!(names.len(), 1 + 2 * 11 + 1 + 1);
    let mut tied = tiny(FfnKind::Swiglu);
    tied.tie_word_embeddings = true;
    let names: Vec<String> = expected_tensors(&tied)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.contains(&"lm_head.weight".to_string()));
    assert!(!names.iter().any(|n| n.contains("act_fn")));
}

#[test]
fn save_then_load_gives_the_same_logits() {
    let dev = Device::Cpu;
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let cfg = tiny(ffn);
        let (varmap, model) = init_model(&cfg, 9, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint {
            config: cfg.clone(),
            varmap,
        };
        ckpt.save_dir(dir.path()).unwrap();
        let loaded = Checkpoint::load_dir(dir.path(), &dev).unwrap();
        assert_eq!(
            loaded.config,
            dynact_model::ModelConfig { head_dim: 8, ..cfg }
        );
        let x = ids(2, 10, 48, 1);
        let a = model.forward(&x, &ForwardCtx::EVAL).unwrap();
        let b = loaded
            .model(&dev)
            .unwrap()
            .forward(&x, &ForwardCtx::EVAL)
            .unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        let c = loaded
            .inference_model(&dev)
            .unwrap()
            .forward(&x, &ForwardCtx::EVAL)
            .unwrap();
        assert_eq!(max_abs_diff(&a, &c), 0.0);
        // Nothing temporary is left behind; dynActGLU carries transformers' remote code.
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        files.sort();
        let mut expected = vec![CONFIG_FILE.to_string(), WEIGHTS_FILE.to_string()];
        if ffn == FfnKind::Dynactglu {
            expected.extend(HF_REMOTE_CODE.iter().map(|(name, _)| name.to_string()));
        }
        expected.sort();
        assert_eq!(files, expected);
    }
}

fn write_checkpoint(dir: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let cfg = tiny(FfnKind::Dynactglu);
    let (varmap, _model) = init_model(&cfg, 9, &Device::Cpu).unwrap();
    Checkpoint {
        config: cfg,
        varmap: varmap.clone(),
    }
    .save_dir(dir)
    .unwrap();
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    edit(&mut tensors);
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    save_tensors(&list, &dir.join(WEIGHTS_FILE)).unwrap();
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), |t| {
        t.insert(
            "model.layers.1.mlp.up_proj.weight".into(),
            Tensor::zeros((64, 31), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = Checkpoint::load_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.layers.1.mlp.up_proj.weight")
            && msg.contains("[64, 31]")
            && msg.contains("[64, 32]"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), |t| {
        t.remove("model.layers.0.mlp.act_fn.beta");
    });
    let msg = Checkpoint::load_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("missing tensor `model.layers.0.mlp.act_fn.beta`"),
        "{msg}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), |t| {
        t.insert(
            "model.layers.0.mlp.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = Checkpoint::load_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("unexpected tensor `model.layers.0.mlp.extra.weight`"),
        "{msg}"
    );
}

#[test]
fn truncated_and_garbage_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), |_| {});
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = Checkpoint::load_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("truncated must fail");
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err}");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let err = Checkpoint::load_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("garbage must fail");
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err}");
}

#[test]
fn bf16_weights_load_widened() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(FfnKind::Swiglu);
    let (varmap, model) = init_model(&cfg, 9, &Device::Cpu).unwrap();
    Checkpoint {
        config: cfg,
        varmap: varmap.clone(),
    }
    .save_dir(dir.path())
    .unwrap();
    let bf16: Vec<(String, Tensor)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap()))
        .collect();
    save_tensors(&bf16, &dir.path().join(WEIGHTS_FILE)).unwrap();
    let loaded = Checkpoint::load_dir(dir.path(), &Device::Cpu).unwrap();
    let x = ids(1, 8, 48, 2);
    let a = model.forward(&x, &ForwardCtx::EVAL).unwrap();
    let b = loaded
        .model(&Device::Cpu)
        .unwrap()
        .forward(&x, &ForwardCtx::EVAL)
        .unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(
        d > 0.0 && d < 0.05,
        "bf16 rounding should change logits slightly, got {d}"
    );
}
