//! The CUDA driver API (`libcuda.so.1`) that cudarc and Candle call: one device of compute
//! capability 9.0, its primary context, streams and events (work is done when queued), memory,
//! PTX modules and launches on the simulator.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use dynact_cuda_sim::{LaunchConfig, ModuleId};

use crate::{report, state, Handle, State, STATELESS};

pub type CuResult = c_int;
pub const SUCCESS: CuResult = 0;
pub const INVALID_VALUE: CuResult = 1;
pub const INVALID_DEVICE: CuResult = 101;
pub const INVALID_IMAGE: CuResult = 200;
pub const INVALID_HANDLE: CuResult = 400;
pub const NOT_FOUND: CuResult = 500;
pub const ILLEGAL_ADDRESS: CuResult = 700;
pub const LAUNCH_OUT_OF_RESOURCES: CuResult = 701;

/// The device's memory as cuMemGetInfo reports it (an H100's 80 GB).
const TOTAL_MEMORY: u64 = 80 * 1_000_000_000;

/// Runs `f` on the device state unless an earlier fault stuck.
fn with_state(f: impl FnOnce(&mut State) -> CuResult) -> CuResult {
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    if s.sticky.is_some() {
        return ILLEGAL_ADDRESS;
    }
    f(s)
}

/// Records a fault: reported once, then every call fails as on a GPU.
pub fn fault(s: &mut State, line: String, code: CuResult) -> CuResult {
    report(&line);
    if code == ILLEGAL_ADDRESS {
        s.sticky = Some(line);
    }
    code
}

