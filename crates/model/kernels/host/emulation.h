// What a CUDA kernel of kernels/ needs to compile as C on the host: the launch coordinates as
// globals that a launcher loop sets, one thread at a time (kernels may not use shared memory,
// warp shuffles or barriers), and the CUDA qualifiers defined away.

#include <math.h>
#include <stdint.h>

struct dim3_host {
    unsigned x;
};
static struct dim3_host blockIdx, threadIdx, blockDim, gridDim;

// CUDA's 16-byte vector of four floats (on a GPU one 16-byte load or store).
typedef struct {
    float x, y, z, w;
} float4;

#define __device__
#define __forceinline__ static inline
#define DYNACT_KERNEL static

// CUDA's arithmetic intrinsics: each operation rounded on its own, as C does without
// contraction (the build does not enable FMA instructions), a fused multiply-add rounded once
// (C's fmaf); a float's bits.
#define __fmaf_rn(a, b, c) fmaf((a), (b), (c))
#define __fmul_rn(a, b) ((a) * (b))
#define __fadd_rn(a, b) ((a) + (b))
#define __fsub_rn(a, b) ((a) - (b))
static inline uint32_t __float_as_uint(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, sizeof u);
    return u;
}
static inline float __uint_as_float(uint32_t u) {
    float x;
    __builtin_memcpy(&x, &u, sizeof x);
    return x;
}

// Runs `call` once per thread of a grid x block launch.
#define RUN_GRID(grid, block, call)                 \
    do {                                            \
        gridDim.x = (grid);                         \
        blockDim.x = (block);                       \
        for (unsigned b_ = 0; b_ < (grid); b_++) {  \
            for (unsigned t_ = 0; t_ < (block); t_++) { \
                blockIdx.x = b_;                    \
                threadIdx.x = t_;                   \
                call;                               \
            }                                       \
        }                                           \
    } while (0)
