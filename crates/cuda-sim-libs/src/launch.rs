//! The driver API's PTX modules, their functions and attributes, and kernel launches on the
//! simulator.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use dynact_cuda_sim::{LaunchConfig, ModuleId};

use crate::driver::*;
use crate::{report, Handle, State};

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
