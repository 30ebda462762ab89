//! Causal self-attention with rotary position embeddings in the Hugging Face Llama convention
//! (`rotate_half` over the two halves of each head) and grouped-query attention.
//!
//! Letters: B batch, T query positions, S key positions (T plus cached ones), H query heads,
//! G key/value heads, D head width, C model width.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::ModelConfig;
use crate::forward_ctx::{dropout, DropoutRng, ForwardCtx};
use crate::layers::Linear;
use crate::ops::{
    causal_attention, causal_attention_reference, heads_first, heads_last, inference_attention,
};
use crate::philox_dropout::PhiloxDropout;

/// cos and sin of every position, (max_positions, D), both halves of each head already joined.
#[derive(Clone, Debug)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTables {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let d = cfg.head_dim();
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64) as f32)
            .collect();
        let positions = cfg.max_position_embeddings;
        let mut angles = Vec::with_capacity(positions * d);
        for p in 0..positions {
            let half: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            angles.extend_from_slice(&half);
            angles.extend_from_slice(&half);
        }
        let angles = Tensor::from_vec(angles, (positions, d), device)?;
        Ok(RotaryTables {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// The (T, D) rows of cos and sin for positions offset..offset+T, in `dtype`.
    pub fn rows(&self, offset: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, offset, t)?.to_dtype(dtype)?,
            self.sin.narrow(0, offset, t)?.to_dtype(dtype)?,
        ))
    }
}

/// Where the queries of one forward pass sit: the rotary tables, the number of positions
/// already cached before them, and the pass's (T, S) causal mask where the model keeps one on
/// its device (see [`crate::Transformer`]).
#[derive(Clone, Copy, Debug)]
pub struct Positions<'a> {
    pub rope: &'a RotaryTables,
    pub offset: usize,
    pub mask: Option<&'a Tensor>,
}

/// Keys and values of earlier positions, for generation.
pub type LayerCache = Option<(Tensor, Tensor)>;

#[derive(Clone, Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dropout: f64,
    /// The dtype of the matrix products (scores, weighted values and projections).
    matmul_dtype: DType,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, d) = (cfg.hidden_size, cfg.head_dim());
        let (h, g) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (init, residual_init) = (cfg.weight_init(), cfg.residual_init());
        Ok(Attention {
            q_proj: Linear::new(c, h * d, init, vb.pp("q_proj"))?,
            k_proj: Linear::new(c, g * d, init, vb.pp("k_proj"))?,
            v_proj: Linear::new(c, g * d, init, vb.pp("v_proj"))?,
            o_proj: Linear::new(h * d, c, residual_init, vb.pp("o_proj"))?,
            num_heads: h,
            num_kv_heads: g,
            head_dim: d,
            dropout: cfg.dropout,
            matmul_dtype: DType::F32,
        })
    }

    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        self.matmul_dtype = dtype;
        for p in [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ] {
            p.set_matmul_dtype(dtype);
        }
    }

    /// x: (B, T, C) -> (B, T, C). `site` seeds the dropout mask.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: Positions,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
        site: u64,
    ) -> Result<Tensor> {
        let (b, t, _c) = x.dims3()?;
        let (h, g, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let x = self.q_proj.cast_input(x)?; // once for the three products
        let heads = |proj: &Linear, n: usize| proj.forward(&x)?.reshape((b, t, n, d));
        let (q, k, v) = (
            heads(&self.q_proj, h)?,
            heads(&self.k_proj, g)?,
            heads(&self.v_proj, g)?,
        );
        let scale = 1.0 / (d as f64).sqrt();
        let drop = ctx.train && self.dropout > 0.0;
        // RoPE's rows for these positions, taken once for q and k.
        let (cos, sin) = pos.rope.rows(pos.offset, t, q.dtype())?;
        // Inference without a cache: RoPE inside the attention kernel, on the heads as the
        // projections lay them out (None where that kernel does not apply).
        if cache.is_none() && !drop && pos.mask.is_none() {
            if let Some(y) = inference_attention(&q, &k, &v, (&cos, &sin), scale)? {
                return self.o_proj.forward(&y.reshape((b, t, h * d))?);
            }
        }
        // RoPE moves the heads ahead of the positions, (B, T, n, D) -> (B, n, T, D).
        let q = crate::ops::rope(&q, &cos, &sin)?;
        let mut k = crate::ops::rope(&k, &cos, &sin)?;
        let mut v = heads_first(&v)?;
        if let Some(cache) = cache {
            if let Some((k_prev, v_prev)) = cache.as_ref() {
                k = Tensor::cat(&[k_prev, &k], 2)?;
                v = Tensor::cat(&[v_prev, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let s = k.dim(2)?;
        let y = match ctx.rng {
            // Runs written before the Philox generator draw their masks from a ChaCha8 stream.
            DropoutRng::Chacha8 if drop => {
                let seed = ctx.seed_for(site);
                let (p, first_row) = (self.dropout, ctx.first_row);
                causal_attention_reference(&q, &k, &v, scale, self.matmul_dtype, pos.mask, |x| {
                    dropout(&x, p, seed, DropoutRng::Chacha8, first_row)
                })?
            }
            _ => {
                let dropout = drop.then(|| PhiloxDropout {
                    seed: ctx.seed_for(site),
                    first: (ctx.first_row * h * t * s) as u64,
                    keep: 1.0 - self.dropout,
                    scale: (1.0 / (1.0 - self.dropout)) as f32,
                });
                causal_attention(&q, &k, &v, scale, dropout, self.matmul_dtype, pos.mask)?
            }
        }; // (B, H, T, D)
        let y = heads_last(&y)?.reshape((b, t, h * d))?;
        self.o_proj.forward(&y)
    }
}
