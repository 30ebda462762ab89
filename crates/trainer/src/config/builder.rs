//! Building a run config: a TOML table (a config file, or the built-in default), then the
//! command line's keys (`--set table.key=value` and the named flags), each key checked (an
//! unknown one is named with the nearest known key), then the typed [`RunConfig`], adjusted
//! where a shorter run asks for it and validated.

use std::path::Path;

use super::{err, validate, ConfigError, DeviceSpec, RunConfig, RunDtype};

/// Every key path the config accepts, tables included (`model`, `model.dynact`), from the
/// defaults serialised with nulls kept.
fn known_keys() -> Vec<String> {
    let defaults = serde_json::to_value(RunConfig::default()).expect("defaults serialise");
    let mut keys = vec![];
    for leaf in dynact_run::config_keys::flatten(&defaults).into_keys() {
        let mut end = 0;
        while let Some(dot) = leaf[end..].find('.') {
            end += dot;
            keys.push(leaf[..end].to_string());
            end += 1;
        }
        keys.push(leaf);
    }
    keys.sort();
    keys.dedup();
    keys
}

fn check_keys(prefix: &str, table: &toml::Table, known: &[String]) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if !known.contains(&path) {
            // Nearest by the key's own name (`lrr` -> `optim.lr`), preferring the same table.
            let split = |k: &str| -> (String, String) {
                match k.rsplit_once('.') {
                    Some((p, l)) => (p.to_string(), l.to_string()),
                    None => (String::new(), k.to_string()),
                }
            };
            let (parent, leaf) = split(&path);
            let nearest = known
                .iter()
                .map(|c| {
                    let (cp, cl) = split(c);
                    (
                        strsim::levenshtein(&cl, &leaf) + usize::from(cp != parent),
                        c,
                    )
                })
                .min()
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            return err(format!(
                "unknown config key `{path}`; did you mean `{nearest}`?"
            ));
        }
        if let toml::Value::Table(t) = v {
            check_keys(&path, t, known)?;
        }
    }
    Ok(())
}

