//! Stops a rank whose collective waits too long (another rank died or hangs), so that the
//! launcher stops the whole job instead of hanging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Watchdog {
    /// Milliseconds since `epoch` at which the wait in progress started (0: none).
    waiting_since: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watchdog {
    /// A watchdog that watches nothing until [`Watchdog::start`].
    pub(crate) fn new() -> Watchdog {
        Watchdog {
            waiting_since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    /// A thread that stops the process when a wait has lasted longer than `timeout`.
    pub(crate) fn start(&self, rank: usize, timeout: Duration) {
        let since = self.waiting_since.clone();
        let epoch = self.epoch;
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
                // _exit: the main thread is blocked inside MPI, CUDA or NCCL, whose exit-time
                // teardown could hang or crash under it.
                // SAFETY: ends the process at once; nothing runs after it.
                unsafe { libc::_exit(1) };
            }
        });
    }

    /// Runs `f`, a wait on the other ranks, marked as waiting.
    pub(crate) fn waiting<T>(&self, f: impl FnOnce() -> T) -> T {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.waiting_since.store(now.max(1), Ordering::SeqCst);
        let r = f();
        self.waiting_since.store(0, Ordering::SeqCst);
        r
    }
}
