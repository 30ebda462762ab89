//! The stand-in cuBLAS against a plain matmul, through its C entry points as Candle calls them:
//! every transpose, padded leading dimensions, strided batches (with gaps between matrices),
//! alpha and beta, f32 and bf16, C left unread when beta is 0; and cuBLAS's refusals.

use std::ffi::c_void;

use dynact_cuda_stand_ins::cublas::{
    cublasCreate_v2, cublasGemmStridedBatchedEx, cublasSgemmStridedBatched,
};
use dynact_cuda_stand_ins::memory::{cuMemAlloc_v2, cuMemcpyDtoH_v2, cuMemcpyHtoD_v2};

const R_16BF: i32 = 14;
const COMPUTE_32F: i32 = 68;

fn upload<T: Copy>(data: &[T]) -> u64 {
    let mut ptr = 0u64;
    let bytes = std::mem::size_of_val(data);
    // SAFETY: ptr is written by the call; data is bytes long.
    unsafe {
        assert_eq!(cuMemAlloc_v2(&mut ptr, bytes.max(1)), 0);
        assert_eq!(
            cuMemcpyHtoD_v2(ptr, data.as_ptr() as *const c_void, bytes),
            0
        );
    }
    ptr
}

fn download<T: Copy + Default>(ptr: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    let rc = cuMemcpyDtoH_v2(
        out.as_mut_ptr() as *mut c_void,
        ptr,
        std::mem::size_of_val(out.as_slice()),
    );
    assert_eq!(rc, 0);
    out
}

fn handle() -> *mut c_void {
    let mut h = std::ptr::null_mut();
    // SAFETY: h is written by the call.
    assert_eq!(unsafe { cublasCreate_v2(&mut h) }, 0);
    h
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 97) as f32 / 24.0 - 2.0)
        .collect()
}

struct Layout {
    ca: usize,
    cb: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    sa: usize,
    sb: usize,
    sc: usize,
}

/// One strided-batched GEMM case: column-major, with padding in leading dimensions and strides.
struct Case {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
}

impl Case {
    /// The leading dimensions and batch strides of A, B and C (all padded), and the columns
    /// of A and B as stored.
    fn layout(&self) -> Layout {
        let (ra, ca) = if self.ta {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (rb, cb) = if self.tb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        let (lda, ldb, ldc) = (ra + 2, rb + 1, self.m + 3);
        Layout {
            ca,
            cb,
            lda,
            ldb,
            ldc,
            sa: lda * ca + 5,
            sb: ldb * cb + 3,
            sc: ldc * self.n + 1,
        }
    }

    /// alpha op(A) op(B) + beta C in f64, for every batch.
    fn reference(&self, a: &[f32], b: &[f32], c: &[f32], alpha: f64, beta: f64) -> Vec<f32> {
        let Layout {
            lda,
            ldb,
            ldc,
            sa,
            sb,
            sc,
            ..
        } = self.layout();
        let mut out = c.to_vec();
        for p in 0..self.batch {
            for j in 0..self.n {
                for i in 0..self.m {
                    let mut acc = 0f64;
                    for l in 0..self.k {
                        let av = if self.ta {
                            a[p * sa + l + i * lda]
                        } else {
                            a[p * sa + i + l * lda]
                        };
                        let bv = if self.tb {
                            b[p * sb + j + l * ldb]
                        } else {
                            b[p * sb + l + j * ldb]
                        };
                        acc += av as f64 * bv as f64;
                    }
                    let at = p * sc + i + j * ldc;
                    let old = if beta == 0.0 { 0.0 } else { c[at] as f64 };
                    out[at] = (alpha * acc + beta * old) as f32;
                }
            }
        }
        out
    }
}

fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    for ta in [false, true] {
        for tb in [false, true] {
            for (m, n, k, batch) in [(5, 7, 3, 1), (4, 3, 6, 3), (1, 1, 1, 2)] {
                all.push(Case {
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    batch,
                });
            }
        }
    }
    all
}

