//! SVG charts for the HTML report, drawn with `plotters`: line charts with one series per run,
//! and bar charts. Every chart has a title, axis labels with units and a legend.

use plotters::prelude::*;

/// Size of every chart, pixels.
const SIZE: (u32, u32) = (720, 320);

/// A named series of (x, y) points.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// Axis labels with their units.
pub struct Axes<'a> {
    /// x axis.
    pub x: &'a str,
    /// y axis.
    pub y: &'a str,
}

fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLORS[i % COLORS.len()]
}

/// A legend label that fits the legend column: long ones (run paths) keep their end.
fn legend_label(label: &str) -> String {
    const MAX: usize = 24;
    let n = label.chars().count();
    if n <= MAX {
        return label.to_string();
    }
    let tail: String = label.chars().skip(n - (MAX - 1)).collect();
    format!("…{tail}")
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 1e-3).max(1e-9);
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draw the legend box and finish the document.
fn legend_and_present<'b>(
    chart: &mut Chart<'b, 'b>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A line chart of `series` as an SVG document.
///
/// # Errors
/// When plotters fails to draw (a message).
pub fn lines(title: &str, axes: Axes<'_>, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        legend_and_present(&mut chart, &root)?;
    }
    Ok(svg)
}

/// A bar chart: one group of bars per category, one bar per series in each group.
///
/// # Errors
/// When plotters fails to draw (a message).
pub fn bars(
    title: &str,
    axes: Axes<'_>,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        // The legend gets its own column on the right: over grouped bars it hides some.
        let (plot, legend) = root.split_horizontally(SIZE.0 - 170);
        let top = series
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let n = categories.len().max(1);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            // Category i is centred on x = i.
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels = categories.to_vec();
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .x_labels(n + 2)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() > 1e-6 || i < 0.0 {
                    return String::new();
                }
                labels.get(i as usize).cloned().unwrap_or_default()
            })
            .disable_x_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        let k = series.len().max(1) as f64;
        for (j, (label, values)) in series.iter().enumerate() {
            let color = palette(j);
            let width = 0.8 / k;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x = i as f64 - 0.4 + j as f64 * width;
                    Rectangle::new([(x, 0.0), (x + width * 0.9, v.max(0.0))], color.filled())
                }))
                .map_err(|e| e.to_string())?;
            let y = 48 + 20 * j as i32;
            legend
                .draw(&Rectangle::new([(4, y - 5), (16, y + 5)], color.filled()))
                .map_err(|e| e.to_string())?;
            legend
                .draw(&Text::new(
                    legend_label(label),
                    (22, y - 7),
                    ("sans-serif", 13),
                ))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A ROC chart: TPR against FPR on the unit square, one curve per series (steps, no markers),
/// the chance diagonal dashed in grey.
///
/// # Errors
/// When plotters fails to draw (a message).
pub fn roc(title: &str, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate (non-members called members)")
            .y_desc("true-positive rate")
            .draw()
            .map_err(|e| e.to_string())?;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("chance (AUC 0.5)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
