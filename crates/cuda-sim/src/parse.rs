//! A parser of the PTX that nvcc emits: module variables, `.entry` kernels with their parameter
//! lists, register and state-space declarations, labels and instructions.
//!
//! nvcc's PTX is regular (one statement per `;`, labels on their own, `{ }` for bodies and
//! scopes), so a statement splitter and a decoder per opcode cover it; the general PTX grammar
//! (macros, `.func` calls, textures) is left out and reported when a kernel reaches it.

use std::collections::HashMap;

use crate::decode::Names;
use crate::inst::*;
use crate::lex::{matching_close, parse_error, parse_immediate, split, Item};
use crate::SimError;

/// A parsed PTX module.
#[derive(Debug)]
pub struct Module {
    pub kernels: Vec<Kernel>,
    /// Module-scope `.global` and `.const` variables, with their initial bytes.
    pub globals: Vec<Variable>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct Variable {
    pub name: String,
    pub space: Space,
    pub size: usize,
    pub align: usize,
    pub init: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub size: usize,
    pub align: usize,
    /// Offset in the kernel's parameter buffer.
    pub offset: usize,
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub param_bytes: usize,
    pub symbols: Vec<(String, SymbolKind)>,
    pub regs: u32,
    /// Static shared memory (bytes); dynamic shared memory starts at `shared_dynamic_offset`.
    pub shared_static: usize,
    pub shared_dynamic_offset: usize,
    pub local_bytes: usize,
    /// `.maxntid` / `.reqntid`, if given.
    pub max_threads: Option<u32>,
    pub insts: Vec<Inst>,
}

/// Parses PTX text into a module.
pub fn parse_module(text: &str) -> Result<Module, SimError> {
    let items = split(text)?;
    let mut module = Module {
        kernels: Vec::new(),
        globals: Vec::new(),
    };
    // Module-scope shared variables: (name, size, align, dynamic).
    let mut shared: Vec<(String, usize, usize, bool)> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Item::Statement(s, line) => {
                let s = s.trim();
                if s.starts_with(".version")
                    || s.starts_with(".target")
                    || s.starts_with(".address_size")
                    || s.starts_with(".file")
                    || s.starts_with(".pragma")
                    || is_function_declaration(s)
                {
                } else if let Some(var) = parse_variable(s, *line)? {
                    match var.space {
                        Space::Shared => {
                            let dynamic = var.size == 0;
                            shared.push((var.name, var.size, var.align, dynamic))
                        }
                        _ => module.globals.push(var),
                    }
                } else {
                    return Err(parse_error(
                        *line,
                        s,
                        "a module-scope statement nvcc does not emit",
                    ));
                }
                i += 1;
            }
            Item::Open(header, line) => {
                let end = matching_close(&items, i)?;
                if header.contains(".entry") {
                    let kernel = parse_kernel(header, *line, &items[i + 1..end], &module, &shared)?;
                    module.kernels.push(kernel);
                }
                // `.func` bodies are skipped: a `call` to them is reported when executed.
                i = end + 1;
            }
            Item::Label(_, line) | Item::Close(line) => {
                return Err(parse_error(*line, "", "a label or '}' outside a function"));
            }
        }
    }
    Ok(module)
}

fn is_function_declaration(s: &str) -> bool {
    s.contains(".func") || (s.contains(".entry") && s.contains(".extern"))
}

/// `.global .align 4 .b8 name[16] = {1, 2, ...}`, `.shared .align 16 .b8 smem[]`,
/// `.const .f32 c = 0f3F800000`, `.local .align 8 .b8 __local_depot0[16]`; `None` if the
/// statement declares no variable.
fn parse_variable(s: &str, line: u32) -> Result<Option<Variable>, SimError> {
    let (decl, init) = match s.split_once('=') {
        Some((d, i)) => (d.trim(), Some(i.trim())),
        None => (s, None),
    };
    let words: Vec<&str> = decl.split_whitespace().collect();
    let space = if words.contains(&".global") {
        Space::Global
    } else if words.contains(&".shared") {
        Space::Shared
    } else if words.contains(&".const") {
        Space::Const
    } else if words.contains(&".local") {
        Space::Local
    } else {
        return Ok(None);
    };
    let mut align = 0;
    let mut ty = None;
    let mut name_part = None;
    let mut k = 0;
    while k < words.len() {
        let w = words[k];
        if w == ".align" {
            align = words
                .get(k + 1)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| parse_error(line, s, "an .align without a number"))?;
            k += 1;
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            ty = Some(t);
        } else if !w.starts_with('.') {
            name_part = Some(words[k..].join(""));
            break;
        }
        k += 1;
    }
    let ty = ty.ok_or_else(|| parse_error(line, s, "a variable without a type"))?;
    let name_part = name_part.ok_or_else(|| parse_error(line, s, "a variable without a name"))?;
    let (name, count) = match name_part.split_once('[') {
        Some((n, rest)) => {
            let n_text = rest.trim_end_matches(']');
            let count = if n_text.is_empty() {
                0
            } else {
                n_text
                    .parse::<usize>()
                    .map_err(|_| parse_error(line, s, "an array size that is not a number"))?
            };
            (n.to_string(), count)
        }
        None => (name_part.clone(), 1),
    };
    let size = ty.bytes() * count;
    let mut bytes = vec![0u8; size];
    if let Some(init) = init {
        let values = init.trim_start_matches('{').trim_end_matches('}');
        for (idx, v) in values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .enumerate()
        {
            let bits = parse_immediate(v)
                .ok_or_else(|| parse_error(line, s, "an initializer that is not a number"))?;
            let at = idx * ty.bytes();
            if at + ty.bytes() > size {
                return Err(parse_error(line, s, "more initializers than elements"));
            }
            bytes[at..at + ty.bytes()].copy_from_slice(&bits.to_le_bytes()[..ty.bytes()]);
        }
    }
    Ok(Some(Variable {
        name,
        space,
        size,
        align: align.max(ty.bytes()),
        init: bytes,
    }))
}

