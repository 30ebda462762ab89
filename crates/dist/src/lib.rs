//! dynact-dist: the processes of a data-parallel run and the collectives between them.
//!
//! A [`Communicator`] is the one process of an ordinary run, a rank of an MPI job
//! (`mpirun -np N train-lm ...`, or `srun` with PMI/PMIx; the `mpi` feature), or, on GPUs, a
//! rank of an NCCL job (the `nccl` feature), as in llm.c: MPI launches the ranks, on one node or
//! several, and is the collective backend for CPU tensors; NCCL sums GPU tensors on the
//! device. NCCL ranks are launched by MPI (which passes NCCL's id) or torchrun-style, with
//! `RANK`, `WORLD_SIZE` and `LOCAL_RANK` set and the id passed through a file
//! ([`rendezvous`]). Only flat f32/f64/u64 buffers (and, with NCCL, f32 tensors) cross it; the
//! trainer decides what to reduce.
//!
//! A collective that waits longer than the communicator's timeout (a rank died or hangs) stops
//! this process with one error line, so that the launcher stops the whole job instead of
//! hanging.

// Without MPI or NCCL the collectives have nothing to do with their buffers.
#![cfg_attr(
    not(any(feature = "mpi", feature = "nccl")),
    allow(unused_variables, dead_code)
)]

mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
mod watchdog;

use std::time::Duration;

pub use launch::{launch_from_env, Launch, Launcher};
use watchdog::Watchdog;

/// What can go wrong setting up the processes.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("this process was started by an MPI launcher as rank {rank} ({var} is set), but this train-lm was built without MPI; build it with `cargo build --release --features mpi`, or run it without mpirun/srun")]
    NoMpiSupport { rank: usize, var: &'static str },
    #[error("MPI could not be initialized (is this process under mpirun or srun with PMI?)")]
    MpiInit,
    #[error("this process is rank {rank} of a torchrun-style launch (RANK and WORLD_SIZE are set), which runs NCCL ranks on GPUs, but its device is a CPU; launch CPU ranks with mpirun (a build with --features mpi), or unset RANK and WORLD_SIZE")]
    TorchrunOnCpu { rank: usize },
    #[error("this process is rank {rank} of {size} on GPUs, but this train-lm was built without NCCL; build it with `cargo build --release --features nccl`")]
    NoNcclSupport { rank: usize, size: usize },
    #[error("a torchrun-style launch (RANK and WORLD_SIZE are set) passes NCCL's id through a file: set {} to a path all ranks see that no earlier job used (e.g. /tmp/nccl-id-$JOB_ID), or launch with mpirun", rendezvous::ID_FILE_VAR)]
    NoRendezvousFile,
    #[error("the rendezvous file {path} already exists (left by an earlier job?); remove it, or set {var} to a new path", var = rendezvous::ID_FILE_VAR)]
    RendezvousExists { path: std::path::PathBuf },
    #[error("no rendezvous file appeared at {path} within {seconds:.0} s; is rank 0 running, and does it see the same path? (train.rank_timeout_s bounds the wait)")]
    RendezvousTimeout {
        path: std::path::PathBuf,
        seconds: f64,
    },
    #[error("the rendezvous file {path}: {why}")]
    Rendezvous {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("NCCL failed: {0}")]
    Nccl(String),
}

