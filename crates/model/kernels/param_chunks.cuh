// What the optimizer's kernels (adamw.cu, grad_norm.cu) share, each with the same layout in
// crates/model/src/param_chunks.rs (typedefs, so that the host's C compiler reads them too):
// - the table of a step's parameters cut into chunks of at most a few thousand elements, one
//   block per chunk, so that every parameter of the model is updated (or its gradient summed)
//   by one launch, whatever their number; the trainer uploads it each step;
// - the optimizer's state on the device: what the gradient reduction decides (clipping, a
//   skipped step, bias correction) for the update to read, so that the host need not wait for
//   it;
// - the record of each step (loss, squared norm), which the host reads at logging steps.

#pragma once

#include <stdint.h>

typedef struct ParamChunk {
    float* theta;    // the parameter's elements of this chunk
    float* m;        // its first moment's
    float* v;        // its second moment's
    const float* g;  // its gradient's
    uint32_t len;    // elements in the chunk
    float lr;        // the parameter's learning rate this step
    float decay;     // 1 - lr weight_decay where it decays, else 1
    uint32_t unused;
} ParamChunk;

typedef struct OptimizerState {
    uint32_t updates;  // updates applied so far, this step's included: bias correction's t
    uint32_t skip;     // 1 where this step's loss or gradient norm is not finite: no update
    float scale;       // this step's gradient scale: clip / norm where the norm exceeds clip
    float inv_bias1;   // 1 / (1 - beta1^t)
    float inv_bias2;   // 1 / (1 - beta2^t)
    uint32_t unused;
} OptimizerState;

typedef struct StepRecord {
    float loss;         // the step's loss as given (summed over micro-batches)
    float sum_squares;  // of all gradients
    uint32_t skipped;   // 1 where the update did not run
    uint32_t updates;   // OptimizerState.updates after the step
} StepRecord;
