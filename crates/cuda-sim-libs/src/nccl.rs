//! A single-rank NCCL (`libnccl.so.2`): what one NCCL rank of a data-parallel run calls. With
//! one rank, an all-reduce or a broadcast is a copy from the send buffer to the receive buffer
//! (nothing when they are the same); a communicator of more ranks is refused.

use std::ffi::{c_int, c_void};

use crate::driver::{fault, ILLEGAL_ADDRESS};
use crate::{report, state, STATELESS};

pub type NcclResult = c_int;

/// ncclUniqueId: 128 bytes, passed by value to ncclCommInitRank.
#[repr(C)]
pub struct UniqueId {
    internal: [u8; 128],
}
const SUCCESS: NcclResult = 0;
const SYSTEM_ERROR: NcclResult = 2;
const INVALID_ARGUMENT: NcclResult = 4;

#[no_mangle]
pub unsafe extern "C" fn ncclGetVersion(version: *mut c_int) -> NcclResult {
    if version.is_null() {
        return INVALID_ARGUMENT;
    }
    version.write(23200);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetUniqueId(id: *mut UniqueId) -> NcclResult {
    if id.is_null() {
        return INVALID_ARGUMENT;
    }
    let mut internal = [0u8; 128];
    internal[..15].copy_from_slice(b"dynact-cuda-sim");
    id.write(UniqueId { internal });
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRank(
    comm: *mut *mut c_void,
    ranks: c_int,
    _id: UniqueId,
    rank: c_int,
) -> NcclResult {
    if ranks != 1 || rank != 0 {
        report(&format!(
            "ncclCommInitRank: rank {rank} of {ranks}; the stand-in NCCL has one rank"
        ));
        return INVALID_ARGUMENT;
    }
    comm.write(STATELESS);
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclCommAbort(_comm: *mut c_void) -> NcclResult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclCommDestroy(_comm: *mut c_void) -> NcclResult {
    SUCCESS
}

fn element_bytes(datatype: c_int) -> Option<usize> {
    Some(match datatype {
        0 | 1 => 1,     // int8, uint8
        2 | 3 | 7 => 4, // int32, uint32, float32
        4 | 5 | 8 => 8, // int64, uint64, float64
        6 | 9 => 2,     // float16, bfloat16
        _ => return None,
    })
}

fn copy(api: &str, send: u64, recv: u64, count: usize, datatype: c_int) -> NcclResult {
    let Some(size) = element_bytes(datatype) else {
        return INVALID_ARGUMENT;
    };
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    if s.sticky.is_some() {
        return SYSTEM_ERROR;
    }
    s.gpu
        .log_json(&serde_json::json!({"kernel": api, "bytes": count * size}));
    let mut buf = vec![0u8; count * size];
    let result = s.gpu.read(send, &mut buf).and_then(|()| {
        if send == recv {
            Ok(())
        } else {
            s.gpu.write(recv, &buf)
        }
    });
    match result {
        Ok(()) => SUCCESS,
        Err(e) => {
            fault(s, format!("{api}: {e}"), ILLEGAL_ADDRESS);
            SYSTEM_ERROR
        }
    }
}

#[no_mangle]
pub extern "C" fn ncclAllReduce(
    send: u64,
    recv: u64,
    count: usize,
    datatype: c_int,
    _op: c_int,
    _comm: *mut c_void,
    _stream: *mut c_void,
) -> NcclResult {
    copy("ncclAllReduce", send, recv, count, datatype)
}

#[no_mangle]
pub extern "C" fn ncclBroadcast(
    send: u64,
    recv: u64,
    count: usize,
    datatype: c_int,
    _root: c_int,
    _comm: *mut c_void,
    _stream: *mut c_void,
) -> NcclResult {
    copy("ncclBroadcast", send, recv, count, datatype)
}
