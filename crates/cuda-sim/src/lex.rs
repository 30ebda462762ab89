//! PTX's lexical level: text split into statements, labels and braces (comments dropped),
//! immediates, and the error every parsing step reports.

use crate::SimError;

#[derive(Debug)]
pub(crate) enum Item {
    /// A statement without its `;`.
    Statement(String, u32),
    Label(String, u32),
    /// `{` with what came before it (a function header, or nothing for a scope).
    Open(String, u32),
    Close(u32),
}

/// Splits PTX text into statements, labels and braces, dropping comments.
pub(crate) fn split(text: &str) -> Result<Vec<Item>, SimError> {
    let mut items = Vec::new();
    let mut buf = String::new();
    let mut line = 1u32;
    let mut start_line = 1u32;
    // Braces inside a statement (vector operands, initializers) and their depth.
    let mut inner = 0usize;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        if buf.trim().is_empty() {
            start_line = line;
        }
        match c {
            '\n' => {
                line += 1;
                // These directives end at the end of their line, without ';'.
                let head = buf.trim_start();
                let ends_at_newline = [".version", ".target", ".address_size", ".file", ".loc"]
                    .iter()
                    .any(|d| head.starts_with(d));
                if inner == 0 && ends_at_newline {
                    items.push(Item::Statement(head.trim().to_string(), start_line));
                    buf.clear();
                } else {
                    buf.push(' ');
                }
            }
            ';' if inner == 0 => {
                let s = buf.trim().to_string();
                if !s.is_empty() {
                    items.push(Item::Statement(s, start_line));
                }
                buf.clear();
            }
            '{' => {
                let head = buf.trim();
                let is_header =
                    head.is_empty() || head.contains(".entry") || head.contains(".func");
                if inner == 0 && is_header {
                    items.push(Item::Open(head.to_string(), start_line));
                    buf.clear();
                } else {
                    inner += 1;
                    buf.push(c);
                }
            }
            '}' => {
                if inner > 0 {
                    inner -= 1;
                    buf.push(c);
                } else {
                    if !buf.trim().is_empty() {
                        return Err(parse_error(line, buf.trim(), "a statement without ';'"));
                    }
                    items.push(Item::Close(line));
                    buf.clear();
                }
            }
            ':' if inner == 0 && chars.get(i + 1) != Some(&':') && i > 0 && chars[i - 1] != ':' => {
                let name = buf.trim();
                if is_identifier(name) {
                    items.push(Item::Label(name.to_string(), start_line));
                    buf.clear();
                } else {
                    buf.push(c);
                }
            }
            _ => buf.push(c),
        }
        i += 1;
    }
    if !buf.trim().is_empty() {
        return Err(parse_error(
            line,
            buf.trim(),
            "text after the last statement",
        ));
    }
    Ok(items)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_$.%".contains(c))
        && !s.starts_with('.')
}

pub(crate) fn matching_close(items: &[Item], open: usize) -> Result<usize, SimError> {
    let mut depth = 0usize;
    for (j, item) in items.iter().enumerate().skip(open) {
        match item {
            Item::Open(..) => depth += 1,
            Item::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => {}
        }
    }
    let line = match &items[open] {
        Item::Open(_, l) => *l,
        _ => 0,
    };
    Err(parse_error(line, "{", "a '{' without its '}'"))
}

pub(crate) fn parse_error(line: u32, text: &str, what: &str) -> SimError {
    SimError::Parse {
        line,
        text: text.to_string(),
        what: what.to_string(),
    }
}

/// `-1`, `42`, `0x1F`, `0f3F800000` (f32 bits), `0d3FF0000000000000` (f64 bits), `1.5`.
pub(crate) fn parse_immediate(s: &str) -> Option<u64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let body = body.trim_end_matches('U');
    let v = if let Some(h) = body.strip_prefix("0f").or_else(|| body.strip_prefix("0F")) {
        let bits = u32::from_str_radix(h, 16).ok()?;
        return Some(if neg {
            (bits ^ 0x8000_0000) as u64
        } else {
            bits as u64
        });
    } else if let Some(h) = body.strip_prefix("0d").or_else(|| body.strip_prefix("0D")) {
        let bits = u64::from_str_radix(h, 16).ok()?;
        return Some(if neg { bits ^ (1 << 63) } else { bits });
    } else if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if body.contains('.') || body.contains('e') {
        let f: f64 = body.parse().ok()?;
        return Some((if neg { -f } else { f }).to_bits());
    } else {
        body.parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}
