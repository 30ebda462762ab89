// Next-token cross-entropy from logits and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ops/cross_entropy.rs, with their arithmetic (a max-shifted log-sum-exp, the
// exponentials summed in order), one thread per row of V logits. A target id not below V
// gives a NaN loss (the kernel cannot stop the op; the trainer's non-finite check does).

#include <stdint.h>
#include <math.h>

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

__device__ __forceinline__ float row_log_sum_exp(const float* x, uint32_t v) {
    float max = -INFINITY;
    for (uint32_t j = 0; j < v; j++) {
        max = fmaxf(max, x[j]);
    }
    float sum = 0.0f;
    for (uint32_t j = 0; j < v; j++) {
        sum += expf(x[j] - max);
    }
    return max + logf(sum);
}

DYNACT_KERNEL void cross_entropy_f32(const float* logits, const uint32_t* targets, float* loss,
                                     uint64_t rows, uint32_t v) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const float* x = logits + r * v;
        const uint32_t t = targets[r];
        loss[r] = t < v ? row_log_sum_exp(x, v) - x[t] : nanf("");
    }
}

// d logits = grad[r] (softmax(x) - onehot(target)) per row.
DYNACT_KERNEL void cross_entropy_backward_f32(const float* logits, const uint32_t* targets,
                                              const float* grad, float* out, uint64_t rows,
                                              uint32_t v) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const float* x = logits + r * v;
        float* o = out + r * v;
        const float lse = row_log_sum_exp(x, v), g = grad[r];
        for (uint32_t j = 0; j < v; j++) {
            o[j] = g * expf(x[j] - lse);
        }
        const uint32_t t = targets[r];
        if (t < v) {
            o[t] -= g;
        }
    }
}
