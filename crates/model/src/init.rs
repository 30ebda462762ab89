//! Seeded parameter creation. Each module asks its `VarBuilder` for its tensors with an `Init`
//! hint (normal(0, 0.02), residual projections scaled by 1/sqrt(2 layers), ones for norms,
//! alpha/beta constants); [`SeededInit`] answers those requests with values drawn from a
//! generator seeded by (seed, tensor name). So the same seed gives the same weights on every
//! machine, and a SwiGLU and a dynActGLU model of one seed share every common tensor.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// A `VarBuilder` backend that fills a `VarMap` with seeded values (f32 master weights).
/// Tensors already in the map are returned as they are, so it also serves a loaded map.
struct SeededInit {
    varmap: VarMap,
    seed: u64,
}

/// A `VarBuilder` that creates the model's parameters in `varmap`, drawn from `seed`.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend = SeededInit {
        varmap: varmap.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // DefaultHasher::new() has fixed keys, so this is stable across runs and machines.
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    seed ^ h.finish()
}

fn init_values(init: Init, n: usize, seed: u64) -> Result<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Ok(match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        other => candle_core::bail!("init {other:?} is not supported by SeededInit"),
    })
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, _dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut map = self.varmap.data().lock().expect("varmap lock poisoned");
        if let Some(var) = map.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    var.dims(),
                    s.dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let values = init_values(h, s.elem_count(), name_seed(self.seed, name))?;
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?)?;
        let tensor = var.as_tensor().clone();
        map.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let map = self.varmap.data().lock().expect("varmap lock poisoned");
        match map.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no tensor `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let map = self.varmap.data().lock().expect("varmap lock poisoned");
        map.contains_key(name)
    }
}

/// A `VarBuilder` backend that records the name and shape of every tensor a constructor asks
/// for and hands back a one-element broadcast view: the model's exact tensor list, with no
/// allocation and the names written only once, in the constructors.
pub(crate) type TensorList = Vec<(String, Vec<usize>)>;

#[derive(Default)]
pub(crate) struct ShapeRecorder {
    pub seen: Arc<std::sync::Mutex<TensorList>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut seen = self.seen.lock().expect("recorder lock poisoned");
        if !seen.iter().any(|(n, _)| n == name) {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros(1, dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("shape recorder cannot provide `{name}` without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}
