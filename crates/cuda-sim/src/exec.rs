//! Runs one block of a launch.
//!
//! Each warp steps in lockstep: the lanes at the lowest program counter among its running
//! lanes execute the instruction there, the others wait. Branches diverge lanes to different
//! counters and the lowest-first rule reconverges them where the paths meet (and keeps a loop's
//! lanes together), so one step is one warp instruction, as a GPU issues it, and a step's
//! memory accesses are one warp-level access for the sector counters. Lanes stop at `bar.sync`
//! until every running thread of the block is there; `shfl.sync` and `vote.sync` exchange
//! values among the lanes of one step and require every lane of their member mask to be there.

use crate::inst::*;
use crate::memory::GlobalMemory;
use crate::parse::Kernel;
use crate::profile::KernelCounters;
use crate::SimError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    /// At a `shfl.sync` or `vote.sync` whose member mask names lanes not there yet.
    AtWarpSync,
    AtBarrier,
    Exited,
}

/// What one thread does after an instruction.
pub(crate) enum Flow {
    Next,
    Jump(u32),
    Exit,
}

/// The launch-wide facts a block needs.
pub(crate) struct LaunchView<'a> {
    pub kernel: &'a Kernel,
    pub params: &'a [u8],
    /// Device addresses of the module's variables, by index.
    pub globals: &'a [u64],
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: usize,
}

pub(crate) struct Block<'a> {
    pub(crate) view: &'a LaunchView<'a>,
    pub(crate) mem: &'a mut GlobalMemory,
    pub(crate) counters: &'a mut KernelCounters,
    pub(crate) ctaid: [u32; 3],
    pub(crate) threads: usize,
    pub(crate) nregs: usize,
    pub(crate) regs: Vec<u64>,
    pub(crate) pcs: Vec<u32>,
    pub(crate) status: Vec<Status>,
    pub(crate) shared: Vec<u8>,
    pub(crate) local: Vec<u8>,
    /// Sectors touched by the current warp step: (sector, is_write, the bytes of it the lane
    /// accessed as a bit mask).
    pub(crate) sectors: Vec<(u64, bool, u32)>,
    /// Instructions each warp has issued: the longest is the launch's serial chain.
    pub(crate) issued: Vec<u64>,
}

impl<'a> Block<'a> {
    pub fn new(
        view: &'a LaunchView<'a>,
        mem: &'a mut GlobalMemory,
        counters: &'a mut KernelCounters,
        ctaid: [u32; 3],
    ) -> Self {
        let threads = (view.block[0] * view.block[1] * view.block[2]) as usize;
        let nregs = view.kernel.regs as usize;
        let shared = view
            .kernel
            .shared_dynamic_offset
            .max(view.kernel.shared_static)
            + view.dynamic_shared;
        Block {
            view,
            mem,
            counters,
            ctaid,
            threads,
            nregs,
            regs: vec![0; threads * nregs],
            pcs: vec![0; threads],
            status: vec![Status::Running; threads],
            shared: vec![0; shared],
            local: vec![0; threads * view.kernel.local_bytes],
            sectors: Vec::new(),
            issued: vec![0; threads.div_ceil(32)],
        }
    }

    pub fn run(&mut self) -> Result<(), SimError> {
        let warps = self.threads.div_ceil(32);
        loop {
            for w in 0..warps {
                self.run_warp(w)?;
            }
            let waiting: Vec<usize> = (0..self.threads)
                .filter(|&t| self.status[t] == Status::AtBarrier)
                .collect();
            let Some(&first) = waiting.first() else {
                let longest = self.issued.iter().copied().max().unwrap_or(0);
                self.counters.longest_warp = self.counters.longest_warp.max(longest);
                return Ok(());
            };
            let pc = self.pcs[first];
            if let Some(&other) = waiting.iter().find(|&&t| self.pcs[t] != pc) {
                return Err(self.error(
                    other,
                    self.pcs[other],
                    format!(
                        "waits at a different bar.sync than thread {:?} (line {}): a barrier in divergent code",
                        self.tid(first),
                        self.view.kernel.insts[pc as usize].line
                    ),
                ));
            }
            for t in waiting {
                self.status[t] = Status::Running;
                self.pcs[t] += 1;
            }
        }
    }

    pub(crate) fn tid(&self, t: usize) -> [u32; 3] {
        let [bx, by, _] = self.view.block;
        let t = t as u32;
        [t % bx, (t / bx) % by, t / (bx * by)]
    }

    pub(crate) fn error(&self, t: usize, pc: u32, what: String) -> SimError {
        let k = self.view.kernel;
        let (line, text) = k
            .insts
            .get(pc as usize)
            .map(|i| (i.line, i.text.as_str()))
            .unwrap_or((0, "<end of kernel>"));
        SimError::Kernel(format!(
            "kernel {}: thread {:?} of block {:?}: {what} [PTX line {line}: {text}]",
            k.name,
            self.tid(t),
            self.ctaid
        ))
    }

