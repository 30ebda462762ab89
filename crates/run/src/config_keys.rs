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
}
