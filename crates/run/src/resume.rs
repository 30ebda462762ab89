//! What a resume may change. A resumed run must be the same run: only how long it runs, what it
//! logs and evaluates, and where it runs may differ from the config it started with.

use serde::Serialize;

use crate::config_keys::flatten;

/// Dotted keys (a trailing `.` covers a whole table) that may differ on resume.
pub const RESUMABLE_CHANGES: &[&str] = &[
    "name",
    "run_dir",
    "device",
    "dtype",
    "train.steps",
    "train.log_every",
    "train.keep_last",
    "train.threads",
    "train.peak_flops",
    "train.rank_timeout_s",
    "train.on_nonfinite",
    "eval.",
    // Where a run's logs go (the logging sinks' settings, one key each) never changes the run.
    "log.",
    "data.cache_dir",
];

fn may_change(key: &str) -> bool {
    RESUMABLE_CHANGES
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// The first key (in dotted-key order) whose value differs between the config the run was
/// started with and the one given now, outside [`RESUMABLE_CHANGES`], as a sentence.
pub fn forbidden_change(saved: &impl Serialize, given: &impl Serialize) -> Option<String> {
    let saved = flatten(&serde_json::to_value(saved).ok()?);
    let given = flatten(&serde_json::to_value(given).ok()?);
    let null = serde_json::Value::Null;
    saved
        .iter()
        .map(|(k, v)| (k, v, given.get(k).unwrap_or(&null)))
        .chain(
            given
                .iter()
                .filter(|(k, _)| !saved.contains_key(*k))
                .map(|(k, v)| (k, &null, v)),
        )
        .find(|(key, a, b)| !may_change(key) && a != b)
        .map(|(key, a, b)| format!("{key} is {a} in the run but {b} in the config given"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn length_and_evaluation_may_change_nothing_else() {
        let saved =
            json!({"seed": 0, "train": {"steps": 100, "lr": 1e-3}, "eval": {"eval_at": [50]}});
        let longer =
            json!({"seed": 0, "train": {"steps": 200, "lr": 1e-3}, "eval": {"eval_at": [50, 150]}});
        assert_eq!(forbidden_change(&saved, &longer), None);
        let other_lr =
            json!({"seed": 0, "train": {"steps": 100, "lr": 2e-3}, "eval": {"eval_at": [50]}});
        let msg = forbidden_change(&saved, &other_lr).unwrap();
        assert!(
            msg.starts_with("train.lr is 0.001 in the run but 0.002"),
            "{msg}"
        );
    }
}
