//! Line charts as standalone SVG, for the benchmark's pictures: a row of panels, each with its
//! axes, ticks and one polyline per series. No dependency, no script, no external font.

use std::fmt::Write as _;

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// A CSS colour.
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// One chart of the row.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A logarithmic x axis (concurrency doubles from point to point).
    pub log_x: bool,
    /// Labels for the x ticks at the points' x values, in order; empty: the values themselves.
    pub x_labels: Vec<String>,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 460.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 70.0;

/// The panels side by side, under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let total_width = WIDTH * panels.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{}" viewBox="0 0 {total_width} {}" font-family="sans-serif" font-size="12">"#,
        HEIGHT + 30.0,
        HEIGHT + 30.0
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        total_width / 2.0,
        escape(title)
    );
    for (index, panel) in panels.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<g transform="translate({},30)">"#,
            WIDTH * index as f64
        );
        panel_svg(&mut svg, panel);
        svg.push_str("</g>");
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel_svg(svg: &mut String, panel: &Panel) {
    let points = panel.series.iter().flat_map(|series| series.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    let scale_x = |x: f64| -> f64 {
        let (low, high, value) = if panel.log_x {
            (x_min.max(1e-9).ln(), x_max.max(1e-9).ln(), x.max(1e-9).ln())
        } else {
            (x_min, x_max, x)
        };
        let span = if high > low { high - low } else { 1.0 };
        LEFT + (value - low) / span * (WIDTH - LEFT - RIGHT)
    };
    let y_top = nice_ceiling(y_max);
    let scale_y = |y: f64| TOP + (1.0 - y / y_top) * (HEIGHT - TOP - BOTTOM);

    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        TOP - 16.0,
        escape(&panel.title)
    );
    // Horizontal grid lines and y ticks: five steps.
    for step in 0..=5 {
        let value = y_top * step as f64 / 5.0;
        let y = scale_y(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick(value)
        );
    }
    // x ticks at the data's x values.
    let mut xs: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|point| point.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for (index, x) in xs.iter().enumerate() {
        let position = scale_x(*x);
        let label = panel
            .x_labels
            .get(index)
            .cloned()
            .unwrap_or_else(|| tick(*x));
        let _ = write!(
            svg,
            r##"<line x1="{position:.1}" y1="{:.1}" x2="{position:.1}" y2="{:.1}" stroke="#999"/><text x="{position:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 4.0,
            HEIGHT - BOTTOM + 17.0,
            escape(&label)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 34.0,
        escape(&panel.x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(&panel.y_label)
    );
    for (index, series) in panel.series.iter().enumerate() {
        let path: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", scale_x(x), scale_y(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            series.color,
            path.join(" ")
        );
        for point in &path {
            let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                series.color
            );
        }
        // The legend, under the x label.
        let legend_x = LEFT + 130.0 * index as f64;
        let legend_y = HEIGHT - 14.0;
        let _ = write!(
            svg,
            r#"<rect x="{legend_x:.1}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{legend_y:.1}">{}</text>"#,
            legend_y - 6.0,
            series.color,
            legend_x + 20.0,
            escape(&series.name)
        );
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^n at or above `value` (a round top for the y axis).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label: thousands as `k`, small values with one decimal.
fn tick(value: f64) -> String {
    if value >= 1000.0 {
        let thousands = value / 1000.0;
        if thousands.fract() == 0.0 {
            format!("{thousands:.0}k")
        } else {
            format!("{thousands:.1}k")
        }
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_and_ticks_are_round() {
        assert_eq!(nice_ceiling(7_987.0), 10_000.0);
        assert_eq!(nice_ceiling(12_618.0), 20_000.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(tick(12_000.0), "12k");
        assert_eq!(tick(2_500.0), "2.5k");
        assert_eq!(tick(7.25), "7.2");
        assert_eq!(tick(64.0), "64");
    }

    #[test]
    fn a_panel_draws_each_series_with_its_points_and_escapes_text() {
        let svg = render(
            "gateway <bench> & co",
            &[Panel {
                title: "throughput".into(),
                x_label: "clients".into(),
                y_label: "orders/s".into(),
                log_x: true,
                x_labels: Vec::new(),
                series: vec![
                    Series {
                        name: "accepted".into(),
                        color: "#2563eb",
                        points: vec![(1.0, 500.0), (4.0, 2000.0), (16.0, 6000.0)],
                    },
                    Series {
                        name: "ceiling".into(),
                        color: "#dc2626",
                        points: vec![(1.0, 9000.0), (16.0, 9000.0)],
                    },
                ],
            }],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("gateway &lt;bench&gt; &amp; co"));
        // The log axis puts 4 halfway between 1 and 16.
        let first = LEFT;
        let last = WIDTH - RIGHT;
        let middle = format!("{:.1},", (first + last) / 2.0);
        assert!(svg.contains(&middle), "{middle} in {svg}");
        // The y axis tops out at the round 10k above 9000.
        assert!(svg.contains(">10k</text>"));
    }
}
