//! The decoder: token embedding, `num_hidden_layers` pre-norm blocks (attention then FFN, each
//! added to the residual stream), a final RMSNorm and the LM head, tied or not.
//! Tensor names are the Hugging Face Llama ones (`model.layers.{i}.self_attn.q_proj.weight`, ...).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::{Attention, LayerCache, Positions, RotaryTables};
use crate::config::ModelConfig;
use crate::dynact::DynAct;
use crate::ffn::Mlp;
use crate::forward_ctx::{dropout, ForwardCtx};
use crate::layers::{Linear, RmsNorm};
use crate::ops::{cross_entropy, token_nll};

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    dropout: f64,
}

impl DecoderLayer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(c, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                c,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            dropout: cfg.dropout,
        })
    }

    /// x: (B, T, C) -> (B, T, C), with `normed`, x through this layer's input norm, and
    /// returned beside the output, the output through `next_norm` (the next layer's input
    /// norm or the final one): each residual add and the norm that reads its sum are one op
    /// ([`RmsNorm::add_forward`]). `site` numbers this layer's dropout masks.
    fn forward(
        &self,
        (x, normed): (&Tensor, &Tensor),
        next_norm: &RmsNorm,
        pos: Positions,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
        site: u64,
    ) -> Result<(Tensor, Tensor)> {
        let residual_dropout = |y: Tensor, k: u64| -> Result<Tensor> {
            if ctx.train {
                dropout(
                    &y,
                    self.dropout,
                    ctx.seed_for(site + k),
                    ctx.rng,
                    ctx.first_row,
                )
            } else {
                Ok(y)
            }
        };
        let attn = self.self_attn.forward(normed, pos, cache, ctx, site)?;
        let (h, h_normed) = self
            .post_attention_layernorm
            .add_forward(x, &residual_dropout(attn, 1)?)?;
        let ffn = self.mlp.forward(&h_normed)?;
        next_norm.add_forward(&h, &residual_dropout(ffn, 2)?)
    }
}

/// Per-layer key/value caches for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// dynAct's alpha and beta of every layer, summarised for the logs
/// ([`Transformer::dynact_stats`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DynActStats {
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
    /// Per-channel dynAct: the standard deviation of each layer's values.
    pub alpha_std: Option<Vec<f64>>,
    pub beta_std: Option<Vec<f64>>,
}

#[derive(Clone, Debug)]
pub struct Transformer {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryTables,
    /// The causal mask of all positions, (P, P), kept on a GPU so that no pass builds one on
    /// the host and copies it over (CPU passes mask inside the fused softmax).
    causal_mask: Option<Tensor>,
    cfg: ModelConfig,
    dtype: DType,
}

