//! NCCL ranks, one process per GPU (Candle's `nccl` feature, cudarc's bindings). Gradients are
//! summed on the device ([`Nccl::all_reduce_sum`]); the few host values the trainer shares
//! (the config, evaluation sums, the stop flag) go through small device buffers on the same
//! stream, so every collective of a rank is ordered with its kernels.

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaSlice, DeviceRepr, DriverError, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::result::{NcclError, NcclStatus};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

use crate::DistError;

/// The bytes of a new NCCL unique id (rank 0 makes it; the others receive it).
pub fn unique_id() -> Result<Vec<u8>, DistError> {
    let id = Id::new().map_err(|e| DistError::Nccl(format!("ncclGetUniqueId: {e:?}")))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

pub struct Nccl {
    comm: Comm,
    device: Device,
}

impl Nccl {
    /// Joins the job as `rank` of `size` on this node's GPU `local_rank` (modulo the GPUs this
    /// process sees: one when the launcher binds each rank to its own); blocks until every rank
    /// has joined.
    pub fn join(local_rank: usize, rank: usize, size: usize, id: &[u8]) -> Result<Nccl, DistError> {
        let fail = |what: &str, e: String| DistError::Nccl(format!("{what}: {e}"));
        let visible = CudaContext::device_count().map_err(|e| fail("cuda", format!("{e:?}")))?;
        if visible < 1 {
            return Err(fail(
                "cuda",
                "this process sees no GPU (CUDA_VISIBLE_DEVICES?)".into(),
            ));
        }
        let ordinal = local_rank % visible as usize;
        let device = Device::new_cuda(ordinal).map_err(|e| {
            fail(
                &format!("cuda:{ordinal} of {visible} visible"),
                e.to_string(),
            )
        })?;
        let stream = device
            .as_cuda_device()
            .map_err(|e| fail("cuda", e.to_string()))?
            .cuda_stream();
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() {
            return Err(fail("unique id", format!("{} bytes, not 128", id.len())));
        }
        for (c, &b) in internal.iter_mut().zip(id) {
            *c = b as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream, rank, size, Id::uninit(internal))
            .map_err(|e| fail("ncclCommInitRank", format!("{e:?}")))?;
        Ok(Nccl { comm, device })
    }

    /// The GPU of this rank: the trainer puts its tensors here, on the stream NCCL uses.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `t` (f32, contiguous, on this rank's GPU) summed over the ranks.
    pub fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.contiguous()?.apply_op1_no_bwd(&AllReduceSum(&self.comm))
    }

    /// Reduces a host buffer through the device, in place; waits for the result.
    pub fn host_all_reduce<T>(&self, buf: &mut [T], op: ReduceOp) -> Result<(), DistError>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits + Copy,
    {
        self.through_device(buf, |comm, d| comm.all_reduce_in_place(d, &op))
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        let mut len = [bytes.len() as u64];
        self.through_device(&mut len, |comm, d| comm.broadcast_in_place(d, 0))?;
        bytes.resize(len[0] as usize, 0);
        if bytes.is_empty() {
            return Ok(());
        }
        self.through_device(bytes, |comm, d| comm.broadcast_in_place(d, 0))
    }

    fn through_device<T>(
        &self,
        buf: &mut [T],
        collective: impl FnOnce(&Comm, &mut CudaSlice<T>) -> Result<NcclStatus, NcclError>,
    ) -> Result<(), DistError>
    where
        T: DeviceRepr + ValidAsZeroBits + Copy,
    {
        let stream = self.comm.stream();
        let driver = |e: DriverError| DistError::Nccl(format!("copy: {e:?}"));
        let mut d = stream.clone_htod(buf).map_err(driver)?;
        collective(&self.comm, &mut d).map_err(|e| DistError::Nccl(format!("{e:?}")))?;
        stream.memcpy_dtoh(&d, buf).map_err(driver)?;
        stream.synchronize().map_err(driver)
    }
}

/// The sum over the ranks of a CUDA tensor, as an op Candle runs on its stream.
struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce takes a CUDA tensor; CPU ranks reduce over MPI")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: the input must be contiguous", self.name())
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let dev = s.device();
        // SAFETY: the all-reduce writes every element.
        let mut dst = unsafe { dev.alloc::<f32>(end - start) }?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, dev.clone()),
            l.shape().clone(),
        ))
    }
}
