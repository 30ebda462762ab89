//! Lists what the simulator cannot run in PTX files: parse errors, and each instruction it
//! parses but does not implement, with how often it occurs.
//!
//!     cargo run --release -p dynact-cuda-sim --example ptx_coverage -- FILE.ptx...

use std::collections::BTreeMap;

fn main() {
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    let mut kernels = 0;
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        match dynact_cuda_sim::parse_module(&text) {
            Ok(m) => {
                kernels += m.kernels.len();
                for k in &m.kernels {
                    for i in k
                        .insts
                        .iter()
                        .filter(|i| i.op == dynact_cuda_sim::Op::Unsupported)
                    {
                        let opcode = i
                            .text
                            .split_whitespace()
                            .find(|w| !w.starts_with('@'))
                            .unwrap_or("");
                        *unsupported.entry(opcode.to_string()).or_default() += 1;
                    }
                }
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
    println!("{kernels} kernels parsed");
    for (opcode, n) in unsupported {
        println!("{n:>6}  {opcode}");
    }
}
