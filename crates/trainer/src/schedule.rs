//! The learning rate as a pure function of the step (nanoGPT's three cases): linear warm-up,
//! then cosine decay to `min_lr` at the last step, or warmup-stable-decay.

use crate::config::{OptimConfig, ScheduleKind};

/// Learning rate for optimizer step `step` (1-based: the first update is step 1) of `total`.
pub fn lr_at(step: u64, total: u64, o: &OptimConfig) -> f64 {
    // 1) linear warm-up from lr/warmup to lr
    if step <= o.warmup_steps && o.warmup_steps > 0 {
        return o.lr * step as f64 / o.warmup_steps as f64;
    }
    match o.schedule {
        // 2) cosine from lr down to min_lr over the remaining steps
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(o.warmup_steps).max(1) as f64;
            let progress = ((step - o.warmup_steps) as f64 / span).clamp(0.0, 1.0);
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            o.min_lr + coeff * (o.lr - o.min_lr)
        }
        // 3) stable at lr, then linear to min_lr over the last decay_fraction of the run
        ScheduleKind::Wsd => {
            let decay_steps = (o.decay_fraction * total as f64).round() as u64;
            let decay_start = total.saturating_sub(decay_steps).max(o.warmup_steps);
            if step <= decay_start {
                o.lr
            } else {
                let progress = (step - decay_start) as f64 / (total - decay_start).max(1) as f64;
                o.lr + progress.clamp(0.0, 1.0) * (o.min_lr - o.lr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: ScheduleKind) -> OptimConfig {
        OptimConfig {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule,
            decay_fraction: 0.2,
            ..OptimConfig::default()
        }
    }

    #[test]
    fn cosine_warms_up_then_decays_to_the_floor() {
        let o = cfg(ScheduleKind::Cosine);
        assert!((lr_at(1, 1000, &o) - 1e-5).abs() < 1e-15);
        assert!((lr_at(50, 1000, &o) - 5e-4).abs() < 1e-15);
        assert!((lr_at(100, 1000, &o) - 1e-3).abs() < 1e-15);
        // Halfway through the decay the cosine is at its midpoint.
        assert!((lr_at(550, 1000, &o) - 5.5e-4).abs() < 1e-12);
        assert!((lr_at(1000, 1000, &o) - 1e-4).abs() < 1e-15);
        let mut prev = f64::MAX;
        for s in 100..=1000 {
            let lr = lr_at(s, 1000, &o);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn wsd_is_flat_then_linear() {
        let o = cfg(ScheduleKind::Wsd);
        assert_eq!(lr_at(500, 1000, &o), 1e-3);
        assert_eq!(lr_at(800, 1000, &o), 1e-3);
        assert!((lr_at(900, 1000, &o) - 5.5e-4).abs() < 1e-12);
        assert!((lr_at(1000, 1000, &o) - 1e-4).abs() < 1e-15);
    }
}
