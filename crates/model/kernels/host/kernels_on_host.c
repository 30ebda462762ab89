// The CUDA kernels of kernels/ compiled as C and run on the host, one thread at a time, over the
// grid a launch would use: what the tests run to check the kernels' own source without a GPU.
// Not part of the library's API: src/host_emulation.rs declares these symbols for the tests.
// The row kernels (rms_norm, causal_softmax, cross_entropy) and dynActGLU's parameter sums
// (dynact_glu_sums.cu) reduce with warp shuffles, and the embedding's backward takes a ballot,
// which one thread at a time cannot run: the simulator's tests (crates/cuda-sim/tests) compare
// them with the CPU kernels directly.

#include "emulation.h"

#include "../adamw.cu"
#include "../cast.cu"
#include "../dynact_glu.cu"
#include "../heads.cu"
#include "../philox_dropout.cu"
#include "../rope.cu"
#include "../swiglu.cu"

void dynact_philox_dropout_f32_on_host(const float* x, float* y, uint64_t n, uint64_t first,
                                       uint32_t key0, uint32_t key1, uint64_t threshold,
                                       float scale, unsigned grid, unsigned block) {
    RUN_GRID(grid, block, philox_dropout_f32(x, y, n, first, key0, key1, threshold, scale));
}

void dynact_glu_f32_on_host(const float* gate, const float* up, const float* params, float* y,
                            uint64_t n, uint32_t c, uint32_t per, int relu, unsigned grid,
                            unsigned block) {
    RUN_GRID(grid, block, dynact_glu_f32(gate, up, params, y, n, c, per, relu));
}

void dynact_glu_backward_f32_on_host(const float* gate, const float* up, const float* grad,
                                     const float* params, float* out, float* partials,
                                     uint64_t rows, uint32_t c, uint32_t per, int relu,
                                     unsigned grid, unsigned block) {
    RUN_GRID(grid, block,
             dynact_glu_backward_f32(gate, up, grad, params, out, partials, rows, c, per, relu));
}

void dynact_move_heads_f32_on_host(const float* x, float* y, uint64_t rows, uint32_t t,
                                   uint32_t heads, uint32_t d, int inverse, unsigned grid,
                                   unsigned block) {
    RUN_GRID(grid, block, move_heads_f32(x, y, rows, t, heads, d, inverse));
}

void dynact_rope_f32_on_host(const float* x, const float* cos, const float* sin, float* y,
                             uint64_t rows, uint32_t t, uint32_t heads, uint32_t d, int inverse,
                             unsigned grid, unsigned block) {
    RUN_GRID(grid, block, rope_f32(x, cos, sin, y, rows, t, heads, d, inverse));
}

void dynact_swiglu_f32_on_host(const float* gate, const float* up, const float* grad, float* y,
                               float* out, uint64_t n, unsigned grid, unsigned block) {
    RUN_GRID(grid, block, swiglu_f32(gate, up, y, n));
    RUN_GRID(grid, block, swiglu_backward_f32(gate, up, grad, out, n));
}

void dynact_adamw_f32_on_host(const ParamChunk* chunks, uint32_t count,
                              const OptimizerState* state, float keep1, float take1, float keep2,
                              float take2, float eps, unsigned grid, unsigned block) {
    RUN_GRID(grid, block,
             adamw_update_f32(chunks, count, state, keep1, take1, keep2, take2, eps));
}

void dynact_cast_f32_to_bf16_on_host(const float* x, uint16_t* y, uint64_t n, unsigned grid,
                                     unsigned block) {
    RUN_GRID(grid, block, cast_f32_to_bf16(x, y, n));
}

void dynact_cast_bf16_to_f32_on_host(const uint16_t* x, float* y, uint64_t n, unsigned grid,
                                     unsigned block) {
    RUN_GRID(grid, block, cast_bf16_to_f32(x, y, n));
}