/// Parses a `--set` value as TOML (numbers, booleans, arrays, quoted strings), or else takes it
/// as a bare string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Sets `path` (dotted) in `table` to `value`, creating tables on the way.
pub fn set_key(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty());
    let Some(last) = last else {
        return err(format!("`--set {path}`: empty key"));
    };
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return err(format!("`{path}`: `{p}` is not a table")),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Builds a run config from an optional TOML file and `key=value` overrides, checking every
/// key (an unknown one is named with the nearest known key) and every value.
pub struct ConfigBuilder {
    table: toml::Table,
    /// Keys set on the command line: for them a value that does not fit the run (an eval step
    /// beyond `steps`, a warm-up longer than the run) is an error, not adjusted with a notice.
    cli_keys: Vec<String>,
    /// Building the config of a run being resumed: nothing is adjusted that would make it a
    /// different run (a warm-up that no longer fits is an error instead).
    pub resuming: bool,
    pub notices: Vec<String>,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        ConfigBuilder {
            table: toml::Table::new(),
            cli_keys: vec![],
            resuming: false,
            notices: vec![],
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(format!("{origin} is not valid TOML: {}", e.message())))?;
        Ok(ConfigBuilder {
            table,
            ..ConfigBuilder::new()
        })
    }

    /// Applies `key=value` (from `--set`).
    pub fn set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = assignment.split_once('=') else {
            return err(format!(
                "`--set {assignment}`: expected KEY=VALUE, e.g. --set optim.lr=3e-4"
            ));
        };
        self.set_value(key.trim(), parse_value(value.trim()))
    }

    pub fn set_value(&mut self, key: &str, value: toml::Value) -> Result<(), ConfigError> {
        self.cli_keys.push(key.to_string());
        set_key(&mut self.table, key, value)
    }

    /// Whether `key` was set on the command line (a flag or `--set`).
    pub fn has_cli(&self, key: &str) -> bool {
        self.cli_keys.iter().any(|k| k == key)
    }

    /// Removes `key` (a value or a whole table) if present.
    pub fn remove(&mut self, key: &str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut cur = &mut self.table;
        for p in parts {
            match cur.get_mut(p) {
                Some(toml::Value::Table(t)) => cur = t,
                _ => return,
            }
        }
        cur.remove(last);
    }

    /// Every dotted key that has a value so far (config file and overrides).
    pub fn keys_set(&self) -> Vec<String> {
        let json = serde_json::to_value(&self.table).expect("a TOML table is JSON");
        dynact_run::config_keys::flatten(&json)
            .into_keys()
            .collect()
    }

    pub fn has(&self, key: &str) -> bool {
        let mut cur = &self.table;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            match cur.get(*p) {
                Some(toml::Value::Table(t)) if i + 1 < parts.len() => cur = t,
                Some(_) if i + 1 == parts.len() => return true,
                _ => return false,
            }
        }
        false
    }

    pub fn build(mut self) -> Result<(RunConfig, Vec<String>), ConfigError> {
        check_keys("", &self.table, &known_keys())?;
        // A bad choice gets its parser's own line, not serde's "invalid config" wrapping.
        if let Some(toml::Value::String(text)) = self.table.get("device") {
            text.parse::<DeviceSpec>()?;
        }
        if let Some(toml::Value::String(text)) = self.table.get("dtype") {
            text.parse::<RunDtype>()?;
        }
        // The raw config is fitted to the run's length before it is typed: the typed config
        // is changed only by the run's resolution (resolve.rs).
        let read = self.typed()?;
        self.fit_to_run_length(&read)?;
        let cfg = self.typed()?;
        validate(&cfg)?;
        Ok((cfg, self.notices))
    }

    fn typed(&self) -> Result<RunConfig, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(self.table.clone())).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                ConfigError(format!("{}: {}", e.path(), e.inner().message()))
            },
        )
    }

    /// A shorter run than the config was written for keeps the evaluations that fit (an
    /// `--eval-at` beyond it is refused), and a warmup that does not fit becomes a tenth of the
    /// run (unless given on the command line, or resuming); each change with a notice.
    /// `eval_at` is sorted.
    fn fit_to_run_length(&mut self, read: &RunConfig) -> Result<(), ConfigError> {
        let steps = read.train.steps;
        let mut eval_at = read.eval.eval_at.clone();
        let beyond: Vec<u64> = eval_at.iter().copied().filter(|s| *s > steps).collect();
        if !beyond.is_empty() {
            if self.has_cli("eval.eval_at") {
                return err(format!(
                    "--eval-at step {} is beyond --steps {steps}; lower it or raise --steps",
                    beyond[0]
                ));
            }
            self.notices.push(format!(
                "notice: dropping eval_at steps {beyond:?} beyond the {steps} steps of this run"
            ));
            eval_at.retain(|s| *s <= steps);
        }
        eval_at.sort_unstable();
        eval_at.dedup();
        if eval_at != read.eval.eval_at {
            let steps_toml = eval_at.iter().map(|s| toml::Value::Integer(*s as i64));
            set_key(
                &mut self.table,
                "eval.eval_at",
                toml::Value::Array(steps_toml.collect()),
            )?;
        }
        if read.optim.warmup_steps >= steps && !self.has_cli("optim.warmup_steps") && !self.resuming
        {
            let warmup = steps / 10;
            self.notices.push(format!(
                "notice: warmup_steps {} does not fit a run of {steps} steps; using {warmup}",
                read.optim.warmup_steps
            ));
            set_key(
                &mut self.table,
                "optim.warmup_steps",
                toml::Value::Integer(warmup as i64),
            )?;
        }
        Ok(())
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_the_nearest() {
        let mut b = ConfigBuilder::new();
        b.set("optim.lrr=0.1").unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("`optim.lrr`") && e.contains("`optim.lr`"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_key() {
        for (set, key) in [
            ("optim.lr=abc", "optim.lr: "),
            ("model.dynact.alpha_init=yes", "model.dynact.alpha_init: "),
            ("eval.sample_tokens=-3", "eval.sample_tokens: "),
            ("seed=1.5", "seed: "),
        ] {
            let mut b = ConfigBuilder::new();
            b.set(set).unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.starts_with(key), "{set}: {e}");
        }
    }

    #[test]
    fn set_parses_types() {
        let mut b = ConfigBuilder::new();
        b.set("optim.lr=3e-4").unwrap();
        b.set("model.ffn=dynactglu").unwrap();
        b.set("eval.eval_at=[10, 20]").unwrap();
        b.set("train.steps=30").unwrap();
        let (cfg, _) = b.build().unwrap();
        assert_eq!(cfg.optim.lr, 3e-4);
        assert_eq!(cfg.model.ffn, dynact_model::FfnKind::Dynactglu);
        assert_eq!(cfg.eval.eval_at, vec![10, 20]);
    }

    #[test]
    fn eval_steps_beyond_a_shorter_run_are_dropped_from_configs_refused_from_cli() {
        let mut from_file = ConfigBuilder::new();
        set_key(
            &mut from_file.table,
            "eval.eval_at",
            parse_value("[10, 500]"),
        )
        .unwrap();
        from_file.set("train.steps=40").unwrap();
        from_file.set("optim.warmup_steps=5").unwrap();
        let (cfg, notices) = from_file.build().unwrap();
        assert_eq!(cfg.eval.eval_at, vec![10]);
        assert!(notices[0].contains("500"));

        let mut cli = ConfigBuilder::new();
        cli.set("eval.eval_at=[10, 500]").unwrap();
        cli.set("train.steps=40").unwrap();
        cli.set("optim.warmup_steps=5").unwrap();
        assert!(cli
            .build()
            .unwrap_err()
            .to_string()
            .contains("beyond --steps"));
    }

    #[test]
    fn invalid_values_are_refused() {
        for (k, v) in [
            ("optim.lr", "0"),
            ("train.batch_size", "0"),
            ("train.seq_len", "100000"),
            ("train.row_shards", "17"),
        ] {
            let mut b = ConfigBuilder::new();
            b.set(&format!("{k}={v}")).unwrap();
            assert!(b.build().is_err(), "{k}={v} accepted");
        }
    }
}
