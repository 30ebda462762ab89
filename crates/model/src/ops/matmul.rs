//! Matrix products whose gradients come back in each operand's own layout, and products under
//! mixed precision: bf16 (or f16) operands, f32 accumulation and an f32 result, as cuBLAS
//! computes them in one GEMM. Candle's own product returns its operands' dtype, so a bf16
//! product cost a cast of the result back to f32 on top of the GEMM, and two more casts in the
//! backward pass; here the result and the gradients are f32 straight from the GEMM. Candle's
//! backward pass also returns the gradient of a transposed operand (a linear layer's weight)
//! transposed, which cost a copy; and on a CPU it fills every result with zeros before the
//! GEMM writes it.
//!
//! [`product`] is what the layers call; [`widened_product`] is the op for half operands (on a
//! CPU, f32 operands take the same op); [`widened_product_reference`] and
//! [`product_reference`] are the compositions of Candle ops they are tested against.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cast, SendPtr};

/// Which product of two matrices (each a trailing pair of dimensions, after equal leading
/// batch dimensions) to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// a (m, k) times b (k, n).
    AB,
    /// a (m, k) times the transpose of b (n, k): a linear layer `x W^T`, or attention scores
    /// `q k^T`.
    ABt,
    /// The transpose of a (k, m) times b (k, n): a weight's gradient `g^T x`.
    AtB,
}

/// The product of `a` and `b` in `form`, computed in `dtype`. In bf16 or f16 the operands are
/// cast ([`cast`], so an operand already in `dtype` is used as it is: a caller that feeds one
/// input to several products casts it once) and [`widened_product`] returns f32, with f32
/// gradients for `a` and `b`. In f32 on a CPU it is the same op (one GEMM each way, gradients
/// in the operands' layouts); otherwise (f64, f32 on a GPU) [`product_reference`].
pub fn product(a: &Tensor, b: &Tensor, form: Form, dtype: DType) -> Result<Tensor> {
    if matches!(dtype, DType::BF16 | DType::F16) {
        return widened_product(&cast(a, dtype)?, &cast(b, dtype)?, form);
    }
    let (a, b) = (cast(a, dtype)?, cast(b, dtype)?);
    if super::fused(&a) && super::fused(&b) {
        return gemm_product(&a, &b, form);
    }
    product_reference(&a, &b, form)
}

/// The product of `a` and `b` in `form` as Candle's `matmul`, in their dtype.
pub fn product_reference(a: &Tensor, b: &Tensor, form: Form) -> Result<Tensor> {
    match form {
        Form::AB => a.matmul(b),
        Form::ABt => a.matmul(&b.t()?),
        Form::AtB => a.t()?.matmul(b),
    }
}

/// The product of `a` and `b` (bf16 or f16, both the same) in `form`, accumulated and returned
/// in f32. Leading dimensions are batch dimensions, equal for both. The gradients are f32
/// tensors, though the operands are not: the incoming gradient is rounded to the operands'
/// dtype (the GEMMs of the backward pass take it so), each operand's gradient is one f32 GEMM
/// in that operand's layout, and a cast that made the operand passes an f32 gradient through.
pub fn widened_product(a: &Tensor, b: &Tensor, form: Form) -> Result<Tensor> {
    if a.dtype() != b.dtype() || !matches!(a.dtype(), DType::BF16 | DType::F16) {
        candle_core::bail!(
            "widened product: the operands must both be bf16 or both f16, not {:?} and {:?}",
            a.dtype(),
            b.dtype()
        );
    }
    gemm_product(a, b, form)
}

/// The op of [`widened_product`] on operands of one dtype: bf16 or f16, or f32 on a CPU.
fn gemm_product(a: &Tensor, b: &Tensor, form: Form) -> Result<Tensor> {
    let shape = ProductShape::of(a.dims(), b.dims(), form)?;
    let (a3, b3) = (
        a.contiguous()?.reshape(shape.a_dims())?,
        b.contiguous()?.reshape(shape.b_dims())?,
    );
    let y = a3.apply_op2(&b3, GemmProduct(form))?;
    y.reshape(shape.out_dims(a.dims()))
}

/// [`widened_product`] as Candle ops: both operands widened to f32, then Candle's f32 product.
/// The values are the op's (on a CPU, the same GEMM); its gradients are those of the widened
/// operands, cast back to the operands' dtype.
pub fn widened_product_reference(a: &Tensor, b: &Tensor, form: Form) -> Result<Tensor> {
    product_reference(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?, form)
}

