// AdamW's in-place update of one f32 parameter, the GPU twin of the CPU passes in
// crates/trainer/src/adamw_kernels.rs (same arithmetic), one thread per element. It lives here
// because this crate builds the project's CUDA kernels; the trainer launches it.

#include <stdint.h>
#include <math.h>

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// m <- m keep + x take, x = g scale (first moment) or (g scale)^2 (second moment).
DYNACT_KERNEL void adamw_moment_f32(float* m, const float* g, uint64_t n, float scale,
                                    float keep, float take, int first) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gs = g[i] * scale;
        m[i] = m[i] * keep + (first ? gs : gs * gs) * take;
    }
}

// theta <- theta decay - lr (m / bias1) / (sqrt(v / bias2) + eps).
DYNACT_KERNEL void adamw_parameter_f32(float* theta, const float* m, const float* v, uint64_t n,
                                       float inv_bias1, float inv_bias2, float eps, float lr,
                                       float decay) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float update = (m[i] * inv_bias1) / (sqrtf(v[i] * inv_bias2) + eps);
        theta[i] = theta[i] * decay - update * lr;
    }
}
