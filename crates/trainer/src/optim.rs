//! AdamW with decoupled weight decay on weight matrices only, a learning-rate multiplier for
//! dynAct's alpha and beta, global-norm clipping, and moments that are saved and restored with
//! every checkpoint (`candle_nn::AdamW` keeps them private).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use dynact_model::ParamKind;

use crate::adamw_kernels::{self, DeviceSteps, ParamUpdate, UpdateScalars};
use crate::config::OptimConfig;

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
    lr_mult: f64,
}

impl Slot {
    /// The update as a composition of Candle ops.
    fn update_reference(&mut self, g: &Tensor, s: UpdateScalars) -> Result<()> {
        let g = if s.grad_scale != 1.0 {
            g.affine(s.grad_scale, 0.0)?
        } else {
            g.clone()
        };
        self.m = ((&self.m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
        self.v = ((&self.v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
        let denom = ((&self.v / s.bias2)?.sqrt()? + s.eps)?;
        let update = ((&self.m / s.bias1)? / denom)?;
        let theta = self.var.as_tensor().affine(s.decay, 0.0)?;
        self.var.set(&(theta - (update * s.lr)?)?)
    }
}

pub struct AdamW {
    slots: Vec<Slot>,
    /// Updates applied so far (for bias correction); with steps queued on a GPU, as of the
    /// last [`AdamW::read_queued`].
    pub step: u64,
    cfg: OptimConfig,
    /// The steps decided on a CUDA GPU ([`AdamW::queue_step`]), made at the first.
    device_steps: Option<DeviceSteps>,
}

/// What a step did: its loss (summed over its micro-batches), the global gradient norm before
/// clipping, and whether the update was skipped (the loss or the norm not finite).
#[derive(Clone, Copy, Debug)]
pub struct StepOutcome {
    pub loss_sum: f32,
    pub grad_norm: f64,
    pub skipped: bool,
}

/// Whether parameter `name` gets weight decay: the model says what kind of parameter it is
/// (matrices decay; norms, alpha and beta never; embeddings when asked).
pub fn decays(name: &str, cfg: &OptimConfig) -> bool {
    ParamKind::of(name).decays(cfg.decay_embeddings)
}

impl AdamW {
    pub fn new(varmap: &VarMap, cfg: &OptimConfig) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let slots = names
            .into_iter()
            .map(|name| {
                let var = data[name].clone();
                Ok(Slot {
                    name: name.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    decay: decays(name, cfg),
                    lr_mult: if ParamKind::of(name) == ParamKind::DynActScalar {
                        cfg.dynact_lr_mult
                    } else {
                        1.0
                    },
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            slots,
            step: 0,
            cfg: cfg.clone(),
            device_steps: None,
        })
    }

    /// Names of the parameters that receive weight decay (for the run log).
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Euclidean norm of all gradients together, as a composition of Candle ops.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total: Option<Tensor> = None;
        for s in &self.slots {
            if let Some(g) = grads.get(&s.var) {
                let sq = g.sqr()?.sum_all()?;
                total = Some(match total {
                    None => sq,
                    Some(t) => (t + sq)?,
                });
            }
        }
        match total {
            None => Ok(0.0),
            Some(t) => Ok((t.to_scalar::<f32>()? as f64).sqrt()),
        }
    }

    /// The step decided and applied on the host, the twin of [`AdamW::queue_step`]: the
    /// loss (summed over the micro-batches) and the global gradient norm read, the update
    /// skipped where either is not finite, else made at learning rate `lr` with the
    /// gradients clipped to `optim.grad_clip`.
    pub fn step_on_host(
        &mut self,
        loss_sum: &Tensor,
        grads: &GradStore,
        lr: f64,
    ) -> Result<StepOutcome> {
        let loss_sum = loss_sum
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        let grad_norm = self.grad_norm(grads)?;
        let skipped = !loss_sum.is_finite() || !grad_norm.is_finite();
        if !skipped {
            let clip = self.cfg.grad_clip;
            let scale = if clip > 0.0 && grad_norm > clip {
                clip / grad_norm
            } else {
                1.0
            };
            self.step(grads, lr, scale)?;
        }
        Ok(StepOutcome {
            loss_sum,
            grad_norm,
            skipped,
        })
    }

    /// One update at learning rate `lr`; gradients are first scaled by `grad_scale` (clipping).
    /// On a CPU, and for f32 on a CUDA GPU, the parameters take the fused in-place kernels of
    /// [`crate::adamw_kernels`] (on a GPU all of them in one launch).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step_with(grads, lr, grad_scale, true)
    }

    /// [`AdamW::step`] with `fused_kernels` choosing between the fused kernels and the reference
    /// composition of Candle ops (what other devices run, and what the kernel is tested
    /// against).
    pub fn step_with(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
        fused_kernels: bool,
    ) -> Result<()> {
        if self.queued() > 0 {
            candle_core::bail!("adamw: a step on the host with steps on the device unread");
        }
        // The device's count would fall behind the host's: it is made anew at the next queue.
        self.device_steps = None;
        self.step += 1;
        let mut fused = Vec::new();
        for i in 0..self.slots.len() {
            let Some(g) = grads.get(&self.slots[i].var) else {
                continue;
            };
            let scalars = self.scalars(&self.slots[i], lr, grad_scale);
            let s = &self.slots[i];
            if fused_kernels && adamw_kernels::applies(&[s.var.as_tensor(), &s.m, &s.v, g]) {
                fused.push((i, g, scalars));
            } else {
                self.slots[i].update_reference(g, scalars)?;
            }
        }
        let fused_updates: Vec<ParamUpdate> = fused
            .into_iter()
            .map(|(i, g, s)| {
                let slot = &self.slots[i];
                ParamUpdate {
                    theta: slot.var.as_tensor(),
                    m: &slot.m,
                    v: &slot.v,
                    g,
                    s,
                }
            })
            .collect();
        adamw_kernels::update_all(&fused_updates)
    }

    /// The scalars of `slot`'s update at learning rate `lr`, the `self.step`-th update.
    fn scalars(&self, slot: &Slot, lr: f64, grad_scale: f64) -> UpdateScalars {
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let lr = lr * slot.lr_mult;
        UpdateScalars {
            grad_scale,
            beta1: b1,
            beta2: b2,
            bias1: 1.0 - b1.powi(self.step as i32),
            bias2: 1.0 - b2.powi(self.step as i32),
            eps: self.cfg.eps,
            lr,
            decay: match slot.decay {
                true => 1.0 - lr * self.cfg.weight_decay,
                false => 1.0,
            },
        }
    }

    /// Steps the device can record between two [`AdamW::read_queued`]s.
    pub const QUEUE_CAPACITY: usize = 1024;

    /// Whether [`AdamW::queue_step`] takes these gradients: every one f32 on a CUDA GPU, as
    /// its parameter and moments are.
    pub fn decides_on_device(&self, grads: &GradStore) -> bool {
        let mut any = false;
        for s in &self.slots {
            if let Some(g) = grads.get(&s.var) {
                let tensors = [s.var.as_tensor(), &s.m, &s.v, g];
                if !(g.device().is_cuda() && adamw_kernels::applies(&tensors)) {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    /// The step on the GPU without waiting for it (where [`AdamW::decides_on_device`]): the
    /// global gradient norm, then the decision [`AdamW::step_on_host`] makes (skip where the
    /// loss or the norm is not finite, else clip to `optim.grad_clip` and count the update for
    /// bias correction), then the update at learning rate `lr`. Its
    /// outcome is read with the others queued by [`AdamW::read_queued`], which must come at
    /// least every [`AdamW::QUEUE_CAPACITY`] steps.
    pub fn queue_step(&mut self, loss_sum: &Tensor, grads: &GradStore, lr: f64) -> Result<()> {
        if self.device_steps.is_none() {
            let steps = DeviceSteps::new(loss_sum.device(), self.step, Self::QUEUE_CAPACITY)?;
            self.device_steps = Some(steps);
        }
        // The bias corrections and the scale come from the device; these are placeholders.
        let updates: Vec<ParamUpdate> = self
            .slots
            .iter()
            .filter_map(|s| {
                let g = grads.get(&s.var)?;
                Some(ParamUpdate {
                    theta: s.var.as_tensor(),
                    m: &s.m,
                    v: &s.v,
                    g,
                    s: self.scalars(s, lr, 1.0),
                })
            })
            .collect();
        let steps = self.device_steps.as_mut().expect("made above");
        steps.queue(&updates, loss_sum, self.cfg.grad_clip)
    }

    /// Steps queued and not read yet.
    pub fn queued(&self) -> usize {
        self.device_steps.as_ref().map_or(0, |d| d.pending())
    }

    /// The outcomes of the steps queued since the last read, in order (one copy from the
    /// device, which waits for them); the update count follows the device's.
    pub fn read_queued(&mut self) -> Result<Vec<StepOutcome>> {
        let Some(steps) = self.device_steps.as_mut() else {
            return Ok(vec![]);
        };
        let records = steps.read()?;
        if let Some(last) = records.last() {
            self.step = last.updates as u64;
        }
        Ok(records
            .iter()
            .map(|r| StepOutcome {
                loss_sum: r.loss,
                grad_norm: (r.sum_squares as f64).sqrt(),
                skipped: r.skipped != 0,
            })
            .collect())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), as a training checkpoint
    /// stores them. They share storage with the moments the next step updates in place: write
    /// them out before stepping again.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            tensors.push((format!("m.{}", s.name), s.m.clone()));
            tensors.push((format!("v.{}", s.name), s.v.clone()));
        }
        tensors
    }

    /// Restores moments given by [`AdamW::state_tensors`] and the update count.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        for s in &mut self.slots {
            for (prefix, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("the optimizer state lacks `{key}`"))?;
                if t.shape() != slot.shape() {
                    anyhow::bail!(
                        "optimizer state `{key}` has shape {:?}, the model {:?}",
                        t.dims(),
                        slot.dims()
                    );
                }
                // A copy: the fused update writes the moments in place.
                *slot = t.copy()?;
            }
        }
        self.step = step;
        self.device_steps = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_applies_to_matrices_only() {
        let cfg = OptimConfig::default();
        assert!(decays("model.layers.0.mlp.up_proj.weight", &cfg));
        assert!(decays("lm_head.weight", &cfg));
        assert!(!decays("model.embed_tokens.weight", &cfg));
        assert!(!decays("model.layers.0.input_layernorm.weight", &cfg));
        assert!(!decays("model.layers.0.mlp.act_fn.alpha", &cfg));
        let with_embed = OptimConfig {
            decay_embeddings: true,
            ..cfg
        };
        assert!(decays("model.embed_tokens.weight", &with_embed));
    }

    #[test]
    fn one_step_matches_the_adamw_formula() {
        // First step: m_hat = g, v_hat = g^2, so theta' = theta(1 - lr wd) - lr g / (|g| + eps).
        let varmap = VarMap::new();
        let w = Var::from_vec(vec![1.0f32, -2.0], (1, 2), &Device::Cpu).unwrap();
        varmap
            .data()
            .lock()
            .unwrap()
            .insert("x.weight".into(), w.clone());
        let cfg = OptimConfig {
            weight_decay: 0.5,
            eps: 1e-8,
            ..OptimConfig::default()
        };
        let mut opt = AdamW::new(&varmap, &cfg).unwrap();
        let loss = (w.as_tensor() * Tensor::new(&[[3.0f32, 0.5]], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 0.1, 1.0).unwrap();
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let expect = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) - 0.1];
        for (g, e) in got.iter().zip(expect) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    /// A decayed matrix and an undecayed dynAct scalar with its own learning rate, trained on
    /// a loss with a gradient that changes from step to step.
    fn adamw_fixture() -> (Vec<Var>, AdamW) {
        adamw_fixture_on(&Device::Cpu)
    }

    fn adamw_fixture_on(device: &Device) -> (Vec<Var>, AdamW) {
        let varmap = VarMap::new();
        let matrix: Vec<f32> = (0..40_000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0)
            .collect();
        let params = [
            (
                "model.layers.0.mlp.up_proj.weight",
                Var::from_vec(matrix, (200, 200), device),
            ),
            (
                "model.layers.0.mlp.act_fn.alpha",
                Var::from_vec(vec![1.0f32], 1, device),
            ),
        ];
        let mut vars = vec![];
        for (name, var) in params {
            let var = var.unwrap();
            varmap
                .data()
                .lock()
                .unwrap()
                .insert(name.into(), var.clone());
            vars.push(var);
        }
        let cfg = OptimConfig {
            weight_decay: 0.1,
            dynact_lr_mult: 3.0,
            ..OptimConfig::default()
        };
        (vars, AdamW::new(&varmap, &cfg).unwrap())
    }

    fn loss_grads(vars: &[Var]) -> GradStore {
        // sum(w^3)/3 + alpha^2 w.sum(): gradients that depend on the weights.
        let w = vars[0].as_tensor();
        let cubes = (w.powf(3.0).unwrap().sum_all().unwrap() / 3.0).unwrap();
        let coupled =
            (vars[1].as_tensor().sqr().unwrap().sum_all().unwrap() * w.sum_all().unwrap()).unwrap();
        (cubes + coupled).unwrap().backward().unwrap()
    }

    #[test]
    fn the_fused_cpu_update_matches_the_reference_composition() {
        let (fused_vars, mut fused) = adamw_fixture();
        let (plain_vars, mut plain) = adamw_fixture();
        for step in 0..6 {
            let clip = if step % 2 == 0 { 1.0 } else { 0.37 };
            let lr = 1e-2 / (1 + step) as f64;
            fused
                .step_with(&loss_grads(&fused_vars), lr, clip, true)
                .unwrap();
            plain
                .step_with(&loss_grads(&plain_vars), lr, clip, false)
                .unwrap();
        }
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pairs = fused_vars
            .iter()
            .map(|v| v.as_tensor().clone())
            .zip(plain_vars.iter().map(|v| v.as_tensor().clone()))
            .chain(
                fused
                    .state_tensors()
                    .into_iter()
                    .zip(plain.state_tensors())
                    .map(|(a, b)| (a.1, b.1)),
            );
        for (a, b) in pairs {
            let (a, b) = (flat(&a), flat(&b));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-5 * scale, "off by {worst} of {scale}");
        }
        // And the update really moved the parameters.
        assert!((flat(fused_vars[1].as_tensor())[0] - 1.0).abs() > 0.02);
    }

    /// The CUDA kernels against the CPU passes: the same fixture and steps, one of them with a
    /// non-finite loss, decided on the host on the CPU, decided on the host on the GPU
    /// ([`AdamW::step`] there: the update kernel alone), and queued on the GPU
    /// ([`AdamW::queue_step`]: the device decides, and its records are read at the end). Needs
    /// a GPU or the simulator (scripts/gpu-sim.sh runs it).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_steps_queued_on_the_gpu_match_the_host_s_steps_on_the_cpu() {
        let gpu = Device::new_cuda(0).expect("this test needs an NVIDIA GPU (cuda:0)");
        let (cpu_vars, mut cpu) = adamw_fixture();
        let (host_vars, mut host) = adamw_fixture_on(&gpu);
        let (queued_vars, mut queued) = adamw_fixture_on(&gpu);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
        let loss = |vars: &[Var], step: usize| match step {
            3 => Tensor::new(f32::NAN, vars[1].device()).unwrap(),
            _ => vars[1].as_tensor().sum_all().unwrap(),
        };
        let host_step = |opt: &mut AdamW, vars: &[Var], step: usize, lr: f64| {
            let grads = loss_grads(vars);
            let o = opt.step_on_host(&loss(vars, step), &grads, lr).unwrap();
            (o.loss_sum, o.grad_norm, o.skipped)
        };
        let mut expected = vec![];
        for step in 0..6 {
            let lr = 1e-2 / (1 + step) as f64;
            expected.push(host_step(&mut cpu, &cpu_vars, step, lr));
            host_step(&mut host, &host_vars, step, lr);
            let grads = loss_grads(&queued_vars);
            queued
                .queue_step(&loss(&queued_vars, step), &grads, lr)
                .unwrap();
        }
        assert_eq!(queued.queued(), 6);
        let outcomes = queued.read_queued().unwrap();
        assert_eq!(queued.queued(), 0);
        assert_eq!(
            (cpu.step, queued.step),
            (5, 5),
            "the skipped step is not counted"
        );
        for (o, (loss_sum, norm, skipped)) in outcomes.iter().zip(&expected) {
            assert_eq!(o.skipped, *skipped);
            if !skipped {
                assert!(close(o.loss_sum as f64, *loss_sum as f64));
                assert!(close(o.grad_norm, *norm), "{} against {norm}", o.grad_norm);
            }
        }
        assert!(expected[3].2 && expected.iter().filter(|e| e.2).count() == 1);
        let flat = |t: &Tensor| {
            t.to_device(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for gpu_vars in [&host_vars, &queued_vars] {
            for (a, b) in cpu_vars.iter().zip(gpu_vars) {
                let (a, b) = (flat(a.as_tensor()), flat(b.as_tensor()));
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(worst <= 1e-5 * scale, "off by {worst} of {scale}");
            }
        }
    }
}
