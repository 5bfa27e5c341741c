//! Grouped bar charts as standalone SVG (plotters' SVG backend: no fonts, no external assets),
//! for the report: one group per encoder and feature, one bar per series (parts, objects).

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One series of bars: a name for the legend, its colour, and a value (or none) per group.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Fill colour.
    pub color: RGBColor,
    /// One value per group; `None` draws no bar and writes "n/a".
    pub values: Vec<Option<f64>>,
}

/// The two colours the report uses: parts, objects.
pub const PART_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Objects' bars.
pub const OBJECT_COLOR: RGBColor = RGBColor(255, 127, 14);

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("drawing a chart: {e}"))
}

/// A grouped bar chart, values in percent (0–100), as SVG text.
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
) -> Result<String> {
    let g = groups.len().max(1);
    let width = (160 + 110 * g as u32).max(480);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(48)
            // Headroom above 100 % for the value labels and the legend (the band above 100
            // has no tick labels).
            .build_cartesian_2d(0f64..g as f64, 0f64..140f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .x_labels(0)
            .y_desc(y_label)
            .y_labels(8)
            .y_label_formatter(&|v| {
                if *v <= 100.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_err)?;
        let ns = series.len().max(1) as f64;
        let bar = 0.8 / ns;
        for (si, s) in series.iter().enumerate() {
            let color = s.color;
            let bars = s.values.iter().enumerate().filter_map(move |(gi, v)| {
                v.map(|v| {
                    let x0 = gi as f64 + 0.1 + si as f64 * bar;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + bar * 0.92, v.clamp(0.0, 100.0))],
                        color.filled(),
                    )
                })
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            let labels = s.values.iter().enumerate().map(move |(gi, v)| {
                let x = gi as f64 + 0.1 + (si as f64 + 0.46) * bar;
                let (text, y) = match v {
                    Some(v) => (format!("{v:.1}"), v.clamp(0.0, 100.0) + 1.5),
                    None => ("n/a".to_string(), 1.5),
                };
                Text::new(
                    text,
                    (x, y),
                    ("sans-serif", 11).into_font().color(&BLACK).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )
            });
            chart.draw_series(labels).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_err)?;
        // Group names under the plotting area, centred on their groups.
        for (gi, name) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px, py + 8),
                ("sans-serif", 12).into_font().color(&BLACK).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Top,
                    ),
                ),
            ))
            .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
