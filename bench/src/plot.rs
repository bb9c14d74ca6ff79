//! The two curves of a full run as one SVG file (no plotting crate: a few lines and
//! labels): consumer throughput by prefetch, one line per process count; and the index's
//! bytes per job and ready time by jobs indexed.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::plan::{CURVE_PREFETCH, CURVE_PROCESSES};

const W: f64 = 420.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;
const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// An SVG of both curves; `None` when neither was measured.
pub fn curves(
    consumers: &HashMap<(usize, u16), f64>,
    index: &[(usize, f64, f64)],
    reference: &str,
) -> Option<String> {
    if consumers.is_empty() && index.is_empty() {
        return None;
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif" font-size="11">"#,
        2.0 * W
    );
    svg.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel_consumers(&mut svg, consumers, reference);
    panel_index(&mut svg, index);
    svg.push_str("</svg>\n");
    Some(svg)
}

fn axes(svg: &mut String, x0: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" text-anchor="middle" font-weight="bold">{title}</text>"#,
        x0 + W / 2.0
    );
    let _ = write!(
        svg,
        r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#333"/><line x1="{a}" y1="{d}" x2="{a}" y2="{b}" stroke="#333"/>"##,
        a = x0 + PAD,
        b = H - PAD,
        c = x0 + W - 12.0,
        d = 28.0
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#,
        x0 + W / 2.0,
        H - 12.0
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">{ylabel}</text>"#,
        x0 + 14.0,
        H / 2.0,
        x0 + 14.0,
        H / 2.0
    );
}

/// Maps `i` of `n` points and a value up to `max` into the panel at `x0`.
fn point(x0: f64, i: usize, n: usize, v: f64, max: f64) -> (f64, f64) {
    let x = x0 + PAD + 20.0 + (W - PAD - 52.0) * i as f64 / (n.max(2) - 1) as f64;
    let y = (H - PAD) - (H - PAD - 32.0) * (v / max.max(1e-9));
    (x, y)
}

fn y_ticks(svg: &mut String, x0: f64, max: f64) {
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let (_, y) = point(x0, 0, 2, v, max);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            x0 + PAD - 4.0,
            y + 4.0,
            v
        );
    }
}

fn panel_consumers(svg: &mut String, curve: &HashMap<(usize, u16), f64>, reference: &str) {
    let x0 = 0.0;
    axes(
        svg,
        x0,
        &format!("Consumers at {reference}, stubs 0 ms"),
        "prefetch",
        "jobs/s",
    );
    let max = curve.values().copied().fold(0.0, f64::max) * 1.1;
    y_ticks(svg, x0, max);
    let n = CURVE_PREFETCH.len();
    for (i, f) in CURVE_PREFETCH.iter().enumerate() {
        let (x, _) = point(x0, i, n, 0.0, max);
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{f}</text>"#,
            H - PAD + 14.0
        );
    }
    for (k, p) in CURVE_PROCESSES.iter().enumerate() {
        let pts: Vec<(f64, f64)> = CURVE_PREFETCH
            .iter()
            .enumerate()
            .filter_map(|(i, f)| curve.get(&(*p, *f)).map(|v| point(x0, i, n, *v, max)))
            .collect();
        polyline(svg, &pts, COLOURS[k % COLOURS.len()]);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" fill="{}">{p} process{}</text>"#,
            x0 + W - 100.0,
            40.0 + 14.0 * k as f64,
            COLOURS[k % COLOURS.len()],
            if *p == 1 { "" } else { "es" }
        );
    }
}

fn panel_index(svg: &mut String, index: &[(usize, f64, f64)]) {
    let x0 = W;
    axes(
        svg,
        x0,
        "Job index of one ingress",
        "jobs indexed",
        "bytes per job",
    );
    let max = index.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    y_ticks(svg, x0, max);
    let n = index.len();
    let pts: Vec<(f64, f64)> = index
        .iter()
        .enumerate()
        .map(|(i, (_, b, _))| point(x0, i, n, *b, max))
        .collect();
    polyline(svg, &pts, COLOURS[0]);
    for (i, (jobs, b, ready)) in index.iter().enumerate() {
        let (x, y) = point(x0, i, n, *b, max);
        let label = if *jobs >= 1_000_000 {
            format!("{}M", jobs / 1_000_000)
        } else {
            format!("{}k", jobs / 1000)
        };
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text><text x="{x}" y="{}" text-anchor="middle" fill="{}">{b:.0} B, ready {ready:.1} s</text>"#,
            H - PAD + 14.0,
            y - 8.0,
            COLOURS[0]
        );
    }
}

fn polyline(svg: &mut String, pts: &[(f64, f64)], colour: &str) {
    let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
        path.join(" ")
    );
    for (x, y) in pts {
        let _ = write!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svg_with_both_panels() {
        let mut c = HashMap::new();
        c.insert((1, 8), 100.0);
        c.insert((1, 32), 200.0);
        let svg = curves(
            &c,
            &[(100_000, 120.0, 0.4), (1_000_000, 80.0, 3.0)],
            "145 KiB",
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("1 process") && svg.contains("1M"));
        assert_eq!(curves(&HashMap::new(), &[], "x"), None);
    }
}
