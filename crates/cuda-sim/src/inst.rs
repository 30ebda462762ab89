//! One PTX instruction, decoded once when the module is loaded: the opcode, its type and
//! modifiers, and operands whose registers are already numbered, so the interpreter never looks
//! at text again.

/// A value type of PTX (`.u32`, `.f32`, ...). `Pred` is a predicate register's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "b128" => Ty::B128,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    /// Size in bytes (a predicate counts as one, as in `.param .pred` never seen from nvcc).
    pub fn bytes(self) -> usize {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::Pred => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
            Ty::B128 => 16,
        }
    }

    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64
        )
    }
}

/// The state space a load, store or atomic names (`Generic` when it names none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Generic,
    Global,
    Shared,
    Local,
    Param,
    Const,
}

/// Rounding of a float result or of a float-to-int conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Round {
    #[default]
    Nearest,
    Down,
    Up,
    Zero,
}

/// Comparison of `setp`/`set`; the `u` forms are true when either side is NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// How `setp` combines its comparison with a third, predicate, source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Idx,
    Up,
    Down,
    Bfly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Inc,
    Dec,
    And,
    Or,
    Xor,
    Exch,
    Cas,
}

/// What an instruction does. Modifiers that change the arithmetic live in [`Inst`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Mov,
    Ld,
    St,
    Cvta {
        to: bool,
        space: Space,
    },
    Cvt,
    Add,
    Sub,
    Mul,
    Mad,
    Fma,
    Div,
    Rem,
    Neg,
    Abs,
    Min,
    Max,
    And,
    Or,
    Xor,
    Not,
    Cnot,
    Shl,
    Shr,
    Shf {
        left: bool,
        wrap: bool,
    },
    Setp {
        cmp: Cmp,
        combine: Option<BoolOp>,
    },
    /// `set.cmp.dtype.stype`: the comparison as a value of the destination type (all ones or
    /// 1.0 for true, 0 for false).
    Set {
        cmp: Cmp,
    },
    Selp,
    Rcp,
    Sqrt,
    Rsqrt,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
    Copysign,
    Popc,
    Clz,
    Brev,
    Bfe,
    Bfi,
    Prmt,
    Lop3,
    Bra,
    Ret,
    Exit,
    BarSync,
    Membar,
    Shfl(ShflMode),
    Vote(VoteMode),
    Activemask,
    Atom(AtomOp),
    Red(AtomOp),
    /// `call __assertfail, (message, file, line, function, size)`: a failed `assert()` in
    /// device code, which stops the kernel as a GPU's device-side assert does.
    AssertFail,
    /// Parsed but not implemented: an error only when a thread executes it, so a module with
    /// one unsupported kernel still loads (the reason is in [`Inst::text`]).
    Unsupported,
}

/// A source or destination of an instruction.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register, numbered within its kernel.
    Reg(u32),
    /// A predicate register read negated (`!%p1`).
    NotReg(u32),
    /// An immediate as raw bits: `0f3F800000` is f32 bits, `-1` two's complement.
    Imm(u64),
    /// A special register (`%tid.x`, `%laneid`, ...).
    Special(Special),
    /// `[base+offset]`.
    Addr { base: AddrBase, offset: i64 },
    /// A variable's address in its state space (`mov.u64 %rd1, smem;`).
    Symbol(u32),
    /// A vector (`{%f1, %f2}`, or `{0, %rs1}` where a part is a constant).
    Vector(Vec<Part>),
    /// A branch target, as an instruction index.
    Label(u32),
    /// Two predicate destinations (`%p1|%p2`), or `_` for either.
    PredPair(Option<u32>, Option<u32>),
    /// The sink `_`.
    Sink,
}

/// One part of a vector operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Part {
    Reg(u32),
    /// A constant, as raw bits (a source only: nvcc widens bf16 to f32 as `{0, %rs1}`).
    Imm(u64),
    /// The sink `_`.
    Sink,
}

impl Part {
    /// The register a destination part writes, if any.
    pub fn dest(self) -> Option<u32> {
        match self {
            Part::Reg(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AddrBase {
    Reg(u32),
    Symbol(u32),
    Absolute,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    SmId,
    LanemaskLt,
    LanemaskLe,
    LanemaskEq,
    LanemaskGe,
    LanemaskGt,
    Clock,
    Clock64,
}

/// One decoded instruction.
#[derive(Clone, Debug)]
pub struct Inst {
    /// `@%p` or `@!%p`: (register, negated).
    pub guard: Option<(u32, bool)>,
    pub op: Op,
    /// The instruction's type (the destination type of `cvt`).
    pub ty: Ty,
    /// The source type of `cvt` and `set`, and of `setp`'s operands when they differ (never
    /// from nvcc).
    pub ty2: Ty,
    pub round: Round,
    /// `.rni`-style integer rounding of `cvt` (round to an integral value).
    pub round_int: bool,
    pub ftz: bool,
    pub sat: bool,
    /// `mul.hi`/`mad.hi`, `mul.wide`/`mad.wide` (`lo` is the default).
    pub hi: bool,
    pub wide: bool,
    pub space: Space,
    /// 1, 2 or 4 elements for `ld`/`st`.
    pub vec: u8,
    pub operands: Vec<Operand>,
    /// Line in the PTX text, for error messages.
    pub line: u32,
    /// The instruction as written, for error messages.
    pub text: String,
}

/// Where a symbol (a variable or parameter named in an operand) lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolKind {
    Param {
        offset: usize,
    },
    Shared {
        offset: usize,
    },
    Local {
        offset: usize,
    },
    /// A module variable, by index in `Module::globals`.
    Global {
        index: usize,
    },
}
