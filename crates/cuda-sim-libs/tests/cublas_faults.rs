//! A cuBLAS call whose operand runs past its allocation: the call fails and the fault sticks,
//! as a GPU's does, so this runs in a process of its own (a test binary of its own).

use std::ffi::c_void;

use dynact_cuda_stand_ins::cublas::{cublasCreate_v2, cublasSgemmStridedBatched};
use dynact_cuda_stand_ins::memory::{cuMemAlloc_v2, cuMemcpyHtoD_v2, cuMemsetD8_v2};

fn upload(data: &[f32]) -> u64 {
    let mut ptr = 0u64;
    // SAFETY: ptr is written by the call; data is size_of_val(data) bytes long.
    unsafe {
        assert_eq!(cuMemAlloc_v2(&mut ptr, std::mem::size_of_val(data)), 0);
        assert_eq!(
            cuMemcpyHtoD_v2(
                ptr,
                data.as_ptr() as *const c_void,
                std::mem::size_of_val(data)
            ),
            0
        );
    }
    ptr
}

#[test]
fn an_operand_past_its_allocation_fails_the_call_naming_it() {
    let mut h = std::ptr::null_mut();
    // SAFETY: h is written by the call.
    assert_eq!(unsafe { cublasCreate_v2(&mut h) }, 0);
    let (a, b, c) = (upload(&[1f32; 6]), upload(&[1f32; 5]), upload(&[0f32; 6]));
    let (alpha, beta) = (1f32, 0f32);
    // B needs k x n = 2 x 3 = 6 floats and has 5.
    // SAFETY: the call reads past b's end, which the stand-in checks and refuses.
    let rc = unsafe {
        cublasSgemmStridedBatched(
            h, 0, 0, 3, 3, 2, &alpha, a, 3, 0, b, 2, 0, &beta, c, 3, 0, 1,
        )
    };
    assert_eq!(rc, 13, "CUBLAS_STATUS_EXECUTION_FAILED");
    // The error sticks: later work fails too, as after a GPU fault.
    assert_eq!(cuMemsetD8_v2(c, 0, 4), 700, "CUDA_ERROR_ILLEGAL_ADDRESS");
}
