//! cuBLAS's GEMMs (`libcublas.so.13`) as Candle calls them, with cuBLAS's semantics:
//! column-major operands, `op(A)` m x k and `op(B)` k x n, leading dimensions checked as cuBLAS
//! checks them, strided batches, f32 accumulation, bf16/f16 inputs widened exactly and outputs
//! rounded to nearest even, alpha and beta read from host memory, C's values ignored when beta
//! is 0 and the padding between its columns left as it was.
//! Every operand's extent is checked against the device's allocations.

use std::ffi::{c_int, c_longlong, c_void};

use crate::driver::{fault, ILLEGAL_ADDRESS};
use crate::{report, state, Handle, State};

pub type Status = c_int;
const SUCCESS: Status = 0;
const NOT_INITIALIZED: Status = 1;
const INVALID_VALUE: Status = 7;
const EXECUTION_FAILED: Status = 13;
const NOT_SUPPORTED: Status = 15;

/// cudaDataType values Candle passes.
const R_32F: c_int = 0;
const R_64F: c_int = 1;
const R_16F: c_int = 2;
const R_16BF: c_int = 14;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    F32,
    F64,
    F16,
    Bf16,
}

impl Elem {
    fn of(t: c_int) -> Option<Elem> {
        Some(match t {
            R_32F => Elem::F32,
            R_64F => Elem::F64,
            R_16F => Elem::F16,
            R_16BF => Elem::Bf16,
            _ => return None,
        })
    }
    fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 => 8,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F64 => "f64",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
        }
    }
    fn read(self, b: &[u8]) -> f64 {
        match self {
            Elem::F32 => f32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as f64,
            Elem::F64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            Elem::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            Elem::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        }
    }
    fn write(self, v: f64, out: &mut [u8]) {
        match self {
            // f32 accumulation: the sum is an f32 already; f64 only carries it.
            Elem::F32 => out[..4].copy_from_slice(&(v as f32).to_le_bytes()),
            Elem::F64 => out[..8].copy_from_slice(&v.to_le_bytes()),
            Elem::F16 => out[..2].copy_from_slice(&half::f16::from_f32(v as f32).to_le_bytes()),
            Elem::Bf16 => out[..2].copy_from_slice(&half::bf16::from_f32(v as f32).to_le_bytes()),
        }
    }
}

/// One (strided-batched) GEMM call, as cuBLAS receives it.
struct Gemm {
    api: &'static str,
    trans_a: bool,
    trans_b: bool,
    m: i64,
    n: i64,
    k: i64,
    alpha: f64,
    beta: f64,
    a: u64,
    lda: i64,
    stride_a: i64,
    b: u64,
    ldb: i64,
    stride_b: i64,
    c: u64,
    ldc: i64,
    stride_c: i64,
    batch: i64,
    ab: Elem,
    out: Elem,
    /// Accumulate in f64 (`CUBLAS_COMPUTE_64F`); else f32.
    f64_compute: bool,
}

impl Gemm {
    /// cuBLAS's argument checks: dimensions, and leading dimensions at least the stored rows.
    fn check(&self) -> Result<(), String> {
        let rows_a = if self.trans_a { self.k } else { self.m };
        let rows_b = if self.trans_b { self.n } else { self.k };
        if self.m < 0 || self.n < 0 || self.k < 0 || self.batch < 0 {
            return Err(format!(
                "negative dimension (m {}, n {}, k {}, batch {})",
                self.m, self.n, self.k, self.batch
            ));
        }
        if self.lda < rows_a.max(1) {
            return Err(format!(
                "lda {} < {} rows of A as stored",
                self.lda,
                rows_a.max(1)
            ));
        }
        if self.ldb < rows_b.max(1) {
            return Err(format!(
                "ldb {} < {} rows of B as stored",
                self.ldb,
                rows_b.max(1)
            ));
        }
        if self.ldc < self.m.max(1) {
            return Err(format!("ldc {} < m = {}", self.ldc, self.m.max(1)));
        }
        Ok(())
    }

    /// Reads the bytes of one operand of one batch: `cols` columns of `ld` elements, the last
    /// one only `rows` long (what cuBLAS may touch).
    fn operand(
        &self,
        s: &State,
        ptr: u64,
        stride: i64,
        b: i64,
        rows: i64,
        cols: i64,
        ld: i64,
        e: Elem,
    ) -> Result<Vec<u8>, String> {
        if rows == 0 || cols == 0 {
            return Ok(Vec::new());
        }
        let start = ptr.wrapping_add((b * stride) as u64 * e.bytes() as u64);
        let len = ((cols - 1) * ld + rows) as usize * e.bytes();
        let mut buf = vec![0u8; len];
        s.gpu.read(start, &mut buf).map_err(|err| err.to_string())?;
        Ok(buf)
    }

