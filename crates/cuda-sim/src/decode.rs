//! Decodes one PTX statement (`@%p1 ld.global.nc.v4.f32 {%f1, ...}, [%rd2+16];`) into an
//! [`Inst`]. Modifiers that do not change what one thread computes (cache hints, memory-order
//! scopes, `.sync`, `.aligned`) are accepted and dropped.

use std::collections::HashMap;

use crate::inst::*;
use crate::lex::{parse_error, parse_immediate};
use crate::SimError;

/// What the decoder needs to resolve names: registers, symbols and labels.
pub(crate) struct Names<'a> {
    pub regs: &'a HashMap<String, u32>,
    pub symbols: &'a [(String, SymbolKind)],
    pub labels: &'a HashMap<String, u32>,
}

pub(crate) fn decode(statement: &str, line: u32, names: &Names) -> Result<Inst, SimError> {
    let mut rest = statement.trim();
    let mut guard = None;
    if let Some(g) = rest.strip_prefix('@') {
        let (pred, tail) = g.split_once(char::is_whitespace).unwrap_or((g, ""));
        let (negated, reg) = match pred.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, pred),
        };
        let reg = names.regs.get(reg).copied().ok_or_else(|| {
            parse_error(line, statement, "a guard predicate that is not declared")
        })?;
        guard = Some((reg, negated));
        rest = tail.trim();
    }
    let (opcode, operand_text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let mut parts = opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mods: Vec<&str> = parts.collect();

    let mut inst = Inst {
        guard,
        op: Op::Unsupported,
        ty: Ty::B32,
        ty2: Ty::B32,
        round: Round::Nearest,
        round_int: false,
        ftz: false,
        sat: false,
        hi: false,
        wide: false,
        space: Space::Generic,
        vec: 1,
        operands: Vec::new(),
        line,
        text: statement.to_string(),
    };
    let mut tys = Vec::new();
    let mut cmp = None;
    let mut combine = None;
    let mut shfl = None;
    let mut vote = None;
    let mut atom = None;
    let mut to = false;
    let mut left = false;
    let mut wrap = false;
    for m in &mods {
        // `shared::cta`, `L2::evict_last`: the part before `::` decides.
        let m = m.split("::").next().unwrap_or(m);
        if let Some(t) = Ty::parse(m) {
            tys.push(t);
            continue;
        }
        match m {
            "rn" => inst.round = Round::Nearest,
            "rm" => inst.round = Round::Down,
            "rp" => inst.round = Round::Up,
            "rz" => inst.round = Round::Zero,
            "rni" | "rmi" | "rpi" | "rzi" => {
                inst.round_int = true;
                inst.round = match m {
                    "rni" => Round::Nearest,
                    "rmi" => Round::Down,
                    "rpi" => Round::Up,
                    _ => Round::Zero,
                };
            }
            "ftz" => inst.ftz = true,
            "sat" | "satfinite" => inst.sat = true,
            "hi" => inst.hi = true,
            "wide" => inst.wide = true,
            "global" => inst.space = Space::Global,
            "shared" => inst.space = Space::Shared,
            "local" => inst.space = Space::Local,
            "param" => inst.space = Space::Param,
            "const" => inst.space = Space::Const,
            "to" => to = true,
            "v2" => inst.vec = 2,
            "v4" => inst.vec = 4,
            "l" => left = true,
            "wrap" => wrap = true,
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" | "lo" | "ls" | "hi_" | "hs" | "equ"
            | "neu" | "ltu" | "leu" | "gtu" | "geu" | "num" | "nan"
                if base == "setp" || base == "set" =>
            {
                cmp = Some(m)
            }
            "and" | "or" | "xor" if base == "setp" => combine = Some(m),
            "idx" | "up" | "down" | "bfly" if base == "shfl" => shfl = Some(m),
            "all" | "any" | "uni" | "ballot" if base == "vote" => vote = Some(m),
            "add" | "min" | "max" | "inc" | "dec" | "and" | "or" | "xor" | "exch" | "cas"
                if base == "atom" || base == "red" =>
            {
                atom = Some(m)
            }
            _ => {}
        }
    }
    // `hi` and `lo` are also comparisons of setp (unsigned > and <).
    if (base == "setp" || base == "set") && cmp.is_none() {
        if mods.contains(&"hi") {
            cmp = Some("hi_");
            inst.hi = false;
        } else if mods.contains(&"lo") {
            cmp = Some("lo");
        }
    }
    if let Some(&t) = tys.first() {
        inst.ty = t;
        inst.ty2 = *tys.get(1).unwrap_or(&t);
    }
    inst.op = match base {
        "mov" => Op::Mov,
        "ld" | "ldu" => Op::Ld,
        "st" => Op::St,
        "cvta" => Op::Cvta {
            to,
            space: inst.space,
        },
        "cvt" => Op::Cvt,
        "add" => Op::Add,
        "sub" => Op::Sub,
        "mul" => Op::Mul,
        "mad" => Op::Mad,
        "fma" => Op::Fma,
        "div" => Op::Div,
        "rem" => Op::Rem,
        "neg" => Op::Neg,
        "abs" => Op::Abs,
        "min" => Op::Min,
        "max" => Op::Max,
        "and" => Op::And,
        "or" => Op::Or,
        "xor" => Op::Xor,
        "not" => Op::Not,
        "cnot" => Op::Cnot,
        "shl" => Op::Shl,
        "shr" => Op::Shr,
        "shf" => Op::Shf { left, wrap },
        "setp" => Op::Setp {
            cmp: parse_cmp(cmp.unwrap_or(""), inst.ty)
                .ok_or_else(|| parse_error(line, statement, "a setp without a comparison"))?,
            combine: combine.map(|c| match c {
                "and" => BoolOp::And,
                "or" => BoolOp::Or,
                _ => BoolOp::Xor,
            }),
        },
        "set" => Op::Set {
            cmp: parse_cmp(cmp.unwrap_or(""), inst.ty2)
                .ok_or_else(|| parse_error(line, statement, "a set without a comparison"))?,
        },
        "selp" => Op::Selp,
        "rcp" => Op::Rcp,
        "sqrt" => Op::Sqrt,
        "rsqrt" => Op::Rsqrt,
        "ex2" => Op::Ex2,
        "lg2" => Op::Lg2,
        "sin" => Op::Sin,
        "cos" => Op::Cos,
        "tanh" => Op::Tanh,
        "copysign" => Op::Copysign,
        "popc" => Op::Popc,
        "clz" => Op::Clz,
        "brev" => Op::Brev,
        "bfe" => Op::Bfe,
        "bfi" => Op::Bfi,
        "prmt" => Op::Prmt,
        "lop3" => Op::Lop3,
        "bra" => Op::Bra,
        "ret" => Op::Ret,
        "exit" => Op::Exit,
        "bar" | "barrier" if mods.first() == Some(&"warp") => Op::Membar,
        "bar" | "barrier" => Op::BarSync,
        "membar" | "fence" => Op::Membar,
        "shfl" => Op::Shfl(match shfl {
            Some("idx") => ShflMode::Idx,
            Some("up") => ShflMode::Up,
            Some("down") => ShflMode::Down,
            Some("bfly") => ShflMode::Bfly,
            _ => return Err(parse_error(line, statement, "a shfl without a mode")),
        }),
        "vote" => Op::Vote(match vote {
            Some("all") => VoteMode::All,
            Some("any") => VoteMode::Any,
            Some("uni") => VoteMode::Uni,
            Some("ballot") => VoteMode::Ballot,
            _ => return Err(parse_error(line, statement, "a vote without a mode")),
        }),
        "activemask" => Op::Activemask,
        "call" if operand_text.trim_start().starts_with("__assertfail") => Op::AssertFail,
        "atom" | "red" => {
            let a = match atom {
                Some("add") => AtomOp::Add,
                Some("min") => AtomOp::Min,
                Some("max") => AtomOp::Max,
                Some("inc") => AtomOp::Inc,
                Some("dec") => AtomOp::Dec,
                Some("and") => AtomOp::And,
                Some("or") => AtomOp::Or,
                Some("xor") => AtomOp::Xor,
                Some("exch") => AtomOp::Exch,
                Some("cas") => AtomOp::Cas,
                _ => {
                    return Err(parse_error(
                        line,
                        statement,
                        "an atomic without an operation",
                    ))
                }
            };
            if base == "atom" {
                Op::Atom(a)
            } else {
                Op::Red(a)
            }
        }
        _ => Op::Unsupported,
    };
    if inst.op == Op::Unsupported {
        // Kept, so the module loads; executing it names the instruction.
        return Ok(inst);
    }
    if inst.op == Op::AssertFail {
        // The argument list: the `.param` variables holding message, file, line, function.
        let list = operand_text
            .split_once('(')
            .map_or("", |(_, l)| l)
            .trim_end_matches(')');
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            inst.operands
                .push(decode_operand(name, line, statement, &inst, names)?);
        }
        return Ok(inst);
    }
    for text in split_operands(operand_text) {
        inst.operands
            .push(decode_operand(text, line, statement, &inst, names)?);
    }
    // `.param` variables declared in a body (the arguments of a call) live in the thread's
    // local memory, so `ld.param`/`st.param` of them go there.
    if inst.space == Space::Param {
        let local = inst.operands.iter().any(|o| {
            matches!(o, Operand::Addr { base: AddrBase::Symbol(s), .. }
                if matches!(names.symbols[*s as usize].1, SymbolKind::Local { .. }))
        });
        if local {
            inst.space = Space::Local;
        }
    }
    Ok(inst)
}

