//! Which run.toml keys split runs into groups: those whose values differ between runs for a
//! reason other than the seed (a run's own name, run directory and seed are written as
//! placeholders before values are compared).

use std::collections::BTreeSet;

use crate::runs::{self, Run};

/// Config keys besides `model.ffn` whose values differ between runs for a reason other than
/// the seed (see the module note).
pub fn grouping_keys(runs: &[Run]) -> Vec<String> {
    const EXCLUDED: [&str; 4] = ["model.ffn", "train.seed", "name", "run_dir"];
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    keys.into_iter()
        .filter(|k| !EXCLUDED.contains(&k.as_str()))
        .filter(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            !last.to_ascii_lowercase().contains("seed")
        })
        .filter(|k| {
            let raw: BTreeSet<Option<&String>> = runs.iter().map(|r| r.config.get(*k)).collect();
            raw.len() > 1
        })
        .filter(|k| {
            let normalized: BTreeSet<Option<String>> = runs
                .iter()
                .map(|r| r.config.get(*k).map(|v| normalize(v, r)))
                .collect();
            normalized.len() > 1
        })
        .cloned()
        .collect()
}

/// Replaces a run's name, run directory and seed inside a string config value by placeholders.
fn normalize(value: &str, run: &Run) -> String {
    if !value.starts_with('"') {
        return value.to_string();
    }
    let mut v = value.to_string();
    let word = |c: u8| c.is_ascii_alphanumeric();
    for (key, placeholder) in [("run_dir", "{run_dir}"), ("name", "{name}")] {
        if let Some(s) = run.config.get(key) {
            v = replace_token(
                &v,
                &runs::unquote(s),
                placeholder,
                |b, _| word(b),
                |b, _| word(b),
            );
        }
    }
    match &run.seed {
        // Not part of a longer number: no digit or decimal point before, no digit or decimal
        // fraction after ("seed-1.txt" matches, "0.001" does not).
        Some(seed) => replace_token(
            &v,
            seed,
            "{seed}",
            |b, _| b.is_ascii_digit() || b == b'.',
            |b, next| b.is_ascii_digit() || (b == b'.' && next.is_some_and(|n| n.is_ascii_digit())),
        ),
        None => v,
    }
}

/// Replaces `token` in `text` where the byte before it does not satisfy `bad_before` and the
/// byte after it does not satisfy `bad_after` (each also sees the byte beyond, if any).
fn replace_token(
    text: &str,
    token: &str,
    placeholder: &str,
    bad_before: impl Fn(u8, Option<u8>) -> bool,
    bad_after: impl Fn(u8, Option<u8>) -> bool,
) -> String {
    if token.is_empty() {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let end = i + token.len();
        let before_ok = i == 0 || !bad_before(bytes[i - 1], i.checked_sub(2).map(|j| bytes[j]));
        let after_ok = end >= bytes.len() || !bad_after(bytes[end], bytes.get(end + 1).copied());
        if text[i..].starts_with(token) && before_ok && after_ok {
            out.push_str(placeholder);
            i = end;
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn run_with(seed: &str, name: &str, pairs: &[(&str, &str)]) -> Run {
        let mut config: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config.insert("train.seed".into(), seed.into());
        config.insert("name".into(), format!("\"{name}\""));
        Run {
            dir: PathBuf::from(name),
            name: name.into(),
            ffn: "swiglu".into(),
            seed: Some(seed.into()),
            config,
            evals: Vec::new(),
            metrics: Vec::new(),
        }
    }

    #[test]
    fn seed_placeholders_leave_other_numbers_alone() {
        let r = run_with("1", "sw-s1", &[]);
        assert_eq!(
            normalize("\"logs/seed-1.txt\"", &r),
            "\"logs/seed-{seed}.txt\""
        );
        assert_eq!(normalize("\"0.001\"", &r), "\"0.001\"");
        assert_eq!(normalize("\"run-11\"", &r), "\"run-11\"");
        assert_eq!(normalize("\"out/sw-s1/ckpt\"", &r), "\"out/{name}/ckpt\"");
        // Non-string values are compared as they are.
        assert_eq!(normalize("1", &r), "1");
    }

    #[test]
    fn grouping_keys_skip_seed_derived_and_keep_real_differences() {
        let a = run_with(
            "1",
            "a-s1",
            &[
                ("train.lr", "0.001"),
                ("data.shuffle_seed", "1"),
                ("train.out", "\"x/a-s1\""),
            ],
        );
        let b = run_with(
            "2",
            "a-s2",
            &[
                ("train.lr", "0.002"),
                ("data.shuffle_seed", "2"),
                ("train.out", "\"x/a-s2\""),
            ],
        );
        assert_eq!(grouping_keys(&[a.clone(), b]), vec!["train.lr".to_string()]);
        // Same lr for seeds 1 and 2: the seed inside "0.001" must not make them differ.
        let c = run_with("2", "a-s2", &[("train.lr", "0.001")]);
        let a = run_with("1", "a-s1", &[("train.lr", "0.001")]);
        assert!(grouping_keys(&[a, c]).is_empty());
    }
}
