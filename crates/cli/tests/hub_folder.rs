//! A training checkpoint is a complete Hugging Face model folder: transformers' `AutoTokenizer`
//! reads its tokenizer as tokenizer.json encodes (nothing added, end-of-text as EOS, the id
//! that config.json and generation_config.json name). Needs Python with transformers
//! (`$DYNACT_PYTHON`, else `python3`; torch is not needed); skipped, saying so, without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn python() -> String {
    std::env::var("DYNACT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the test's Python imports `modules` (else the test says it is skipped).
fn python_has(modules: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "skipped: {} cannot import {modules} (set DYNACT_PYTHON to a Python that can)",
            python()
        );
    }
    ok
}

/// The step-3 checkpoint folder of a tiny run of `ffn` trained in `dir`.
fn trained_checkpoint(dir: &Path, ffn: &str) -> PathBuf {
    let trained = finish(
        tiny_train_lm(dir)
            .args([
                "--steps",
                "3",
                "--eval-at",
                "3",
                "--run-dir",
                "run",
                "--ffn",
                ffn,
            ])
            .current_dir(dir),
    );
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    dir.join("run/step-000003")
}

/// The JSON object `script` prints last, given the folder and a text.
fn python_json(script: &str, folder: &Path, text: &str) -> serde_json::Value {
    let out = Command::new(python())
        .args(["-c", script, folder.to_str().unwrap(), text])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

const READ_FOLDER: &str = r#"
import json, sys
from tokenizers import Tokenizer
from transformers import AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
# A dynActGLU folder names remote code, which transformers asks leave to run.
auto = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
config = json.load(open(folder + "/config.json"))
generation = json.load(open(folder + "/generation_config.json"))
print(json.dumps({
    "auto": auto(text)["input_ids"],
    "raw": Tokenizer.from_file(folder + "/tokenizer.json").encode(text).ids,
    "decoded": auto.decode(auto(text)["input_ids"]),
    "eos": auto.eos_token, "eos_id": auto.eos_token_id, "bos_id": auto.bos_token_id,
    "config_eos": config["eos_token_id"], "generation_eos": generation["eos_token_id"],
    "max_length": auto.model_max_length,
}))
"#;

#[test]
fn auto_tokenizer_reads_a_checkpoint_as_its_tokenizer_json() {
    if !python_has("transformers, tokenizers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = trained_checkpoint(dir.path(), "dynactglu");
    let text = "To be, or not to be, that is the question.\nWhether 'tis nobler";
    let got = python_json(READ_FOLDER, &folder, text);
    assert_eq!(
        got["auto"], got["raw"],
        "AutoTokenizer and tokenizer.json differ"
    );
    assert_eq!(got["decoded"], text);
    assert_eq!(got["eos"], "<|endoftext|>");
    assert_eq!(got["eos_id"], got["config_eos"]);
    assert_eq!(got["eos_id"], got["generation_eos"]);
    assert_eq!(got["bos_id"], got["eos_id"]);
    let card = std::fs::read_to_string(folder.join("README.md")).unwrap();
    assert!(
        card.contains("| 3 |"),
        "the card lists the evaluation at step 3:\n{card}"
    );
    // The context the model was trained for (tiny_train_lm leaves it at the default).
    assert!(got["max_length"].as_u64().unwrap() >= 32, "{got}");
}

const GENERATE_AND_SCORE: &str = r#"
import json, math, sys
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
folder, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
generator = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
prompt = text[:20]
# End-of-text made certain: a pipeline that knows its id stops right after it.
out = generator(prompt, max_new_tokens=12, do_sample=False, return_tensors=True,
                sequence_bias={(tok.eos_token_id,): 100.0})
generated = out[0]["generated_token_ids"]
lm = HFLM(pretrained=folder, trust_remote_code=True, batch_size=1, device="cpu")
rolling = lm.loglikelihood_rolling(
    [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)])
print(json.dumps({
    "prompt_ids": len(tok(prompt)["input_ids"]), "generated": generated,
    "eos_id": tok.eos_token_id, "rolling": rolling[0],
}))
"#;

#[test]
fn pipelines_stop_at_end_of_text_and_lm_evaluation_harness_scores_a_checkpoint() {
    if !python_has("torch, transformers, lm_eval") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = trained_checkpoint(dir.path(), "dynactglu");
    let text = "To be, or not to be, that is the question: whether 'tis nobler in the mind.";
    let got = python_json(GENERATE_AND_SCORE, &folder, text);
    let generated = got["generated"].as_array().unwrap();
    let prompt_ids = got["prompt_ids"].as_u64().unwrap() as usize;
    // The prompt, then end-of-text, then nothing: generation stopped there.
    assert_eq!(generated.len(), prompt_ids + 1, "{got}");
    assert_eq!(generated[prompt_ids], got["eos_id"], "{got}");
    let rolling = got["rolling"].as_f64().unwrap();
    assert!(rolling.is_finite() && rolling < 0.0, "{got}");
}