    fn run(&self, s: &mut State) -> Result<(), String> {
        let (m, n, k) = (self.m, self.n, self.k);
        let (ra, ca) = if self.trans_a { (k, m) } else { (m, k) };
        let (rb, cb) = if self.trans_b { (n, k) } else { (k, n) };
        let (ea, eo) = (self.ab.bytes() as i64, self.out.bytes() as i64);
        for b in 0..self.batch {
            let a = self.operand(s, self.a, self.stride_a, b, ra, ca, self.lda, self.ab)?;
            let bb = self.operand(s, self.b, self.stride_b, b, rb, cb, self.ldb, self.ab)?;
            // Read for the padding between columns, which must stay as it was; its values
            // are not used when beta is 0 (C may hold anything then, NaNs included).
            let mut c = self.operand(s, self.c, self.stride_c, b, m, n, self.ldc, self.out)?;
            let at = |i: i64, l: i64| {
                let idx = if self.trans_a {
                    l + i * self.lda
                } else {
                    i + l * self.lda
                };
                self.ab.read(&a[(idx * ea) as usize..])
            };
            let bt = |l: i64, j: i64| {
                let idx = if self.trans_b {
                    j + l * self.ldb
                } else {
                    l + j * self.ldb
                };
                self.ab.read(&bb[(idx * ea) as usize..])
            };
            for j in 0..n {
                for i in 0..m {
                    let v = if self.f64_compute {
                        let mut acc = 0f64;
                        for l in 0..k {
                            acc += at(i, l) * bt(l, j);
                        }
                        let old = if self.beta != 0.0 {
                            self.out.read(&c[((i + j * self.ldc) * eo) as usize..])
                        } else {
                            0.0
                        };
                        self.alpha * acc + self.beta * old
                    } else {
                        let mut acc = 0f32;
                        for l in 0..k {
                            acc = (at(i, l) as f32).mul_add(bt(l, j) as f32, acc);
                        }
                        let old = if self.beta != 0.0 {
                            self.out.read(&c[((i + j * self.ldc) * eo) as usize..]) as f32
                        } else {
                            0.0
                        };
                        (self.alpha as f32 * acc + self.beta as f32 * old) as f64
                    };
                    self.out
                        .write(v, &mut c[((i + j * self.ldc) * eo) as usize..]);
                }
            }
            if !c.is_empty() {
                let start = self.c.wrapping_add((b * self.stride_c * eo) as u64);
                s.gpu.write(start, &c).map_err(|err| err.to_string())?;
            }
        }
        Ok(())
    }

    fn log(&self, s: &mut State) {
        let record = serde_json::json!({
            "kernel": self.api, "m": self.m, "n": self.n, "k": self.k, "batch": self.batch,
            "transa": self.trans_a, "transb": self.trans_b,
            "ab_dtype": self.ab.name(), "c_dtype": self.out.name(),
            "flops": 2 * self.m * self.n * self.k * self.batch,
        });
        s.gpu.log_json(&record);
    }
}

fn submit(g: Gemm) -> Status {
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    if s.sticky.is_some() {
        return EXECUTION_FAILED;
    }
    if let Err(e) = g.check() {
        report(&format!("{}: {e}: CUBLAS_STATUS_INVALID_VALUE", g.api));
        return INVALID_VALUE;
    }
    g.log(s);
    if s.gpu.sample_blocks.is_some() {
        // A profile counts GEMMs by their shapes; computing them would take minutes.
        return SUCCESS;
    }
    match g.run(s) {
        Ok(()) => SUCCESS,
        Err(e) => {
            fault(
                s,
                format!(
                    "{} (m {}, n {}, k {}, batch {}): {e}",
                    g.api, g.m, g.n, g.k, g.batch
                ),
                ILLEGAL_ADDRESS,
            );
            EXECUTION_FAILED
        }
    }
}

fn is_blas(handle: *mut c_void) -> bool {
    matches!(
        state().as_ref().and_then(|s| s.handle(handle)),
        Some(Handle::Blas)
    )
}

