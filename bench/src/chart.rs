//! Hand-written SVG charts: grouped bar panels stacked in one file. No dependency, readable in any
//! browser or image viewer.
use std::fmt::Write as _;

/// One panel: `groups` along the x axis, one bar per series in each group.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<String>,
    /// `values[group][series]`; NaN draws no bar, infinity draws a capped bar marked "∞".
    pub values: Vec<Vec<f64>>,
    /// A dashed horizontal reference line (e.g. 1.0 for ratios).
    pub reference: Option<f64>,
    /// Logarithmic y axis.
    pub log: bool,
    /// Error bars: `errors[group][series]` = (low, high), e.g. a 95% confidence interval; NaN
    /// ends draw no bar, an infinite high end is capped at the top of the axis.
    pub errors: Option<Vec<Vec<(f64, f64)>>>,
}

const COLORS: [&str; 8] =
    ["#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#8c564b", "#d62728", "#1f77b4", "#2ca02c"];
const W: f64 = 900.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" upper bound for a linear axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn panel(svg: &mut String, p: &Panel, y0: f64) {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let highs = p.errors.iter().flatten().flatten().flat_map(|(l, h)| [*l, *h]);
    let finite: Vec<f64> = p
        .values
        .iter()
        .flatten()
        .copied()
        .chain(highs)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let vmax = finite.iter().copied().fold(p.reference.unwrap_or(0.0), f64::max);
    let (lo, hi) = if p.log {
        let vmin = finite
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(p.reference.unwrap_or(f64::INFINITY));
        let lo = 10f64.powf(vmin.max(1e-3).log10().floor());
        let hi = 10f64.powf(vmax.max(lo * 10.0).log10().ceil());
        (lo, hi)
    } else {
        (0.0, nice_max(vmax * 1.05))
    };
    let y_of = |v: f64| -> f64 {
        let f = if p.log {
            (v.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (v - lo) / (hi - lo)
        };
        y0 + TOP + plot_h * (1.0 - f.clamp(0.0, 1.0))
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        y0 + 22.0,
        esc(&p.title)
    );
    // Axis and ticks.
    let ticks: Vec<f64> = if p.log {
        let mut t = Vec::new();
        let mut v = lo;
        while v <= hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                if v * m <= hi * 1.0001 {
                    t.push(v * m);
                }
            }
            v *= 10.0;
        }
        t
    } else {
        (0..=5).map(|i| lo + (hi - lo) * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let y = y_of(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        y0 + TOP + plot_h / 2.0,
        esc(&p.y_label)
    );
    let ng = p.groups.len().max(1) as f64;
    let ns = p.series.len().max(1) as f64;
    let gw = plot_w / ng;
    let bw = (gw * 0.8) / ns;
    for (gi, g) in p.groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64 + gw * 0.1;
        for (si, _) in p.series.iter().enumerate() {
            let v = p.values.get(gi).and_then(|r| r.get(si)).copied().unwrap_or(f64::NAN);
            if v.is_nan() {
                continue;
            }
            let x = gx + bw * si as f64;
            let top = if v.is_infinite() { y0 + TOP } else { y_of(v) };
            let base = y_of(lo);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                (bw - 1.0).max(1.0),
                (base - top).max(0.5),
                COLORS[si % COLORS.len()],
                esc(&p.series[si]),
                if v.is_infinite() { "∞ (failures)".to_string() } else { format!("{v:.3}") }
            );
            if let Some(&(el, eh)) = p.errors.as_ref().and_then(|e| e.get(gi)?.get(si)) {
                if !el.is_nan() && !eh.is_nan() {
                    let (yl, yh) = (y_of(el), if eh.is_infinite() { y0 + TOP } else { y_of(eh) });
                    let cx = x + bw / 2.0;
                    let cap = (bw * 0.3).max(1.5);
                    let _ = writeln!(
                        svg,
                        r##"<path d="M{:.1},{yl:.1}H{:.1}M{cx:.1},{yl:.1}V{yh:.1}M{:.1},{yh:.1}H{:.1}" stroke="#000" stroke-width="1" fill="none"><title>95% CI {el:.3} to {eh:.3}</title></path>"##,
                        cx - cap,
                        cx + cap,
                        cx - cap,
                        cx + cap
                    );
                }
            }
            let label = if v.is_infinite() { "∞".to_string() } else { fmt_value(v) };
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                top - 3.0,
                label
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            y0 + TOP + plot_h + 16.0,
            esc(g)
        );
    }
    if let Some(r) = p.reference {
        let y = y_of(r);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333" stroke-dasharray="5,4"/>"##,
            W - RIGHT
        );
    }
    // Legend, wrapped over as many lines as it needs.
    let mut lx = LEFT;
    let mut ly = y0 + PANEL_H - 26.0;
    for (si, s) in p.series.iter().enumerate() {
        let width = 14.0 + 6.5 * s.chars().count() as f64 + 16.0;
        if lx + width > W - RIGHT {
            lx = LEFT;
            ly += 15.0;
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            ly - 9.0,
            COLORS[si % COLORS.len()],
            lx + 14.0,
            ly,
            esc(s)
        );
        lx += width;
    }
}

/// Panels stacked vertically in one SVG document.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let h = 30.0 + PANEL_H * panels.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="16" font-weight="bold">{}</text>"#,
        LEFT - 50.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut s, p, 30.0 + PANEL_H * i as f64);
    }
    s.push_str("</svg>\n");
    s
}
