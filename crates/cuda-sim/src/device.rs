//! The simulated device: memory, loaded modules and launches, with sm_90's launch limits and
//! a check of every launch's arguments against its kernel's parameter list.

use std::io::Write;

use crate::exec::{Block, LaunchView};
use crate::memory::GlobalMemory;
use crate::parse::{parse_module, Module};
use crate::profile::{KernelCounters, LaunchRecord};
use crate::SimError;

/// Launch limits of a compute-capability 9.0 GPU (H100, H200).
pub struct Limits {
    pub max_block: [u32; 3],
    pub max_threads_per_block: u32,
    pub max_grid: [u32; 3],
    /// Shared memory a block may use without opting in (static plus dynamic).
    pub default_shared: usize,
    /// The most a kernel may opt in to (cudaFuncAttributeMaxDynamicSharedMemorySize).
    pub max_shared_optin: usize,
}

pub const SM90_LIMITS: Limits = Limits {
    max_block: [1024, 1024, 64],
    max_threads_per_block: 1024,
    max_grid: [i32::MAX as u32, 65535, 65535],
    default_shared: 48 * 1024,
    max_shared_optin: 227 * 1024,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch of `grid` blocks of `block` threads.
    pub fn linear(grid: u32, block: u32) -> Self {
        LaunchConfig {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// One kernel argument, as the bytes cuLaunchKernel would copy.
#[derive(Clone, Debug)]
pub enum Arg {
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    /// A device pointer.
    Ptr(u64),
    /// Any other parameter (a struct passed by value).
    Bytes(Vec<u8>),
}

impl Arg {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Arg::U32(v) => v.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::U64(v) | Arg::Ptr(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::F64(v) => v.to_le_bytes().to_vec(),
            Arg::Bytes(b) => b.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleId(usize);

struct Loaded {
    module: Module,
    /// Device addresses of the module's variables.
    globals: Vec<u64>,
}

/// A simulated GPU.
pub struct Gpu {
    mem: GlobalMemory,
    modules: Vec<Loaded>,
    /// Every launch so far, in order.
    pub launches: Vec<LaunchRecord>,
    /// Run at most this many blocks of a launch (one from each of as many equal strata of the
    /// grid) and scale the counts: for profiles of big grids, whose outputs are then
    /// incomplete.
    pub sample_blocks: Option<u64>,
    /// Opt-in dynamic shared memory per kernel name (cudaFuncSetAttribute).
    max_dynamic_shared: Vec<(String, usize)>,
    profile: Option<std::fs::File>,
}

impl Default for Gpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpu {
    /// A device; `DYNACT_CUDA_SIM_PROFILE=FILE` appends one JSON line per launch to FILE.
    pub fn new() -> Self {
        let profile = std::env::var_os("DYNACT_CUDA_SIM_PROFILE").and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        Gpu {
            mem: GlobalMemory::new(),
            modules: Vec::new(),
            launches: Vec::new(),
            sample_blocks: None,
            max_dynamic_shared: Vec::new(),
            profile,
        }
    }

    /// Parses PTX and places its module variables in device memory.
    pub fn load_ptx(&mut self, ptx: &str) -> Result<ModuleId, SimError> {
        let module = parse_module(ptx)?;
        let globals = module
            .globals
            .iter()
            .map(|v| {
                let a = self.mem.alloc(v.size as u64);
                self.mem
                    .write(a, &v.init)
                    .expect("a fresh allocation holds its initializer");
                a
            })
            .collect();
        self.modules.push(Loaded { module, globals });
        Ok(ModuleId(self.modules.len() - 1))
    }

    pub fn module(&self, id: ModuleId) -> &Module {
        &self.modules[id.0].module
    }

    pub fn alloc(&mut self, bytes: usize) -> u64 {
        self.mem.alloc(bytes as u64)
    }

    pub fn free(&mut self, ptr: u64) -> Result<(), SimError> {
        if self.mem.free(ptr) {
            Ok(())
        } else {
            Err(SimError::Memory(format!(
                "free of {ptr:#x}, which is not a live allocation"
            )))
        }
    }

    pub fn live_bytes(&self) -> u64 {
        self.mem.live_bytes()
    }

    pub fn write(&mut self, ptr: u64, bytes: &[u8]) -> Result<(), SimError> {
        self.mem.write(ptr, bytes).map_err(|f| {
            SimError::Memory(format!(
                "host write of {} bytes at {ptr:#x}: {f}",
                bytes.len()
            ))
        })
    }

    pub fn read(&self, ptr: u64, out: &mut [u8]) -> Result<(), SimError> {
        self.mem.read(ptr, out).map_err(|f| {
            SimError::Memory(format!("host read of {} bytes at {ptr:#x}: {f}", out.len()))
        })
    }

    /// A new allocation holding `data`.
    pub fn upload<T: Copy>(&mut self, data: &[T]) -> u64 {
        let bytes = as_bytes(data);
        let ptr = self.alloc(bytes.len());
        self.write(ptr, bytes).expect("a fresh allocation has room");
        ptr
    }

    /// `n` elements of `T` read from `ptr`.
    pub fn download<T: Copy + Default>(&self, ptr: u64, n: usize) -> Result<Vec<T>, SimError> {
        let mut out = vec![T::default(); n];
        let len = std::mem::size_of_val(out.as_slice());
        // SAFETY: T is Copy plain data (f32, u32, ...) and the slice is exactly len bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, len) };
        self.read(ptr, bytes)?;
        Ok(out)
    }

    /// Lets `kernel` use up to `bytes` of dynamic shared memory (at most 227 KiB on sm_90).
    pub fn set_max_dynamic_shared(&mut self, kernel: &str, bytes: usize) -> Result<(), SimError> {
        if bytes > SM90_LIMITS.max_shared_optin {
            return Err(SimError::Launch(format!(
                "{kernel}: {bytes} bytes of dynamic shared memory is over sm_90's {}",
                SM90_LIMITS.max_shared_optin
            )));
        }
        self.max_dynamic_shared.retain(|(k, _)| k != kernel);
        self.max_dynamic_shared.push((kernel.to_string(), bytes));
        Ok(())
    }

    /// Runs `kernel` of `module` over `cfg` with `args`, checked against its parameter list.
    pub fn launch(
        &mut self,
        module: ModuleId,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<&LaunchRecord, SimError> {
        let params = args.iter().map(Arg::bytes).collect::<Vec<_>>();
        self.launch_raw(module, kernel, cfg, &params)
    }

    /// As [`Gpu::launch`], with each argument as its raw bytes (what cuLaunchKernel gets).
    pub fn launch_raw(
        &mut self,
        module: ModuleId,
        kernel_name: &str,
        cfg: LaunchConfig,
        args: &[Vec<u8>],
    ) -> Result<&LaunchRecord, SimError> {
        let loaded = &self.modules[module.0];
        let kernel = loaded.module.kernel(kernel_name).ok_or_else(|| {
            SimError::Launch(format!("no kernel named {kernel_name} in the module"))
        })?;
        let param_buf = pack_params(kernel, args)?;
        check_config(
            kernel,
            &cfg,
            self.dynamic_shared_limit(kernel_name, kernel.shared_static),
        )?;
        let view = LaunchView {
            kernel,
            params: &param_buf,
            globals: &loaded.globals,
            grid: cfg.grid,
            block: cfg.block,
            dynamic_shared: cfg.shared_bytes as usize,
        };
        let total = cfg.grid.iter().map(|&g| g as u64).product::<u64>();
        let ran: Vec<u64> = match self.sample_blocks {
            // One block from each of n equal strata of the grid, at a place in its stratum that
            // moves by the golden ratio from one stratum to the next: a grid whose work varies
            // with a period (the query tiles of each head) is then not sampled at one phase.
            Some(n) if n < total => (0..n)
                .map(|i| {
                    let (start, end) = (i * total / n, (i + 1) * total / n);
                    let phase = (i as f64 * 0.618_033_988_749_895).fract();
                    start + ((end - start) as f64 * phase) as u64
                })
                .collect(),
            _ => (0..total).collect(),
        };
        let mut counters = KernelCounters::default();
        for &b in &ran {
            let [gx, gy, _] = cfg.grid;
            let ctaid = [
                (b % gx as u64) as u32,
                ((b / gx as u64) % gy as u64) as u32,
                (b / (gx as u64 * gy as u64)) as u32,
            ];
            Block::new(&view, &mut self.mem, &mut counters, ctaid).run()?;
        }
        let record = LaunchRecord {
            kernel: kernel_name.to_string(),
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: kernel.shared_static + cfg.shared_bytes as usize,
            blocks_run: ran.len() as u64,
            blocks: total,
            counters: counters.scaled(ran.len() as u64, total),
        };
        if let Some(f) = self.profile.as_mut() {
            let line = serde_json::to_string(&record).expect("a record serializes");
            let _ = writeln!(f, "{line}");
        }
        self.launches.push(record);
        Ok(self.launches.last().expect("just pushed"))
    }

    /// Appends one JSON line to the profile (`DYNACT_CUDA_SIM_PROFILE`), if one is open: what
    /// the stand-in libraries record of work that is not a kernel (a GEMM, a step's totals).
    pub fn log_json(&mut self, value: &serde_json::Value) {
        if let Some(f) = self.profile.as_mut() {
            let _ = writeln!(f, "{value}");
        }
    }

    fn dynamic_shared_limit(&self, kernel: &str, static_bytes: usize) -> usize {
        self.max_dynamic_shared
            .iter()
            .find(|(k, _)| k == kernel)
            .map(|(_, b)| *b)
            .unwrap_or(SM90_LIMITS.default_shared.saturating_sub(static_bytes))
    }
}

/// The kernel's parameter buffer, refusing a wrong number or size of arguments.
fn pack_params(kernel: &crate::parse::Kernel, args: &[Vec<u8>]) -> Result<Vec<u8>, SimError> {
    let expected: Vec<usize> = kernel.params.iter().map(|p| p.size).collect();
    let got: Vec<usize> = args.iter().map(Vec::len).collect();
    if expected != got {
        return Err(SimError::Launch(format!(
            "kernel {} takes {} parameters of {:?} bytes, the launch passed {} of {:?} bytes",
            kernel.name,
            expected.len(),
            expected,
            got.len(),
            got
        )));
    }
    let mut buf = vec![0u8; kernel.param_bytes];
    for (p, a) in kernel.params.iter().zip(args) {
        buf[p.offset..p.offset + p.size].copy_from_slice(a);
    }
    Ok(buf)
}

fn check_config(
    kernel: &crate::parse::Kernel,
    cfg: &LaunchConfig,
    dynamic_limit: usize,
) -> Result<(), SimError> {
    let l = &SM90_LIMITS;
    let refuse = |what: String| Err(SimError::Launch(format!("kernel {}: {what}", kernel.name)));
    for d in 0..3 {
        if cfg.block[d] == 0 || cfg.grid[d] == 0 {
            return refuse(format!(
                "grid {:?} x block {:?} has an empty dimension",
                cfg.grid, cfg.block
            ));
        }
        if cfg.block[d] > l.max_block[d] {
            return refuse(format!(
                "block {:?} is over sm_90's {:?}",
                cfg.block, l.max_block
            ));
        }
        if cfg.grid[d] > l.max_grid[d] {
            return refuse(format!(
                "grid {:?} is over sm_90's {:?}",
                cfg.grid, l.max_grid
            ));
        }
    }
    let threads: u32 = cfg.block.iter().product();
    let max = kernel
        .max_threads
        .unwrap_or(l.max_threads_per_block)
        .min(l.max_threads_per_block);
    if threads > max {
        return refuse(format!(
            "{threads} threads per block is over the limit of {max}"
        ));
    }
    if cfg.shared_bytes as usize > dynamic_limit {
        return refuse(format!(
            "{} bytes of dynamic shared memory is over the {dynamic_limit} allowed",
            cfg.shared_bytes
        ));
    }
    Ok(())
}

fn as_bytes<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: T is Copy plain data; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}
