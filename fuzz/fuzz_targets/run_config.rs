//! Run configs: a TOML file, then `--set KEY=VALUE` lines (after a 0xFF byte), resolved and
//! validated as train-lm does.
#![no_main]

use dynact_trainer::config::ConfigBuilder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = dynact_fuzz::parts(data, 2);
    let (Ok(toml), Ok(sets)) = (std::str::from_utf8(parts[0]), std::str::from_utf8(parts[1]))
    else {
        return;
    };
    let Ok(mut b) = ConfigBuilder::from_toml_str(toml, "fuzz.toml") else {
        return;
    };
    for kv in sets.lines() {
        if b.set(kv).is_err() {
            return;
        }
    }
    if let Ok((cfg, _notices)) = b.build() {
        // A config that resolves writes out and reads back to itself.
        let text = toml::to_string(&cfg).expect("a resolved config serializes");
        let again = ConfigBuilder::from_toml_str(&text, "run.toml")
            .and_then(|b| b.build())
            .expect("a written config reads back");
        assert_eq!(again.0, cfg);
    }
});
