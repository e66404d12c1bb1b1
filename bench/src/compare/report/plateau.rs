//! The report's tables for a format 2 raw file, where capacity is a throughput plateau
//! ([`crate::compare::capacity`]): per workload, the capacity table (each configuration's
//! plateau and the clients that reached it) and one latency table per offered level (with the
//! load each configuration was offered as a share of its own plateau); per round, the steps of
//! each search. Format 1 files never reach this module.
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    ci, compare, interval, mark, ms, pct, r2, Against, Ctx, Row, Verdict, Workload, COLUMN_RULES,
};
use crate::compare::capacity::Rule;

/// The columns' meaning, with the search's rule.
pub(super) fn columns(w: &mut String, rule: &Rule) -> Result<()> {
    writeln!(
        w,
        "Columns: **plateau** = capacity, the throughput of the closed loop once more clients no longer raise it: {} \
         (median over the rounds of each round's plateau); **clients** = the clients of the step that measured each round's \
         plateau; **offered / own plateau** = the offered rate over the configuration's own median plateau; {COLUMN_RULES}\n",
        rule.describe()
    )?;
    Ok(())
}

/// A workload's heading, its capacity table and one latency table per level.
pub(super) fn tables(w: &mut String, ctx: &Ctx, wl: Workload, base: f64, rs: &[Row]) -> Result<()> {
    let levels = &ctx.raw.options.levels;
    let offered: Vec<String> =
        levels.iter().map(|l| format!("{} = {:.0} req/s", pct(*l), base * l)).collect();
    writeln!(
        w,
        "### {}: A's median plateau {base:.0} req/s; offered {}\n",
        wl.name(),
        offered.join(", ")
    )?;
    capacity_table(w, rs)?;
    for (li, &l) in levels.iter().enumerate() {
        level_table(w, rs, li, l, base)?;
    }
    Ok(())
}

/// Each configuration's plateau [CI], its clients per round, and the ratios to A and to the
/// best non-reuselb configuration.
fn capacity_table(w: &mut String, rs: &[Row]) -> Result<()> {
    let vs = Against::of(rs);
    let best = vs.best_tp.map(|r| r.cfg.letter.to_string()).unwrap_or("—".into());
    writeln!(w, "Capacity (closed loop):\n")?;
    writeln!(w, "| config | plateau req/s [95% CI] | clients at the plateau, per round | plateau ×A [CI] | plateau × best non-reuselb ({best}) [CI] |")?;
    writeln!(w, "|---|---:|---|---:|---:|")?;
    for r in rs {
        let tp_ci = interval(ci(&r.tp_reps), |x| format!("{x:.0}"));
        let clients: Vec<String> = r.plateaus.iter().map(|p| p.clients.to_string()).collect();
        let vs_row = |b: Option<&Row>| match b {
            Some(b) if b.cfg == r.cfg => "(itself)".to_string(),
            Some(b) => compare(&r.tp_reps, &b.tp_reps, r.tp, b.tp, false).0,
            None => "—".to_string(),
        };
        writeln!(
            w,
            "| {} | {:.0} {tp_ci} | {} | {} | {} |",
            r.cfg.short(),
            r.tp,
            clients.join(" "),
            vs_row(vs.a),
            vs_row(vs.best_tp)
        )?;
    }
    Ok(())
}

/// The latency table of level `l` (the `li`th): per configuration, the offered load over its
/// own plateau, the pooled percentiles and the p99's ratios to A and to the best non-reuselb
/// configuration at this level.
fn level_table(w: &mut String, rs: &[Row], li: usize, l: f64, base: f64) -> Result<()> {
    let vs = Against::at(rs, li);
    let best = vs.best_p99.map(|r| r.cfg.letter.to_string()).unwrap_or("—".into());
    writeln!(w, "\nAt {} of A's capacity ({:.0} req/s offered):\n", pct(l), base * l)?;
    writeln!(w, "| config | offered / own plateau | n | p50 | p99 [CI] | p99.9 [CI] | p99 ×A [CI] | p99 × best non-reuselb ({best}) [CI] |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in rs {
        let lat = &r.lat[li];
        let p99_vs = |b: Option<&Row>| match b {
            Some(b) if b.cfg == r.cfg => ("(itself)".to_string(), Verdict::Unknown),
            Some(b) => {
                compare(&lat.reps[1], &b.lat[li].reps[1], lat.est[1], b.lat[li].est[1], true)
            }
            None => ("—".to_string(), Verdict::Unknown),
        };
        writeln!(
            w,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} |",
            r.cfg.short(),
            r2(base * l / r.tp),
            lat.n,
            ms(lat.est[0]),
            mark(lat.n, 0.5),
            lat.cell(1),
            lat.cell(2),
            p99_vs(vs.a).0,
            p99_vs(vs.best_p99).0
        )?;
    }
    Ok(())
}

/// A configuration's per-round line (its start): each round's plateau and its clients, then
/// each round's steps as clients→req/s.
pub(super) fn round_line(r: &Row) -> String {
    let plateaus: Vec<String> =
        r.plateaus.iter().map(|p| format!("{:.0} ({} clients)", p.throughput, p.clients)).collect();
    let rounds: Vec<String> = r
        .plateaus
        .iter()
        .map(|p| {
            let steps: Vec<String> = r
                .closed
                .iter()
                .filter(|s| s.round == p.round)
                .map(|s| format!("{}→{:.0}", s.clients, s.throughput))
                .collect();
            steps.join(" ")
        })
        .collect();
    format!("  - {}: plateau {}; steps {}", r.cfg.letter, plateaus.join(", "), rounds.join(" / "))
}