fn parse_cmp(c: &str, ty: Ty) -> Option<Cmp> {
    let float = ty.is_float();
    Some(match c {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" | "lo" => Cmp::Lt,
        "le" | "ls" => Cmp::Le,
        "gt" | "hi_" => Cmp::Gt,
        "ge" | "hs" => Cmp::Ge,
        "equ" if float => Cmp::Equ,
        "neu" if float => Cmp::Neu,
        "ltu" if float => Cmp::Ltu,
        "leu" if float => Cmp::Leu,
        "gtu" if float => Cmp::Gtu,
        "geu" if float => Cmp::Geu,
        "num" if float => Cmp::Num,
        "nan" if float => Cmp::Nan,
        _ => return None,
    })
}

/// Splits at commas outside `[]` and `{}`.
fn split_operands(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn decode_operand(
    text: &str,
    line: u32,
    statement: &str,
    inst: &Inst,
    names: &Names,
) -> Result<Operand, SimError> {
    let err = |what: &str| parse_error(line, statement, what);
    let reg = |name: &str| -> Result<u32, SimError> {
        names
            .regs
            .get(name.trim())
            .copied()
            .ok_or_else(|| err(&format!("register {} is not declared", name.trim())))
    };
    if text == "_" {
        return Ok(Operand::Sink);
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let inner = inner.replace(' ', "");
        // base, base+offset, base+-offset, base-offset, or a bare number.
        let split = inner
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == '+' || c == '-');
        let (base, offset) = match split {
            Some((i, '+')) => (&inner[..i], parse_offset(&inner[i + 1..])),
            Some((i, _)) => (&inner[..i], parse_offset(&inner[i..])),
            None => (inner.as_str(), Some(0)),
        };
        let offset = offset.ok_or_else(|| err("an address offset that is not a number"))?;
        let base = if base.starts_with('%') || names.regs.contains_key(base) {
            AddrBase::Reg(reg(base)?)
        } else if let Some(s) = names.symbols.iter().position(|(n, _)| n == base) {
            AddrBase::Symbol(s as u32)
        } else if let Some(v) = parse_immediate(base) {
            return Ok(Operand::Addr {
                base: AddrBase::Absolute,
                offset: v as i64 + offset,
            });
        } else {
            return Err(err(&format!(
                "address base {base} is neither a register nor a variable"
            )));
        };
        return Ok(Operand::Addr { base, offset });
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let parts = inner
            .split(',')
            .map(str::trim)
            .map(|r| match (r, parse_immediate(r)) {
                ("_", _) => Ok(Part::Sink),
                (_, Some(v)) => Ok(Part::Imm(v)),
                _ => reg(r).map(Part::Reg),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Operand::Vector(parts));
    }
    if let Some((a, b)) = text.split_once('|') {
        let p = |s: &str| {
            if s.trim() == "_" {
                Ok(None)
            } else {
                reg(s).map(Some)
            }
        };
        return Ok(Operand::PredPair(p(a)?, p(b)?));
    }
    if let Some(r) = text.strip_prefix('!') {
        return Ok(Operand::NotReg(reg(r)?));
    }
    if text.starts_with('%') {
        if let Some(s) = special(text) {
            return Ok(Operand::Special(s));
        }
        return Ok(Operand::Reg(reg(text)?));
    }
    // Registers declared in inline-asm scopes have names without '%' (`__$temp3`).
    if let Some(&r) = names.regs.get(text) {
        return Ok(Operand::Reg(r));
    }
    if inst.op == Op::Bra {
        return names
            .labels
            .get(text)
            .map(|&l| Operand::Label(l))
            .ok_or_else(|| err(&format!("label {text} is not in this kernel")));
    }
    if let Some(s) = names.symbols.iter().position(|(n, _)| n == text) {
        return Ok(Operand::Symbol(s as u32));
    }
    if let Some(v) = parse_immediate(text) {
        return Ok(Operand::Imm(v));
    }
    if text == "WARP_SZ" {
        return Ok(Operand::Imm(32));
    }
    Err(err(&format!("operand {text} is not understood")))
}

fn parse_offset(s: &str) -> Option<i64> {
    parse_immediate(s).map(|v| v as i64)
}

fn special(name: &str) -> Option<Special> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let name = name.strip_prefix('%')?;
    if let Some((reg, d)) = name.split_once('.') {
        let d = dim(d)?;
        return Some(match reg {
            "tid" => Special::Tid(d),
            "ntid" => Special::Ntid(d),
            "ctaid" => Special::Ctaid(d),
            "nctaid" => Special::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "laneid" => Special::LaneId,
        "warpid" => Special::WarpId,
        "nwarpid" => Special::NWarpId,
        "smid" => Special::SmId,
        "lanemask_lt" => Special::LanemaskLt,
        "lanemask_le" => Special::LanemaskLe,
        "lanemask_eq" => Special::LanemaskEq,
        "lanemask_ge" => Special::LanemaskGe,
        "lanemask_gt" => Special::LanemaskGt,
        "clock" => Special::Clock,
        "clock64" => Special::Clock64,
        _ => return None,
    })
}
