//! The report's plots, as SVG and PNG: speed-up vs S, accuracy vs S, measured vs expected cost.
//!
//! Text is drawn with DejaVu Sans (bundled in `assets/fonts/`, Bitstream Vera licence), so the
//! plots need no system font library.

use crate::bench::report::{Mode, Report, Selection};
use crate::error::{Error, Result};
use crate::plan::ShardBy;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (900, 560);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Colour index.
    pub color: usize,
    /// Draw only the markers, no line.
    pub markers_only: bool,
    /// Dashed line (drawn as short segments).
    pub dashed: bool,
}

/// A chart: axes, scales and series.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Draw the line y = x.
    pub diagonal: bool,
    /// Where the legend goes: a corner the data leaves empty.
    pub legend: SeriesLabelPosition,
    /// The series.
    pub series: Vec<Series>,
}

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(
            "the bundled font assets/fonts/DejaVuSans.ttf cannot be read".into(),
        ))
    }
}

fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
        (lo - pad, hi + pad)
    }
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut x0, mut x1) = range(xs, chart.log_x);
    let (mut y0, mut y1) = range(ys, chart.log_y);
    if chart.diagonal {
        let lo = x0.min(y0);
        let hi = x1.max(y1);
        (x0, x1, y0, y1) = (lo, hi, lo, hi);
    }
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(80);
    let x_fmt = axis_format(chart.log_x);
    let y_fmt = axis_format(chart.log_y);
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| e.to_string())?;
            if chart.diagonal {
                ctx.draw_series(LineSeries::new(
                    vec![(x0, x0), (x1, x1)],
                    ShapeStyle::from(&RGBColor(150, 150, 150)).stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label("measured = expected")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], RGBColor(150, 150, 150))
                });
            }
            for s in &chart.series {
                let color = COLORS[s.color % COLORS.len()];
                let style = ShapeStyle::from(&color).stroke_width(2);
                let points = s.points.clone();
                if !s.markers_only {
                    if s.dashed {
                        ctx.draw_series(DashedLineSeries::new(points.clone(), 8, 6, style))
                            .map_err(|e| e.to_string())?;
                    } else {
                        ctx.draw_series(LineSeries::new(points.clone(), style))
                            .map_err(|e| e.to_string())?;
                    }
                }
                let label = s.label.clone();
                if s.dashed {
                    ctx.draw_series(
                        points
                            .iter()
                            .map(|&p| TriangleMarker::new(p, 6, color.filled())),
                    )
                    .map_err(|e| e.to_string())?
                    .label(label)
                    .legend(move |(x, y)| {
                        EmptyElement::at((x + 12, y))
                            + PathElement::new(vec![(-12, 0), (12, 0)], style)
                            + TriangleMarker::new((0, 0), 6, color.filled())
                    });
                } else {
                    ctx.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                        .map_err(|e| e.to_string())?
                        .label(label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x + 12, y))
                                + PathElement::new(vec![(-12, 0), (12, 0)], style)
                                + Circle::new((0, 0), 4, color.filled())
                        });
                }
            }
            ctx.configure_series_labels()
                .position(chart.legend.clone())
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => body!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?),
        (true, false) => body!(builder
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(|e| e.to_string())?),
        (false, true) => body!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| e.to_string())?),
        (true, true) => body!(builder
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(|e| e.to_string())?),
    }
    root.present().map_err(|e| e.to_string())
}

/// A compact tick label: `20`, `0.85`, `12k`, `1.5M`.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// Tick labels for an axis: on a log axis only 1, 2 and 5 times a power of ten are labelled,
/// so the labels between decades do not run into each other.
fn axis_format(log: bool) -> impl Fn(&f64) -> String {
    move |&v: &f64| {
        if !log || v <= 0.0 {
            return tick(v);
        }
        let mantissa = v / 10f64.powf(v.log10().floor());
        if [1.0, 2.0, 5.0, 10.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6 * m)
        {
            tick(v)
        } else {
            String::new()
        }
    }
}

/// Draw `chart` to `<stem>.svg` and `<stem>.png`; returns both paths.
pub fn draw(stem: &Path, chart: &Chart) -> Result<Vec<PathBuf>> {
    register_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let fail = |path: &Path, message: String| Error::Report {
        path: path.to_path_buf(),
        message,
    };
    draw_on(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart).map_err(|m| fail(&svg, m))?;
    draw_on(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)
        .map_err(|m| fail(&png, m))?;
    Ok(vec![svg, png])
}

fn user_configs(r: &Report) -> impl Iterator<Item = &crate::bench::report::ConfigResult> {
    r.configs.iter().filter(|c| c.shard_by == ShardBy::User)
}

