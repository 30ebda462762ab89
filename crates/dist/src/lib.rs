//! dynact-dist: the processes of a data-parallel run and the collectives between them.
//!
//! A [`Communicator`] is either the one process of an ordinary run or a rank of an MPI job
//! (`mpirun -np N train-lm ...`, or `srun` with PMI/PMIx), behind the `mpi` feature: MPI
//! launches the ranks, on one node or several, and is the collective backend for CPU tensors,
//! as in llm.c. Only flat f32/f64/u64 buffers cross it; the trainer decides what to reduce.
//!
//! A collective that waits longer than the communicator's timeout (a rank died or hangs) stops
//! this process with one error line, so that the launcher stops the whole job instead of
//! hanging.

// Without MPI the collectives have nothing to do with their buffers.
#![cfg_attr(not(feature = "mpi"), allow(unused_variables, dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What can go wrong setting up the processes.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("this process was started by an MPI launcher as rank {rank} ({var} is set), but this train-lm was built without MPI; build it with `cargo build --release --features mpi`, or run it without mpirun/srun")]
    NoMpiSupport { rank: usize, var: &'static str },
    #[error("MPI could not be initialized (is this process under mpirun or srun with PMI?)")]
    MpiInit,
}

/// Where the launcher said this process is (before MPI is initialized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    /// Processes in the job (None: the launcher does not say; MPI will).
    pub size: Option<usize>,
    pub local_rank: usize,
    /// The variable that told of the launch.
    pub var: &'static str,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// The rank, size and local rank an MPI launcher set in the environment: Open MPI's `mpirun`,
/// MPICH/Hydra (PMI), or PMIx (`srun --mpi=pmix`). None for a process started alone.
pub fn launch_from_env() -> Option<Launch> {
    let local = || {
        [
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "PMI_LOCAL_RANK",
            "SLURM_LOCALID",
        ]
        .iter()
        .find_map(|v| env_usize(v))
        .unwrap_or(0)
    };
    for (size_vars, rank_var) in [
        (&["OMPI_COMM_WORLD_SIZE"][..], "OMPI_COMM_WORLD_RANK"),
        (&["PMI_SIZE"][..], "PMI_RANK"),
        // PMIx (srun --mpi=pmix) does not export the size; Slurm does.
        (
            &["PMIX_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"][..],
            "PMIX_RANK",
        ),
    ] {
        if let Some(rank) = env_usize(rank_var) {
            return Some(Launch {
                rank,
                size: size_vars.iter().find_map(|v| env_usize(v)),
                local_rank: local(),
                var: rank_var,
            });
        }
    }
    None
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi {
        world: mpi::topology::SimpleCommunicator,
        // Finalizes MPI when the communicator is dropped (a clean exit).
        _universe: mpi::environment::Universe,
    },
}

/// This process's place in the run and the collectives over all of its processes.
pub struct Communicator {
    rank: usize,
    size: usize,
    local_rank: usize,
    backend: Backend,
    /// Milliseconds since `epoch` at which the collective in progress started (0: none).
    waiting_since: Arc<AtomicU64>,
    epoch: Instant,
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
            waiting_since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    /// The communicator the launcher set up: an MPI rank when started by mpirun or srun with
    /// more than one process (needs the `mpi` feature), else a single process. `timeout` bounds
    /// every collective (see the crate's documentation).
    pub fn from_env(timeout: Duration) -> Result<Communicator, DistError> {
        let launch = match launch_from_env() {
            // More than one process, or MPI available to say how many.
            Some(l)
                if l.size.is_some_and(|n| n > 1) || (cfg!(feature = "mpi") && l.size.is_none()) =>
            {
                l
            }
            _ => return Ok(Communicator::single()),
        };
        let comm = Self::mpi(launch)?;
        comm.start_watchdog(timeout);
        Ok(comm)
    }

    #[cfg(feature = "mpi")]
    fn mpi(launch: Launch) -> Result<Communicator, DistError> {
        use mpi::traits::Communicator as _;
        let universe = mpi::initialize().ok_or(DistError::MpiInit)?;
        let world = universe.world();
        Ok(Communicator {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: launch.local_rank,
            backend: Backend::Mpi {
                world,
                _universe: universe,
            },
            waiting_since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi(launch: Launch) -> Result<Communicator, DistError> {
        Err(DistError::NoMpiSupport {
            rank: launch.rank,
            var: launch.var,
        })
    }

    /// A thread that stops the process when a collective has waited longer than `timeout`.
    fn start_watchdog(&self, timeout: Duration) {
        let since = self.waiting_since.clone();
        let (epoch, rank) = (self.epoch, self.rank);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let started = since.load(Ordering::SeqCst);
            if started == 0 {
                continue;
            }
            let waited = (epoch.elapsed().as_millis() as u64).saturating_sub(started);
            if waited > timeout.as_millis() as u64 {
                eprintln!(
                    "error: rank {rank} waited {:.0} s for the other ranks (train.rank_timeout_s is {:.0}); a rank died or hangs, so this job stops; resume it from its last checkpoint",
                    waited as f64 / 1e3,
                    timeout.as_secs_f64()
                );
                std::process::exit(1);
            }
        });
    }

    /// Runs the collective `f`, marked as waiting for the watchdog.
    fn waiting<T>(&self, f: impl FnOnce() -> T) -> T {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.waiting_since.store(now.max(1), Ordering::SeqCst);
        let r = f();
        self.waiting_since.store(0, Ordering::SeqCst);
        r
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
            Backend::Mpi { world, .. } => self.waiting(|| mpi_sum(world, buf)),
        }
    }

    /// Element-wise sum over all ranks, in place.
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi { world, .. } => self.waiting(|| mpi_sum(world, buf)),
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
            Backend::Mpi { world, .. } => self.waiting(|| {
                use mpi::collective::{CommunicatorCollectives, SystemOperation};
                let mut out = 0u64;
                world.all_reduce_into(&value, &mut out, SystemOperation::max());
                out
            }),
        }
    }

    /// Rank 0's `bytes` on every rank.
    #[allow(clippy::ptr_arg)] // resized to rank 0's length under MPI
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi { world, .. } => self.waiting(|| {
                use mpi::collective::Root;
                use mpi::topology::Communicator as _;
                let root = world.process_at_rank(0);
                let mut len = bytes.len() as u64;
                root.broadcast_into(&mut len);
                bytes.resize(len as usize, 0);
                root.broadcast_into(&mut bytes[..]);
            }),
        }
    }

    /// Stops every rank of the job with exit code `code` (after an error on this one, so that
    /// the others do not wait for it forever); a single process just exits.
    pub fn abort(&self, code: i32) -> ! {
        match &self.backend {
            Backend::Single => std::process::exit(code),
            #[cfg(feature = "mpi")]
            Backend::Mpi { world, .. } => {
                use mpi::topology::Communicator as _;
                world.abort(code)
            }
        }
    }

    /// Waits until every rank is here, however long that takes (no watchdog: for waits whose
    /// length depends on the data, like rank 0 tokenizing a corpus).
    pub fn barrier_untimed(&self) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi { world, .. } => {
                use mpi::collective::CommunicatorCollectives;
                world.barrier()
            }
        }
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) {
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi { world, .. } => self.waiting(|| {
                use mpi::collective::CommunicatorCollectives;
                world.barrier()
            }),
        }
    }
}

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
