// The token embedding and its backward pass.
//
// Forward: out row p = table row ids[p], one warp per position, the lanes taking the row's
// channels 32 at a time, so every load and store after the id's is a whole 128-byte line.
// (Candle's index_select takes a thread per output element, each loading the id again: 78%
// of the bytes of the sectors it touched in paper.toml's step.) An id not below the vocabulary
// gives a row of NaN, which the loss and the trainer's non-finite check then meet, as the
// cross-entropy kernel does with a target id past V (a kernel cannot stop the op); the CPU
// refuses such ids before it gets here.
//
// Backward: the GPU twin of Candle's index_add on the CPU: d table
// row v is the sum of the gradient rows of the positions whose id is v, added in position order
// from zero, so the bits are the CPU's. (Candle's CUDA index_add runs one block, a thread per
// channel looping over every id: 0.8 ms of paper.toml's step on one SM of 132.)
//
// One warp per (table row v, 32 channels), lane l on channel 32 k + l. The warp reads the ids
// 32 at a time; a ballot marks the positions whose id is v, and the warp takes them lowest
// first (brev, then clz), each lane adding its channel of that gradient row. Every warp reads
// every id (16K at paper.toml's size, from L2 on a GPU); for vocabularies of many thousands a
// sort by id would pay. Warp-wide ballots cannot run one thread at a time, so the simulator's
// tests compare this kernel with the CPU op directly (crates/cuda-sim/tests).

#include <stdint.h>
#include <math.h>

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// Launched with whole warps: blockDim.x a multiple of 32.
DYNACT_KERNEL void embedding_backward_f32(const uint32_t* ids, const float* grad, float* out,
                                          uint64_t positions, uint32_t vocab, uint32_t c) {
    const uint32_t lane = threadIdx.x % 32;
    const uint64_t chunks = (c + 31) / 32;
    const uint64_t warps = (uint64_t)vocab * chunks;
    const uint64_t warp_stride = (uint64_t)blockDim.x * gridDim.x / 32;
    for (uint64_t w = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; w < warps;
         w += warp_stride) {
        const uint32_t v = (uint32_t)(w / chunks);
        const uint32_t channel = (uint32_t)(w % chunks) * 32 + lane;
        float sum = 0.0f;
        for (uint64_t first = 0; first < positions; first += 32) {
            const uint64_t p = first + lane;
            uint32_t hits = __ballot_sync(0xffffffffu, p < positions && ids[p] == v);
            while (hits != 0) {
                const uint32_t bit = __clz(__brev(hits));
                if (channel < c) {
                    sum += grad[(first + bit) * c + channel];
                }
                hits &= hits - 1;
            }
        }
        if (channel < c) {
            out[(uint64_t)v * c + channel] = sum;
        }
    }
}

// Launched with whole warps: blockDim.x a multiple of 32.
DYNACT_KERNEL void embedding_f32(const float* table, const uint32_t* ids, float* out,
                                 uint64_t positions, uint32_t vocab, uint32_t c) {
    const uint32_t lane = threadIdx.x % 32;
    const uint64_t warp_stride = (uint64_t)blockDim.x * gridDim.x / 32;
    for (uint64_t p = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; p < positions;
         p += warp_stride) {
        const uint32_t id = ids[p];
        float* row = out + p * c;
        for (uint32_t j = lane; j < c; j += 32) {
            row[j] = id < vocab ? table[(uint64_t)id * c + j] : nanf("");
        }
    }
}
