//! The token embedding: a row of the table per id, with a backward pass that sums the
//! gradient's rows into the table's rows. On a CPU both are Candle's (`index_select`, and
//! `index_add` for the backward); on a CUDA GPU both are `kernels/embedding.cu`: the forward a
//! warp per position (Candle's `index_select` reads the id once per element), the backward a
//! warp per table row and 32 channels, the positions in order (Candle's `index_add` runs on one
//! block), which adds in `index_add`'s order, so the two devices agree bit for bit.
//! [`embedding_reference`] is Candle's `index_select` with its own backward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::fused_on_cuda;

/// The rows of `table` (V, C) at `ids` (u32, any shape): ids' shape plus (C). On a CUDA GPU
/// (f32) the op; elsewhere [`embedding_reference`]. On a CPU that keeps the bits of earlier
/// runs: Candle adds the ids' rows onto a gradient the table already holds from a tied output
/// layer, where the op sums them first and then adds, which rounds otherwise.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if fused_on_cuda(table) && ids.dtype() == DType::U32 {
        return embedding_op(table, ids);
    }
    embedding_reference(table, ids)
}

/// [`embedding`] through the op on any device: what the tests compare with the reference.
pub fn embedding_op(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let rows = table
        .contiguous()?
        .apply_op2(&ids.flatten_all()?.contiguous()?, Embedding)?;
    in_ids_shape(rows, ids)
}

/// [`embedding`] as Candle's `index_select` (and its backward pass, `index_add`): what the op
/// is tested against.
pub fn embedding_reference(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    in_ids_shape(table.index_select(&ids.flatten_all()?, 0)?, ids)
}

/// `rows` (N, C), one per id, shaped as `ids` plus (C).
fn in_ids_shape(rows: Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    dims.push(rows.dim(1)?);
    rows.reshape(dims)
}

/// table (V, C), ids (N) -> (N, C).
struct Embedding;

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((s1.index_select(s2, l1, l2, 0)?, rows_shape(l1, l2)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, u32_view, EMBEDDING};

        let dev = s1.device();
        let (table, ids) = (
            f32_view(s1, l1, self.name())?,
            u32_view(s2, l2, self.name())?,
        );
        let (vocab, c) = (l1.dims()[0], l1.dims()[1]);
        let positions = l2.shape().elem_count();
        let out = output(dev, positions * c)?;
        let (positions_arg, vocab_arg, c_arg) = (positions as u64, vocab as u32, c as u32);
        // One warp per position.
        launch!(dev, "embedding", EMBEDDING, embedding_f32, positions * super::LANES;
            &table, &ids, &out, &positions_arg, &vocab_arg, &c_arg);
        Ok((storage(out, dev), rows_shape(l1, l2)))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vocab = table.dim(0)?;
        let d_table = grad
            .contiguous()?
            .apply_op2_no_bwd(ids, &EmbeddingBackward { vocab })?;
        Ok((Some(d_table), None))
    }
}

/// (N) ids of a (V, C) table: (N, C).
fn rows_shape(table: &Layout, ids: &Layout) -> Shape {
    Shape::from((ids.shape().elem_count(), table.dims()[1]))
}

/// grad (N, C), ids (N) -> d table (vocab, C).
struct EmbeddingBackward {
    vocab: usize,
}

impl CustomOp2 for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding-backward"
    }

    /// Candle's `index_add` into zeros: the rows added in position order.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = Shape::from((self.vocab, l1.dims()[1]));
        let zeros = CpuStorage::F32(vec![0f32; shape.elem_count()]);
        let table = zeros.index_add(&Layout::contiguous(&shape), s2, l2, s1, l1, 0)?;
        Ok((table, shape))
    }

    /// `kernels/embedding.cu`: a warp per (table row, 32 channels).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, u32_view, EMBEDDING};

        let dev = s1.device();
        let (grad, ids) = (
            f32_view(s1, l1, self.name())?,
            u32_view(s2, l2, self.name())?,
        );
        let (positions, c) = (l1.dims()[0], l1.dims()[1]);
        let out = output(dev, self.vocab * c)?;
        let (positions_arg, vocab, c_arg) = (positions as u64, self.vocab as u32, c as u32);
        let lanes = self.vocab * c.div_ceil(super::LANES) * super::LANES;
        // Blocks of 8 warps: paper.toml's 257 rows of 12 warps make 386 blocks, not 97.
        launch!(dev, "embedding", EMBEDDING, embedding_backward_f32, lanes, block 256;
            &ids, &grad, &out, &positions_arg, &vocab, &c_arg);
        Ok((storage(out, dev), Shape::from((self.vocab, c))))
    }
}