    /// Runs warp `w` until all its threads have exited or wait at a barrier.
    fn run_warp(&mut self, w: usize) -> Result<(), SimError> {
        let lanes = w * 32..((w + 1) * 32).min(self.threads);
        let view = self.view;
        let insts = &view.kernel.insts;
        loop {
            // The running lanes at the lowest counter; when none runs, the lanes waiting at a
            // warp-synchronous instruction (the lowest first), which then must all be there.
            let (pc, waiting) = match self.lowest_pc(lanes.clone(), Status::Running) {
                Some(pc) => (pc, false),
                None => match self.lowest_pc(lanes.clone(), Status::AtWarpSync) {
                    Some(pc) => (pc, true),
                    None => return Ok(()),
                },
            };
            let state = if waiting {
                Status::AtWarpSync
            } else {
                Status::Running
            };
            let group: Vec<usize> = lanes
                .clone()
                .filter(|&t| self.status[t] == state && self.pcs[t] == pc)
                .collect();
            let is_warp_sync = matches!(
                insts.get(pc as usize).map(|i| i.op),
                Some(Op::Shfl(_) | Op::Vote(_))
            );
            if is_warp_sync && !waiting && !self.members_here(&insts[pc as usize], pc, &group)? {
                // Independent thread scheduling: these lanes wait for the rest of the mask.
                for &t in &group {
                    self.status[t] = Status::AtWarpSync;
                }
                continue;
            }
            if waiting {
                for &t in &group {
                    self.status[t] = Status::Running;
                }
            }
            let Some(inst) = insts.get(pc as usize) else {
                return Err(self.error(group[0], pc, "ran past the last instruction".into()));
            };
            self.counters.warp_instructions += 1;
            self.issued[w] += 1;
            self.counters.thread_instructions += group.len() as u64;
            // Lanes whose guard is false skip the instruction.
            let mut active = Vec::with_capacity(group.len());
            for &t in &group {
                let on = match inst.guard {
                    None => true,
                    Some((p, negated)) => (self.regs[t * self.nregs + p as usize] != 0) != negated,
                };
                if on {
                    active.push(t);
                } else {
                    self.pcs[t] += 1;
                }
            }
            if active.is_empty() {
                continue;
            }
            match inst.op {
                Op::BarSync => {
                    for &t in &active {
                        self.status[t] = Status::AtBarrier;
                    }
                }
                Op::Shfl(mode) => self.shfl(inst, pc, mode, w, &active)?,
                Op::Vote(mode) => self.vote(inst, pc, mode, w, &active)?,
                Op::Activemask => {
                    let mask = lane_mask(&active);
                    for &t in &active {
                        self.set(t, &inst.operands[0], Ty::B32, mask as u64, pc)?;
                        self.pcs[t] += 1;
                    }
                }
                _ => {
                    self.sectors.clear();
                    let before = self.counters.shared_accesses;
                    for &t in &active {
                        match self.step(inst, t, pc)? {
                            Flow::Next => self.pcs[t] += 1,
                            Flow::Jump(to) => self.pcs[t] = to,
                            Flow::Exit => self.status[t] = Status::Exited,
                        }
                    }
                    self.count_warp_access(inst, before);
                }
            }
        }
    }

    /// The lowest program counter among `lanes` in `status`.
    fn lowest_pc(&self, lanes: std::ops::Range<usize>, status: Status) -> Option<u32> {
        lanes
            .filter(|&t| self.status[t] == status)
            .map(|t| self.pcs[t])
            .min()
    }

    /// Whether every lane named by the member mask of `inst` (a `.sync` instruction) is in
    /// `group`; lanes the mask names that have exited or wait at a barrier never will be.
    fn members_here(&self, inst: &Inst, pc: u32, group: &[usize]) -> Result<bool, SimError> {
        let at = match inst.op {
            Op::Shfl(_) => 4,
            _ => 2,
        };
        let here = lane_mask(group);
        let mut members = 0u32;
        for &t in group {
            members |= self.get(t, &inst.operands[at], Ty::B32, pc)? as u32;
        }
        Ok(members & !here == 0)
    }

    /// Turns the lanes' accesses of one step into warp-level counts: distinct 32-byte sectors.
    fn count_warp_access(&mut self, inst: &Inst, shared_before: u64) {
        if self.counters.shared_accesses > shared_before {
            // One warp-level shared access, however many lanes made it.
            self.counters.shared_accesses = shared_before + 1;
        }
        if self.sectors.is_empty() {
            return;
        }
        self.sectors.sort_unstable();
        // Merge the lanes' byte masks of each (sector, direction): a byte many lanes read (a
        // broadcast) is one byte of the sector used.
        let mut merged: Vec<(u64, bool, u32)> = Vec::with_capacity(self.sectors.len());
        for &(sector, write, bytes) in &self.sectors {
            match merged.last_mut() {
                Some(last) if (last.0, last.1) == (sector, write) => last.2 |= bytes,
                _ => merged.push((sector, write, bytes)),
            }
        }
        for (_, write, bytes) in merged {
            let used = bytes.count_ones() as u64;
            if write {
                self.counters.sectors_written += 1;
                self.counters.bytes_written += used;
            } else {
                self.counters.sectors_read += 1;
                self.counters.bytes_read += used;
            }
        }
        match inst.op {
            Op::St => self.counters.global_stores += 1,
            Op::Atom(_) | Op::Red(_) => {}
            _ => self.counters.global_loads += 1,
        }
    }

