//! Parity with Hugging Face transformers' Llama: logits of a small GQA model with formula
//! weights against `reference/llama_reference.py`, a line-by-line numpy port of
//! `LlamaForCausalLM` (RMSNorm, rotate_half RoPE, repeat_kv, causal attention, SwiGLU MLP) in
//! float64, for SwiGLU and for dynActGLU with per-layer (alpha, beta). The constants below are
//! that script's output (`python3 crates/model/tests/reference/llama_reference.py`).

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use dynact_model::{expected_tensors, Checkpoint, FfnKind, ForwardCtx, ModelConfig};

const IDS: [u32; 8] = [3, 14, 1, 5, 9, 2, 6, 11];
const DYNACT: [(f64, f64); 2] = [(1.2, 0.3), (0.8, -0.1)];

fn config(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        ffn,
        vocab_size: 16,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        ..ModelConfig::default()
    }
}

/// The script's `weight(name, shape)`.
fn weight(name: &str, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let w = 0.3 * (0.37 * i as f64 + 0.11 * name.len() as f64).sin();
            (if name.ends_with("norm.weight") {
                1.0 + 0.1 * w
            } else {
                w
            }) as f32
        })
        .collect()
}

fn logits(ffn: FfnKind) -> Vec<f32> {
    let cfg = config(ffn);
    let varmap = VarMap::new();
    for (name, shape) in expected_tensors(&cfg).unwrap() {
        let n = shape.iter().product();
        let values = match name.rsplit_once(".mlp.act_fn.") {
            Some((layer, param)) => {
                let i: usize = layer.trim_start_matches("model.layers.").parse().unwrap();
                let (alpha, beta) = DYNACT[i];
                vec![if param == "alpha" { alpha } else { beta } as f32; n]
            }
            None => weight(&name, n),
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        varmap
            .data()
            .lock()
            .unwrap()
            .insert(name, Var::from_tensor(&t).unwrap());
    }
    let model = Checkpoint {
        config: cfg,
        varmap,
    }
    .model(&Device::Cpu)
    .unwrap();
    let ids = Tensor::new(&IDS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let out = model.forward(&ids, &ForwardCtx::EVAL).unwrap();
    out.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_matches(got: &[f32], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (*g as f64 - e).abs() < 2e-5,
            "{what}: logit {i} (position {}, token {}) is {g}, transformers gives {e}",
            i / 16,
            i % 16
        );
    }
}

#[test]
fn swiglu_logits_match_transformers_llama() {
    assert_matches(&logits(FfnKind::Swiglu), &SWIGLU, "swiglu");
}

#[test]
fn dynactglu_logits_match_the_reference() {
    assert_matches(&logits(FfnKind::Dynactglu), &DYNACTGLU, "dynactglu");
}

// Output of reference/llama_reference.py.
#[rustfmt::skip]
const SWIGLU: [f64; 128] = [
    1.595128, 1.851099, 1.865576, 1.636670, 1.194244, 0.596016, -0.079967, -0.745518,
    -1.313809, -1.710700, -1.884413, -1.812286, -1.503727, -0.998993, -0.363929, 0.318612,
    -1.397368, -1.178068, -0.805077, -0.327055, 0.193634, 0.689061, 1.094594, 1.357326,
    1.442981, 1.340384, 1.062921, 0.646790, 0.146278, -0.373317, -0.844210, -1.204966,
    -0.763354, -0.972762, -1.055264, -1.000095, -0.814454, -0.522560, -0.162492, 0.218775,
    0.571500, 0.849667, 1.016987, 1.051630, 0.949078, 0.722709, 0.402055, 0.028950,
    1.536528, 1.442581, 1.160435, 0.726898, 0.198530, -0.355738, -0.863597, -1.258790,
    -1.489762, -1.526380, -1.363865, -1.023421, -0.549462, -0.003819, 0.542322, 1.017711,
    1.601184, 1.867404, 1.890002, 1.666031, 1.224709, 0.623611, -0.058843, -0.733620,
    -1.312689, -1.720505, -1.903864, -1.838844, -1.533929, -1.028897, -0.389635, 0.300458,
    -0.478585, -0.695833, -0.822302, -0.841494, -0.750905, -0.562352, -0.300435, 0.000677,
    0.301700, 0.563364, 0.751531, 0.841654, 0.821974, 0.695059, 0.477467, 0.197585,
    1.681308, 1.696121, 1.489659, 1.088856, 0.546001, -0.068086, -0.673290, -1.190657,
    -1.552691, -1.712160, -1.648261, -1.369330, -0.911756, -0.335234, 0.285022, 0.868095,
    0.424699, 1.075184, 1.585401, 1.888786, 1.945760, 1.748890, 1.323860, 0.726119,
    0.033648, -0.663212, -1.273550, -1.717740, -1.937834, -1.905117, -1.623860, -1.130753,
];
#[rustfmt::skip]
const DYNACTGLU: [f64; 128] = [
    1.669663, 1.960645, 1.995840, 1.770658, 1.314477, 0.686808, -0.030462, -0.743757,
    -1.360022, -1.798859, -2.003016, -1.945859, -1.634846, -1.110551, -0.441373, 0.285386,
    -1.549111, -1.281792, -0.847250, -0.302176, 0.282320, 0.829984, 1.269369, 1.543152,
    1.615615, 1.477305, 1.146266, 0.665684, 0.098258, -0.481987, -0.999352, -1.386342,
    -0.761734, -0.960348, -1.033675, -0.972149, -0.783797, -0.493190, -0.138241, 0.234742,
    0.577101, 0.844171, 1.001111, 1.027446, 0.919740, 0.692045, 0.374065, 0.007285,
    1.559584, 1.467997, 1.184895, 0.747212, 0.212047, -0.350781, -0.867846, -1.271692,
    -1.509633, -1.550628, -1.389327, -1.046774, -0.567660, -0.014488, 0.540573, 1.025112,
    1.713899, 2.002170, 2.029238, 1.791572, 1.320177, 0.676552, -0.055337, -0.780006,
    -1.402915, -1.842800, -2.042274, -1.975312, -1.650651, -1.110646, -0.425746, 0.314697,
    -0.477382, -0.676404, -0.787181, -0.795264, -0.699596, -0.512658, -0.258840, 0.028747,
    0.312584, 0.555641, 0.726209, 0.802035, 0.773229, 0.643546, 0.429907, 0.160182,
    1.744846, 1.760247, 1.546007, 1.130074, 0.566712, -0.070583, -0.698670, -1.235609,
    -1.611350, -1.776874, -1.710587, -1.421137, -0.946285, -0.347981, 0.295721, 0.900843,
    0.532387, 1.235326, 1.777105, 2.087043, 2.124705, 1.885178, 1.399710, 0.731637,
    -0.031886, -0.791250, -1.447386, -1.914697, -2.132216, -2.071566, -1.740660, -1.182667,
];
