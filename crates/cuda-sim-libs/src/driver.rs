//! The CUDA driver API (`libcuda.so.1`) that cudarc and Candle call: one device of compute
//! capability 9.0, its primary context, streams and events (work is done when queued), and
//! the result codes; memory is in [`crate::memory`], modules and launches in
//! [`crate::launch`].

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::{report, state, State, STATELESS};

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
pub(crate) const TOTAL_MEMORY: u64 = 80 * 1_000_000_000;

/// Runs `f` on the device state unless an earlier fault stuck.
pub(crate) fn with_state(f: impl FnOnce(&mut State) -> CuResult) -> CuResult {
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

pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> CuResult {
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

/// The compute capability the device reports: 9.0, or DYNACT_CUDA_SIM_COMPUTE_CAPABILITY
/// (`7.5`), so that a test can stand in for an older GPU.
fn compute_capability() -> (c_int, c_int) {
    std::env::var("DYNACT_CUDA_SIM_COMPUTE_CAPABILITY")
        .ok()
        .and_then(|v| {
            let (major, minor) = v.split_once('.')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .unwrap_or((9, 0))
}

/// The attributes of an H100 SXM (compute capability 9.0) that callers ask for.
fn attribute(a: c_int) -> c_int {
    match a {
        1 => 1024,                    // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                // MAX_BLOCK_DIM_X, _Y
        4 => 64,                      // MAX_BLOCK_DIM_Z
        5 => i32::MAX,                // MAX_GRID_DIM_X
        6 | 7 => 65535,               // MAX_GRID_DIM_Y, _Z
        8 => 48 * 1024,               // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 64 * 1024,               // TOTAL_CONSTANT_MEMORY
        10 => 32,                     // WARP_SIZE
        12 => 65536,                  // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,              // CLOCK_RATE (kHz)
        16 => 132,                    // MULTIPROCESSOR_COUNT
        36 => 2_619_000,              // MEMORY_CLOCK_RATE (kHz)
        37 => 5120,                   // GLOBAL_MEMORY_BUS_WIDTH
        38 => 50 * 1024 * 1024,       // L2_CACHE_SIZE
        39 => 2048,                   // MAX_THREADS_PER_MULTIPROCESSOR
        41 => 1,                      // UNIFIED_ADDRESSING
        75 => compute_capability().0, // COMPUTE_CAPABILITY_MAJOR
        76 => compute_capability().1, // COMPUTE_CAPABILITY_MINOR
        81 => 228 * 1024,             // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,                  // MAX_REGISTERS_PER_MULTIPROCESSOR
        97 => 227 * 1024,             // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        106 => 32,                    // MAX_BLOCKS_PER_MULTIPROCESSOR
        115 => 1,                     // MEMORY_POOLS_SUPPORTED
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
