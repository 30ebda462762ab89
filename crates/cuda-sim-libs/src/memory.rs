//! The driver API's device memory: allocations (the simulator's, never reused), the pools
//! cudarc asks about, copies between host and device, and memset.

use std::ffi::{c_int, c_uint, c_void};

use crate::driver::*;
use crate::{state, State, STATELESS};

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
