//! A line chart as a standalone SVG file, for the demo's "what happened over time" picture:
//! no plotting dependency, opens in any browser and renders on GitHub.

use std::fmt::Write;

/// One line: its name in the legend, its colour, its points (x, y).
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub name: String,
    /// An SVG colour.
    pub color: &'static str,
    /// Dashed (a limit) or solid (a measurement).
    pub dashed: bool,
    /// The points, x ascending.
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart. `y_max` caps the y axis (lines above it are clipped at the top edge).
#[must_use]
pub fn line_chart(title: &str, x_label: &str, y_label: &str, y_max: f64, lines: &[Line]) -> String {
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v.min(y_max) / y_max) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    for i in 0..=6 {
        let v = x_max * f64::from(i) / 6.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{v:.1}</text>"#,
            x(v),
            H - BOTTOM + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        escape(x_label),
        H / 2.0,
        H / 2.0,
        escape(y_label)
    );
    #[allow(clippy::cast_precision_loss)]
    let legend_h = 18.0 * lines.len() as f64 + 8.0;
    let _ = write!(
        svg,
        r#"<rect x="{}" y="{}" width="300" height="{legend_h}" fill="white" fill-opacity="0.85"/>"#,
        W - RIGHT - 306.0,
        TOP - 4.0
    );
    for (i, line) in lines.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            line.color,
            path.join(" ")
        );
        #[allow(clippy::cast_precision_loss)]
        let ly = TOP + 8.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT - 300.0,
            W - RIGHT - 275.0,
            line.color,
            W - RIGHT - 268.0,
            ly + 4.0,
            escape(&line.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_line_with_its_legend() {
        let svg = line_chart(
            "t <1>",
            "s",
            "n",
            10.0,
            &[Line {
                name: "a & b".into(),
                color: "red",
                dashed: true,
                points: vec![(0.0, 1.0), (1.0, 20.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("a &amp; b"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("stroke-dasharray"));
    }
}