/// Kernel-scope names while its body is parsed.
struct Scope {
    regs: HashMap<String, u32>,
    symbols: Vec<(String, SymbolKind)>,
    labels: HashMap<String, u32>,
}

fn parse_kernel(
    header: &str,
    line: u32,
    body: &[Item],
    module: &Module,
    shared: &[(String, usize, usize, bool)],
) -> Result<Kernel, SimError> {
    let open = header
        .find('(')
        .ok_or_else(|| parse_error(line, header, "an .entry without '('"))?;
    let close = header
        .rfind(')')
        .ok_or_else(|| parse_error(line, header, "an .entry without ')'"))?;
    let name = header[..open]
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string();
    let mut params = Vec::new();
    let mut offset = 0usize;
    for p in header[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let var = parse_variable(&p.replace(".param", ".local"), line)?
            .ok_or_else(|| parse_error(line, p, "a parameter that is not '.param TYPE NAME'"))?;
        let size = if var.size == 0 { var.align } else { var.size };
        offset = offset.next_multiple_of(var.align);
        params.push(Param {
            name: var.name,
            size,
            align: var.align,
            offset,
        });
        offset += size;
    }
    let mut max_threads = None;
    let tail = &header[close + 1..];
    for directive in [".maxntid", ".reqntid"] {
        if let Some(at) = tail.find(directive) {
            let dims: Vec<u32> = tail[at + directive.len()..]
                .split(|c: char| c == ',' || c.is_whitespace())
                .map_while(|d| {
                    if d.is_empty() {
                        Some(None)
                    } else {
                        d.parse().ok().map(Some)
                    }
                })
                .flatten()
                .collect();
            max_threads = Some(dims.iter().product());
        }
    }

    let mut symbols: Vec<(String, SymbolKind)> = params
        .iter()
        .map(|p| (p.name.clone(), SymbolKind::Param { offset: p.offset }))
        .collect();
    for (index, g) in module.globals.iter().enumerate() {
        symbols.push((g.name.clone(), SymbolKind::Global { index }));
    }
    let mut shared_bytes = 0usize;
    let mut dynamic = Vec::new();
    for (n, size, align, is_dynamic) in shared {
        if *is_dynamic {
            dynamic.push((n.clone(), *align));
        } else {
            shared_bytes = shared_bytes.next_multiple_of(*align);
            symbols.push((
                n.clone(),
                SymbolKind::Shared {
                    offset: shared_bytes,
                },
            ));
            shared_bytes += size;
        }
    }
    let mut local_bytes = 0usize;
    let mut scope = Scope {
        regs: HashMap::new(),
        symbols,
        labels: HashMap::new(),
    };

    // Declarations and labels first, so a branch may name a later label.
    let mut statements = Vec::new();
    for item in body {
        match item {
            Item::Statement(s, l) => {
                let s = s.trim();
                if let Some(decl) = s.strip_prefix(".reg") {
                    declare_registers(decl, *l, &mut scope.regs)?;
                } else if s.starts_with(".shared")
                    || s.starts_with(".local")
                    || s.starts_with(".param")
                {
                    // A `.param` in a body holds a call's arguments: thread-local memory.
                    let local = s.replacen(".param", ".local", 1);
                    let var = parse_variable(&local, *l)?.expect("a state space was named");
                    let kind = if var.space == Space::Shared {
                        shared_bytes = shared_bytes.next_multiple_of(var.align);
                        let k = SymbolKind::Shared {
                            offset: shared_bytes,
                        };
                        shared_bytes += var.size;
                        k
                    } else {
                        local_bytes = local_bytes.next_multiple_of(var.align);
                        let k = SymbolKind::Local {
                            offset: local_bytes,
                        };
                        local_bytes += var.size;
                        k
                    };
                    scope.symbols.push((var.name, kind));
                } else if s.starts_with(".loc")
                    || s.starts_with(".pragma")
                    || s.starts_with(".file")
                {
                } else {
                    statements.push((s, *l));
                }
            }
            Item::Label(name, _) => {
                scope.labels.insert(name.clone(), statements.len() as u32);
            }
            Item::Open(..) | Item::Close(_) => {}
        }
    }
    let mut dynamic_offset = shared_bytes;
    for (n, align) in dynamic {
        dynamic_offset = dynamic_offset.next_multiple_of(align.max(16));
        scope.symbols.push((
            n,
            SymbolKind::Shared {
                offset: dynamic_offset,
            },
        ));
    }
    let insts = statements
        .iter()
        .map(|(s, l)| {
            let names = Names {
                regs: &scope.regs,
                symbols: &scope.symbols,
                labels: &scope.labels,
            };
            crate::decode::decode(s, *l, &names)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Kernel {
        name,
        params,
        param_bytes: offset,
        symbols: scope.symbols,
        regs: scope.regs.len() as u32,
        shared_static: shared_bytes,
        shared_dynamic_offset: dynamic_offset,
        local_bytes,
        max_threads,
        insts,
    })
}

/// `.b32 %r<7>` (registers %r0..%r6) or `.f32 %f1, %f2`.
fn declare_registers(
    decl: &str,
    line: u32,
    regs: &mut HashMap<String, u32>,
) -> Result<(), SimError> {
    let decl = decl.trim();
    let names = decl
        .split_once(char::is_whitespace)
        .map(|(_, n)| n)
        .ok_or_else(|| parse_error(line, decl, "a .reg without names"))?;
    for name in names.split(',').map(str::trim) {
        if let Some((stem, count)) = name.split_once('<') {
            let count: u32 = count
                .trim_end_matches('>')
                .parse()
                .map_err(|_| parse_error(line, decl, "a register count that is not a number"))?;
            for k in 0..count {
                let next = regs.len() as u32;
                regs.entry(format!("{stem}{k}")).or_insert(next);
            }
        } else {
            let next = regs.len() as u32;
            regs.entry(name.to_string()).or_insert(next);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"
.version 9.0
.target sm_90
.address_size 64

.global .align 4 .b8 table[8] = {1, 0, 0, 0, 2, 0, 0, 0};
.extern .shared .align 16 .b8 dynamic[];

.visible .entry k(
	.param .u64 k_param_0,
	.param .u32 k_param_1,
	.param .align 8 .b8 k_param_2[16]
)
.maxntid 256, 1, 1
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<4>;
	.reg .b64 	%rd<3>;
	.reg .b16 	%rs<2>;
	.shared .align 4 .b8 tile[64];

	ld.param.u32 	%r1, [k_param_1];
$L__BB0_1:
	setp.lt.u32 	%p1, %r1, 10;
	@!%p1 bra 	$L__BB0_2;
	// begin inline asm
	{  cvt.rn.bf16.f32 %rs1, %r2;}
	// end inline asm
	mov.b64 	%rd1, {%r1, %r2};
	add.s32 	%r1, %r1, 1;
	bra.uni 	$L__BB0_1;
$L__BB0_2:
	ret;
}
"#;

    #[test]
    fn a_module_of_nvcc_s_forms_parses_with_its_layout() {
        let m = parse_module(MODULE).unwrap();
        assert_eq!(m.globals.len(), 1);
        assert_eq!(m.globals[0].init, vec![1, 0, 0, 0, 2, 0, 0, 0]);
        let k = m.kernel("k").unwrap();
        let layout: Vec<(usize, usize)> = k.params.iter().map(|p| (p.offset, p.size)).collect();
        assert_eq!(layout, vec![(0, 8), (8, 4), (16, 16)]);
        assert_eq!(k.param_bytes, 32);
        assert_eq!(k.max_threads, Some(256));
        assert_eq!(k.regs, 2 + 4 + 3 + 2);
        assert_eq!((k.shared_static, k.shared_dynamic_offset), (64, 64));
        assert_eq!(k.insts.len(), 8);
        // `@!%p1 bra $L__BB0_2` jumps to the `ret` after the loop.
        assert_eq!(k.insts[2].guard, Some((1, true))); // %p1, negated
        assert_eq!(k.insts[2].operands, vec![Operand::Label(7)]);
        assert_eq!(k.insts[6].operands, vec![Operand::Label(1)]);
    }

    #[test]
    fn an_undeclared_register_is_refused_with_its_line() {
        let bad = MODULE.replace("add.s32 	%r1, %r1, 1;", "add.s32 	%r1, %r9, 1;");
        let err = parse_module(&bad).unwrap_err().to_string();
        assert!(
            err.contains("register %r9 is not declared") && err.starts_with("PTX line 30"),
            "{err}"
        );
    }
}
