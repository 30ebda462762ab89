//! End-to-end tests of `compare` / `write_report` on run directories written by hand in the
//! layout `train-lm` uses (run.toml, eval.jsonl, metrics.jsonl; the `compare-runs` binary's
//! tests are in crates/cli/tests/compare_runs.rs). The expected numbers are worked out in the
//! comments next to each assert.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use dynact_compare::{compare, write_report, CompareError, CompareOptions};

#[test]
fn two_groups_give_expected_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_groups(tmp.path());
    let cmp = compare(&dirs, &CompareOptions::default()).unwrap();

    // Seed-derived keys (data.shuffle_seed, paths with the name or seed) do not split groups.
    assert!(cmp.group_keys.is_empty(), "{:?}", cmp.group_keys);
    assert_eq!(cmp.groups.len(), 2);
    assert_eq!(cmp.groups[0].label, "swiglu");
    assert_eq!(cmp.groups[1].label, "dynactglu");
    assert_eq!(cmp.baseline.group, 0);
    assert_eq!(cmp.baseline.run, None);
    // Target: the swiglu mean's final value (5.0 + 5.2) / 2.
    assert!((cmp.target_ppl - 5.1).abs() < 1e-12);
    assert!(cmp.notices.is_empty());

    let md = write_tables_and_read(&cmp, tmp.path());
    // Per run at step 100: dynact-s1 8 vs baseline 11 -> -27.27%; dynact-s2 9 -> -18.18%.
    assert!(
        md.contains(
            "| 100 | 10.0000 (-9.09%) | 12.0000 (+9.09%) | 8.0000 (-27.27%) | 9.0000 (-18.18%) |"
        ),
        "{md}"
    );
    // Group at step 300: mean 4.5, std sqrt(0.02) = 0.1414, vs 5.1 -> -11.76%.
    // Welch: t = -0.6 / sqrt(0.02/2 + 0.02/2) = -4.243, df = 2,
    // p = 1 - |t| / sqrt(t^2 + 2) = 1 - 4.2426/4.4721 = 0.0513 (closed form of the t CDF, df = 2).
    assert!(
        md.contains("| 300 | dynactglu | 2 | 4.5000 | 0.1414 | 4.4000 | 4.6000 | -11.76% | -4.243 | 2.00 | 0.0513 |"),
        "{md}"
    );
    assert!(md
        .contains("| 300 | swiglu | 2 | 5.1000 | 0.1414 | 5.0000 | 5.2000 | +0.00% | - | - | - |"));
    // AUC of ln(ppl) over steps 100..300 (trapezoids), e.g. dynact-s1:
    // 100*(ln8+ln5.5)/2 + 100*(ln5.5+ln4.6)/2 = 350.75; group means 388.02 (swiglu) and
    // 347.82 (dynactglu), -10.36%. Steps to 5.1 on the dynactglu mean curve:
    // 200 + (5.25-5.1)/(5.25-4.5)*100 = 220; baseline reaches 5.1 at 300 -> speed-up 1.36x.
    assert!(
        md.contains("| dynactglu | 2 | 4.5000 | 347.82 | 4.15 | -10.36% |"),
        "{md}"
    );
    assert!(md.contains("| 220 | 1.36x |"), "{md}");
    // swiglu-s1 [10, 6, 5.0] reaches 5.1 at 200 + 0.9/1.0*100 = 290 (300/290 = 1.03x);
    // swiglu-s2 ends at 5.2 and never reaches it.
    assert!(
        md.contains("| swiglu-s1 | swiglu | 5.0000 | 374.78 | -3.41% | 290 | 1.03x |"),
        "{md}"
    );
    assert!(
        md.contains("| swiglu-s2 | swiglu | 5.2000 | 401.27 | +3.41% | not reached | - |"),
        "{md}"
    );

    let r = &cmp.runs[2];
    assert!((r.auc - 350.749_701_482_586_8).abs() < 1e-9, "{}", r.auc);
    let g = &cmp.groups[1];
    assert!((g.steps_to_target.unwrap() - 220.0).abs() < 1e-9);
    assert!((g.speedup.unwrap() - 300.0 / 220.0).abs() < 1e-12);
    let w = g.welch[2].unwrap();
    assert!(
        (w.p - (1.0 - 18f64.sqrt() / 20f64.sqrt())).abs() < 1e-9,
        "{w:?}"
    );
}