    /// `shfl.sync.MODE.b32 d[|p], a, b, c, membermask`.
    fn shfl(
        &mut self,
        inst: &Inst,
        pc: u32,
        mode: ShflMode,
        w: usize,
        lanes: &[usize],
    ) -> Result<(), SimError> {
        self.check_members(inst, pc, w, lanes, 4)?;
        let base = w * 32;
        let here = lane_mask(lanes);
        let mut results = Vec::with_capacity(lanes.len());
        for &t in lanes {
            let lane = (t - base) as u32;
            let b = self.get(t, &inst.operands[2], Ty::B32, pc)? as u32 & 31;
            let c = self.get(t, &inst.operands[3], Ty::B32, pc)? as u32;
            let (cval, segmask) = (c & 31, (c >> 8) & 31);
            let max_lane = (lane & segmask) | (cval & !segmask);
            let min_lane = lane & segmask;
            let (j, ok) = match mode {
                ShflMode::Up => (lane.wrapping_sub(b), lane >= b && lane - b >= min_lane),
                ShflMode::Down => (lane + b, lane + b <= max_lane),
                ShflMode::Bfly => (lane ^ b, (lane ^ b) <= max_lane),
                ShflMode::Idx => (
                    min_lane | (b & !segmask),
                    (min_lane | (b & !segmask)) <= max_lane,
                ),
            };
            let j = if ok { j } else { lane };
            if here & (1 << j) == 0 {
                return Err(self.error(
                    t,
                    pc,
                    format!("shfl.sync reads lane {j}, which is not executing it"),
                ));
            }
            let v = self.get(base + j as usize, &inst.operands[1], Ty::B32, pc)?;
            results.push((t, v, ok));
        }
        for (t, v, ok) in results {
            match &inst.operands[0] {
                Operand::PredPair(d, p) => {
                    if let Some(d) = d {
                        self.set_reg(t, *d, Ty::B32, v);
                    }
                    if let Some(p) = p {
                        self.set_reg(t, *p, Ty::Pred, ok as u64);
                    }
                }
                op => self.set(t, op, Ty::B32, v, pc)?,
            }
            self.pcs[t] += 1;
        }
        Ok(())
    }

    /// `vote.sync.MODE d, {!}p, membermask`.
    fn vote(
        &mut self,
        inst: &Inst,
        pc: u32,
        mode: VoteMode,
        w: usize,
        lanes: &[usize],
    ) -> Result<(), SimError> {
        self.check_members(inst, pc, w, lanes, 2)?;
        let mut ballot = 0u32;
        for &t in lanes {
            if self.get(t, &inst.operands[1], Ty::Pred, pc)? != 0 {
                ballot |= 1 << (t - w * 32);
            }
        }
        let here = lane_mask(lanes);
        let v = match mode {
            VoteMode::Ballot => ballot as u64,
            VoteMode::All => (ballot == here) as u64,
            VoteMode::Any => (ballot != 0) as u64,
            VoteMode::Uni => (ballot == 0 || ballot == here) as u64,
        };
        let ty = if mode == VoteMode::Ballot {
            Ty::B32
        } else {
            Ty::Pred
        };
        for &t in lanes {
            self.set(t, &inst.operands[0], ty, v, pc)?;
            self.pcs[t] += 1;
        }
        Ok(())
    }

    /// Every lane named by the member mask must execute this step, and each lane must be in it.
    fn check_members(
        &self,
        inst: &Inst,
        pc: u32,
        w: usize,
        lanes: &[usize],
        at: usize,
    ) -> Result<(), SimError> {
        let here = lane_mask(lanes);
        for &t in lanes {
            let members = self.get(t, &inst.operands[at], Ty::B32, pc)? as u32;
            if members & (1 << (t - w * 32)) == 0 {
                return Err(self.error(
                    t,
                    pc,
                    format!(
                        "executes a .sync with member mask {members:#010x}, which leaves it out"
                    ),
                ));
            }
            if members & !here != 0 {
                return Err(self.error(
                    t,
                    pc,
                    format!(
                        "member mask {members:#010x} names lanes {:#010x} that are not here (diverged or exited)",
                        members & !here
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn lane_mask(lanes: &[usize]) -> u32 {
    lanes.iter().fold(0u32, |m, &t| m | 1 << (t % 32))
}
