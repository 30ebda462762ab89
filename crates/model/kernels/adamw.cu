// AdamW's in-place update of all of a step's f32 parameters in one launch, the GPU twin of the
// CPU passes in crates/trainer/src/adamw_kernels.rs (the same arithmetic per element): one
// block per chunk of the table (param_chunks.cuh), its threads striding over the chunk. It
// lives here because this crate builds the project's CUDA kernels; the trainer launches it.

#include <stdint.h>
#include <math.h>

#include "param_chunks.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// m <- m keep1 + g' take1, v <- v keep2 + g'^2 take2 (g' = g scale), then
// theta <- theta decay - lr (m inv_bias1) / (sqrt(v inv_bias2) + eps), with the scale and the
// bias corrections the gradient reduction left in `state` (grad_norm.cu); nothing where it
// marked the step skipped.
DYNACT_KERNEL void adamw_update_f32(const ParamChunk* chunks, uint32_t count,
                                    const OptimizerState* state, float keep1, float take1,
                                    float keep2, float take2, float eps) {
    if (state->skip) {
        return;
    }
    const float scale = state->scale, inv_bias1 = state->inv_bias1, inv_bias2 = state->inv_bias2;
    for (uint32_t c = blockIdx.x; c < count; c += gridDim.x) {
        const ParamChunk k = chunks[c];
        for (uint32_t i = threadIdx.x; i < k.len; i += blockDim.x) {
            const float gs = k.g[i] * scale;
            const float m = k.m[i] * keep1 + gs * take1;
            const float v = k.v[i] * keep2 + (gs * gs) * take2;
            k.m[i] = m;
            k.v[i] = v;
            const float update = (m * inv_bias1) / (sqrtf(v * inv_bias2) + eps);
            k.theta[i] = k.theta[i] * k.decay - update * k.lr;
        }
    }
}