/// The sizes of one product: `batch` products of (m, k) by (k, n).
#[derive(Clone, Copy, Debug)]
struct ProductShape {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    form: Form,
}

impl ProductShape {
    fn of(a: &[usize], b: &[usize], form: Form) -> Result<Self> {
        let (ra, rb) = (a.len(), b.len());
        if ra < 2 || ra != rb || a[..ra - 2] != b[..rb - 2] {
            candle_core::bail!(
                "product: operands {a:?} and {b:?} must be matrices with the same leading (batch) dimensions"
            );
        }
        let batch = a[..ra - 2].iter().product();
        let ([a0, a1], [b0, b1]) = ([a[ra - 2], a[ra - 1]], [b[rb - 2], b[rb - 1]]);
        let (m, k, k_b, n) = match form {
            Form::AB => (a0, a1, b0, b1),
            Form::ABt => (a0, a1, b1, b0),
            Form::AtB => (a1, a0, b0, b1),
        };
        if k != k_b {
            candle_core::bail!("product {form:?}: operands {a:?} and {b:?} do not fit");
        }
        Ok(ProductShape {
            batch,
            m,
            n,
            k,
            form,
        })
    }

    /// a as stored: (batch, m, k), or (batch, k, m) for AtB.
    fn a_dims(&self) -> (usize, usize, usize) {
        match self.form {
            Form::AtB => (self.batch, self.k, self.m),
            _ => (self.batch, self.m, self.k),
        }
    }

    /// b as stored: (batch, k, n), or (batch, n, k) for ABt.
    fn b_dims(&self) -> (usize, usize, usize) {
        match self.form {
            Form::ABt => (self.batch, self.n, self.k),
            _ => (self.batch, self.k, self.n),
        }
    }

    /// The result: a's batch dimensions, then (m, n).
    fn out_dims(&self, a: &[usize]) -> Vec<usize> {
        let mut dims = a[..a.len() - 2].to_vec();
        dims.extend([self.m, self.n]);
        dims
    }
}

