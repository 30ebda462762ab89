//! The logs of a run, one JSON object per line: `metrics.jsonl` (a [`MetricsRecord`] every
//! `train.log_every` steps), `eval.jsonl` (an [`EvalRecord`] per evaluation) and
//! `samples.jsonl` (a [`SampleRecord`] per evaluation, with `eval.sample_tokens`). `train-lm`
//! writes these types and `compare-runs` reads them, so the two cannot drift apart. Fields
//! added later are optional, so logs of older runs still read.

use serde::{Deserialize, Serialize};

/// One evaluation of the whole validation set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalRecord {
    pub step: u64,
    pub tokens_seen: u64,
    /// Mean next-token cross-entropy in nats.
    pub val_ce: f64,
    /// exp(val_ce).
    pub val_ppl: f64,
    /// Bits per UTF-8 byte (absent when the tokenizer's byte lengths are unknown).
    pub val_bpb: Option<f64>,
    /// Training wall time of the run up to this step, seconds.
    pub elapsed_s: f64,
    /// Tokens scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_tokens: Option<u64>,
    /// The same scores on a fixed slice of the training stream, its first `eval.train_tokens`
    /// tokens with dropout off (absent unless that is set): the gap to val shows overfitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_ce: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_ppl: Option<f64>,
}

/// Text the model wrote at an evaluation: the same prompt and sampling seed every time, so
/// the samples of one run differ only by the weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SampleRecord {
    pub step: u64,
    pub prompt: String,
    /// The continuation alone (without the prompt).
    pub text: String,
    /// Tokens drawn (at most `eval.sample_tokens`; fewer at the end of the context).
    pub tokens: usize,
    pub temperature: f64,
    pub seed: u64,
}

/// One logged training step. `alpha`/`beta` hold one value per layer (per-layer means under
/// per-channel granularity, with their standard deviations in `alpha_std`/`beta_std`) and are
/// absent for SwiGLU runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MetricsRecord {
    pub step: u64,
    /// Mean training loss of the step's micro-batches.
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens per second since the previous logged step.
    pub tokens_per_s: f64,
    /// Training wall time of the run so far, seconds.
    pub elapsed_s: f64,
    /// Estimated seconds to the last step, at this invocation's pace (evaluations included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// Model FLOPs utilisation: training FLOP/s (model FLOPs per token x tokens/s) over the
    /// device's peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_std: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_std: Option<Vec<f64>>,
    /// On a CUDA GPU: its memory in use (total less free, as the driver reports it, so the
    /// memory pool's reserve is included), MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_mb: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_skip_absent_fields() {
        let m = MetricsRecord {
            step: 10,
            loss: 2.5,
            lr: 1e-3,
            grad_norm: 0.75,
            tokens_per_s: 1234.0,
            elapsed_s: 3.0,
            eta_s: Some(12.0),
            mfu: None,
            alpha: Some(vec![1.0, 0.9]),
            beta: Some(vec![0.0, -0.1]),
            alpha_std: None,
            beta_std: None,
            device_memory_mb: None,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(
            !line.contains("alpha_std") && !line.contains("mfu"),
            "{line}"
        );
        assert!(line.contains("\"loss\":2.5"), "{line}");
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), m);

        // An evaluation line of a run written before `val_tokens` was logged.
        let old = r#"{"step": 100, "tokens_seen": 204800, "val_ce": 1.0996, "val_ppl": 3.0029, "val_bpb": null, "elapsed_s": 21.5}"#;
        let e: EvalRecord = serde_json::from_str(old).unwrap();
        assert_eq!((e.step, e.val_tokens, e.val_bpb), (100, None, None));
    }
}
