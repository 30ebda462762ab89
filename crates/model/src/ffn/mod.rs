//! The feed-forward blocks: SwiGLU and dynActGLU(Swish), which differ only in the gate's
//! activation. Their gate products sit side by side, each a fused kernel beside its reference
//! composition: [`swiglu`] and [`dynact_glu`]. A new FFN variant is a [`GateActivation`], its
//! gate product in a file here, and its [`crate::FfnKind`]. Checkpoint names follow Hugging Face Llama (`gate_proj`, `up_proj`,
//! `down_proj`); dynActGLU adds `act_fn.alpha` and `act_fn.beta`.

use std::sync::Arc;

use candle_core::{Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::config::{FfnKind, ModelConfig};
use crate::dynact::DynAct;
use crate::layers::Linear;
use crate::ops::packed_weight::PackedWeight;

pub mod dynact_glu;
pub mod swiglu;

pub use dynact_glu::{dynact_glu, dynact_glu_packed, dynact_glu_reference, dynact_glu_stacked};
pub use swiglu::{swiglu, swiglu_packed, swiglu_reference, swiglu_stacked};

/// The two halves of the last dimension of `x`, rows of [gate | up] (an even length).
fn halves(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rank, width) = (x.rank(), x.dims().last().copied().unwrap_or(0));
    if rank == 0 || !width.is_multiple_of(2) {
        candle_core::bail!(
            "stacked gate product: {:?} is not rows of [gate | up]",
            x.dims()
        );
    }
    let f = width / 2;
    Ok((x.narrow(rank - 1, 0, f)?, x.narrow(rank - 1, f, f)?))
}

/// Where the rows of a gate product's gates and ups lie: row r's c gates at
/// `gate[r * stride..]` and its c ups at `up[r * stride..]` (stride c for two tensors, 2c for
/// rows of [gate | up]).
#[derive(Clone, Copy)]
struct GateUpRows<'a> {
    gate: &'a [f32],
    up: &'a [f32],
    stride: usize,
    rows: usize,
}

impl<'a> GateUpRows<'a> {
    /// Rows of `c` in two tensors of one shape.
    fn apart(gate: &'a [f32], up: &'a [f32], c: usize) -> Self {
        GateUpRows {
            gate,
            up,
            stride: c,
            rows: gate.len() / c.max(1),
        }
    }

    /// Rows [gate | up] of a stacked product laid out as `layout`, and the shape of the gate
    /// product's output (the last dimension halved). The caller has checked the shape
    /// ([`halves`]).
    fn stacked(gate_up: &'a [f32], layout: &Layout) -> (Self, Shape, usize) {
        let mut dims = layout.dims().to_vec();
        let c = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = c;
        }
        let rows = GateUpRows {
            gate: gate_up,
            up: gate_up.get(c..).unwrap_or_default(),
            stride: 2 * c,
            rows: gate_up.len() / (2 * c).max(1),
        };
        (rows, Shape::from(dims), c)
    }

    /// Row r's gates and ups, `c` each.
    fn row(&self, r: usize, c: usize) -> (&'a [f32], &'a [f32]) {
        let at = r * self.stride;
        (&self.gate[at..][..c], &self.up[at..][..c])
    }
}

/// The activation applied to the gate projection.
#[derive(Clone, Debug)]
pub enum GateActivation {
    Silu,
    DynAct(DynAct),
}

impl GateActivation {
    /// Whether a gate and up pack computes this activation's gated product
    /// ([`swiglu_packed`], [`dynact_glu_packed`]): SiLU, and dynAct with a base that fuses.
    fn gates_packed(&self) -> bool {
        match self {
            GateActivation::Silu => true,
            GateActivation::DynAct(act) => act.base_fuses(),
        }
    }
}

/// `down_proj(act(gate_proj x) * up_proj x)`
#[derive(Clone, Debug)]
pub struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
    act_fn: GateActivation,
}

