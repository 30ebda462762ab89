//! Attention's heads moved between (B, T, heads, D), as a projection's output splits into heads,
//! and (B, heads, T, D), as the batched products take them: a copy each way, on a CPU and on a
//! CUDA GPU this crate's kernel (`kernels/heads.cu`), beside [`heads_first_reference`], Candle's
//! `transpose(1, 2)` made contiguous. (On a GPU, Candle's strided copy also reads the shape and
//! strides in every thread, which left 45% of the bytes of the sectors it touched unused.)
//! [`HeadRows`] is the index map, which RoPE (`super::rope`) shares.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::fresh::par_fresh_chunks;
use super::{f32_slice, fused, fused_on_cuda};

/// x (B, T, heads, D) -> (B, heads, T, D).
pub fn heads_first(x: &Tensor) -> Result<Tensor> {
    move_heads(x, false)
}

/// x (B, heads, T, D) -> (B, T, heads, D): [`heads_first`] undone.
pub fn heads_last(x: &Tensor) -> Result<Tensor> {
    move_heads(x, true)
}

/// [`heads_first`] (and [`heads_last`]) as Candle's transpose of dimensions 1 and 2, made
/// contiguous.
pub fn heads_first_reference(x: &Tensor) -> Result<Tensor> {
    x.transpose(1, 2)?.contiguous()
}

fn move_heads(x: &Tensor, inverse: bool) -> Result<Tensor> {
    if (fused(x) || fused_on_cuda(x)) && x.rank() == 4 {
        return x.contiguous()?.apply_op1(MoveHeads { inverse });
    }
    heads_first_reference(x)
}

/// The sizes of a move: `t` positions of `heads` rows of `d`.
#[derive(Clone, Copy)]
pub(crate) struct HeadRows {
    pub t: usize,
    pub heads: usize,
    pub d: usize,
}

impl HeadRows {
    /// The sizes of a move of `l` (B, T, heads, D), or with `inverse` of (B, heads, T, D), and
    /// the output's shape (dimensions 1 and 2 swapped).
    pub fn of(l: &Layout, inverse: bool, op: &str) -> Result<(HeadRows, Shape)> {
        let &[b, one, two, d] = l.dims() else {
            candle_core::bail!("{op}: the input must have 4 dimensions, not {:?}", l.dims());
        };
        let (t, heads) = if inverse { (two, one) } else { (one, two) };
        Ok((HeadRows { t, heads, d }, Shape::from((b, two, one, d))))
    }

    /// The input row that output row `row` comes from, and its position in 0..t: the index
    /// map of `kernels/heads.cuh`.
    pub fn source(&self, row: usize, inverse: bool) -> (usize, usize) {
        let (t, heads) = (self.t, self.heads);
        if inverse {
            let (head, bt) = (row % heads, row / heads);
            let position = bt % t;
            (((bt / t) * heads + head) * t + position, position)
        } else {
            let (bh, position) = (row / t, row % t);
            (((bh / heads) * t + position) * heads + bh % heads, position)
        }
    }

    /// How many consecutive output rows form a group: going forward the `t` rows of one
    /// (batch, head), back the `heads` rows of one (batch, position).
    pub fn group_len(&self, inverse: bool) -> usize {
        if inverse {
            self.heads
        } else {
            self.t
        }
    }

    /// [`HeadRows::source`] of each row of group `g` in order, without a division per row:
    /// within a group the source rows are evenly spaced and the position steps by 1 (forward)
    /// or stays (back).
    pub fn group_sources(&self, g: usize, inverse: bool) -> impl Iterator<Item = (usize, usize)> {
        let len = self.group_len(inverse);
        let (first, position) = self.source(g * len, inverse);
        let (step, position_step) = if inverse {
            (self.t, 0)
        } else {
            (self.heads, 1)
        };
        (0..len).map(move |i| (first + i * step, position + i * position_step))
    }

    /// `x` moved (with `inverse`, moved back), each output row its source row's copy, then
    /// `then(row, position)` on it (RoPE's rotation), a group of rows at a time in parallel.
    pub fn moved(
        &self,
        x: &[f32],
        inverse: bool,
        then: impl Fn(&mut [f32], usize) + Sync,
    ) -> Vec<f32> {
        let d = self.d;
        let group = (self.group_len(inverse) * d).max(1);
        par_fresh_chunks(x.len(), group, |range, fresh| {
            let mut sources = self.group_sources(range.start / group, inverse);
            fresh
                .fill_rows(d, |_, row| {
                    let (src, position) = sources.next().expect("a source per row");
                    let (row, filled) = row.fill(x[src * d..][..d].iter().copied());
                    then(row, position);
                    filled
                })
                .1
        })
    }
}

/// The move, with `inverse` the move back; each is the other's backward pass.
struct MoveHeads {
    inverse: bool,
}

impl CustomOp1 for MoveHeads {
    fn name(&self) -> &'static str {
        "move-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (rows, shape) = HeadRows::of(l, self.inverse, self.name())?;
        Ok((
            CpuStorage::F32(rows.moved(x, self.inverse, |_, _| {})),
            shape,
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, HEADS};
        use candle_core::backend::BackendStorage;

        let dev = s.device();
        let x = f32_view(s, l, self.name())?;
        let (sizes, shape) = HeadRows::of(l, self.inverse, self.name())?;
        let n = l.shape().elem_count();
        let y = output(dev, n)?;
        let (rows, t, heads, d) = (
            (n / sizes.d.max(1)) as u64,
            sizes.t as u32,
            sizes.heads as u32,
            sizes.d as u32,
        );
        let inverse = self.inverse as i32;
        launch!(dev, "heads", HEADS, move_heads_f32, n; &x, &y, &rows, &t, &heads, &d, &inverse);
        Ok((storage(y, dev), shape))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = MoveHeads {
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_rows_come_from_where_each_row_does() {
        let rows = HeadRows {
            t: 5,
            heads: 3,
            d: 4,
        };
        for inverse in [false, true] {
            let len = rows.group_len(inverse);
            // Two batches of t * heads rows.
            for g in 0..2 * rows.t * rows.heads / len {
                for (i, got) in rows.group_sources(g, inverse).enumerate() {
                    assert_eq!(got, rows.source(g * len + i, inverse), "group {g}, row {i}");
                }
            }
        }
    }
}
