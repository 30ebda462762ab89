// The last stages of dynActGLU's parameter gradients (dynact_glu.cu has the first, and the
// arithmetic), the GPU twins of the sums in crates/model/src/ffn/dynact_glu.rs:
// 1. one warp per (parameter, channel) w = which * c + j (which 0: alpha, 1: beta): the f64 sum
//    of the blocks' partials in the lanes' order (`channel_sum_f64` in warp_rows.cuh;
//    `sum_block_partials` on the CPU), to sums[w]. A thread per w summing every block in order
//    kept 2,048 threads (two blocks) busy at paper.toml's size.
// 2. one thread per output parameter.
// Separate from dynact_glu.cu because warp shuffles cannot run one thread at a time, as the
// host's checks of that file's kernels do: these are checked on the simulator.

#include <stdint.h>

#include "warp_rows.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// Launch one thread per (w, lane): 2c * 32 items.
DYNACT_KERNEL void dynact_glu_channel_sums_f64(const float* partials, double* sums,
                                               uint64_t blocks, uint32_t c) {
    const WarpRows wr = warp_rows();
    for (uint64_t w = wr.first_row; w < 2 * (uint64_t)c; w += wr.row_stride) {
        const double sum = channel_sum_f64(partials, w, blocks, wr.lane);
        if (wr.lane == 0) {
            sums[w] = sum;
        }
    }
}

// One thread per output parameter k (2 per layer, 2c per channel): d alpha then d beta, after
// the n + n values of d gate and d up. Per channel: its sum. Per layer: the channels' sums
// added in order.
DYNACT_KERNEL void dynact_glu_param_grads_f32(const double* sums, float* out, uint64_t n,
                                              uint32_t c, uint32_t per) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < 2 * (uint64_t)per;
         k += stride) {
        const uint64_t which = k / per;  // 0: alpha, 1: beta
        double total = 0.0;
        const uint32_t first = per == 1 ? 0 : (uint32_t)(k % per);
        const uint32_t last = per == 1 ? c : first + 1;
        for (uint32_t j = first; j < last; j++) {
            total += sums[which * c + j];
        }
        out[2 * n + k] = (float)total;
    }
}