unsafe fn put<T>(p: *mut T, v: T) -> CuResult {
    if p.is_null() {
        return INVALID_VALUE;
    }
    p.write(v);
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CuResult {
    put(v, 13000)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CuResult {
    put(n, 1)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut c_int, ordinal: c_int) -> CuResult {
    if ordinal != 0 {
        return INVALID_DEVICE;
    }
    put(dev, 0)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, _dev: c_int) -> CuResult {
    let text = b"dynact-cuda-sim (sm_90)\0";
    if name.is_null() || len <= 0 {
        return INVALID_VALUE;
    }
    let n = text.len().min(len as usize);
    std::ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, name, n);
    *name.add(n - 1) = 0;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], _dev: c_int) -> CuResult {
    put(uuid, *b"dynact-cuda-sim!")
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: c_int) -> CuResult {
    cuDeviceGetUuid_v2(uuid, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, _dev: c_int) -> CuResult {
    put(bytes, TOTAL_MEMORY as usize)
}

/// The attributes of an H100 SXM (compute capability 9.0) that callers ask for.
fn attribute(a: c_int) -> c_int {
    match a {
        1 => 1024,              // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,          // MAX_BLOCK_DIM_X, _Y
        4 => 64,                // MAX_BLOCK_DIM_Z
        5 => i32::MAX,          // MAX_GRID_DIM_X
        6 | 7 => 65535,         // MAX_GRID_DIM_Y, _Z
        8 => 48 * 1024,         // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 64 * 1024,         // TOTAL_CONSTANT_MEMORY
        10 => 32,               // WARP_SIZE
        12 => 65536,            // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,        // CLOCK_RATE (kHz)
        16 => 132,              // MULTIPROCESSOR_COUNT
        36 => 2_619_000,        // MEMORY_CLOCK_RATE (kHz)
        37 => 5120,             // GLOBAL_MEMORY_BUS_WIDTH
        38 => 50 * 1024 * 1024, // L2_CACHE_SIZE
        39 => 2048,             // MAX_THREADS_PER_MULTIPROCESSOR
        41 => 1,                // UNIFIED_ADDRESSING
        75 => 9,                // COMPUTE_CAPABILITY_MAJOR
        76 => 0,                // COMPUTE_CAPABILITY_MINOR
        81 => 228 * 1024,       // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,            // MAX_REGISTERS_PER_MULTIPROCESSOR
        97 => 227 * 1024,       // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        106 => 32,              // MAX_BLOCKS_PER_MULTIPROCESSOR
        115 => 1,               // MEMORY_POOLS_SUPPORTED
        _ => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    v: *mut c_int,
    attrib: c_int,
    _dev: c_int,
) -> CuResult {
    put(v, attribute(attrib))
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, _dev: c_int) -> CuResult {
    with_state(|_| put(ctx, STATELESS))
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(_dev: c_int) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(_ctx: *mut c_void) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> CuResult {
    with_state(|_| put(ctx, STATELESS))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut c_int) -> CuResult {
    put(dev, 0)
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CuResult {
    if !least.is_null() {
        *least = 0;
    }
    if !greatest.is_null() {
        *greatest = -5;
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut *mut c_void, _flags: c_uint) -> CuResult {
    with_state(|_| put(stream, STATELESS))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    stream: *mut *mut c_void,
    flags: c_uint,
    _p: c_int,
) -> CuResult {
    cuStreamCreate(stream, flags)
}

#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(_stream: *mut c_void) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize(_stream: *mut c_void) -> CuResult {
    with_state(|s| {
        s.gpu
            .log_json(&serde_json::json!({"kernel": "stream_synchronize"}));
        SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn cuStreamQuery(_stream: *mut c_void) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(
    _stream: *mut c_void,
    _event: *mut c_void,
    _flags: c_uint,
) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut *mut c_void, _flags: c_uint) -> CuResult {
    with_state(|_| put(event, STATELESS))
}

#[no_mangle]
pub extern "C" fn cuEventRecord(_event: *mut c_void, _stream: *mut c_void) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub extern "C" fn cuEventSynchronize(_event: *mut c_void) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub extern "C" fn cuEventQuery(_event: *mut c_void) -> CuResult {
    with_state(|_| SUCCESS)
}

#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(_event: *mut c_void) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    _start: *mut c_void,
    _end: *mut c_void,
) -> CuResult {
    put(ms, 0.0)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> CuResult {
    cuEventElapsedTime(ms, start, end)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(
    pool: *mut *mut c_void,
    _dev: c_int,
) -> CuResult {
    with_state(|_| put(pool, STATELESS))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut *mut c_void, dev: c_int) -> CuResult {
    cuDeviceGetDefaultMemPool(pool, dev)
}

/// Pool attributes (release threshold, reuse policies) are accepted: the simulator has no pool.
#[no_mangle]
pub extern "C" fn cuMemPoolSetAttribute(
    _pool: *mut c_void,
    _attr: c_int,
    _value: *mut c_void,
) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    _pool: *mut c_void,
    _attr: c_int,
    value: *mut u64,
) -> CuResult {
    put(value, 0)
}

#[no_mangle]
pub extern "C" fn cuMemPoolTrimTo(_pool: *mut c_void, _keep: usize) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    with_state(|s| {
        let used = s.gpu.live_bytes();
        let _ = put(free, TOTAL_MEMORY.saturating_sub(used) as usize);
        put(total, TOTAL_MEMORY as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(ptr: *mut u64, bytes: usize) -> CuResult {
    with_state(|s| put(ptr, s.gpu.alloc(bytes)))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    ptr: *mut u64,
    bytes: usize,
    _stream: *mut c_void,
) -> CuResult {
    cuMemAlloc_v2(ptr, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    ptr: *mut u64,
    bytes: usize,
    _pool: *mut c_void,
    _stream: *mut c_void,
) -> CuResult {
    cuMemAlloc_v2(ptr, bytes)
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(ptr: u64) -> CuResult {
    // Freeing is allowed after a fault, so that teardown does not report twice.
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    match s.gpu.free(ptr) {
        Ok(()) => SUCCESS,
        Err(e) => fault(s, e.to_string(), INVALID_VALUE),
    }
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync(ptr: u64, _stream: *mut c_void) -> CuResult {
    cuMemFree_v2(ptr)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    ptr: *mut *mut c_void,
    bytes: usize,
    _flags: c_uint,
) -> CuResult {
    // Pinned host memory is host memory; 64-byte aligned as malloc's on the host is not always.
    let layout = std::alloc::Layout::from_size_align(bytes.max(1), 64).expect("a valid layout");
    put(ptr, std::alloc::alloc_zeroed(layout) as *mut c_void)
}

#[no_mangle]
pub extern "C" fn cuMemFreeHost(_ptr: *mut c_void) -> CuResult {
    // The size is not known here; pinned buffers live as long as the process in a test.
    SUCCESS
}

fn copy_htod(s: &mut State, dst: u64, src: *const c_void, n: usize) -> CuResult {
    if n == 0 {
        return SUCCESS;
    }
    // SAFETY: the caller passes n readable bytes at src (the driver API's contract).
    let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, n) };
    s.gpu
        .log_json(&serde_json::json!({"kernel": "memcpy_host_to_device", "bytes": n}));
    match s.gpu.write(dst, bytes) {
        Ok(()) => SUCCESS,
        Err(e) => fault(s, format!("cuMemcpyHtoD: {e}"), ILLEGAL_ADDRESS),
    }
}

fn copy_dtoh(s: &mut State, dst: *mut c_void, src: u64, n: usize) -> CuResult {
    if n == 0 {
        return SUCCESS;
    }
    // SAFETY: the caller passes n writable bytes at dst.
    let bytes = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, n) };
    s.gpu
        .log_json(&serde_json::json!({"kernel": "memcpy_device_to_host", "bytes": n}));
    match s.gpu.read(src, bytes) {
        Ok(()) => SUCCESS,
        Err(e) => fault(s, format!("cuMemcpyDtoH: {e}"), ILLEGAL_ADDRESS),
    }
}

fn copy_dtod(s: &mut State, dst: u64, src: u64, n: usize) -> CuResult {
    if n == 0 {
        return SUCCESS;
    }
    let mut buf = vec![0u8; n];
    if let Err(e) = s.gpu.read(src, &mut buf) {
        return fault(s, format!("cuMemcpyDtoD source: {e}"), ILLEGAL_ADDRESS);
    }
    match s.gpu.write(dst, &buf) {
        Ok(()) => SUCCESS,
        Err(e) => fault(s, format!("cuMemcpyDtoD destination: {e}"), ILLEGAL_ADDRESS),
    }
}

#[no_mangle]
pub extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, n: usize) -> CuResult {
    with_state(|s| copy_htod(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    n: usize,
    _stream: *mut c_void,
) -> CuResult {
    with_state(|s| copy_htod(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, n: usize) -> CuResult {
    with_state(|s| copy_dtoh(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    n: usize,
    _stream: *mut c_void,
) -> CuResult {
    with_state(|s| copy_dtoh(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2(dst: u64, src: u64, n: usize) -> CuResult {
    with_state(|s| copy_dtod(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: u64,
    src: u64,
    n: usize,
    _stream: *mut c_void,
) -> CuResult {
    with_state(|s| copy_dtod(s, dst, src, n))
}

#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dst: u64, value: u8, n: usize) -> CuResult {
    with_state(|s| match s.gpu.write(dst, &vec![value; n]) {
        Ok(()) => SUCCESS,
        Err(e) => fault(s, format!("cuMemsetD8: {e}"), ILLEGAL_ADDRESS),
    })
}

#[no_mangle]
pub extern "C" fn cuMemsetD8Async(dst: u64, value: u8, n: usize, _stream: *mut c_void) -> CuResult {
    cuMemsetD8_v2(dst, value, n)
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut c_void,
    image: *const c_void,
) -> CuResult {
    if image.is_null() {
        return INVALID_VALUE;
    }
    let head = std::slice::from_raw_parts(image as *const u8, 4);
    if head == b"\x7fELF" || head == [0x50, 0xed, 0x55, 0xba] {
        report("cuModuleLoadData: a cubin or fatbin; the simulator runs PTX only");
        return INVALID_IMAGE;
    }
    let text = CStr::from_ptr(image as *const c_char).to_string_lossy();
    with_state(|s| match s.gpu.load_ptx(&text) {
        Ok(id) => put(module, s.new_handle(Handle::Module(id))),
        Err(e) => {
            report(&format!("cuModuleLoadData: {e}"));
            INVALID_IMAGE
        }
    })
}

#[no_mangle]
pub extern "C" fn cuModuleUnload(_module: *mut c_void) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut *mut c_void,
    module: *mut c_void,
    name: *const c_char,
) -> CuResult {
    let name = CStr::from_ptr(name).to_string_lossy().into_owned();
    with_state(|s| {
        let Some(Handle::Module(id)) = s.handle(module).cloned() else {
            return INVALID_HANDLE;
        };
        if s.gpu.module(id).kernel(&name).is_none() {
            report(&format!(
                "cuModuleGetFunction: no kernel named {name} in the module"
            ));
            return NOT_FOUND;
        }
        put(f, s.new_handle(Handle::Function { module: id, name }))
    })
}

fn function(s: &State, f: *mut c_void) -> Option<(ModuleId, String)> {
    match s.handle(f) {
        Some(Handle::Function { module, name }) => Some((*module, name.clone())),
        _ => None,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    v: *mut c_int,
    attrib: c_int,
    f: *mut c_void,
) -> CuResult {
    with_state(|s| {
        let Some((module, name)) = function(s, f) else {
            return INVALID_HANDLE;
        };
        let k = s
            .gpu
            .module(module)
            .kernel(&name)
            .expect("checked when the handle was made");
        let value = match attrib {
            0 => k.max_threads.unwrap_or(1024) as c_int, // MAX_THREADS_PER_BLOCK
            1 => k.shared_static as c_int,               // SHARED_SIZE_BYTES
            3 => k.local_bytes as c_int,                 // LOCAL_SIZE_BYTES
            4 => 32,                                     // NUM_REGS
            5 | 6 => 90,                                 // PTX_VERSION, BINARY_VERSION
            8 => (48 * 1024 - k.shared_static) as c_int, // MAX_DYNAMIC_SHARED_SIZE_BYTES
            _ => 0,
        };
        put(v, value)
    })
}

#[no_mangle]
pub extern "C" fn cuFuncSetAttribute(f: *mut c_void, attrib: c_int, value: c_int) -> CuResult {
    with_state(|s| {
        let Some((_, name)) = function(s, f) else {
            return INVALID_HANDLE;
        };
        if attrib == 8 {
            if let Err(e) = s.gpu.set_max_dynamic_shared(&name, value.max(0) as usize) {
                report(&e.to_string());
                return INVALID_VALUE;
            }
        }
        SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn cuFuncSetCacheConfig(_f: *mut c_void, _config: c_int) -> CuResult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    n: *mut c_int,
    _f: *mut c_void,
    block: c_int,
    _smem: usize,
) -> CuResult {
    put(n, (2048 / block.max(1)).clamp(1, 32))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    n: *mut c_int,
    f: *mut c_void,
    block: c_int,
    smem: usize,
    _flags: c_uint,
) -> CuResult {
    cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem)
}

/// Runs the kernel at once; its arguments are read through `params` with the sizes its
/// `.entry` declares, as the driver reads them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    _stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    with_state(|s| {
        let Some((module, name)) = function(s, f) else {
            return INVALID_HANDLE;
        };
        if !extra.is_null() {
            report(&format!(
                "cuLaunchKernel {name}: the `extra` form of arguments is not supported"
            ));
            return INVALID_VALUE;
        }
        let sizes: Vec<usize> = s
            .gpu
            .module(module)
            .kernel(&name)
            .expect("checked when the handle was made")
            .params
            .iter()
            .map(|p| p.size)
            .collect();
        if params.is_null() && !sizes.is_empty() {
            return INVALID_VALUE;
        }
        let args: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                std::slice::from_raw_parts(*params.add(i) as *const u8, size).to_vec()
            })
            .collect();
        let cfg = LaunchConfig {
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            shared_bytes: shared,
        };
        match s.gpu.launch_raw(module, &name, cfg, &args) {
            Ok(_) => SUCCESS,
            Err(e @ dynact_cuda_sim::SimError::Launch(_)) => {
                report(&e.to_string());
                LAUNCH_OUT_OF_RESOURCES
            }
            Err(e) => fault(s, e.to_string(), ILLEGAL_ADDRESS),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CuResult, text: *mut *const c_char) -> CuResult {
    let s: &'static [u8] = match code {
        SUCCESS => b"no error\0",
        INVALID_VALUE => b"invalid argument\0",
        INVALID_IMAGE => b"device kernel image is invalid\0",
        INVALID_HANDLE => b"invalid resource handle\0",
        NOT_FOUND => b"named symbol not found\0",
        ILLEGAL_ADDRESS => {
            b"an illegal memory access was encountered (see the cuda-sim line above)\0"
        }
        LAUNCH_OUT_OF_RESOURCES => b"too many resources requested for launch\0",
        _ => b"operation not supported by the simulator\0",
    };
    put(text, s.as_ptr() as *const c_char)
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CuResult, text: *mut *const c_char) -> CuResult {
    let s: &'static [u8] = match code {
        SUCCESS => b"CUDA_SUCCESS\0",
        INVALID_VALUE => b"CUDA_ERROR_INVALID_VALUE\0",
        INVALID_IMAGE => b"CUDA_ERROR_INVALID_IMAGE\0",
        INVALID_HANDLE => b"CUDA_ERROR_INVALID_HANDLE\0",
        NOT_FOUND => b"CUDA_ERROR_NOT_FOUND\0",
        ILLEGAL_ADDRESS => b"CUDA_ERROR_ILLEGAL_ADDRESS\0",
        LAUNCH_OUT_OF_RESOURCES => b"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES\0",
        _ => b"CUDA_ERROR_NOT_SUPPORTED\0",
    };
    put(text, s.as_ptr() as *const c_char)
}