fn write_tables_and_read(cmp: &dynact_compare::Comparison, root: &Path) -> String {
    let out = root.join("out-tables");
    let written = dynact_compare::write_tables(cmp, &out).unwrap();
    assert_eq!(written.len(), 5);
    let csv = fs::read_to_string(out.join("per_group.csv")).unwrap();
    assert!(csv.starts_with("group,step,seeds,mean_ppl"));
    assert!(
        csv.lines().any(|l| l.starts_with("dynactglu,300,2,4.5,")),
        "{csv}"
    );
    let csv = fs::read_to_string(out.join("per_run.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * 3);
    let csv = fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv
        .lines()
        .any(|l| l.starts_with("group,dynactglu,dynactglu,2,4.5,")));
    fs::read_to_string(out.join("comparison.md")).unwrap()
}

fn assert_png(path: &Path) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{}",
        path.display()
    );
    assert!(
        bytes.len() > 1024,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
}

fn assert_svg(path: &Path, must_contain: &[&str]) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("<svg"), "{}", path.display());
    for s in must_contain {
        assert!(text.contains(s), "{} lacks {s:?}", path.display());
    }
}

#[test]
fn report_writes_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_groups(tmp.path());
    let cmp = compare(&dirs, &CompareOptions::default()).unwrap();
    let out = tmp.path().join("report");
    let written = write_report(&cmp, &out).unwrap();
    for stem in [
        "val_ppl",
        "train_loss",
        "alpha_beta-dynactglu",
        "final_alpha_beta",
    ] {
        assert_png(&out.join(format!("{stem}.png")));
        assert!(written.contains(&out.join(format!("{stem}.svg"))));
    }
    // Labels and legends are text in the SVGs.
    assert_svg(
        &out.join("val_ppl.svg"),
        &[
            "Validation perplexity",
            "swiglu (n=2)",
            "dynactglu (n=2)",
            "step",
        ],
    );
    assert_svg(&out.join("train_loss.svg"), &["Training loss", "swiglu"]);
    assert_svg(
        &out.join("alpha_beta-dynactglu.svg"),
        &["alpha per layer", "beta per layer", "layer 0", "layer 1"],
    );
    assert_svg(
        &out.join("final_alpha_beta.svg"),
        &["final alpha", "dynactglu"],
    );
    // No alpha/beta plot for the SwiGLU group.
    assert!(!out.join("alpha_beta-swiglu.png").exists());
}

#[test]
fn baseline_by_run_dir_ffn_and_target() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_groups(tmp.path());
    // A run directory as baseline: its own curve is the reference.
    let opts = CompareOptions {
        baseline: Some(dirs[2].display().to_string()),
        ..Default::default()
    };
    let cmp = compare(&dirs, &opts).unwrap();
    assert_eq!(cmp.baseline.run, Some(2));
    assert_eq!(cmp.baseline.group, 1);
    // swiglu-s1 at step 100: (10 - 8) / 8 = +25%.
    assert!((cmp.runs[0].rel_ppl[0] - 0.25).abs() < 1e-12);
    assert!((cmp.target_ppl - 4.6).abs() < 1e-12);
    // The swiglu group is now tested against the dynactglu group.
    assert!(cmp.groups[0].welch[2].is_some() && cmp.groups[1].welch[2].is_none());

    // An FFN name selects the group, and an explicit target overrides the final value.
    let opts = CompareOptions {
        baseline: Some("dynactglu".into()),
        target_ppl: Some(6.0),
        ..Default::default()
    };
    let cmp = compare(&dirs, &opts).unwrap();
    assert_eq!((cmp.baseline.group, cmp.baseline.run), (1, None));
    // dynactglu mean [8.5, 5.25, 4.5] reaches 6 at 100 + 2.5/3.25*100 = 176.92;
    // swiglu mean [11, 6.5, 5.1] at 200 + 0.5/1.4*100 = 235.71; speed-up 176.92/235.71 = 0.7506.
    let g = &cmp.groups[0];
    assert!((g.steps_to_target.unwrap() - (200.0 + 0.5 / 1.4 * 100.0)).abs() < 1e-9);
    let expected = (100.0 + 2.5 / 3.25 * 100.0) / (200.0 + 0.5 / 1.4 * 100.0);
    assert!((g.speedup.unwrap() - expected).abs() < 1e-12);

    // A target nobody reaches.
    let opts = CompareOptions {
        target_ppl: Some(1.0),
        ..Default::default()
    };
    let cmp = compare(&dirs, &opts).unwrap();
    assert!(cmp.runs.iter().all(|r| r.steps_to_target.is_none()));
    assert!(dynact_compare::table::markdown(&cmp).contains("not reached"));
}