impl Transformer {
    /// Builds the model from `vb`: fresh ([`crate::seeded_var_builder`]) or loaded
    /// ([`crate::Checkpoint`]). Computes in f32 until [`Transformer::with_compute_dtype`].
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let m = vb.pp("model");
        let embed_tokens = m.pp("embed_tokens").get_with_hints(
            (cfg.vocab_size, cfg.hidden_size),
            "weight",
            cfg.weight_init(),
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_weight(embed_tokens.clone())?
        } else {
            Linear::new(
                cfg.hidden_size,
                cfg.vocab_size,
                cfg.weight_init(),
                vb.pp("lm_head"),
            )?
        };
        Ok(Transformer {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: RotaryTables::new(cfg, vb.device())?,
            causal_mask: match vb.device().is_cpu() {
                true => None,
                false => {
                    let p = cfg.max_position_embeddings;
                    crate::ops::causal_mask(p, 0, DType::F32, vb.device())?
                }
            },
            cfg: cfg.clone(),
            dtype: DType::F32,
        })
    }

    /// Run the matrix products in `dtype` (bf16 on GPUs). Everything else stays f32: the
    /// residual stream, RMSNorm, softmax, dynAct (its alpha, beta and their gradient sums)
    /// and the loss; parameters stay f32 master weights and receive f32 gradients, since casts
    /// are differentiable.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        for layer in &mut self.layers {
            layer.self_attn.set_matmul_dtype(dtype);
            layer.mlp.set_matmul_dtype(dtype);
        }
        self.lm_head.set_matmul_dtype(dtype);
        self
    }

    /// The dtype the matrix products run in.
    pub fn compute_dtype(&self) -> DType {
        self.dtype
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The dynAct modules of every layer, in order (empty for SwiGLU).
    pub fn dynacts(&self) -> Vec<&DynAct> {
        self.layers.iter().filter_map(|l| l.mlp.dynact()).collect()
    }

    /// alpha and beta of every layer, for the logs (None for SwiGLU): per layer their means
    /// (the values themselves for per-layer scalars), and for per-channel ones their standard
    /// deviations too.
    pub fn dynact_stats(&self) -> Result<Option<DynActStats>> {
        let acts = self.dynacts();
        if acts.is_empty() {
            return Ok(None);
        }
        let per_channel = acts[0].alpha().elem_count() > 1;
        let (mut a, mut b, mut a_std, mut b_std) = (vec![], vec![], vec![], vec![]);
        for act in acts {
            for (t, mean, std) in [
                (act.alpha(), &mut a, &mut a_std),
                (act.beta(), &mut b, &mut b_std),
            ] {
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                let m = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
                let var = v.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64;
                mean.push(m);
                std.push(var.sqrt());
            }
        }
        Ok(Some(DynActStats {
            alpha: a,
            beta: b,
            alpha_std: per_channel.then_some(a_std),
            beta_std: per_channel.then_some(b_std),
        }))
    }

    /// ids: (B, T) u32 -> logits (B, T, V), f32.
    pub fn forward(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_impl(ids, 0, None, ctx)
    }

    /// Incremental decoding: `ids` (B, T) follow the `cache.len()` positions already cached.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let offset = cache.len;
        let logits = self.forward_impl(ids, offset, Some(cache), &ForwardCtx::EVAL)?;
        cache.len += t;
        Ok(logits)
    }

    /// Mean next-token cross-entropy (nats, f32 scalar) of `targets` (B, T) given `ids` (B, T).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let logits = self.forward(ids, ctx)?;
        let (b, t, v) = logits.dims3()?;
        cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }

    /// Cross-entropy of every target (B, T) given `ids` (B, T), in nats: (B * T,) f32.
    pub fn token_nll(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids, &ForwardCtx::EVAL)?;
        let (b, t, v) = logits.dims3()?;
        token_nll(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }

    fn forward_impl(
        &self,
        ids: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                offset + t,
                self.cfg.max_position_embeddings
            );
        }
        // (B, T, C), f32
        let mut x = crate::ops::embedding(&self.embed_tokens, ids)?;
        // Rows offset..offset+t and columns 0..offset+t of the full mask; a single query sees
        // every key and needs none.
        let mask = match &self.causal_mask {
            Some(full) if t > 1 => Some(full.narrow(0, offset, t)?.narrow(1, 0, offset + t)?),
            _ => None,
        };
        let pos = Positions {
            rope: &self.rope,
            offset,
            mask: mask.as_ref(),
        };
        // x through the norm that reads it next: the first layer's input norm, or the final one.
        let mut normed = match self.layers.first() {
            Some(first) => first.input_layernorm.forward(&x)?,
            None => self.norm.forward(&x)?,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let next_norm = self
                .layers
                .get(i + 1)
                .map_or(&self.norm, |next| &next.input_layernorm);
            (x, normed) = layer.forward(
                (&x, &normed),
                next_norm,
                pos,
                layer_cache,
                ctx,
                3 * i as u64,
            )?;
        }
        self.lm_head.forward(&normed) // (B, T, V)
    }
}
