// The global norm of all of a step's gradients in two launches, whatever the number of
// parameters, and what follows from it on the device, so that the host need not wait: each
// chunk of the table (param_chunks.cuh) is summed by one block (each thread its strided
// elements in sequence, then each warp's butterfly, then the warps' sums by warp 0), then one
// block sums the chunks' sums the same way and decides the step as the CPU path of
// crates/trainer/src/optim.rs does, in the same f64 arithmetic: skipped where the loss or the
// norm is not finite, else clipped and counted for bias correction. Launch blocks of a
// multiple of 32 threads, at most 1024.

#include <math.h>
#include <stdint.h>

#include "param_chunks.cuh"
#include "warp_rows.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// The block's sum of each thread's `v`, in thread 0 (the other threads' results are not it).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    const uint32_t lane = threadIdx.x % WARP_LANES, warp = threadIdx.x / WARP_LANES;
    v = warp_sum(v);
    __syncthreads();  // warp_sums may still be read by a previous call's warp 0
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        const uint32_t warps = blockDim.x / WARP_LANES;
        v = warp_sum(lane < warps ? warp_sums[lane] : 0.0f);
    }
    return v;
}

// sums[c] = sum of g^2 over chunk c.
DYNACT_KERNEL void grad_sum_squares_f32(const ParamChunk* chunks, uint32_t count, float* sums) {
    for (uint32_t c = blockIdx.x; c < count; c += gridDim.x) {
        const ParamChunk k = chunks[c];
        float s = 0.0f;
        for (uint32_t i = threadIdx.x; i < k.len; i += blockDim.x) {
            s += k.g[i] * k.g[i];
        }
        s = block_sum(s);
        if (threadIdx.x == 0) {
            sums[c] = s;
        }
    }
}

// base^t as Rust's f64::powi computes it (compiler-builtins' __powidf2: square and multiply
// from the lowest bit), so that the bias corrections equal the CPU path's bit for bit.
__device__ __forceinline__ double powi(double base, uint32_t t) {
    double result = 1.0;
    while (true) {
        if (t & 1) {
            result *= base;
        }
        t >>= 1;
        if (t == 0) {
            return result;
        }
        base *= base;
    }
}

// One block: the total of sums[0..count]; then in `state` the step's decision (skip, the
// gradient scale clip / norm where clip > 0 and the norm exceeds it, the update count and
// its bias corrections) and in history[slot] the step's record.
DYNACT_KERNEL void grad_clip_f32(const float* sums, uint32_t count, const float* loss,
                                 double clip, double beta1, double beta2,
                                 OptimizerState* state, StepRecord* history, uint32_t slot) {
    if (blockIdx.x != 0) {
        return;
    }
    float s = 0.0f;
    for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) {
        s += sums[i];
    }
    s = block_sum(s);
    if (threadIdx.x != 0) {
        return;
    }
    const float l = *loss;
    const double norm = sqrt((double)s);
    const int finite = isfinite(l) && isfinite(norm);
    if (finite) {
        state->updates += 1;
        state->scale = (float)(clip > 0.0 && norm > clip ? clip / norm : 1.0);
        state->inv_bias1 = (float)(1.0 / (1.0 - powi(beta1, state->updates)));
        state->inv_bias2 = (float)(1.0 / (1.0 - powi(beta2, state->updates)));
    }
    state->skip = !finite;
    StepRecord r;
    r.loss = l;
    r.sum_squares = s;
    r.skipped = !finite;
    r.updates = state->updates;
    history[slot] = r;
}