#[test]
fn f32_gemms_match_a_plain_matmul_for_every_transpose_stride_and_batch() {
    let h = handle();
    for case in cases() {
        let Layout {
            ca,
            cb,
            lda,
            ldb,
            ldc,
            sa,
            sb,
            sc,
        } = case.layout();
        let (a, b) = (
            values(sa * case.batch + lda * ca, 1),
            values(sb * case.batch + ldb * cb, 2),
        );
        let c0 = values(sc * case.batch, 3);
        for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 2.0)] {
            // beta 0: C is not read, so NaNs there must not reach the result.
            let c_in: Vec<f32> = if beta == 0.0 {
                vec![f32::NAN; c0.len()]
            } else {
                c0.clone()
            };
            let (da, db, dc) = (upload(&a), upload(&b), upload(&c_in));
            // SAFETY: the buffers hold the extents the layout describes; alpha and beta are host values.
            let rc = unsafe {
                cublasSgemmStridedBatched(
                    h,
                    case.ta as i32,
                    case.tb as i32,
                    case.m as i32,
                    case.n as i32,
                    case.k as i32,
                    &alpha,
                    da,
                    lda as i32,
                    sa as i64,
                    db,
                    ldb as i32,
                    sb as i64,
                    &beta,
                    dc,
                    ldc as i32,
                    sc as i64,
                    case.batch as i32,
                )
            };
            assert_eq!(rc, 0);
            let got: Vec<f32> = download(dc, c_in.len());
            let want = case.reference(&a, &b, &c_in, alpha as f64, beta as f64);
            for p in 0..case.batch {
                for j in 0..case.n {
                    for i in 0..case.m {
                        let at = p * sc + i + j * ldc;
                        assert!(
                            (got[at] - want[at]).abs() <= 1e-5 * want[at].abs().max(1.0),
                            "ta {} tb {} batch {p} ({i}, {j}): {} vs {}",
                            case.ta,
                            case.tb,
                            got[at],
                            want[at]
                        );
                    }
                }
                // Padding between and around the matrices is left as it was.
                for (at, v) in got.iter().enumerate() {
                    let (i, j) = ((at % sc) % ldc, (at % sc) / ldc);
                    if i >= case.m || j >= case.n {
                        assert_eq!(
                            v.to_bits(),
                            c_in[at].to_bits(),
                            "padding at {at} was written"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_gemms_round_a_plain_matmul_of_the_bf16_inputs_to_nearest() {
    let h = handle();
    for case in cases() {
        let Layout {
            ca,
            cb,
            lda,
            ldb,
            ldc,
            sa,
            sb,
            sc,
        } = case.layout();
        let bf = |v: Vec<f32>| v.into_iter().map(half::bf16::from_f32).collect::<Vec<_>>();
        let (a, b) = (
            bf(values(sa * case.batch + lda * ca, 4)),
            bf(values(sb * case.batch + ldb * cb, 5)),
        );
        let c_in = bf(vec![0.0; sc * case.batch]);
        let (da, db, dc) = (upload(&a), upload(&b), upload(&c_in));
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as above; alpha and beta are f32, the compute type's scalars.
        let rc = unsafe {
            cublasGemmStridedBatchedEx(
                h,
                case.ta as i32,
                case.tb as i32,
                case.m as i32,
                case.n as i32,
                case.k as i32,
                &alpha as *const f32 as *const c_void,
                da,
                R_16BF,
                lda as i32,
                sa as i64,
                db,
                R_16BF,
                ldb as i32,
                sb as i64,
                &beta as *const f32 as *const c_void,
                dc,
                R_16BF,
                ldc as i32,
                sc as i64,
                case.batch as i32,
                COMPUTE_32F,
                -1,
            )
        };
        assert_eq!(rc, 0);
        let got: Vec<half::bf16> = download(dc, c_in.len());
        let widen = |v: &[half::bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let want = case.reference(&widen(&a), &widen(&b), &widen(&c_in), 1.0, 0.0);
        for (at, (g, w)) in got.iter().zip(&want).enumerate() {
            // The exact sum rounded once to bf16 (the f32 accumulation is exact for these
            // short sums of small multiples of 1/24^2).
            assert_eq!(*g, half::bf16::from_f32(*w), "element {at}");
        }
    }
}

#[test]
fn leading_dimensions_shorter_than_the_stored_rows_are_refused_as_cublas_refuses_them() {
    let h = handle();
    let (a, b, c) = (
        upload(&[0f32; 64]),
        upload(&[0f32; 64]),
        upload(&[0f32; 64]),
    );
    let (alpha, beta) = (1f32, 0f32);
    let gemm = |ta: i32, lda: i32, ldb: i32, ldc: i32| {
        // SAFETY: the buffers hold 64 floats, more than any accepted call reads.
        unsafe {
            cublasSgemmStridedBatched(
                h, ta, 0, 4, 3, 2, &alpha, a, lda, 0, b, ldb, 0, &beta, c, ldc, 0, 1,
            )
        }
    };
    assert_eq!(gemm(0, 4, 2, 4), 0);
    assert_eq!(gemm(0, 3, 2, 4), 7, "lda below m for op N");
    assert_eq!(gemm(1, 1, 2, 4), 7, "lda below k for op T");
    assert_eq!(gemm(0, 4, 1, 4), 7, "ldb below k");
    assert_eq!(gemm(0, 4, 2, 3), 7, "ldc below m");
}