fn trans(op: c_int) -> Option<bool> {
    match op {
        0 => Some(false),
        1 | 2 => Some(true), // T, and C (the same for real types)
        _ => None,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(handle: *mut *mut c_void) -> Status {
    if handle.is_null() {
        return INVALID_VALUE;
    }
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    handle.write(s.new_handle(Handle::Blas));
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasDestroy_v2(_handle: *mut c_void) -> Status {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasSetStream_v2(handle: *mut c_void, _stream: *mut c_void) -> Status {
    if is_blas(handle) {
        SUCCESS
    } else {
        NOT_INITIALIZED
    }
}

#[no_mangle]
pub extern "C" fn cublasSetMathMode(_handle: *mut c_void, _mode: c_int) -> Status {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasSetWorkspace_v2(
    _handle: *mut c_void,
    _ptr: *mut c_void,
    _bytes: usize,
) -> Status {
    SUCCESS
}

/// Alpha or beta of a compute type, from host memory.
unsafe fn scalar(p: *const c_void, f64_compute: bool) -> f64 {
    if f64_compute {
        *(p as *const f64)
    } else {
        *(p as *const f32) as f64
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasSgemm_v2(
    handle: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: u64,
    lda: c_int,
    b: u64,
    ldb: c_int,
    beta: *const f32,
    c: u64,
    ldc: c_int,
) -> Status {
    cublasSgemmStridedBatched(
        handle, ta, tb, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1,
    )
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasSgemmStridedBatched(
    handle: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: u64,
    lda: c_int,
    sa: c_longlong,
    b: u64,
    ldb: c_int,
    sb: c_longlong,
    beta: *const f32,
    c: u64,
    ldc: c_int,
    sc: c_longlong,
    batch: c_int,
) -> Status {
    gemm_ex(
        "cublasSgemmStridedBatched",
        handle,
        ta,
        tb,
        m,
        n,
        k,
        alpha as *const c_void,
        a,
        R_32F,
        lda,
        sa,
        b,
        R_32F,
        ldb,
        sb,
        beta as *const c_void,
        c,
        R_32F,
        ldc,
        sc,
        batch,
        68,
    )
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasGemmEx(
    handle: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: u64,
    a_type: c_int,
    lda: c_int,
    b: u64,
    b_type: c_int,
    ldb: c_int,
    beta: *const c_void,
    c: u64,
    c_type: c_int,
    ldc: c_int,
    compute: c_int,
    _algo: c_int,
) -> Status {
    gemm_ex(
        "cublasGemmEx",
        handle,
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a,
        a_type,
        lda,
        0,
        b,
        b_type,
        ldb,
        0,
        beta,
        c,
        c_type,
        ldc,
        0,
        1,
        compute,
    )
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasGemmStridedBatchedEx(
    handle: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: u64,
    a_type: c_int,
    lda: c_int,
    sa: c_longlong,
    b: u64,
    b_type: c_int,
    ldb: c_int,
    sb: c_longlong,
    beta: *const c_void,
    c: u64,
    c_type: c_int,
    ldc: c_int,
    sc: c_longlong,
    batch: c_int,
    compute: c_int,
    _algo: c_int,
) -> Status {
    gemm_ex(
        "cublasGemmStridedBatchedEx",
        handle,
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a,
        a_type,
        lda,
        sa,
        b,
        b_type,
        ldb,
        sb,
        beta,
        c,
        c_type,
        ldc,
        sc,
        batch,
        compute,
    )
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_ex(
    api: &'static str,
    handle: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const c_void,
    a: u64,
    a_type: c_int,
    lda: c_int,
    sa: c_longlong,
    b: u64,
    b_type: c_int,
    ldb: c_int,
    sb: c_longlong,
    beta: *const c_void,
    c: u64,
    c_type: c_int,
    ldc: c_int,
    sc: c_longlong,
    batch: c_int,
    compute: c_int,
) -> Status {
    if !is_blas(handle) {
        return NOT_INITIALIZED;
    }
    let (Some(trans_a), Some(trans_b)) = (trans(ta), trans(tb)) else {
        return INVALID_VALUE;
    };
    let (Some(ea), Some(eb), Some(ec)) = (Elem::of(a_type), Elem::of(b_type), Elem::of(c_type))
    else {
        report(&format!(
            "{api}: data types {a_type}, {b_type}, {c_type} are not simulated"
        ));
        return NOT_SUPPORTED;
    };
    if ea != eb {
        report(&format!("{api}: A is {} and B is {}", ea.name(), eb.name()));
        return NOT_SUPPORTED;
    }
    // CUBLAS_COMPUTE_64F(_PEDANTIC) are 70, 71; every other compute type accumulates in f32
    // here (16F compute, never used by Candle, would round each step to f16 on a GPU).
    let f64_compute = compute == 70 || compute == 71;
    if alpha.is_null() || beta.is_null() {
        return INVALID_VALUE;
    }
    submit(Gemm {
        api,
        trans_a,
        trans_b,
        m: m as i64,
        n: n as i64,
        k: k as i64,
        alpha: scalar(alpha, f64_compute),
        beta: scalar(beta, f64_compute),
        a,
        lda: lda as i64,
        stride_a: sa,
        b,
        ldb: ldb as i64,
        stride_b: sb,
        c,
        ldc: ldc as i64,
        stride_c: sc,
        batch: batch as i64,
        ab: ea,
        out: ec,
        f64_compute,
    })
}
