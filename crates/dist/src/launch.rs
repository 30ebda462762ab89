//! Where the launcher says this process is, read from the environment before MPI or NCCL is
//! set up.

/// Where the launcher said this process is (before MPI is initialized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    /// Processes in the job (None: the launcher does not say; MPI will).
    pub size: Option<usize>,
    pub local_rank: usize,
    /// The variable that told of the launch.
    pub var: &'static str,
    pub launcher: Launcher,
}

/// What started the processes of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// mpirun, mpiexec or srun: MPI knows the ranks.
    Mpi,
    /// torchrun or a script that sets RANK, WORLD_SIZE and LOCAL_RANK: no MPI.
    Torchrun,
}

/// The rank, size and local rank a launcher set in the environment: Open MPI's `mpirun`,
/// MPICH/Hydra (PMI), PMIx (`srun --mpi=pmix`), or torchrun-style `RANK` and `WORLD_SIZE`
/// (with `LOCAL_RANK`). None for a process started alone.
pub fn launch_from_env() -> Option<Launch> {
    launch_from(|name| std::env::var(name).ok())
}

/// [`launch_from_env`] with the environment's variables read by `var`.
fn launch_from(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let env_usize = |name: &str| var(name)?.trim().parse::<usize>().ok();
    let torchrun = match (env_usize("RANK"), env_usize("WORLD_SIZE")) {
        (Some(rank), Some(size)) => Some(Launch {
            rank,
            size: Some(size),
            local_rank: env_usize("LOCAL_RANK").unwrap_or(0),
            var: "RANK",
            launcher: Launcher::Torchrun,
        }),
        _ => None,
    };
    // torchrun itself under srun or mpirun (`srun torchrun ...`): its workers inherit the
    // task's MPI variables, but torchrun's say where each worker is.
    if var("TORCHELASTIC_RUN_ID").is_some() && torchrun.is_some() {
        return torchrun;
    }
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
                launcher: Launcher::Mpi,
            });
        }
    }
    torchrun
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Option<Launch> {
        launch_from(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn each_launcher_is_read_from_its_variables() {
        assert_eq!(launch(&[]), None);
        let ompi = launch(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!((ompi.rank, ompi.size, ompi.local_rank), (3, Some(4), 1));
        assert_eq!(ompi.launcher, Launcher::Mpi);
        let pmix = launch(&[
            ("PMIX_RANK", "2"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
        ]);
        assert_eq!(pmix.map(|l| (l.size, l.local_rank)), Some((Some(8), 2)));
        let torchrun = launch(&[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]).unwrap();
        assert_eq!(
            (
                torchrun.rank,
                torchrun.size,
                torchrun.local_rank,
                torchrun.launcher
            ),
            (5, Some(8), 1, Launcher::Torchrun)
        );
        // RANK alone is not a launch (other tools set it), and MPI's variables come first.
        assert_eq!(launch(&[("RANK", "0")]), None);
        let both = launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
        ]);
        assert_eq!(both.map(|l| (l.rank, l.launcher)), Some((1, Launcher::Mpi)));
        // ... unless torchrun started this process (under srun, say).
        let workers = launch(&[
            ("PMIX_RANK", "0"),
            ("SLURM_NTASKS", "1"),
            ("TORCHELASTIC_RUN_ID", "job7"),
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
        ]);
        assert_eq!(
            workers.map(|l| (l.rank, l.size, l.local_rank, l.launcher)),
            Some((3, Some(8), 3, Launcher::Torchrun))
        );
    }
}
