//! Decoding for `generate`: the prompt is run once through the model filling a KV cache, then
//! one token at a time is fed back. Each next token is drawn from the last position's logits
//! by [`Sampler`]: divided by the temperature, cut to the `top_k` most likely ids, cut to the
//! smallest set whose probability reaches `top_p` (nucleus), then drawn with a seeded ChaCha8
//! generator, so the same seed writes the same text. Temperature 0 is greedy (argmax, the
//! lowest id on ties).

use anyhow::{bail, Result};
use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model_api::Decoder;

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0: greedy. Otherwise logits are divided by it before the softmax.
    pub temperature: f64,
    /// Keep only the k most likely ids (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely ids whose probability reaches p (None or 1: all).
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.8,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature {} must be 0 (greedy) or positive",
                self.temperature
            );
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p {p} must be in (0, 1]");
            }
        }
        Ok(())
    }
}

/// Draws token ids from logits.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Sampler> {
        cfg.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(Sampler { cfg, rng })
    }

    /// The next token id given one position's logits (V,).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature == 0.0 || self.cfg.top_k == Some(1) {
            return argmax(logits);
        }
        let probs = self.probabilities(logits);
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut last = 0;
        for (id, p) in probs {
            acc += p;
            last = id;
            if u < acc {
                return id;
            }
        }
        last
    }

    /// The (id, probability) pairs that may be drawn, most likely first, summing to 1.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let t = self.cfg.temperature.max(f64::MIN_POSITIVE);
        let mut scored: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l as f64 / t))
            .collect();
        if scored.is_empty() {
            return vec![(0, 1.0)];
        }
        // Most likely first; ties by id so the order (and so the draw) is reproducible.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.cfg.top_k.filter(|&k| k > 0) {
            scored.truncate(k);
        }
        let max = scored[0].1;
        let mut total = 0.0;
        for s in scored.iter_mut() {
            s.1 = (s.1 - max).exp();
            total += s.1;
        }
        for s in scored.iter_mut() {
            s.1 /= total;
        }
        if let Some(p) = self.cfg.top_p.filter(|&p| p < 1.0) {
            let mut acc = 0.0;
            let keep = scored
                .iter()
                .position(|s| {
                    acc += s.1;
                    acc >= p
                })
                .map_or(scored.len(), |i| i + 1);
            scored.truncate(keep);
            let kept: f64 = scored.iter().map(|s| s.1).sum();
            for s in scored.iter_mut() {
                s.1 /= kept;
            }
        }
        scored
    }
}

/// The id of the largest logit (the lowest id among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Continues `prompt` by up to `max_new_tokens` ids, stopping after `stop` (when given) or at
/// the model's maximum context. `on_token` sees each new id as it is chosen. Returns the new ids.
pub fn generate(
    model: &mut dyn Decoder,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut Sampler,
    stop: Option<u32>,
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let (max_positions, vocab_size) = (model.max_positions(), model.vocab_size());
    if prompt.is_empty() {
        bail!("the prompt has no tokens");
    }
    if prompt.len() > max_positions {
        bail!(
            "the prompt has {} tokens, more than the model's max_position_embeddings {max_positions}; shorten it",
            prompt.len(),
        );
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
        bail!(
            "prompt token id {bad} is at or above the model's vocabulary size {vocab_size}; use the tokenizer the model was trained with"
        );
    }
    let budget = max_new_tokens.min(max_positions - prompt.len() + 1);
    model.reset();
    let mut fed = prompt.len();
    let mut logits = model.feed(prompt, device)?;
    let mut out = Vec::with_capacity(budget);
    while out.len() < budget {
        let next = sampler.sample(&logits);
        out.push(next);
        on_token(next)?;
        if Some(next) == stop || fed >= max_positions {
            break;
        }
        logits = model.feed(&[next], device)?;
        fed += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed: 7,
        })
        .unwrap()
    }

    #[test]
    fn greedy_picks_the_first_largest() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        let mut s = sampler(0.0, None, None);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_cut_the_support() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, f32::NEG_INFINITY];
        let p = sampler(1.0, Some(2), None).probabilities(&logits);
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        // softmax over {2, 1}: e / (e + 1)
        let e = std::f64::consts::E;
        assert!((p[0].1 - e / (e + 1.0)).abs() < 1e-12);
        // full softmax of [2, 1, 0, -1]: 0.644, 0.237, 0.087, 0.032 -> p = 0.85 keeps 2 ids
        let p = sampler(1.0, None, Some(0.85)).probabilities(&logits);
        assert_eq!(p.len(), 2);
        assert!((p.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        // -inf never drawn, and a small top_p is greedy
        let all = sampler(1.0, None, None).probabilities(&logits);
        assert_eq!(all.len(), 4);
        let mut s = sampler(1.0, None, Some(1e-6));
        assert!((0..50).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn draws_follow_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 1/4, 3/4
        let mut s = sampler(1.0, None, None);
        let n = 4000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let a: Vec<u32> = {
            let mut s = sampler(1.0, None, None);
            (0..32).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = sampler(1.0, None, None);
            (0..32).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn bad_settings_are_refused() {
        for cfg in [
            SamplingConfig {
                temperature: -1.0,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(1.5),
                ..SamplingConfig::default()
            },
        ] {
            assert!(Sampler::new(cfg).is_err());
        }
    }
}
