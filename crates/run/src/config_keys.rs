//! A nested config (run.toml, or a config struct serialised to JSON) as dotted keys:
//! `optim.lr`, `model.dynact.alpha_init`. The config loader lists the keys it knows with it,
//! resume compares two configs key by key with it, and compare-runs groups runs by it.

use std::collections::BTreeMap;

use serde_json::Value;

/// The leaves of `value` by dotted key (nulls kept: an unset optional key is still a key).
pub fn flatten(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Whether a run with FFN `ffn` (`"swiglu"`, `"dynactglu"`) reads `key`: SwiGLU has no
/// trainable activation, so it reads none of `model.dynact.*` and `optim.dynact_*`. A sweep
/// does not cross such a key with SwiGLU, and compare-runs does not split SwiGLU runs by it.
pub fn applies_to_ffn(key: &str, ffn: &str) -> bool {
    let dynact_only = key.starts_with("model.dynact.") || key.starts_with("optim.dynact_");
    !(dynact_only && ffn == "swiglu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tables_become_dotted_keys() {
        let v = serde_json::json!({"seed": 1, "model": {"ffn": "swiglu", "dynact": {"alpha_init": 1.0}},
                                   "eval": {"eval_at": [5, 10]}, "data": {"val_source": null}});
        let flat = flatten(&v);
        let keys: Vec<&str> = flat.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "data.val_source",
                "eval.eval_at",
                "model.dynact.alpha_init",
                "model.ffn",
                "seed"
            ]
        );
        assert_eq!(flat["eval.eval_at"], serde_json::json!([5, 10]));
    }

    #[test]
    fn swiglu_reads_no_dynact_key() {
        assert!(!applies_to_ffn("model.dynact.alpha_init", "swiglu"));
        assert!(!applies_to_ffn("optim.dynact_lr_mult", "swiglu"));
        assert!(applies_to_ffn("optim.dynact_lr_mult", "dynactglu"));
        assert!(applies_to_ffn("optim.lr", "swiglu"));
        // `model.dynactish` is not the dynact table.
        assert!(applies_to_ffn("model.dynactish", "swiglu"));
    }
}
