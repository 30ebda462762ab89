//! Loops compiled for the widest vectors the CPU has. The crate is built for the x86-64
//! baseline (SSE2: 4 lanes), so an element-wise loop compiles to 4-lane code however wide the
//! CPU's vectors are; where its divisions or its many operations per element bound it (the
//! SiLU of the FFN gates), 16 lanes go faster. The bits stay the same: the compiler never
//! fuses a multiply and an add on its own (only `mul_add` does, with its one correct result),
//! and IEEE division is exact in any width.

/// `f()`, compiled for AVX-512 where the CPU has it (else as it is). `f` profits only where
/// the compiler inlines it into the wrapper, which it is not bound to: the add-and-norm rows
/// and the gates' backward passes ran on 4 lanes in such closures. The hot loops take explicit
/// wrappers (`wide_fma!`) for that reason; this serves the rest (a ReLU base's forward, RoPE's
/// rows where D is not a multiple of 32).
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