#[test]
fn no_swiglu_means_first_run_is_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_run(
        tmp.path(),
        "a",
        "dynactglu",
        1,
        &STEPS,
        &[8.0, 6.0, 5.0],
        "",
    );
    let b = write_run(
        tmp.path(),
        "b",
        "dynactglu",
        2,
        &STEPS,
        &[9.0, 6.0, 4.0],
        "",
    );
    let cmp = compare(&[a, b], &CompareOptions::default()).unwrap();
    assert_eq!(cmp.baseline.run, Some(0));
    assert!((cmp.runs[1].rel_ppl[2] - (-0.2)).abs() < 1e-12);
}

#[test]
fn differing_config_key_splits_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = vec![
        write_run(
            tmp.path(),
            "lo-1",
            "dynactglu",
            1,
            &STEPS,
            &[8.0, 6.0, 5.0],
            "wd = 0.1",
        ),
        write_run(
            tmp.path(),
            "lo-2",
            "dynactglu",
            2,
            &STEPS,
            &[8.0, 6.0, 5.0],
            "wd = 0.1",
        ),
        write_run(
            tmp.path(),
            "hi-1",
            "dynactglu",
            1,
            &STEPS,
            &[8.0, 6.0, 5.0],
            "wd = 0.2",
        ),
        // A run without the key at all is tolerated and forms its own group.
        write_run(
            tmp.path(),
            "none",
            "swiglu",
            1,
            &STEPS,
            &[8.0, 6.0, 5.0],
            "",
        ),
    ];
    let cmp = compare(&dirs, &CompareOptions::default()).unwrap();
    assert_eq!(cmp.group_keys, vec!["train.wd".to_string()]);
    let labels: Vec<&str> = cmp.groups.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "dynactglu (train.wd=0.1)",
            "dynactglu (train.wd=0.2)",
            "swiglu (train.wd=(unset))"
        ]
    );
    assert_eq!(cmp.groups[0].members, vec![0, 1]);
}

#[test]
fn misaligned_steps_compare_shared_ones_with_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_run(
        tmp.path(),
        "a",
        "swiglu",
        1,
        &[100, 150, 200, 300],
        &[10.0, 8.0, 6.0, 5.0],
        "",
    );
    let b = write_run(
        tmp.path(),
        "b",
        "dynactglu",
        1,
        &[100, 200, 250],
        &[9.0, 5.0, 4.5],
        "",
    );
    let cmp = compare(&[a, b], &CompareOptions::default()).unwrap();
    assert_eq!(cmp.steps, vec![100, 200]);
    assert_eq!(cmp.notices.len(), 2);
    assert!(
        cmp.notices[0].starts_with("a: evaluation steps 150, 300 "),
        "{:?}",
        cmp.notices
    );
    assert!(
        cmp.notices[1].starts_with("b: evaluation steps 250 "),
        "{:?}",
        cmp.notices
    );
    // Target is the baseline's final value at the last shared step (6.0, not 5.0).
    assert_eq!(cmp.target_ppl, 6.0);

    let c = write_run(tmp.path(), "c", "swiglu", 1, &[400], &[4.0], "");
    let d = write_run(tmp.path(), "d", "swiglu", 2, &[500], &[4.0], "");
    let err = compare(&[c, d], &CompareOptions::default()).unwrap_err();
    assert!(matches!(err, CompareError::NoSharedSteps { .. }));
    assert!(err.to_string().contains("c: 400; d: 500"), "{err}");
}