/// y (batch, m, n) = a b in the form `p` says, a and b stored contiguously as it says: the
/// gemm crate's kernels with the arguments Candle's CPU product passes them, so the values
/// are Candle's, written straight into the result.
fn cpu_gemm(a: &[f32], b: &[f32], p: &ProductShape) -> Vec<f32> {
    let ProductShape {
        batch,
        m,
        n,
        k,
        form,
    } = *p;
    assert!(
        a.len() == batch * m * k && b.len() == batch * k * n,
        "gemm: operand sizes"
    );
    let len = batch * m * n;
    if k == 0 {
        return vec![0f32; len];
    }
    // Element (r, c) of the product's left factor is a[r * a_rows + c * a_cols]; likewise b.
    let (a_rows, a_cols) = match form {
        Form::AtB => (1, m),
        _ => (k, 1),
    };
    let (b_rows, b_cols) = match form {
        Form::ABt => (1, k),
        _ => (n, 1),
    };
    // The pool's size, which RAYON_NUM_THREADS set: Candle's `get_num_threads` reads the
    // environment on every call (0.2-0.35% of an evaluation pass in getenv).
    let threads = rayon::current_num_threads();
    let mut y = Vec::<f32>::with_capacity(len);
    let out = SendPtr(y.as_mut_ptr());
    // The columns `cols` of the i-th product, written into y.
    let columns = |i: usize, cols: Range<usize>, parallelism| {
        let out = &out;
        // SAFETY: the assertion keeps the i-th matrices of a and b, at these strides, inside
        // the slices, and y has room for batch (m, n) matrices. gemm writes all m elements of
        // each of the columns without reading them (read_dst false).
        unsafe {
            gemm::gemm(
                m,
                cols.len(),
                k,
                out.0.add(i * m * n + cols.start),
                1,
                n as isize,
                false,
                a.as_ptr().add(i * m * k),
                a_cols as isize,
                a_rows as isize,
                b.as_ptr().add(i * k * n + cols.start * b_cols),
                b_cols as isize,
                b_rows as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    match column_shards(p, threads) {
        // Disjoint columns, one task each.
        Some(shards) => shards
            .into_par_iter()
            .for_each(|cols| columns(0, cols, gemm::Parallelism::None)),
        None => {
            let parallelism = match threads {
                1 => gemm::Parallelism::None,
                _ => gemm::Parallelism::Rayon(threads),
            };
            for i in 0..batch {
                columns(i, 0..n, parallelism);
            }
        }
    }
    // SAFETY: gemm wrote every element: all columns of every product.
    unsafe { y.set_len(len) };
    y
}

/// The columns of y each thread computes on its own, where one product (batch 1) is large
/// enough for the gemm crate to share it among threads: whole blocks of 64 (its kernel's rows,
/// y's columns being the rows of the transposed product it computes) dealt out evenly, the
/// last shard taking a partial last block too; None where the gemm crate shares the product as
/// it does. Shared by the gemm crate, every thread packed the whole left factor of the
/// transposed product (the weight of a linear layer) into its kernel's layout: 4.6% of a
/// cpu-repro evaluation pass, 2.7% with each shard packing its own columns' part. The values
/// are the same: with at least 64 columns and more than 64 rows a shard takes the gemm crate's
/// blocked kernels, as the whole product does (narrower or shorter ones can take its
/// small-product paths, which add in another order), and each element is their one sum over
/// k, whose blocks depend on k alone.
fn column_shards(p: &ProductShape, threads: usize) -> Option<Vec<Range<usize>>> {
    const BLOCK: usize = 64;
    let shards = threads.min(p.n / BLOCK);
    // Below the gemm crate's own threshold (m n k) it would not share the product.
    let small = p.m <= BLOCK || p.m * p.n * p.k < gemm_common::gemm::get_threading_threshold();
    if p.batch != 1 || shards < 2 || small {
        return None;
    }
    // With at least as many blocks as shards, every shard gets a whole block or more.
    let blocks = p.n.div_ceil(BLOCK);
    let bound = |i: usize| (i * blocks / shards * BLOCK).min(p.n);
    Some((0..shards).map(|i| bound(i)..bound(i + 1)).collect())
}

/// The op on (batch, ., .) operands stored contiguously as [`ProductShape`] says.
struct GemmProduct(Form);

impl GemmProduct {
    fn shape(&self, l1: &Layout, l2: &Layout) -> Result<ProductShape> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("product: the operands must be contiguous");
        }
        ProductShape::of(l1.dims(), l2.dims(), self.0)
    }
}

impl CustomOp2 for GemmProduct {
    fn name(&self) -> &'static str {
        "product"
    }

    /// Half operands widened to f32 (exactly), then an f32 GEMM.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.shape(l1, l2)?;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => cpu_gemm(
                super::f32_slice(s1, l1, self.name())?,
                super::f32_slice(s2, l2, self.name())?,
                &p,
            ),
            _ => {
                let (a, b) = (s1.to_dtype(l1, DType::F32)?, s2.to_dtype(l2, DType::F32)?);
                let contiguous = (
                    Layout::contiguous(l1.shape()),
                    Layout::contiguous(l2.shape()),
                );
                cpu_gemm(
                    super::f32_slice(&a, &contiguous.0, self.name())?,
                    super::f32_slice(&b, &contiguous.1, self.name())?,
                    &p,
                )
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((p.batch, p.m, p.n))))
    }

    /// One cuBLAS GEMM: bf16 or f16 operands, f32 accumulation and result.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = self.shape(l1, l2)?;
        let y = cuda::gemm(s1, l1, s2, l2, &p)?;
        Ok((y, Shape::from((p.batch, p.m, p.n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = cast(&grad.contiguous()?, a.dtype())?.detach();
        let (a, b) = (a.detach(), b.detach());
        let p = |x: &Tensor, y: &Tensor, form| gemm_product(x, y, form);
        // y = a b: da = g b^T, db = a^T g. y = a b^T: da = g b, db = g^T a.
        // y = a^T b: da = b g^T, db = a g.
        let (da, db) = match self.0 {
            Form::AB => (p(&g, &b, Form::ABt)?, p(&a, &g, Form::AtB)?),
            Form::ABt => (p(&g, &b, Form::AB)?, p(&g, &a, Form::AtB)?),
            Form::AtB => (p(&b, &g, Form::ABt)?, p(&a, &g, Form::AB)?),
        };
        Ok((Some(da), Some(db)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::{result, sys};
    use std::ops::Range;

    use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout, Result};
    use half::{bf16, f16};

    use super::{Form, ProductShape};

    /// y (batch, m, n, row-major f32) = op(a) op(b). cuBLAS is column-major: a row-major
    /// matrix is its transpose there, so it computes y^T = op(b)^T op(a)^T, with b first.
    pub(super) fn gemm(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        p: &ProductShape,
    ) -> Result<CudaStorage> {
        let dev = s1.device().clone();
        let stream = dev.cuda_stream();
        let (m, n, k) = (p.m as i32, p.n as i32, p.k as i32);
        let (op_b, ld_b) = match p.form {
            Form::ABt => (sys::cublasOperation_t::CUBLAS_OP_T, k),
            _ => (sys::cublasOperation_t::CUBLAS_OP_N, n),
        };
        let (op_a, ld_a) = match p.form {
            Form::AtB => (sys::cublasOperation_t::CUBLAS_OP_T, m),
            _ => (sys::cublasOperation_t::CUBLAS_OP_N, k),
        };
        let data_type = match s1.dtype() {
            DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
            DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
            other => candle_core::bail!("widened product: {other:?} operands on CUDA"),
        };
        let ((a0, a1), (b0, b1)) = (offsets(l1)?, offsets(l2)?);
        // SAFETY: cuBLAS writes all batch * m * n elements (beta is 0).
        let mut y = unsafe { dev.alloc::<f32>(p.batch * p.m * p.n) }?;
        let (alpha, beta) = (1f32, 0f32);
        {
            let (y_ptr, _y_guard) = y.device_ptr_mut(&stream);
            let gemm = |a_ptr: u64, b_ptr: u64| {
                // SAFETY: the operands hold batch matrices of the sizes and leading dimensions
                // given (checked by ProductShape), y holds batch (m, n) matrices, and the
                // handle runs on the storages' stream.
                unsafe {
                    result::gemm_strided_batched_ex(
                        *dev.cublas_handle().handle(),
                        op_b,
                        op_a,
                        n,
                        m,
                        k,
                        &alpha as *const f32 as *const _,
                        b_ptr as *const _,
                        data_type,
                        ld_b,
                        (p.k * p.n) as i64,
                        a_ptr as *const _,
                        data_type,
                        ld_a,
                        (p.m * p.k) as i64,
                        &beta as *const f32 as *const _,
                        y_ptr as *mut _,
                        sys::cudaDataType_t::CUDA_R_32F,
                        n,
                        (p.m * p.n) as i64,
                        p.batch as i32,
                        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                }
                .w()
            };
            let (a, b) = ((s1, a0..a1), (s2, b0..b1));
            match s1.dtype() {
                DType::BF16 => with_operands::<bf16>(a, b, &stream, gemm)?,
                _ => with_operands::<f16>(a, b, &stream, gemm)?,
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }

    /// `run` on the device addresses of the elements `a` and `b` (storage, element range) hold
    /// as `T`; the addresses stay valid until it returns.
    fn with_operands<T: CudaDType>(
        (s1, a): (&CudaStorage, Range<usize>),
        (s2, b): (&CudaStorage, Range<usize>),
        stream: &CudaStream,
        run: impl FnOnce(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let (a, b) = (
            s1.as_cuda_slice::<T>()?.slice(a),
            s2.as_cuda_slice::<T>()?.slice(b),
        );
        let ((a_ptr, _a_guard), (b_ptr, _b_guard)) = (a.device_ptr(stream), b.device_ptr(stream));
        run(a_ptr, b_ptr)
    }

    fn offsets(l: &Layout) -> Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("widened product: not contiguous".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_shards_deal_whole_blocks_of_64_columns() {
        let shape = |m, n, k| ProductShape {
            batch: 1,
            m,
            n,
            k,
            form: Form::ABt,
        };
        // (shape, threads, the shards' starts and the end)
        for (p, threads, bounds) in [
            (shape(768, 128, 128), 2, vec![0, 64, 128]),
            (shape(768, 352, 128), 2, vec![0, 192, 352]),
            (shape(768, 352, 128), 3, vec![0, 128, 256, 352]),
            // A partial last block goes with the last whole one.
            (shape(768, 129, 128), 3, vec![0, 64, 129]),
        ] {
            let expected: Vec<_> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
            assert_eq!(
                column_shards(&p, threads),
                Some(expected),
                "{p:?}, {threads}"
            );
        }
        // Under two whole blocks, 64 rows or fewer, one thread, or a product under the
        // threshold: no shards (the gemm crate's own sharing).
        for (p, threads) in [
            (shape(768, 127, 128), 2),
            (shape(768, 100, 128), 4),
            (shape(64, 512, 600), 2),
            (shape(768, 352, 128), 1),
            (shape(4, 128, 128), 2),
        ] {
            assert_eq!(column_shards(&p, threads), None, "{p:?}, {threads}");
        }
        let batched = ProductShape {
            batch: 2,
            ..shape(768, 352, 128)
        };
        assert_eq!(column_shards(&batched, 2), None);
    }
}
