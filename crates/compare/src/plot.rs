//! Plots of a [`Comparison`], each written as PNG and SVG with `plotters`: validation
//! perplexity against step (log y, one band per group: mean line, min-max band), EMA-smoothed
//! training loss, the generalisation gap (val_ce - train_ce, where the runs evaluated a slice
//! of their training data), alpha and beta of every layer over training (one file per
//! dynActGLU group), and final alpha and beta against depth.
//!
//! Only pure-Rust backends are used, so no system font or image library is needed: text is
//! drawn with `ab_glyph` from the Ubuntu Light TTF that the `epaint_default_fonts` crate ships
//! (registered once as "sans-serif").

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{stats, CompareError, Comparison};

/// Pixel size of every plot (PNG) and view box (SVG).
pub const SIZE: (u32, u32) = (1000, 640);
const FONT: &str = "sans-serif";

type DrawResult = Result<(), String>;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure only means text is missing; plotting itself then reports the error.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Colour of the i-th group, layer or run.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// `[lo, hi]` widened so that a flat series still gets a visible range.
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 0.0 {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        (lo - d, hi + d)
    } else {
        (lo - span * frac, hi + span * frac)
    }
}

/// A file-name-safe version of a group label.
pub fn slug(label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// Writes every applicable plot as `<name>.png` and `<name>.svg` into `out_dir` and returns
/// the paths: `val_ppl`, `train_loss` (runs with metrics.jsonl), `generalisation_gap` (runs
/// with train_ce), `alpha_beta-<group>` (per
/// group with alpha/beta logs) and `final_alpha_beta` (when any run has them).
pub fn write_plots(cmp: &Comparison, out_dir: &Path) -> Result<Vec<PathBuf>, CompareError> {
    register_font();
    std::fs::create_dir_all(out_dir).map_err(|source| CompareError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    write_both(
        out_dir,
        "val_ppl",
        &mut written,
        |a| ppl_plot(a, cmp),
        |a| ppl_plot(a, cmp),
    )?;
    if cmp.runs.iter().any(|r| !r.run.metrics.is_empty()) {
        write_both(
            out_dir,
            "train_loss",
            &mut written,
            |a| loss_plot(a, cmp),
            |a| loss_plot(a, cmp),
        )?;
    }
    if cmp
        .groups
        .iter()
        .any(|g| g.mean_gap.iter().any(Option::is_some))
    {
        write_both(
            out_dir,
            "generalisation_gap",
            &mut written,
            |a| gap_plot(a, cmp),
            |a| gap_plot(a, cmp),
        )?;
    }
    for (gi, g) in cmp.groups.iter().enumerate() {
        if g.members.iter().any(|&i| cmp.runs[i].run.has_alpha_beta()) {
            let name = format!("alpha_beta-{}", slug(&g.label));
            write_both(
                out_dir,
                &name,
                &mut written,
                |a| alpha_beta_plot(a, cmp, gi),
                |a| alpha_beta_plot(a, cmp, gi),
            )?;
        }
    }
    if cmp.runs.iter().any(|r| r.run.has_alpha_beta()) {
        write_both(
            out_dir,
            "final_alpha_beta",
            &mut written,
            |a| final_alpha_beta_plot(a, cmp),
            |a| final_alpha_beta_plot(a, cmp),
        )?;
    }
    Ok(written)
}

fn write_both(
    out_dir: &Path,
    name: &str,
    written: &mut Vec<PathBuf>,
    png: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
    svg: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> Result<(), CompareError> {
    let png_path = out_dir.join(format!("{name}.png"));
    let fail = |path: &Path, msg: String| CompareError::Plot {
        path: path.to_path_buf(),
        msg,
    };
    {
        let root = BitMapBackend::new(&png_path, SIZE).into_drawing_area();
        png(&root).map_err(|m| fail(&png_path, m))?;
        root.present().map_err(|e| fail(&png_path, e.to_string()))?;
    }
    written.push(png_path);
    let svg_path = out_dir.join(format!("{name}.svg"));
    {
        let root = SVGBackend::new(&svg_path, SIZE).into_drawing_area();
        svg(&root).map_err(|m| fail(&svg_path, m))?;
        root.present().map_err(|e| fail(&svg_path, e.to_string()))?;
    }
    written.push(svg_path);
    Ok(())
}

/// (min x, max x, min y, max y) of some points; infinite when there are none.
fn bounds<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (f64, f64, f64, f64) {
    points.fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(x0, x1, y0, y1), &(x, y)| (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
    )
}

/// Validation perplexity against step, log y: per group the mean line and a min-max band.
fn ppl_plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, cmp: &Comparison) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let xs: Vec<f64> = cmp.steps.iter().map(|&s| s as f64).collect();
    let (x0, x1) = padded(xs[0], xs[xs.len() - 1], 0.02);
    let lo = cmp
        .groups
        .iter()
        .flat_map(|g| g.min_ppl.iter())
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = cmp
        .groups
        .iter()
        .flat_map(|g| g.max_ppl.iter())
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo > 0.0 {
        (lo / 1.05, hi * 1.05)
    } else {
        (1.0, 10.0)
    };
    let mut chart = ChartBuilder::on(root)
        .caption("Validation perplexity", (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        // The y axis is ln(ppl) on a linear scale, labelled with ppl: evenly spaced labels at
        // any range, where plotters' log axis labels only powers of its base.
        .build_cartesian_2d(x0..x1, lo.ln()..hi.ln())
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("validation perplexity (log scale)")
        .y_labels(12)
        .y_label_formatter(&|y| format!("{:.2}", y.exp()))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(e2s)?;
    for (gi, g) in cmp.groups.iter().enumerate() {
        let c = color(gi);
        if g.members.len() > 1 {
            let mut band: Vec<(f64, f64)> = xs
                .iter()
                .copied()
                .zip(g.max_ppl.iter().map(|p| p.ln()))
                .collect();
            band.extend(
                xs.iter()
                    .copied()
                    .zip(g.min_ppl.iter().map(|p| p.ln()))
                    .rev(),
            );
            chart
                .draw_series(std::iter::once(Polygon::new(band, c.mix(0.2).filled())))
                .map_err(e2s)?;
        }
        let line: Vec<(f64, f64)> = xs
            .iter()
            .copied()
            .zip(g.mean_ppl.iter().map(|p| p.ln()))
            .collect();
        let label = format!("{} (n={})", g.label, g.members.len());
        draw_group_line(&mut chart, line, c, label)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Axes of a quantity against the training step, linear in both, with its mesh drawn.
fn step_chart<'a, DB: DrawingBackend + 'a>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, DB>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(e2s)?;
    Ok(chart)
}

/// A group's mean curve: a line with its points marked, named `label` in the legend.
fn draw_group_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    points: Vec<(f64, f64)>,
    c: RGBColor,
    label: String,
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
        .map_err(e2s)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart
        .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
        .map_err(e2s)?;
    Ok(())
}

fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(e2s)
}

/// val_ce - train_ce against step: per group the mean over its seeds, at the steps where every
/// member scored the training slice.
fn gap_plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, cmp: &Comparison) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let curves: Vec<(usize, Vec<(f64, f64)>)> = cmp
        .groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let pts = cmp
                .steps
                .iter()
                .zip(&g.mean_gap)
                .filter_map(|(&s, gap)| Some((s as f64, (*gap)?)))
                .collect();
            (gi, pts)
        })
        .collect();
    let (x0, x1, y0, y1) = bounds(curves.iter().flat_map(|(_, c)| c.iter()));
    let (x0, x1) = padded(x0, x1, 0.02);
    let (y0, y1) = padded(y0.min(0.0), y1.max(0.0), 0.05);
    let mut chart = step_chart(
        root,
        "Generalisation gap (val_ce - train_ce)",
        "val_ce - train_ce (nats, mean over seeds)",
        x0..x1,
        y0..y1,
    )?;
    for (gi, pts) in curves.into_iter().filter(|(_, p)| !p.is_empty()) {
        let c = color(gi);
        let label = format!(
            "{} (n={})",
            cmp.groups[gi].label,
            cmp.groups[gi].members.len()
        );
        draw_group_line(&mut chart, pts, c, label)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// EMA-smoothed training loss against step, one line per run coloured by group.
fn loss_plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, cmp: &Comparison) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let curves: Vec<(usize, Vec<(f64, f64)>)> = cmp
        .runs
        .iter()
        .map(|r| {
            let losses: Vec<f64> = r.run.metrics.iter().map(|m| m.loss as f64).collect();
            let smooth = stats::ema(&losses, cmp.ema_weight);
            let pts = r
                .run
                .metrics
                .iter()
                .zip(smooth)
                .map(|(m, l)| (m.step as f64, l))
                .filter(|(_, l)| l.is_finite())
                .collect();
            (r.group, pts)
        })
        .collect();
    let (x0, x1, y0, y1) = bounds(curves.iter().flat_map(|(_, c)| c.iter()));
    let (x0, x1) = padded(x0, x1, 0.02);
    let (y0, y1) = padded(y0, y1, 0.05);
    let mut chart = step_chart(
        root,
        &format!("Training loss (EMA, weight {})", cmp.ema_weight),
        "training loss (nats)",
        x0..x1,
        y0..y1,
    )?;
    let mut labelled = vec![false; cmp.groups.len()];
    for (g, pts) in curves {
        let c = color(g);
        let series = chart
            .draw_series(LineSeries::new(pts, c.stroke_width(1)))
            .map_err(e2s)?;
        if !labelled[g] {
            labelled[g] = true;
            series
                .label(cmp.groups[g].label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e2s)?;
    Ok(())
}

/// Alpha (top) and beta (bottom) of every layer over training for one group's runs; one
/// colour per layer, seeds drawn on top of each other.
fn alpha_beta_plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cmp: &Comparison,
    group: usize,
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let g = &cmp.groups[group];
    let panels = root.split_evenly((2, 1));
    for (panel, which) in panels.iter().zip(["alpha", "beta"]) {
        // series[(run, layer)] = points
        let mut series: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
        for &ri in &g.members {
            for m in &cmp.runs[ri].run.metrics {
                let vals = if which == "alpha" { &m.alpha } else { &m.beta };
                let Some(vals) = vals else { continue };
                for (layer, &v) in vals.iter().enumerate() {
                    if !v.is_finite() {
                        continue;
                    }
                    match series.iter_mut().find(|(l, _)| *l == layer + ri * 10_000) {
                        Some((_, pts)) => pts.push((m.step as f64, v)),
                        None => series.push((layer + ri * 10_000, vec![(m.step as f64, v)])),
                    }
                }
            }
        }
        let (x0, x1, y0, y1) = bounds(series.iter().flat_map(|(_, p)| p.iter()));
        let (x0, x1) = padded(x0, x1, 0.02);
        let (y0, y1) = padded(y0, y1, 0.08);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{which} per layer: {}", g.label), (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(which)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FONT, 13))
            .draw()
            .map_err(e2s)?;
        let mut labelled = Vec::new();
        for (key, pts) in series {
            let layer = key % 10_000;
            let c = color(layer);
            let s = chart
                .draw_series(LineSeries::new(pts, c.stroke_width(1)))
                .map_err(e2s)?;
            if !labelled.contains(&layer) {
                labelled.push(layer);
                s.label(format!("layer {layer}")).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e2s)?;
    }
    Ok(())
}

/// Final alpha (top) and beta (bottom) against layer index: per group the mean over its runs,
/// each run's values as points.
fn final_alpha_beta_plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cmp: &Comparison,
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let panels = root.split_evenly((2, 1));
    for (panel, which) in panels.iter().zip(["alpha", "beta"]) {
        let last = |ri: usize| -> Option<Vec<f64>> {
            cmp.runs[ri].run.metrics.iter().rev().find_map(|m| {
                if which == "alpha" {
                    m.alpha.clone()
                } else {
                    m.beta.clone()
                }
            })
        };
        let per_run: Vec<(usize, Vec<f64>)> = (0..cmp.runs.len())
            .filter_map(|ri| last(ri).map(|v| (cmp.runs[ri].group, v)))
            .collect();
        let layers = per_run.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
        let vals = per_run.iter().flat_map(|(_, v)| v.iter()).copied();
        let (y0, y1) = vals
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (y0, y1) = padded(y0, y1, 0.1);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("final {which} against depth"), (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(layers as f64 - 0.5), y0..y1)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc(which)
            .x_labels(layers.min(24))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FONT, 13))
            .draw()
            .map_err(e2s)?;
        for (gi, g) in cmp.groups.iter().enumerate() {
            let runs: Vec<&Vec<f64>> = per_run
                .iter()
                .filter(|(rg, _)| *rg == gi)
                .map(|(_, v)| v)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let c = color(gi);
            let n = runs.iter().map(|v| v.len()).min().unwrap_or(0);
            let mean: Vec<(f64, f64)> = (0..n)
                .map(|l| {
                    let xs: Vec<f64> = runs.iter().map(|v| v[l]).collect();
                    (l as f64, stats::mean(&xs))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(mean, c.stroke_width(2)))
                .map_err(e2s)?
                .label(g.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            for v in runs {
                chart
                    .draw_series(
                        v.iter()
                            .enumerate()
                            .map(|(l, &y)| Circle::new((l as f64, y), 3, c.filled())),
                    )
                    .map_err(e2s)?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e2s)?;
    }
    Ok(())
}