fn slices_of(r: &Report) -> Vec<usize> {
    let mut v: Vec<usize> = user_configs(r).map(|c| c.slices).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The three plots of a report.
pub fn all(dir: &Path, r: &Report) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let slices = slices_of(r);
    let max_k = user_configs(r)
        .flat_map(|c| c.experiments.iter().map(|e| e.k))
        .max()
        .unwrap_or(1);

    // Speed-up vs S: one request (solid), K batched (dashed), per R.
    let mut series = Vec::new();
    for (i, &rr) in slices.iter().enumerate() {
        for (mode, k, dashed) in [(Mode::Single, 1, false), (Mode::Batched, max_k, true)] {
            let points: Vec<(f64, f64)> = user_configs(r)
                .filter(|c| c.slices == rr)
                .filter_map(|c| {
                    c.experiments
                        .iter()
                        .find(|e| e.selection == Selection::Random && e.mode == mode && e.k == k)
                        .map(|e| (c.shards as f64, e.speedup))
                })
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    label: if k == 1 {
                        format!("R={rr}, 1 request")
                    } else {
                        format!("R={rr}, {k} users batched")
                    },
                    points,
                    color: i,
                    markers_only: false,
                    dashed,
                });
            }
        }
    }
    out.extend(draw(
        &dir.join("speedup_vs_shards"),
        &Chart {
            title: format!(
                "Unlearning speed-up over retraining from scratch ({})",
                r.dataset.name
            ),
            x_label: "shards S".into(),
            y_label: "speed-up (rows×epochs)".into(),
            log_x: true,
            log_y: true,
            diagonal: false,
            legend: SeriesLabelPosition::UpperLeft,
            series,
        },
    )?);

    // Accuracy vs S.
    let mut series = Vec::new();
    for (i, &rr) in slices.iter().enumerate() {
        let mean: Vec<(f64, f64)> = user_configs(r)
            .filter(|c| c.slices == rr)
            .filter_map(|c| c.accuracy_mean.map(|a| (c.shards as f64, a)))
            .collect();
        let vote: Vec<(f64, f64)> = user_configs(r)
            .filter(|c| c.slices == rr)
            .filter_map(|c| c.accuracy_vote.map(|a| (c.shards as f64, a)))
            .collect();
        for (pts, what, dashed) in [(mean, "mean", false), (vote, "vote", true)] {
            if !pts.is_empty() {
                series.push(Series {
                    label: format!("R={rr}, {what}"),
                    points: pts,
                    color: i,
                    markers_only: false,
                    dashed,
                });
            }
        }
    }
    out.extend(draw(
        &dir.join("accuracy_vs_shards"),
        &Chart {
            title: format!("Held-out accuracy of the ensemble ({})", r.dataset.name),
            x_label: "shards S".into(),
            y_label: "accuracy".into(),
            log_x: true,
            log_y: false,
            diagonal: false,
            legend: SeriesLabelPosition::LowerLeft,
            series,
        },
    )?);

    // Measured vs expected, one request, every configuration.
    let mut series = Vec::new();
    for (i, by) in [ShardBy::User, ShardBy::Row].into_iter().enumerate() {
        let users: Vec<(f64, f64)> = r
            .configs
            .iter()
            .filter(|c| c.shard_by == by)
            .map(|c| {
                (
                    c.formula_check.expected_users,
                    c.formula_check.measured_mean,
                )
            })
            .collect();
        let paper: Vec<(f64, f64)> = r
            .configs
            .iter()
            .filter(|c| c.shard_by == by)
            .map(|c| {
                (
                    c.formula_check.expected_paper,
                    c.formula_check.measured_mean,
                )
            })
            .collect();
        let name = match by {
            ShardBy::User => "by user",
            ShardBy::Row => "by row",
        };
        if !users.is_empty() {
            // The paper's points first, so that where both agree the users' point shows on top.
            series.push(Series {
                label: format!("sharded {name}: vs SISA one-row formula"),
                points: paper,
                color: 2 * i + 1,
                markers_only: true,
                dashed: false,
            });
            series.push(Series {
                label: format!("sharded {name}: vs expectation for these users"),
                points: users,
                color: 2 * i,
                markers_only: true,
                dashed: false,
            });
        }
    }
    out.extend(draw(
        &dir.join("measured_vs_expected"),
        &Chart {
            title: "One request: measured vs expected rows×epochs".into(),
            x_label: "expected rows×epochs".into(),
            y_label: "measured rows×epochs (mean of dry-run plans)".into(),
            log_x: true,
            log_y: true,
            diagonal: true,
            legend: SeriesLabelPosition::LowerRight,
            series,
        },
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_compact_and_log_axes_sparse() {
        assert_eq!(tick(20.0), "20");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.85), "0.85");
        assert_eq!(tick(12_000.0), "12k");
        assert_eq!(tick(1_500_000.0), "1.5M");
        let f = axis_format(true);
        assert_eq!(f(&20.0), "20");
        assert_eq!(f(&50_000.0), "50k");
        assert_eq!(f(&30.0), "");
        assert_eq!(axis_format(false)(&30.0), "30");
    }

    #[test]
    #[ignore = "writes the plots of an existing results.json: SISA_PLOT_FROM=DIR"]
    fn replot() {
        let dir = std::path::PathBuf::from(std::env::var("SISA_PLOT_FROM").unwrap());
        let r: Report =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        all(&dir, &r).unwrap();
    }
}