/// The gate and up projections: two layers, or, with fixed weights on a CPU (inference), one
/// product of the two stacked ([`Linear::stacked`]), its output's rows [gate | up]; on
/// AVX-512 their weights are also a gate and up pack, whose one kernel computes the gate's
/// output where the activation takes it ([`swiglu_packed`], [`dynact_glu_packed`]).
#[derive(Clone, Debug)]
enum GateUp {
    Apart {
        gate_proj: Linear,
        up_proj: Linear,
    },
    Stacked {
        stacked: Linear,
        pack: Option<Arc<PackedWeight>>,
    },
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let act_fn = match cfg.ffn {
            FfnKind::Swiglu => GateActivation::Silu,
            FfnKind::Dynactglu => {
                GateActivation::DynAct(DynAct::new(&cfg.dynact, f, vb.pp("act_fn"))?)
            }
        };
        let gate_proj = Linear::new(c, f, cfg.weight_init(), vb.pp("gate_proj"))?;
        let up_proj = Linear::new(c, f, cfg.weight_init(), vb.pp("up_proj"))?;
        let gate_up = match Linear::stacked(&gate_proj, &up_proj)? {
            Some(mut stacked) => GateUp::Stacked {
                pack: match act_fn.gates_packed() {
                    true => stacked.take_gate_up_pack(f)?,
                    false => None,
                },
                stacked,
            },
            None => GateUp::Apart { gate_proj, up_proj },
        };
        Ok(Mlp {
            gate_up,
            down_proj: Linear::new(f, c, cfg.residual_init(), vb.pp("down_proj"))?,
            act_fn,
        })
    }

    pub fn set_matmul_dtype(&mut self, dtype: candle_core::DType) {
        match &mut self.gate_up {
            GateUp::Apart { gate_proj, up_proj } => {
                gate_proj.set_matmul_dtype(dtype);
                up_proj.set_matmul_dtype(dtype);
            }
            GateUp::Stacked { stacked, pack } => {
                stacked.set_matmul_dtype(dtype);
                if dtype != candle_core::DType::F32 {
                    // The gated product is f32's; the stacked layer (no pack of its own left)
                    // runs the products under another dtype.
                    *pack = None;
                }
            }
        }
        self.down_proj.set_matmul_dtype(dtype);
    }

    /// The gate's output (..., F) for x (..., C) from the gate and up pack, in one kernel;
    /// None where the activation's gated product does not take x.
    fn gated(&self, x: &Tensor, pack: &Arc<PackedWeight>) -> Result<Option<Tensor>> {
        let mut dims = x.dims().to_vec();
        let (Some(&c), f) = (dims.last(), pack.dims().1) else {
            return Ok(None);
        };
        let rows = x.reshape((x.elem_count() / c.max(1), c))?;
        let hidden = match &self.act_fn {
            GateActivation::Silu => swiglu_packed(&rows, pack)?,
            GateActivation::DynAct(act) => dynact_glu_packed(act, &rows, pack)?,
        };
        *dims.last_mut().expect("rank >= 1") = f;
        hidden.map(|h| h.reshape(dims)).transpose()
    }

    pub fn dynact(&self) -> Option<&DynAct> {
        match &self.act_fn {
            GateActivation::DynAct(a) => Some(a),
            GateActivation::Silu => None,
        }
    }
}

impl Module for Mlp {
    /// x: (B, T, C) -> (B, T, C), through a hidden width F.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = match &self.gate_up {
            GateUp::Apart { gate_proj, up_proj } => {
                let x = gate_proj.cast_input(x)?; // once for both products
                let gate = gate_proj.forward(&x)?; // (B, T, F)
                let up = up_proj.forward(&x)?;
                match &self.act_fn {
                    GateActivation::Silu => swiglu(&gate, &up)?,
                    GateActivation::DynAct(act) => dynact_glu(act, &gate, &up)?,
                }
            }
            GateUp::Stacked { stacked, pack } => {
                let x = stacked.cast_input(x)?;
                match pack.as_ref().map(|p| self.gated(&x, p)).transpose()? {
                    Some(Some(hidden)) => hidden,
                    _ => {
                        let gate_up = stacked.forward(&x)?; // (B, T, 2F)
                        match &self.act_fn {
                            GateActivation::Silu => swiglu_stacked(&gate_up)?,
                            GateActivation::DynAct(act) => dynact_glu_stacked(act, &gate_up)?,
                        }
                    }
                }
            }
        };
        self.down_proj.forward(&hidden)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Module, Tensor, Var};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::config::BaseAct;

    /// An FFN of fixed weights (an inference model's) and one of the same weights as
    /// variables (a trained model's): the packed path where it runs, the products and the
    /// stacked or plain gate kernels where it does not, give the same bits.
    #[test]
    fn a_fixed_ffn_packs_its_gate_and_up_where_its_activation_takes_the_pack() {
        let dev = Device::Cpu;
        let (c, f) = (40, 37);
        let weights = |seed: usize| -> HashMap<String, Tensor> {
            let t = |dims: (usize, usize), s: usize| {
                Tensor::from_vec(crate::ops::test_values(dims.0 * dims.1, s), dims, &dev).unwrap()
            };
            HashMap::from([
                ("gate_proj.weight".into(), t((f, c), seed)),
                ("up_proj.weight".into(), t((f, c), seed + 1)),
                ("down_proj.weight".into(), t((c, f), seed + 2)),
                ("act_fn.alpha".into(), Tensor::new(&[1.3f32], &dev).unwrap()),
                ("act_fn.beta".into(), Tensor::new(&[0.2f32], &dev).unwrap()),
            ])
        };
        let x = Tensor::randn(0f32, 1.0, (3, 20, c), &dev).unwrap();
        for (ffn, base) in [
            (FfnKind::Swiglu, BaseAct::Silu),
            (FfnKind::Dynactglu, BaseAct::Silu),
            (FfnKind::Dynactglu, BaseAct::Relu),
            (FfnKind::Dynactglu, BaseAct::Gelu),
        ] {
            let mut cfg = ModelConfig {
                ffn,
                hidden_size: c,
                intermediate_size: f,
                ..ModelConfig::default()
            };
            cfg.dynact.base = base;
            let tensors = weights(7);
            let fixed = Mlp::new(
                &cfg,
                VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev),
            )
            .unwrap();
            let vars: HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(k, t)| (k, Var::from_tensor(&t).unwrap().as_tensor().clone()))
                .collect();
            let trained = Mlp::new(&cfg, VarBuilder::from_tensors(vars, DType::F32, &dev)).unwrap();
            let packed = matches!(&fixed.gate_up, GateUp::Stacked { pack: Some(_), .. });
            let takes = PackedWeight::available() && base != BaseAct::Gelu;
            assert_eq!(packed, takes, "{ffn:?} {base:?}");
            let bits = |m: &Mlp| -> Vec<u32> {
                let y = m.forward(&x).unwrap().flatten_all().unwrap();
                y.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&fixed), bits(&trained), "{ffn:?} {base:?}");
        }
    }
}