/// An MPI job's world, and the handle that finalizes MPI when dropped (a clean exit).
#[cfg(feature = "mpi")]
struct MpiWorld {
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl MpiWorld {
    fn initialize() -> Result<MpiWorld, DistError> {
        let universe = mpi::initialize().ok_or(DistError::MpiInit)?;
        Ok(MpiWorld {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// `r`'s value, or its error in one line and the whole job stopped: once MPI is up, a rank
    /// that just returned would wait in MPI_Finalize for ranks that wait for it.
    #[cfg(feature = "nccl")]
    fn or_abort<T>(&self, r: Result<T, DistError>) -> T {
        use mpi::traits::Communicator as _;
        r.unwrap_or_else(|e| {
            eprintln!("error: rank {}: {e}", self.world.rank());
            self.world.abort(1)
        })
    }
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(MpiWorld),
    /// GPU ranks; `mpi` is the MPI job that launched them (None: a torchrun-style launch).
    #[cfg(feature = "nccl")]
    Nccl {
        nccl: nccl::Nccl,
        #[cfg(feature = "mpi")]
        mpi: Option<MpiWorld>,
    },
}

/// This process's place in the run and the collectives over all of its processes.
pub struct Communicator {
    rank: usize,
    size: usize,
    local_rank: usize,
    backend: Backend,
    watchdog: Watchdog,
}

impl Default for Communicator {
    fn default() -> Self {
        Communicator::single()
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Communicator(rank {} of {})", self.rank, self.size)
    }
}

impl Communicator {
    /// The one process of an ordinary run: every collective is the identity.
    pub fn single() -> Communicator {
        Communicator {
            rank: 0,
            size: 1,
            local_rank: 0,
            backend: Backend::Single,
            watchdog: Watchdog::new(),
        }
    }

    /// The communicator the launcher set up, for a run whose tensors are on a GPU (`gpu`) or
    /// a CPU:
    /// - started by mpirun or srun with more than one process: an MPI rank on CPUs (the `mpi`
    ///   feature), an NCCL rank on GPUs (`nccl`, and `mpi` to pass NCCL's id);
    /// - started torchrun-style (`RANK`, `WORLD_SIZE`): an NCCL rank on GPU `LOCAL_RANK`, even
    ///   a world of one (a check of the path); refused on CPUs;
    /// - else a single process.
    ///
    /// `timeout` bounds every collective (see the crate's documentation).
    pub fn from_env(timeout: Duration, gpu: bool) -> Result<Communicator, DistError> {
        let Some(launch) = launch_from_env() else {
            return Ok(Communicator::single());
        };
        let several = launch.size.is_some_and(|n| n > 1);
        // MPI knows the size when the launcher does not say it.
        let mpi_job = several || (cfg!(feature = "mpi") && launch.size.is_none());
        match launch.launcher {
            Launcher::Torchrun if !gpu && several => {
                Err(DistError::TorchrunOnCpu { rank: launch.rank })
            }
            Launcher::Torchrun if gpu => Self::nccl(launch, timeout),
            Launcher::Mpi if mpi_job && gpu && cfg!(feature = "nccl") => {
                Self::nccl(launch, timeout)
            }
            Launcher::Mpi if mpi_job => Self::mpi(launch, timeout),
            _ => Ok(Communicator::single()),
        }
    }

    #[cfg(feature = "mpi")]
    fn mpi(launch: Launch, timeout: Duration) -> Result<Communicator, DistError> {
        use mpi::traits::Communicator as _;
        let mpi = MpiWorld::initialize()?;
        let rank = mpi.world.rank() as usize;
        let watchdog = Watchdog::new();
        watchdog.start(rank, timeout);
        Ok(Communicator {
            rank,
            size: mpi.world.size() as usize,
            local_rank: launch.local_rank,
            backend: Backend::Mpi(mpi),
            watchdog,
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi(launch: Launch, _timeout: Duration) -> Result<Communicator, DistError> {
        Err(DistError::NoMpiSupport {
            rank: launch.rank,
            var: launch.var,
        })
    }

    /// An NCCL rank on GPU `local_rank`. Rank 0 makes NCCL's id and passes it on through MPI,
    /// or through the rendezvous file of a torchrun-style launch. The watchdog starts first:
    /// joining waits for every rank.
    #[cfg(feature = "nccl")]
    fn nccl(launch: Launch, timeout: Duration) -> Result<Communicator, DistError> {
        let watchdog = Watchdog::new();
        watchdog.start(launch.rank, timeout);
        let (rank, size, id, file);
        #[cfg(feature = "mpi")]
        let mut mpi = None;
        match launch.launcher {
            Launcher::Torchrun => {
                (rank, size) = (launch.rank, launch.size.unwrap_or(1));
                let path = std::env::var_os(rendezvous::ID_FILE_VAR).map(std::path::PathBuf::from);
                id = match (&path, rank) {
                    _ if size == 1 => nccl::unique_id()?,
                    (None, _) => return Err(DistError::NoRendezvousFile),
                    (Some(path), 0) => {
                        let id = nccl::unique_id()?;
                        rendezvous::publish(path, &id)?;
                        id
                    }
                    (Some(path), _) => rendezvous::await_published(path, timeout)?,
                };
                file = path.filter(|_| rank == 0 && size > 1);
            }
            #[cfg(feature = "mpi")]
            Launcher::Mpi => {
                use mpi::collective::Root;
                use mpi::traits::Communicator as _;
                let world = MpiWorld::initialize()?;
                (rank, size) = (world.world.rank() as usize, world.world.size() as usize);
                let mut bytes = match rank {
                    0 => world.or_abort(nccl::unique_id()),
                    _ => vec![0u8; 128],
                };
                watchdog.waiting(|| {
                    world
                        .world
                        .process_at_rank(0)
                        .broadcast_into(&mut bytes[..])
                });
                (id, file) = (bytes, None);
                mpi = Some(world);
            }
            #[cfg(not(feature = "mpi"))]
            Launcher::Mpi => {
                return Err(DistError::NoMpiSupport {
                    rank: launch.rank,
                    var: launch.var,
                })
            }
        }
        // Returns once every rank has joined, so the id file has been read by all.
        let joined = watchdog.waiting(|| nccl::Nccl::join(launch.local_rank, rank, size, &id));
        if let Some(path) = file {
            rendezvous::retire(&path);
        }
        #[cfg(feature = "mpi")]
        let joined = match &mpi {
            Some(world) => Ok(world.or_abort(joined)),
            None => joined,
        };
        let nccl = joined?;
        Ok(Communicator {
            rank,
            size,
            local_rank: launch.local_rank,
            backend: Backend::Nccl {
                nccl,
                #[cfg(feature = "mpi")]
                mpi,
            },
            watchdog,
        })
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl(launch: Launch, _timeout: Duration) -> Result<Communicator, DistError> {
        match launch.size.unwrap_or(1) {
            1 => Ok(Communicator::single()),
            size => Err(DistError::NoNcclSupport {
                rank: launch.rank,
                size,
            }),
        }
    }

    /// The GPU whose tensors the collectives reduce on the device: an NCCL rank's (the trainer
    /// must put its tensors there).
    #[cfg(feature = "nccl")]
    pub fn nccl_device(&self) -> Option<&candle_core::Device> {
        match &self.backend {
            Backend::Nccl { nccl, .. } => Some(nccl.device()),
            _ => None,
        }
    }

    /// Sums `t`, an f32 tensor on [`Communicator::nccl_device`], over the ranks on the device
    /// (None: not an NCCL rank; reduce on the host instead).
    #[cfg(feature = "nccl")]
    pub fn all_reduce_sum_on_device(
        &self,
        t: &candle_core::Tensor,
    ) -> Option<candle_core::Result<candle_core::Tensor>> {
        match &self.backend {
            // Waits for the sum so that a rank that died is noticed here, by the watchdog (which
            // times the collective alone: this rank's own queued work is waited for first).
            Backend::Nccl { nccl, .. } => Some(t.device().synchronize().and_then(|_| {
                self.watchdog.waiting(|| {
                    let sum = nccl.all_reduce_sum(t)?;
                    sum.device().synchronize()?;
                    Ok(sum)
                })
            })),
            _ => None,
        }
    }

    /// Whether this rank's collectives run on a GPU (NCCL).
    pub fn on_gpu(&self) -> bool {
        #[cfg(feature = "nccl")]
        if let Backend::Nccl { .. } = self.backend {
            return true;
        }
        false
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The rank among those on this node (which GPU a rank uses).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0, the one that writes logs and checkpoints.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum over all ranks, in place, the same result on every rank.
    pub fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => self.watchdog.waiting(|| mpi_sum(&mpi.world, buf)),
            #[cfg(feature = "nccl")]
            Backend::Nccl { nccl, .. } => self.on_nccl(|| nccl.host_all_reduce(buf, Sum)),
        }
    }

    /// Element-wise sum over all ranks, in place.
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => self.watchdog.waiting(|| mpi_sum(&mpi.world, buf)),
            #[cfg(feature = "nccl")]
            Backend::Nccl { nccl, .. } => self.on_nccl(|| nccl.host_all_reduce(buf, Sum)),
        }
    }

    /// Element-wise mean over all ranks, in place.
    pub fn all_reduce_mean_f32(&self, buf: &mut [f32]) {
        self.all_reduce_sum_f32(buf);
        if self.size > 1 {
            let n = self.size as f32;
            buf.iter_mut().for_each(|v| *v /= n);
        }
    }

    /// The largest of every rank's `value`.
    pub fn all_reduce_max_u64(&self, value: u64) -> u64 {
        match &self.backend {
            Backend::Single => value,
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => self.watchdog.waiting(|| {
                use mpi::collective::{CommunicatorCollectives, SystemOperation};
                let mut out = 0u64;
                mpi.world
                    .all_reduce_into(&value, &mut out, SystemOperation::max());
                out
            }),
            #[cfg(feature = "nccl")]
            Backend::Nccl { nccl, .. } => {
                let mut v = [value];
                self.on_nccl(|| nccl.host_all_reduce(&mut v, Max));
                v[0]
            }
        }
    }

    /// Rank 0's `bytes` on every rank.
    #[allow(clippy::ptr_arg)] // resized to rank 0's length
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => self.watchdog.waiting(|| {
                use mpi::collective::Root;
                use mpi::topology::Communicator as _;
                let root = mpi.world.process_at_rank(0);
                let mut len = bytes.len() as u64;
                root.broadcast_into(&mut len);
                bytes.resize(len as usize, 0);
                root.broadcast_into(&mut bytes[..]);
            }),
            #[cfg(feature = "nccl")]
            Backend::Nccl { nccl, .. } => self.on_nccl(|| nccl.broadcast_bytes(bytes)),
        }
    }

    /// Stops every rank of the job with exit code `code` (after an error on this one, so that
    /// the others do not wait for it forever); a single process just exits. Ranks that no MPI
    /// job holds together exit, and their launcher (torchrun) stops the others.
    pub fn abort(&self, code: i32) -> ! {
        match &self.backend {
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => {
                use mpi::topology::Communicator as _;
                mpi.world.abort(code)
            }
            #[cfg(all(feature = "nccl", feature = "mpi"))]
            Backend::Nccl { mpi: Some(mpi), .. } => {
                use mpi::topology::Communicator as _;
                mpi.world.abort(code)
            }
            _ => std::process::exit(code),
        }
    }

    /// Waits until every rank is here, however long that takes (no watchdog: for waits whose
    /// length depends on the data, like rank 0 tokenizing a corpus).
    pub fn barrier_untimed(&self) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(mpi) => {
                use mpi::collective::CommunicatorCollectives;
                mpi.world.barrier()
            }
            #[cfg(feature = "nccl")]
            Backend::Nccl { nccl, .. } => {
                if let Err(e) = nccl.host_all_reduce(&mut [0u32], Sum) {
                    self.fail(e)
                }
            }
        }
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) {
        if self.size > 1 {
            self.watchdog.waiting(|| self.barrier_untimed())
        }
    }

    /// Runs an NCCL host collective under the watchdog; a failure stops the job.
    #[cfg(feature = "nccl")]
    fn on_nccl(&self, f: impl FnOnce() -> Result<(), DistError>) {
        if let Err(e) = self.watchdog.waiting(f) {
            self.fail(e)
        }
    }

    /// One error line, then the whole job stops.
    #[cfg(feature = "nccl")]
    fn fail(&self, e: DistError) -> ! {
        eprintln!("error: rank {}: {e}; this job stops", self.rank);
        self.abort(1)
    }
}

#[cfg(feature = "nccl")]
use candle_core::cuda_backend::cudarc::nccl::safe::ReduceOp::{Max, Sum};

/// In-place MPI sum, in pieces of at most 16M elements (bounded extra memory, and counts that
/// fit MPI's `int`).
#[cfg(feature = "mpi")]
fn mpi_sum<T>(world: &mpi::topology::SimpleCommunicator, buf: &mut [T])
where
    T: mpi::datatype::Equivalence + Copy,
{
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    const PIECE: usize = 1 << 24;
    let mut send = Vec::with_capacity(buf.len().min(PIECE));
    for piece in buf.chunks_mut(PIECE) {
        send.clear();
        send.extend_from_slice(piece);
        world.all_reduce_into(&send[..], piece, SystemOperation::sum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_reduces_to_itself() {
        let c = Communicator::single();
        let mut v = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut v);
        c.all_reduce_mean_f32(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(c.all_reduce_max_u64(7), 7);
        let mut b = vec![1u8, 2];
        c.broadcast_bytes(&mut b);
        c.barrier();
        c.barrier_untimed();
        assert_eq!(b, [1, 2]);
        assert!(c.is_root() && c.size() == 1);
    }
}
