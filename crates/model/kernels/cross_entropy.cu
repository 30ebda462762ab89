// Next-token cross-entropy from logits and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ops/cross_entropy.rs, with their arithmetic (a max-shifted log-sum-exp, the
// exponentials summed in the CPU's lane order), one warp per row of V logits (warp_rows.cuh),
// walking the row by 128-byte line (`row_shift`: V is rarely a multiple of 32).
// Launch one thread per (row, lane): rows * 32 items. A target id not below V gives a NaN
// loss (the kernel cannot stop the op; the trainer's non-finite check does).

#include <stdint.h>
#include <math.h>

#include "warp_rows.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// The row's log-sum-exp, the same in every lane of the warp. Position p of the walk is
// element p - shift of the row.
__device__ __forceinline__ float row_log_sum_exp(const float* x, uint32_t v, uint32_t shift,
                                                 uint32_t lane) {
    float max = -INFINITY;
    for (uint32_t p = lane; p < shift + v; p += WARP_LANES) {
        if (p >= shift) {
            max = fmaxf(max, x[p - shift]);
        }
    }
    max = warp_max(max);
    float sum = 0.0f;
    for (uint32_t p = lane; p < shift + v; p += WARP_LANES) {
        if (p >= shift) {
            sum += expf(x[p - shift] - max);
        }
    }
    return max + logf(warp_sum(sum));
}

DYNACT_KERNEL void cross_entropy_f32(const float* logits, const uint32_t* targets, float* loss,
                                     uint64_t rows, uint32_t v) {
    const WarpRows wr = warp_rows();
    for (uint64_t r = wr.first_row; r < rows; r += wr.row_stride) {
        const float* x = logits + r * v;
        const float lse = row_log_sum_exp(x, v, row_shift(r * v), wr.lane);
        const uint32_t t = targets[r];
        if (wr.lane == 0) {
            loss[r] = t < v ? lse - x[t] : nanf("");
        }
    }
}

// d logits = grad[r] (softmax(x) - onehot(target)) per row.
DYNACT_KERNEL void cross_entropy_backward_f32(const float* logits, const uint32_t* targets,
                                              const float* grad, float* out, uint64_t rows,
                                              uint32_t v) {
    const WarpRows wr = warp_rows();
    for (uint64_t r = wr.first_row; r < rows; r += wr.row_stride) {
        const float* x = logits + r * v;
        float* o = out + r * v;
        const uint32_t shift = row_shift(r * v);
        const float lse = row_log_sum_exp(x, v, shift, wr.lane), g = grad[r];
        for (uint32_t p = wr.lane; p < shift + v; p += WARP_LANES) {
            if (p >= shift) {
                o[p - shift] = g * expf(x[p - shift] - lse);
            }
        }
        // The lane that wrote o[t] takes g off it, as the CPU does after the row.
        const uint32_t t = targets[r];
        if (t < v && (t + shift) % WARP_LANES == wr.lane) {
            o[t] -= g;
        }
    }
}
