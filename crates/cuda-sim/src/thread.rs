//! One thread's share of an instruction: operands read and written, addresses resolved to
//! their state space and checked, loads, stores and atomics, and every non-collective opcode.

use crate::alu::*;
use crate::exec::{Block, Flow};
use crate::inst::*;
use crate::memory::{window, Window, LOCAL_WINDOW, SHARED_WINDOW};
use crate::SimError;

impl Block<'_> {
    pub(crate) fn reg(&self, t: usize, r: u32) -> u64 {
        self.regs[t * self.nregs + r as usize]
    }

    /// A source part of a vector operand: its register, its constant, or 0 for the sink.
    fn part(&self, t: usize, part: Part) -> u64 {
        match part {
            Part::Reg(r) => self.reg(t, r),
            Part::Imm(v) => v,
            Part::Sink => 0,
        }
    }

    pub(crate) fn set_reg(&mut self, t: usize, r: u32, ty: Ty, v: u64) {
        self.regs[t * self.nregs + r as usize] = mask(v, ty);
    }

    /// Writes a destination operand (a register, or `_`).
    pub(crate) fn set(
        &mut self,
        t: usize,
        op: &Operand,
        ty: Ty,
        v: u64,
        pc: u32,
    ) -> Result<(), SimError> {
        match op {
            Operand::Reg(r) => {
                self.set_reg(t, *r, ty, v);
                Ok(())
            }
            Operand::Sink => Ok(()),
            Operand::PredPair(Some(r), _) => {
                self.set_reg(t, *r, ty, v);
                Ok(())
            }
            _ => Err(self.error(t, pc, "a destination that is not a register".into())),
        }
    }

    /// Reads a source operand as `ty`'s raw bits.
    pub(crate) fn get(&self, t: usize, op: &Operand, ty: Ty, pc: u32) -> Result<u64, SimError> {
        Ok(match op {
            Operand::Reg(r) => mask(self.reg(t, *r), ty),
            Operand::NotReg(r) => (self.reg(t, *r) == 0) as u64,
            Operand::Imm(v) => {
                // An f32 immediate used as f64 never comes from nvcc; an integer keeps its bits.
                mask(*v, ty)
            }
            Operand::Special(s) => self.special(t, *s),
            Operand::Symbol(s) => self.symbol_address(*s),
            _ => return Err(self.error(t, pc, "a source operand that is not a value".into())),
        })
    }

    fn special(&self, t: usize, s: Special) -> u64 {
        let tid = self.tid(t);
        let lane = (t % 32) as u64;
        (match s {
            Special::Tid(d) => tid[d as usize],
            Special::Ntid(d) => self.view.block[d as usize],
            Special::Ctaid(d) => self.ctaid[d as usize],
            Special::Nctaid(d) => self.view.grid[d as usize],
            Special::LaneId => lane as u32,
            Special::WarpId => (t / 32) as u32,
            Special::NWarpId => 64,
            Special::SmId => 0,
            Special::LanemaskLt => ((1u64 << lane) - 1) as u32,
            Special::LanemaskLe => ((1u64 << (lane + 1)) - 1) as u32,
            Special::LanemaskEq => 1u32 << lane,
            Special::LanemaskGe => !(((1u64 << lane) - 1) as u32),
            Special::LanemaskGt => !(((1u64 << (lane + 1)) - 1) as u32),
            Special::Clock | Special::Clock64 => self.counters.warp_instructions as u32,
        }) as u64
    }

    /// A variable's address in its own state space (a device address for module variables).
    fn symbol_address(&self, s: u32) -> u64 {
        match self.view.kernel.symbols[s as usize].1 {
            SymbolKind::Param { offset }
            | SymbolKind::Shared { offset }
            | SymbolKind::Local { offset } => offset as u64,
            SymbolKind::Global { index } => self.view.globals[index],
        }
    }

    /// The address an `[...]` operand names.
    fn address(&self, t: usize, op: &Operand, pc: u32) -> Result<u64, SimError> {
        match op {
            Operand::Addr { base, offset } => {
                let b = match base {
                    AddrBase::Reg(r) => self.reg(t, *r),
                    AddrBase::Symbol(s) => self.symbol_address(*s),
                    AddrBase::Absolute => 0,
                };
                Ok(b.wrapping_add(*offset as u64))
            }
            _ => Err(self.error(t, pc, "a memory operand that is not [address]".into())),
        }
    }

    /// Resolves an access to its state space, generic addresses by their window.
    fn resolve(&self, space: Space, addr: u64) -> (Space, u64) {
        match space {
            Space::Generic => match window(addr) {
                Window::Global(a) => (Space::Global, a),
                Window::Shared(a) => (Space::Shared, a),
                Window::Local(a) => (Space::Local, a),
            },
            Space::Const => (Space::Global, addr),
            s => (s, addr),
        }
    }

    fn load(
        &mut self,
        t: usize,
        pc: u32,
        space: Space,
        addr: u64,
        out: &mut [u8],
    ) -> Result<(), SimError> {
        let (space, a) = self.resolve(space, addr);
        let len = out.len() as u64;
        if a % len.min(16) != 0 && space != Space::Param {
            return Err(self.error(t, pc, format!("misaligned {len}-byte read at {addr:#x}")));
        }
        match space {
            Space::Global => {
                if let Err(fault) = self.mem.read(a, out) {
                    return Err(self.error(
                        t,
                        pc,
                        format!("read of {len} bytes at {a:#x} {fault}"),
                    ));
                }
                self.record_sectors(a, len, false);
            }
            Space::Shared => {
                let range = self.in_range(t, pc, a, len, self.shared.len(), "shared")?;
                out.copy_from_slice(&self.shared[range]);
                self.counters.shared_accesses += 1;
            }
            Space::Local => {
                let lb = self.view.kernel.local_bytes;
                let range = self.in_range(t, pc, a, len, lb, "local")?;
                out.copy_from_slice(&self.local[t * lb + range.start..t * lb + range.end]);
            }
            Space::Param => {
                let params = self.view.params;
                let range = self.in_range(t, pc, a, len, params.len(), "parameter")?;
                out.copy_from_slice(&params[range]);
            }
            Space::Generic | Space::Const => unreachable!("resolved above"),
        }
        Ok(())
    }

    fn store(
        &mut self,
        t: usize,
        pc: u32,
        space: Space,
        addr: u64,
        bytes: &[u8],
    ) -> Result<(), SimError> {
        let (space, a) = self.resolve(space, addr);
        let len = bytes.len() as u64;
        if a % len.min(16) != 0 {
            return Err(self.error(t, pc, format!("misaligned {len}-byte write at {addr:#x}")));
        }
        match space {
            Space::Global => {
                if let Err(fault) = self.mem.write(a, bytes) {
                    return Err(self.error(
                        t,
                        pc,
                        format!("write of {len} bytes at {a:#x} {fault}"),
                    ));
                }
                self.record_sectors(a, len, true);
            }
            Space::Shared => {
                let range = self.in_range(t, pc, a, len, self.shared.len(), "shared")?;
                self.shared[range].copy_from_slice(bytes);
                self.counters.shared_accesses += 1;
            }
            Space::Local => {
                let lb = self.view.kernel.local_bytes;
                let range = self.in_range(t, pc, a, len, lb, "local")?;
                self.local[t * lb + range.start..t * lb + range.end].copy_from_slice(bytes);
            }
            _ => return Err(self.error(t, pc, "a store to a read-only state space".into())),
        }
        Ok(())
    }

    fn in_range(
        &self,
        t: usize,
        pc: u32,
        a: u64,
        len: u64,
        size: usize,
        what: &str,
    ) -> Result<std::ops::Range<usize>, SimError> {
        if a + len > size as u64 {
            return Err(self.error(
                t,
                pc,
                format!(
                    "access of {len} bytes at offset {a} of {what} memory, which has {size} bytes"
                ),
            ));
        }
        Ok(a as usize..(a + len) as usize)
    }

    fn record_sectors(&mut self, a: u64, len: u64, write: bool) {
        for s in a / 32..=(a + len - 1) / 32 {
            // The bytes of sector s in [a, a + len), as bits 0..32.
            let (from, to) = (a.max(s * 32) - s * 32, (a + len).min(s * 32 + 32) - s * 32);
            let bytes = (((1u64 << to) - 1) & !((1u64 << from) - 1)) as u32;
            self.sectors.push((s, write, bytes));
        }
    }

    /// Executes `inst` for thread `t`.
    pub(crate) fn step(&mut self, inst: &Inst, t: usize, pc: u32) -> Result<Flow, SimError> {
        let ops = &inst.operands;
        let ty = inst.ty;
        let value = match inst.op {
            Op::Bra => {
                return match ops.first() {
                    Some(Operand::Label(l)) => Ok(Flow::Jump(*l)),
                    _ => Err(self.error(t, pc, "an indirect branch".into())),
                }
            }
            Op::Ret | Op::Exit => return Ok(Flow::Exit),
            Op::Membar => return Ok(Flow::Next),
            Op::AssertFail => return Err(self.assertion(inst, t, pc)),
            Op::Unsupported => {
                return Err(self.error(
                    t,
                    pc,
                    "an instruction the simulator does not implement".into(),
                ))
            }
            Op::Ld => {
                let addr = self.address(t, &ops[1], pc)?;
                let size = ty.bytes();
                let mut buf = [0u8; 64];
                let total = size * inst.vec as usize;
                self.load(t, pc, inst.space, addr, &mut buf[..total])?;
                let one = |r: Option<u32>, k: usize, b: &mut Self| {
                    if let Some(r) = r {
                        let mut v = [0u8; 8];
                        v[..size.min(8)].copy_from_slice(&buf[k * size..k * size + size.min(8)]);
                        // Raw: a signed narrow load stays sign-extended for wider reads.
                        b.regs[t * b.nregs + r as usize] = extend(u64::from_le_bytes(v), ty);
                    }
                };
                match &ops[0] {
                    Operand::Vector(parts) => {
                        for (k, part) in parts.iter().enumerate() {
                            one(part.dest(), k, self);
                        }
                    }
                    Operand::Reg(r) => one(Some(*r), 0, self),
                    _ => {}
                }
                return Ok(Flow::Next);
            }
            Op::St => {
                let addr = self.address(t, &ops[0], pc)?;
                let size = ty.bytes();
                let mut buf = [0u8; 64];
                let total = size * inst.vec as usize;
                match &ops[1] {
                    Operand::Vector(parts) => {
                        for (k, part) in parts.iter().enumerate() {
                            let v = self.part(t, *part);
                            buf[k * size..(k + 1) * size].copy_from_slice(&v.to_le_bytes()[..size]);
                        }
                    }
                    op => {
                        buf[..size].copy_from_slice(&self.get(t, op, ty, pc)?.to_le_bytes()[..size])
                    }
                }
                self.store(t, pc, inst.space, addr, &buf[..total])?;
                return Ok(Flow::Next);
            }
            Op::Atom(a) | Op::Red(a) => {
                let (addr_at, value_at) = if matches!(inst.op, Op::Atom(_)) {
                    (1, 2)
                } else {
                    (0, 1)
                };
                let addr = self.address(t, &ops[addr_at], pc)?;
                let size = ty.bytes();
                let mut old = [0u8; 8];
                let space = if inst.space == Space::Generic {
                    Space::Generic
                } else {
                    inst.space
                };
                self.load(t, pc, space, addr, &mut old[..size])?;
                let old = u64::from_le_bytes(old);
                let b = self.operand(t, inst, value_at, pc)?;
                let new = match a {
                    AtomOp::Cas => {
                        if old == b {
                            self.operand(t, inst, value_at + 1, pc)?
                        } else {
                            old
                        }
                    }
                    AtomOp::Exch => b,
                    AtomOp::Inc => {
                        if old >= b {
                            0
                        } else {
                            old + 1
                        }
                    }
                    AtomOp::Dec => {
                        if old == 0 || old > b {
                            b
                        } else {
                            old - 1
                        }
                    }
                    AtomOp::Add | AtomOp::Min | AtomOp::Max => {
                        let op = match a {
                            AtomOp::Add => Op::Add,
                            AtomOp::Min => Op::Min,
                            _ => Op::Max,
                        };
                        arith(op, ty, old, b, inst).ok_or_else(|| {
                            self.error(t, pc, "an atomic on a type it does not take".into())
                        })?
                    }
                    AtomOp::And => old & b,
                    AtomOp::Or => old | b,
                    AtomOp::Xor => old ^ b,
                };
                self.store(t, pc, space, addr, &mask(new, ty).to_le_bytes()[..size])?;
                self.counters.atomics += 1;
                if matches!(inst.op, Op::Atom(_)) {
                    self.set(t, &ops[0], ty, old, pc)?;
                }
                return Ok(Flow::Next);
            }
            Op::Mov => match (&ops[0], &ops[1]) {
                // Pack: mov.b64 %rd1, {%r1, %r2} (the first is the low part).
                (dst, Operand::Vector(parts)) => {
                    let w = ty.bits() / parts.len() as u32;
                    let mut v = 0u64;
                    for (k, part) in parts.iter().enumerate() {
                        v |= (self.part(t, *part) & low_bits(w)) << (w * k as u32);
                    }
                    self.set(t, dst, ty, v, pc)?;
                    return Ok(Flow::Next);
                }
                // Unpack: mov.b64 {%r1, %r2}, %rd1.
                (Operand::Vector(parts), s) => {
                    let v = self.get(t, s, ty, pc)?;
                    let w = ty.bits() / parts.len() as u32;
                    for (k, part) in parts.iter().enumerate() {
                        if let Some(r) = part.dest() {
                            self.regs[t * self.nregs + r as usize] =
                                (v >> (w * k as u32)) & low_bits(w);
                        }
                    }
                    return Ok(Flow::Next);
                }
                (_, s) => self.get(t, s, ty, pc)?,
            },
            Op::Cvta { to, space } => {
                let a = self.operand(t, inst, 1, pc)?;
                let (window_base, size) = match space {
                    Space::Shared => (SHARED_WINDOW, self.shared.len() as u64),
                    Space::Local => (LOCAL_WINDOW, self.view.kernel.local_bytes as u64),
                    _ => (0, u64::MAX),
                };
                if to {
                    // A generic address that is not in the space is a bug the GPU would not catch.
                    if window_base != 0
                        && !(window_base..window_base.saturating_add(size.max(1))).contains(&a)
                    {
                        return Err(self.error(
                            t,
                            pc,
                            format!("cvta.to of {a:#x}, not an address of that space"),
                        ));
                    }
                    a - window_base
                } else {
                    a + window_base
                }
            }
            Op::Setp { cmp, combine } => {
                let r = compare(
                    cmp,
                    ty,
                    self.operand(t, inst, 1, pc)?,
                    self.operand(t, inst, 2, pc)?,
                );
                let c = match ops.get(3) {
                    Some(op) => self.get(t, op, Ty::Pred, pc)? != 0,
                    None => true,
                };
                let combined = |x: bool| match combine {
                    None => x,
                    Some(BoolOp::And) => x && c,
                    Some(BoolOp::Or) => x || c,
                    Some(BoolOp::Xor) => x ^ c,
                };
                match &ops[0] {
                    Operand::PredPair(p, q) => {
                        if let Some(p) = p {
                            self.set_reg(t, *p, Ty::Pred, combined(r) as u64);
                        }
                        if let Some(q) = q {
                            self.set_reg(t, *q, Ty::Pred, combined(!r) as u64);
                        }
                    }
                    op => self.set(t, op, Ty::Pred, combined(r) as u64, pc)?,
                }
                return Ok(Flow::Next);
            }
            Op::Set { cmp } => {
                let (a, b) = (&ops[1], &ops[2]);
                let r = compare(
                    cmp,
                    inst.ty2,
                    self.get(t, a, inst.ty2, pc)?,
                    self.get(t, b, inst.ty2, pc)?,
                );
                let v = match (r, inst.ty) {
                    (false, _) => 0,
                    (true, Ty::F32) => 1f32.to_bits() as u64,
                    (true, _) => u64::MAX,
                };
                self.set(t, &ops[0], ty, v, pc)?;
                return Ok(Flow::Next);
            }
            Op::Selp => {
                let c = self.get(t, &ops[3], Ty::Pred, pc)? != 0;
                if c {
                    self.operand(t, inst, 1, pc)?
                } else {
                    self.operand(t, inst, 2, pc)?
                }
            }
            Op::Cvt => {
                let v = self.get(t, &ops[1], inst.ty2, pc)?;
                convert(inst, v).ok_or_else(|| {
                    self.error(
                        t,
                        pc,
                        "a conversion the simulator does not implement".into(),
                    )
                })?
            }
            Op::Mad | Op::Fma | Op::Bfe | Op::Lop3 | Op::Prmt | Op::Shf { .. } => {
                let c = if matches!(inst.op, Op::Mad) && inst.wide {
                    self.get(t, &ops[3], wide_ty(ty), pc)?
                } else {
                    self.operand(t, inst, 3, pc)?
                };
                let extra = if inst.op == Op::Lop3 {
                    self.operand(t, inst, 4, pc)?
                } else {
                    0
                };
                ternary(
                    inst,
                    self.operand(t, inst, 1, pc)?,
                    self.operand(t, inst, 2, pc)?,
                    c,
                    extra,
                )
                .ok_or_else(|| {
                    self.error(
                        t,
                        pc,
                        "an operation the simulator does not implement for this type".into(),
                    )
                })?
            }
            Op::Bfi => {
                let (f, b, pos, len) = (
                    self.operand(t, inst, 1, pc)?,
                    self.operand(t, inst, 2, pc)?,
                    self.operand(t, inst, 3, pc)?,
                    self.operand(t, inst, 4, pc)?,
                );
                let (pos, len) = (pos & 0xff, len & 0xff);
                let bits = ty.bits() as u64;
                if len == 0 || pos >= bits {
                    b
                } else {
                    let len = len.min(bits - pos);
                    let m = low_bits(len as u32) << pos;
                    (b & !m) | ((f << pos) & m)
                }
            }
            _ => {
                let a = self.operand(t, inst, 1, pc)?;
                let b = if ops.len() > 2 {
                    self.operand(t, inst, 2, pc)?
                } else {
                    0
                };
                arith(inst.op, ty, a, b, inst).ok_or_else(|| {
                    self.error(
                        t,
                        pc,
                        "an operation the simulator does not implement for this type".into(),
                    )
                })?
            }
        };
        let dst_ty = if inst.wide { wide_ty(ty) } else { ty };
        let dst_ty = if inst.op == Op::Cvt { ty } else { dst_ty };
        self.set(t, &ops[0], dst_ty, value, pc)?;
        Ok(Flow::Next)
    }

    /// Source operand `k` of `inst` as the instruction's type.
    fn operand(&self, t: usize, inst: &Inst, k: usize, pc: u32) -> Result<u64, SimError> {
        let op = inst
            .operands
            .get(k)
            .ok_or_else(|| self.error(t, pc, format!("operand {k} is missing")))?;
        self.get(t, op, inst.ty, pc)
    }

    /// The error of a device-side `assert()`: its message, file, line and function, read from
    /// the call's arguments (pointers to strings in global memory, and the line).
    fn assertion(&mut self, inst: &Inst, t: usize, pc: u32) -> SimError {
        let arg = |b: &mut Self, k: usize, len: usize| -> u64 {
            let Some(Operand::Symbol(s)) = inst.operands.get(k) else {
                return 0;
            };
            let mut buf = [0u8; 8];
            let at = b.symbol_address(*s);
            let _ = b.load(t, pc, Space::Local, at, &mut buf[..len]);
            u64::from_le_bytes(buf)
        };
        let text = |b: &mut Self, ptr: u64| -> String {
            let mut bytes = Vec::new();
            for i in 0..512 {
                let mut c = [0u8];
                if b.mem.read(ptr + i, &mut c).is_err() || c[0] == 0 {
                    break;
                }
                bytes.push(c[0]);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let (message, file, line, function) = (
            arg(self, 0, 8),
            arg(self, 1, 8),
            arg(self, 2, 4),
            arg(self, 3, 8),
        );
        let (message, file, function) =
            (text(self, message), text(self, file), text(self, function));
        self.error(
            t,
            pc,
            format!("device-side assertion `{message}` failed ({file}:{line}, {function})"),
        )
    }
}
