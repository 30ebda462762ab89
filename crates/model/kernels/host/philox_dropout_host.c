// The CUDA kernels of kernels/ compiled as C and run on the host, one thread at a time, over the
// grid a launch would use: what the tests run to check the kernels' own source without a GPU.
// Not part of the library's API (no Rust code outside the tests declares these symbols).

#include <stdint.h>

struct dim3_host {
    unsigned x;
};
static struct dim3_host blockIdx, threadIdx, blockDim, gridDim;

#define __device__
#define __forceinline__ static inline
#define DYNACT_KERNEL static

#include "../philox_dropout.cu"

void dynact_philox_dropout_f32_on_host(const float* x, float* y, uint64_t n, uint64_t first,
                                       uint32_t key0, uint32_t key1, uint64_t threshold,
                                       float scale, unsigned grid, unsigned block) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; b++) {
        for (unsigned t = 0; t < block; t++) {
            blockIdx.x = b;
            threadIdx.x = t;
            philox_dropout_f32(x, y, n, first, key0, key1, threshold, scale);
        }
    }
}
