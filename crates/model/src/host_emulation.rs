//! The CUDA kernels of `kernels/` compiled as C and run on the host, one thread at a time, over
//! the grid a launch would use (`kernels/host/kernels_on_host.c`): what the tests run to check
//! the kernels' own source without a GPU. Test support, not API: each function takes raw
//! pointers to buffers of the sizes its kernel indexes (see the `.cu` file), plus the grid and
//! block of the emulated launch. The row kernels, which reduce with warp shuffles, are not
//! here: the simulator's tests compare them with the CPU kernels directly.

extern "C" {
    pub fn dynact_philox_dropout_f32_on_host(
        x: *const f32,
        y: *mut f32,
        n: u64,
        first: u64,
        key0: u32,
        key1: u32,
        threshold: u64,
        scale: f32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_glu_f32_on_host(
        gate: *const f32,
        up: *const f32,
        params: *const f32,
        y: *mut f32,
        n: u64,
        c: u32,
        per: u32,
        relu: i32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_glu_backward_f32_on_host(
        gate: *const f32,
        up: *const f32,
        grad: *const f32,
        params: *const f32,
        out: *mut f32,
        partials: *mut f32,
        rows: u64,
        c: u32,
        per: u32,
        relu: i32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_move_heads_f32_on_host(
        x: *const f32,
        y: *mut f32,
        rows: u64,
        t: u32,
        heads: u32,
        d: u32,
        inverse: i32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_rope_f32_on_host(
        x: *const f32,
        cos: *const f32,
        sin: *const f32,
        y: *mut f32,
        rows: u64,
        t: u32,
        heads: u32,
        d: u32,
        inverse: i32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_swiglu_f32_on_host(
        gate: *const f32,
        up: *const f32,
        grad: *const f32,
        y: *mut f32,
        out: *mut f32,
        n: u64,
        grid: u32,
        block: u32,
    );
    /// `chunks` hold host addresses (`crate::param_chunks::chunks_of`).
    pub fn dynact_adamw_f32_on_host(
        chunks: *const crate::param_chunks::ParamChunk,
        count: u32,
        state: *const crate::param_chunks::OptimizerState,
        keep1: f32,
        take1: f32,
        keep2: f32,
        take2: f32,
        eps: f32,
        grid: u32,
        block: u32,
    );
    pub fn dynact_cast_f32_to_bf16_on_host(
        x: *const f32,
        y: *mut u16,
        n: u64,
        grid: u32,
        block: u32,
    );
    pub fn dynact_cast_bf16_to_f32_on_host(
        x: *const u16,
        y: *mut f32,
        n: u64,
        grid: u32,
        block: u32,
    );
}
