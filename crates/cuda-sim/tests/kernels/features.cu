// Kernels that use what this project's row kernels do not (yet): shared memory and barriers,
// warp shuffles and votes, atomics, divergence, dynamic shared memory, bf16/f16 conversions,
// directed rounding; and kernels with planted bugs. tests/semantics.rs runs them on the
// simulator against answers computed on the host.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Sum of each block's 256 elements: a shared-memory tree with a barrier per level.
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float buf[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            buf[threadIdx.x] += buf[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[blockIdx.x] = buf[0];
    }
}

// Each warp's sum by butterfly shuffles (every lane ends with it), and lane 0's by shuffle down.
extern "C" __global__ void warp_sums(const float* x, float* xor_out, float* down_out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float a = x[i], b = x[i];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    xor_out[i] = a;
    if (threadIdx.x % 32 == 0) {
        down_out[i / 32] = b;
    }
}

// Per warp: the ballot of x > 0, whether any and all lanes have it, and lane 3's value.
extern "C" __global__ void votes(const float* x, unsigned* ballot, int* any_all, float* lane3) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const bool p = x[i] > 0.0f;
    const unsigned b = __ballot_sync(0xffffffffu, p);
    const int any = __any_sync(0xffffffffu, p), all = __all_sync(0xffffffffu, p);
    const float v = __shfl_sync(0xffffffffu, x[i], 3);
    if (threadIdx.x % 32 == 0) {
        ballot[i / 32] = b;
        any_all[i / 32] = any * 2 + all;
        lane3[i / 32] = v;
    }
}

// Count and sum of the positive elements with atomics.
extern "C" __global__ void atomic_count(const float* x, unsigned* count, float* sum, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] > 0.0f) {
        atomicAdd(count, 1u);
        atomicAdd(sum, x[i]);
    }
}

// Data-dependent loops and branches: the Collatz steps of i + 1 (capped), odd steps counted.
extern "C" __global__ void collatz(int* steps, int* odd, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    unsigned v = i + 1;
    int s = 0, o = 0;
    while (v != 1 && s < 1000) {
        if (v & 1) {
            v = 3 * v + 1;
            o++;
        } else {
            v >>= 1;
        }
        s++;
    }
    steps[i] = s;
    odd[i] = o;
}

// Reverses each block's elements through dynamic shared memory.
extern "C" __global__ void reverse_blocks(const float* x, float* y) {
    extern __shared__ float tile[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Round trips through bf16 and f16 (round to nearest even) and back.
extern "C" __global__ void half_round_trips(const float* x, float* bf, float* h, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        bf[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
        h[i] = __half2float(__float2half_rn(x[i]));
    }
}

// Directed roundings of one a*b+c, a+b, a*b, a/b, and float-to-int conversions.
extern "C" __global__ void directed(const float* a, const float* b, const float* c, float* out,
                                    int* ints, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float* o = out + 10 * i;
        o[0] = __fmaf_rd(a[i], b[i], c[i]);
        o[1] = __fmaf_ru(a[i], b[i], c[i]);
        o[2] = __fmaf_rz(a[i], b[i], c[i]);
        o[3] = __fmaf_rn(a[i], b[i], c[i]);
        o[4] = __fadd_rd(a[i], c[i]);
        o[5] = __fadd_ru(a[i], c[i]);
        o[6] = __fmul_rd(a[i], b[i]);
        o[7] = __fmul_ru(a[i], b[i]);
        o[8] = __fdiv_rd(a[i], b[i]);
        o[9] = __fdiv_ru(a[i], b[i]);
        ints[4 * i] = __float2int_rn(a[i] * 4.0f);
        ints[4 * i + 1] = __float2int_rd(a[i] * 4.0f);
        ints[4 * i + 2] = __float2int_ru(a[i] * 4.0f);
        ints[4 * i + 3] = __float2int_rz(a[i] * 4.0f);
    }
}

// Planted bug: reads one element past the end (i <= n).
extern "C" __global__ void reads_past_end(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) {
        y[i < n ? i : 0] = x[i];
    }
}

// Planted bug: a barrier only some threads reach (they then meet the others at the second).
extern "C" __global__ void divergent_barrier(float* x) {
    if (x[threadIdx.x] > 0.0f) {
        __syncthreads();
        x[threadIdx.x] = 1.0f;
    }
    __syncthreads();
    x[threadIdx.x] += 1.0f;
}

// Planted bug: a full-warp shuffle after half the warp has returned.
extern "C" __global__ void shuffle_after_exit(float* x) {
    if (threadIdx.x >= 16) {
        return;
    }
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

// y[i] = x[i * stride]: one warp reads 4 sectors when stride is 1, 32 when it is 8 or more.
extern "C" __global__ void gather_strided(const float* x, float* y, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i * stride];
}

// Packed pairs: bf16x2 and f16x2 add, mul and fma, lane by lane.
extern "C" __global__ void packed_pairs(const __nv_bfloat162* a, const __nv_bfloat162* b,
                                        __nv_bfloat162* bf, const __half2* c, const __half2* d,
                                        __half2* h, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        bf[3 * i] = __hadd2(a[i], b[i]);
        bf[3 * i + 1] = __hmul2(a[i], b[i]);
        bf[3 * i + 2] = __hfma2(a[i], b[i], a[i]);
        h[3 * i] = __hadd2(c[i], d[i]);
        h[3 * i + 1] = __hmul2(c[i], d[i]);
        h[3 * i + 2] = __hfma2(c[i], d[i], c[i]);
    }
}

// `set` (a comparison as a value, which Candle's bf16 comparisons use on sm_80): per pair,
// a >= b as an f32 (1.0 or 0.0) and a < b as a u32 mask (all ones or 0).
extern "C" __global__ void compare_values(const float* a, const float* b, float* ge,
                                          unsigned* lt, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float r;
        unsigned m;
        asm("set.ge.f32.f32 %0, %1, %2;" : "=f"(r) : "f"(a[i]), "f"(b[i]));
        asm("set.lt.u32.f32 %0, %1, %2;" : "=r"(m) : "f"(a[i]), "f"(b[i]));
        ge[i] = r;
        lt[i] = m;
    }
}
