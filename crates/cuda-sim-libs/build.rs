//! Generates a stub for every symbol in exports.txt that src/ does not implement, so the
//! stand-ins resolve every import of the CUDA binaries (they are linked with BIND_NOW).

use std::collections::BTreeSet;
use std::fmt::Write;

fn main() {
    println!("cargo::rerun-if-changed=exports.txt");
    println!("cargo::rerun-if-changed=src");
    let exports = std::fs::read_to_string("exports.txt").expect("exports.txt is in the crate");
    let mut implemented = BTreeSet::new();
    for entry in std::fs::read_dir("src").expect("src exists") {
        let text =
            std::fs::read_to_string(entry.expect("a readable entry").path()).expect("utf-8 source");
        for line in text.lines() {
            let line = line.trim_start();
            if let Some(rest) = line
                .strip_prefix("pub unsafe extern \"C\" fn ")
                .or_else(|| line.strip_prefix("pub extern \"C\" fn "))
            {
                implemented.insert(rest.split('(').next().unwrap_or("").to_string());
            }
        }
    }
    let mut out = String::new();
    for name in exports
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if !implemented.contains(name) {
            writeln!(out, "#[no_mangle]\npub extern \"C\" fn {name}() -> i32 {{ not_implemented(\"{name}\") }}").unwrap();
        }
    }
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{dir}/stubs.rs"), out).expect("OUT_DIR is writable");
}
