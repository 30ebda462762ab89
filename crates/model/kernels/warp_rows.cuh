// One warp per row: what the row kernels (RMSNorm, causal softmax, cross-entropy) share.
//
// A warp's 32 lanes read a row together, lane l taking elements l, l + 32, l + 64, ... so each
// warp load touches consecutive addresses. A row's sum is reduced in one fixed order, the
// order of `lane_sum` in crates/model/src/ops/mod.rs that the CPU twins use: lane l adds its
// elements in order, then the lanes' sums are added in a butterfly (lanes l and l ^ 16, then
// ^ 8, ^ 4, ^ 2, ^ 1), which leaves the same total, bit for bit, in every lane.
//
// A row whose length is not a multiple of 32 (cross-entropy's V = 257) starts part-way into a
// 128-byte line, so the loads above would each straddle two lines: five sectors where four
// hold the data. Such a kernel walks the row by line instead (`row_shift`): position
// p = shift + j of the row's first line, lane p % 32, the lanes before the row's first element
// and after its last idle. Each lane then adds the same elements in the same order as above,
// only in the lane `shift` further on, and the butterfly, which adds lanes 16, 8, 4, 2, 1
// apart, does not change under that rotation: the sum is `lane_sum`'s bit for bit (tested
// there).
//
// Launches give blocks of a multiple of 32 threads (cudarc's 1024), so a warp never straddles
// two blocks; every lane of a warp runs the same rows, so the shuffles see the whole warp.

#include <stdint.h>

#define WARP_LANES 32u
#define ALL_LANES 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (uint32_t offset = WARP_LANES / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(ALL_LANES, v, offset);
    }
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (uint32_t offset = WARP_LANES / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(ALL_LANES, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (uint32_t offset = WARP_LANES / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(ALL_LANES, v, offset));
    }
    return v;
}

// This thread's lane, its warp's index in the grid, and the grid's number of warps: a row
// loop `for (row = first_row; row < rows; row += row_stride)` visits every row once.
struct WarpRows {
    uint32_t lane;
    uint64_t first_row;
    uint64_t row_stride;
};

__device__ __forceinline__ WarpRows warp_rows() {
    const uint64_t thread = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    WarpRows w;
    w.lane = threadIdx.x % WARP_LANES;
    w.first_row = thread / WARP_LANES;
    w.row_stride = (uint64_t)blockDim.x * gridDim.x / WARP_LANES;
    return w;
}

// The f64 sum of a channel's partial sums over `blocks` row blocks, stored channel by channel
// (`partials[channel * blocks + block]`), the same in every lane: lane l adds blocks l, l + 32,
// ... in order, then the butterfly (`sum_block_partials` on the CPU). What RMSNorm's and
// dynActGLU's weight gradients take, a warp per channel.
__device__ __forceinline__ double channel_sum_f64(const float* partials, uint64_t channel,
                                                  uint64_t blocks, uint32_t lane) {
    double sum = 0.0;
    for (uint64_t block = lane; block < blocks; block += WARP_LANES) {
        sum += (double)partials[channel * blocks + block];
    }
    return warp_sum_f64(sum);
}

// Elements between a row's first element, `first_element` elements into the buffer, and the
// 128-byte line it starts in (buffers start on a line).
__device__ __forceinline__ uint32_t row_shift(uint64_t first_element) {
    return (uint32_t)(first_element % WARP_LANES);
}
