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

/// A panel's y axis: its range, linear or logarithmic, and where it stands on the page.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    /// The top of the panel.
    y0: f64,
}

const PLOT_W: f64 = W - LEFT - RIGHT;
const PLOT_H: f64 = PANEL_H - TOP - BOTTOM;

impl Axis {
    /// The range that holds every finite positive value, error bar end and reference line.
    fn of(p: &Panel, y0: f64) -> Self {
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
        Axis { lo, hi, log: p.log, y0 }
    }

    /// The page's y of the value `v`, clamped to the plot.
    fn y(&self, v: f64) -> f64 {
        let (lo, hi) = (self.lo, self.hi);
        let f = if self.log {
            (v.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (v - lo) / (hi - lo)
        };
        self.y0 + TOP + PLOT_H * (1.0 - f.clamp(0.0, 1.0))
    }

    /// The top of the plot, where an infinite value's bar ends.
    fn top(&self) -> f64 {
        self.y0 + TOP
    }

    /// 1, 2, 5 per decade on a log axis; six even steps on a linear one.
    fn ticks(&self) -> Vec<f64> {
        let (lo, hi) = (self.lo, self.hi);
        if !self.log {
            return (0..=5).map(|i| lo + (hi - lo) * i as f64 / 5.0).collect();
        }
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
    }
}

fn panel(svg: &mut String, p: &Panel, y0: f64) {
    let ax = Axis::of(p, y0);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        y0 + 22.0,
        esc(&p.title)
    );
    axis(svg, p, &ax);
    let ng = p.groups.len().max(1) as f64;
    let ns = p.series.len().max(1) as f64;
    let gw = PLOT_W / ng;
    let bw = (gw * 0.8) / ns;
    for (gi, g) in p.groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64 + gw * 0.1;
        for si in 0..p.series.len() {
            bar(svg, p, &ax, (gi, si), gx + bw * si as f64, bw);
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            y0 + TOP + PLOT_H + 16.0,
            esc(g)
        );
    }
    if let Some(r) = p.reference {
        let y = ax.y(r);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333" stroke-dasharray="5,4"/>"##,
            W - RIGHT
        );
    }
    legend(svg, p, y0);
}

/// The axis's grid lines, tick labels and label.
fn axis(svg: &mut String, p: &Panel, ax: &Axis) {
    for t in ax.ticks() {
        let y = ax.y(t);
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
        ax.y0 + TOP + PLOT_H / 2.0,
        esc(&p.y_label)
    );
}

/// The bar of series `si` in group `gi`, `bw` wide from `x`, with its error bar and its value;
/// nothing for NaN.
fn bar(svg: &mut String, p: &Panel, ax: &Axis, (gi, si): (usize, usize), x: f64, bw: f64) {
    let v = p.values.get(gi).and_then(|r| r.get(si)).copied().unwrap_or(f64::NAN);
    if v.is_nan() {
        return;
    }
    let top = if v.is_infinite() { ax.top() } else { ax.y(v) };
    let base = ax.y(ax.lo);
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
        error_bar(svg, ax, (el, eh), x + bw / 2.0, (bw * 0.3).max(1.5));
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

/// An error bar from `el` to `eh` centred on `cx`, capped `cap` either side; none if an end is
/// NaN, an infinite high end at the top of the plot.
fn error_bar(svg: &mut String, ax: &Axis, (el, eh): (f64, f64), cx: f64, cap: f64) {
    if el.is_nan() || eh.is_nan() {
        return;
    }
    let (yl, yh) = (ax.y(el), if eh.is_infinite() { ax.top() } else { ax.y(eh) });
    let _ = writeln!(
        svg,
        r##"<path d="M{:.1},{yl:.1}H{:.1}M{cx:.1},{yl:.1}V{yh:.1}M{:.1},{yh:.1}H{:.1}" stroke="#000" stroke-width="1" fill="none"><title>95% CI {el:.3} to {eh:.3}</title></path>"##,
        cx - cap,
        cx + cap,
        cx - cap,
        cx + cap
    );
}

/// The legend, wrapped over as many lines as it needs.
fn legend(svg: &mut String, p: &Panel, y0: f64) {
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