#[test]
fn error_cases_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_run(
        tmp.path(),
        "good",
        "swiglu",
        1,
        &STEPS,
        &[8.0, 6.0, 5.0],
        "",
    );

    // No runs.
    let err = compare(&[], &CompareOptions::default()).unwrap_err();
    assert!(matches!(err, CompareError::NoRuns));

    // A directory without eval.jsonl.
    let empty = tmp.path().join("not-evaluated");
    fs::create_dir_all(&empty).unwrap();
    let err = compare(&[good.clone(), empty.clone()], &CompareOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CompareError::MissingEval { .. }));
    assert!(
        msg.contains("not-evaluated") && msg.contains("eval.jsonl"),
        "{msg}"
    );
    assert!(
        msg.contains("first evaluation") && !msg.contains('\n'),
        "{msg}"
    );

    // An unparsable line names file:line.
    let bad = write_run(tmp.path(), "bad", "swiglu", 2, &STEPS, &[8.0, 6.0, 5.0], "");
    let mut text = fs::read_to_string(bad.join("eval.jsonl")).unwrap();
    text = text.replacen("\n", "\n{\"step\": 150, \"val_ce\": oops}\n", 1);
    fs::write(bad.join("eval.jsonl"), text).unwrap();
    let err = compare(&[good.clone(), bad.clone()], &CompareOptions::default()).unwrap_err();
    assert!(
        matches!(err, CompareError::ParseLine { line: 2, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}:2:", bad.join("eval.jsonl").display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    // An unparsable metrics line is reported too.
    let badm = write_run(
        tmp.path(),
        "badm",
        "swiglu",
        3,
        &STEPS,
        &[8.0, 6.0, 5.0],
        "",
    );
    fs::write(
        badm.join("metrics.jsonl"),
        "{\"step\": 1, \"loss\": 2.0, \"lr\": 0.001, \"grad_norm\": 0.9, \"tokens_per_s\": 1234.0, \"elapsed_s\": 3.1}\nnot json\n",
    )
    .unwrap();
    let err = compare(std::slice::from_ref(&badm), &CompareOptions::default()).unwrap_err();
    assert!(err.to_string().contains("metrics.jsonl:2:"), "{err}");

    // A baseline that matches nothing lists what is available.
    let opts = CompareOptions {
        baseline: Some("geglu".into()),
        ..Default::default()
    };
    let err = compare(std::slice::from_ref(&good), &opts).unwrap_err();
    assert!(matches!(err, CompareError::BaselineNotFound { .. }));
    assert!(err.to_string().contains("\"geglu\"") && err.to_string().contains("good"));

    // A bad EMA weight.
    let opts = CompareOptions {
        ema_weight: 1.0,
        ..Default::default()
    };
    assert!(matches!(
        compare(std::slice::from_ref(&good), &opts).unwrap_err(),
        CompareError::BadEma(_)
    ));

    // A bad target.
    let opts = CompareOptions {
        target_ppl: Some(-1.0),
        ..Default::default()
    };
    assert!(matches!(
        compare(&[good], &opts).unwrap_err(),
        CompareError::BadTarget(_)
    ));
}

/// Gives a run's evaluations a train_ce of val_ce - `gap`.
fn add_train_ce(dir: &Path, gap: f64) {
    let path = dir.join("eval.jsonl");
    let text: String = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
            let ce = e["val_ce"].as_f64().unwrap();
            e["train_ce"] = serde_json::json!(ce - gap);
            e["train_ppl"] = serde_json::json!((ce - gap).exp());
            format!("{e}\n")
        })
        .collect();
    fs::write(path, text).unwrap();
}

