//! Loops compiled for the widest vectors the CPU has. The crate is built for the x86-64
//! baseline (SSE2: 4 lanes, no fused multiply-add), so an element-wise loop compiles to 4-lane
//! code however wide the CPU's vectors are; where its divisions or its many operations per
//! element bound it (the SiLU of the FFN gates), 16 lanes go faster. Without `-C fma` the
//! compiler never fuses a multiply and an add, and IEEE division is exact in any width, so the
//! bits are the same on every path.

/// `f()`, compiled for AVX-512 where the CPU has it (else as it is). `f` must be inlined into
/// the wrapper to profit, which a closure called once is.
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { avx512(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wide_path_computes_the_baseline_s_bits() {
        // SiLU's arithmetic (a division) and a multiply-add, on lengths that leave every kind
        // of remainder, through the dispatched path and the baseline one.
        let silu = |xs: &[f32], out: &mut [f32]| {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = x / (1.0 + x.abs()) * 0.3 + x * 1.7;
            }
        };
        for n in [1usize, 15, 16, 17, 100, 1000] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 80.0).collect();
            let (mut wide, mut plain) = (vec![0f32; n], vec![0f32; n]);
            widest(|| silu(&xs, &mut wide));
            silu(&xs, &mut plain);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&plain), "n = {n}");
        }
    }
}
