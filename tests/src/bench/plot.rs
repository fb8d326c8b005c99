//! SVG pictures of one scenario's rows (with `plotters`, SVG backend only): deliveries per
//! second over time and the latency CDF, Relay and baseline on the same axes.

use std::path::Path;

use plotters::{
    coord::{ranged1d::Ranged, types::RangedCoordf64},
    prelude::*,
};

/// One series: a row's label, its rate over time and its latency CDF.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub label: String,
    /// Whether this is the baseline (drawn dashed).
    pub baseline: bool,
    /// Width of a timeline bin, in seconds.
    pub bin_s: f64,
    /// Deliveries per second per bin.
    pub per_s: &'a [f64],
    /// `(latency ms, fraction)` points.
    pub cdf: &'a [(f64, f64)],
}

/// Draws `series` as two charts side by side into `path`.
///
/// # Errors
/// The file could not be written.
pub fn scenario(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    timeline(&left, series)?;
    latency(&right, series)?;
    root.present().map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e}")
}

/// Relay and its baseline driven the same way share a colour; the baseline is dashed.
fn style(series: &[Series<'_>], s: &Series<'_>) -> ShapeStyle {
    let key = |s: &Series<'_>| {
        s.label
            .split_once(' ')
            .map_or(String::new(), |(_, k)| k.to_owned())
    };
    let mut keys: Vec<String> = series.iter().map(key).collect();
    keys.dedup();
    let i = keys.iter().position(|k| *k == key(s)).unwrap_or(0);
    let color = Palette99::pick(i).to_rgba();
    if s.baseline {
        color.stroke_width(3)
    } else {
        color.stroke_width(2)
    }
}

#[allow(clippy::cast_precision_loss)]
fn timeline(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let x_max = series
        .iter()
        .map(|s| s.per_s.len() as f64 * s.bin_s)
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.per_s.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("deliveries per second", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first send")
        .y_desc("deliveries/s")
        .draw()
        .map_err(err)?;
    lines(
        &mut chart,
        series,
        |s| {
            s.per_s
                .iter()
                .enumerate()
                .map(|(k, r)| ((k as f64 + 0.5) * s.bin_s, *r))
                .collect()
        },
        SeriesLabelPosition::UpperRight,
    )
}

/// One line per series (the baseline dashed) and the legend at `legend`.
fn lines<'a, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    series: &[Series<'_>],
    points: impl Fn(&Series<'_>) -> Vec<(f64, f64)>,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    for s in series {
        let points = points(s);
        let line = style(series, s);
        let drawn = if s.baseline {
            chart.draw_series(DashedLineSeries::new(points, 8, 4, line))
        } else {
            chart.draw_series(LineSeries::new(points, line))
        };
        drawn
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn latency(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let x_max = series
        .iter()
        .flat_map(|s| s.cdf.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.2;
    let x_min = series
        .iter()
        .flat_map(|s| s.cdf.iter().map(|p| p.0))
        .fold(x_max, f64::min)
        .max(0.1)
        * 0.8;
    let mut chart = ChartBuilder::on(area)
        .caption("publish → delivery latency (CDF)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(err)?;
    lines(
        &mut chart,
        series,
        |s| s.cdf.iter().map(|&(ms, q)| (ms.max(x_min), q)).collect(),
        SeriesLabelPosition::LowerRight,
    )
}
