//! A dynActGLU checkpoint written by train-lm loads in transformers through the remote code
//! beside it (`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`) and gives
//! the perplexity eval-ppl gives, per-layer and per-channel. Needs Python with torch and
//! transformers (`$DYNACT_PYTHON`, else `python3`); skipped, saying so, without them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn python() -> String {
    std::env::var("DYNACT_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn has_transformers() -> bool {
    Command::new(python())
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn dynactglu_checkpoints_round_trip_through_transformers() {
    if !has_transformers() {
        eprintln!(
            "skipped: {} cannot import torch and transformers (set DYNACT_PYTHON to a Python that can)",
            python()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Token ids to score: bytes of some text, as an llm.c shard (no tokenizer on either side).
    let text =
        "To be, or not to be, that is the question: whether 'tis nobler in the mind. ".repeat(8);
    let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
    let shard = dir.path().join("val.bin");
    dynact_data::shard::write_shard(&shard, &tokens, 257).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_ppl.py");

    for granularity in ["per_layer", "per_channel"] {
        let run = format!("run-{granularity}");
        let trained = finish(
            tiny_train_lm(dir.path())
                .args(["--steps", "6", "--eval-at", "6", "--run-dir", &run])
                .args(["--ffn", "dynactglu", "--set", "optim.lr=0.01"])
                .args([
                    "--set",
                    "model.dynact.alpha_init=0.7",
                    "--set",
                    "model.dynact.beta_init=0.2",
                ])
                .args([
                    "--set",
                    &format!("model.dynact.granularity=\"{granularity}\""),
                ])
                .current_dir(dir.path()),
        );
        assert_eq!(trained.code, 0, "{}", trained.stderr);
        let folder = dir.path().join(&run).join("step-000006");
        for file in ["configuration_dynact_llama.py", "modeling_dynact_llama.py"] {
            assert!(folder.join(file).is_file(), "{file} missing");
        }

        let ours = json_of(&eval_ppl(
            &[
                folder.to_str().unwrap(),
                "--data",
                shard.to_str().unwrap(),
                "--seq-len",
                "32",
                "--json",
            ],
            dir.path(),
            &[],
        ));
        let hf = finish(
            Command::new(python())
                .arg(&script)
                .arg(&folder)
                .arg(&shard)
                .arg("32"),
        );
        assert_eq!(hf.code, 0, "{}", hf.stderr);
        let hf: serde_json::Value = serde_json::from_str(hf.stdout.trim()).unwrap();
        assert_eq!(hf["class"], "DynActLlamaForCausalLM");
        assert_eq!(hf["tokens"], ours["tokens"]);
        let (a, b) = (ours["ppl"].as_f64().unwrap(), hf["ppl"].as_f64().unwrap());
        eprintln!(
            "{granularity}: eval-ppl {a}, transformers {} {b}, relative difference {:.1e}",
            hf["transformers"],
            rel_diff(a, b)
        );
        assert!(rel_diff(a, b) <= 1e-4, "eval-ppl {a} vs transformers {b}");
    }
}