#[test]
fn a_sweep_pairs_each_setting_with_swiglu_and_tables_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let mult = |m: u32| format!("[optim]\ndynact_lr_mult = {m}");
    let run = |name: &str, ffn: &str, seed: u64, ppl: &[f64], m: u32| {
        write_run(tmp.path(), name, ffn, seed, &STEPS, ppl, &mult(m))
    };
    // As a grid writes them: SwiGLU with the base value of the dynActGLU-only key.
    let dirs = vec![
        run("sw-s1", "swiglu", 1, &[10.0, 6.0, 5.0], 1),
        run("sw-s2", "swiglu", 2, &[12.0, 7.0, 5.2], 1),
        run("m1-s1", "dynactglu", 1, &[10.0, 6.0, 5.0], 1),
        run("m1-s2", "dynactglu", 2, &[12.0, 7.0, 5.2], 1),
        run("m10-s1", "dynactglu", 1, &[8.0, 5.5, 4.6], 10),
        run("m10-s2", "dynactglu", 2, &[9.0, 5.0, 4.4], 10),
    ];
    add_train_ce(&dirs[4], 0.25);
    add_train_ce(&dirs[5], 0.35);
    let cmp = compare(&dirs, &CompareOptions::default()).unwrap();
    assert_eq!(cmp.group_keys, ["optim.dynact_lr_mult"]);
    let labels: Vec<&str> = cmp.groups.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "swiglu (optim.dynact_lr_mult=n/a)",
            "dynactglu (optim.dynact_lr_mult=1)",
            "dynactglu (optim.dynact_lr_mult=10)"
        ]
    );
    assert!(cmp.groups[0].paired.is_none());
    let p10 = cmp.groups[2].paired.as_ref().unwrap();
    assert_eq!(p10.group, 0);
    // Step 300: mean 4.5 against SwiGLU's 5.1 (-11.76%), Welch p 0.0513 as in
    // two_groups_give_expected_table; the value 1 equals SwiGLU run for run.
    assert!((p10.rel_ppl[2] - (4.5 / 5.1 - 1.0)).abs() < 1e-12);
    assert!((p10.welch[2].unwrap().p - 0.0513).abs() < 1e-4);
    let p1 = cmp.groups[1].paired.as_ref().unwrap();
    assert_eq!(p1.rel_ppl, [0.0, 0.0, 0.0]);
    // The gap: val_ce - train_ce = 0.25 and 0.35, mean 0.3; none for the other groups.
    let gap = &cmp.groups[2].mean_gap;
    assert!(
        gap.iter().all(|g| (g.unwrap() - 0.3).abs() < 1e-12),
        "{gap:?}"
    );
    assert!(cmp.groups[0].mean_gap.iter().all(Option::is_none));

    let out = tmp.path().join("report");
    write_report(&cmp, &out).unwrap();
    let md = fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(
        md.contains("| 300 | dynactglu (optim.dynact_lr_mult=10) | swiglu (optim.dynact_lr_mult=n/a) | 4.5000 | 5.1000 | -11.76% | -4.243 | 2.00 | 0.0513 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| step | dynactglu (optim.dynact_lr_mult=10) |\n|---:|---:|\n| 100 | 0.3000 |"
        ),
        "{md}"
    );
    let csv = fs::read_to_string(out.join("paired.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 3, "{csv}");
    let csv = fs::read_to_string(out.join("per_run.csv")).unwrap();
    // m10-s1 at step 100: train_ce = ln 8 - 0.25 (to a last-digit rounding of the JSON reader).
    let train_ce: f64 = csv
        .lines()
        .find(|l| l.starts_with("m10-s1,") && l.contains(",100,"))
        .and_then(|l| l.rsplit(',').next()?.parse().ok())
        .unwrap();
    assert!((train_ce - (8f64.ln() - 0.25)).abs() < 1e-12, "{csv}");
    assert_png(&out.join("generalisation_gap.png"));
    assert_svg(
        &out.join("generalisation_gap.svg"),
        &["Generalisation gap", "lr_mult=10) (n=2)"],
    );
}
