// Where a row of attention's heads sits in the two layouts the kernels move it between:
// (B, T, heads, d), as a projection's output splits into heads, and (B, heads, T, d), as the
// batched products take them. Shared by heads.cu and rope.cu.
#pragma once

#include <stdint.h>

// The input row that output row `row` of a move comes from, and (in *position) its position in
// 0..t. Forward the output is (B, heads, T, d) and the input (B, T, heads, d); with `inverse`,
// the other way round.
__device__ __forceinline__ uint64_t heads_source_row(uint64_t row, uint64_t t, uint64_t heads,
                                                     int inverse, uint64_t* position) {
    if (inverse) {
        const uint64_t head = row % heads, bt = row / heads;
        *position = bt % t;
        return ((bt / t) * heads + head) * t + *position;
    }
    const uint64_t bh = row / t;
    *position = row % t;
    return ((bh / heads) * t + *position) * heads + bh % heads;
}
