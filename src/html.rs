//! `--html FILE`: one self-contained HTML page (no network, no script):
//! the verdict, a timeline of every instance (spawn → boot, tool call,
//! teardown as bars on one time axis, failures marked), a boot-time
//! histogram with the target line, and memory per instance, all inline SVG.

use crate::report::{Summary, Verdict};
use crate::run::{Instance, RunConfig, RunResult, Timeline};
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const ROW: f64 = 14.0;
const HIST_BINS: usize = 20;
/// Instances drawn one per row; beyond this the timeline shows the first ones.
const MAX_ROWS: usize = 400;

use crate::export::xml_escape as esc;

/// The badge colour of a verdict (this page's and the merged report's).
pub(crate) fn verdict_colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "#1a7f37",
        Verdict::Partial => "#9a6700",
        Verdict::Fail => "#cf222e",
    }
}

/// The page.
pub fn page(r: &RunResult, cfg: &RunConfig, s: &Summary) -> String {
    let (colour, word) = (verdict_colour(s.verdict), s.verdict.word());
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ukload run {id}: {word}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}}\
         h1{{font-size:20px}} .v{{color:#fff;background:{colour};padding:2px 10px;border-radius:4px}}\
         table{{border-collapse:collapse}} td,th{{padding:2px 10px;text-align:left}}\
         svg text{{font:11px system-ui,sans-serif}}</style></head><body>\n\
         <h1>ukload run {id} <span class=\"v\">{word}</span></h1>\n",
        id = esc(&r.run_id)
    );
    let _ = writeln!(
        h,
        "<p>{} instance(s), launcher {}, {} booted; containment: {}.</p>",
        s.total,
        cfg.launcher.kind,
        s.booted,
        esc(&r.containment)
    );
    if !s.reasons.is_empty() {
        let _ = write!(h, "<ul>");
        for reason in &s.reasons {
            let _ = write!(h, "<li>{}</li>", esc(reason));
        }
        let _ = writeln!(h, "</ul>");
    }
    let _ = writeln!(
        h,
        "<table><tr><th></th><th>min</th><th>median</th><th>p95</th><th>max</th></tr>"
    );
    for (name, st, unit) in [
        ("boot", s.boot_ms, "ms"),
        ("memory", s.mem_mb, "MB"),
        ("tool call", s.tool_ms, "ms"),
    ] {
        if let Some(x) = st {
            let _ = writeln!(
                h,
                "<tr><td>{name}</td><td>{:.1} {unit}</td><td>{:.1} {unit}</td><td>{:.1} {unit}</td><td>{:.1} {unit}</td></tr>",
                x.min, x.median, x.p95, x.max
            );
        }
    }
    let _ = writeln!(h, "</table>");
    h.push_str(&timeline(r));
    h.push_str(&histogram(r, cfg));
    h.push_str(&memory(r, cfg));
    let _ = writeln!(h, "</body></html>");
    h
}

/// Every instance on one time axis: spawn → boot (green; red if it failed),
/// the tool call (blue), teardown (grey). Spawn, boot and teardown are placed
/// where they happened; a tool call's start is not recorded, so its bar (of
/// its measured length) starts where the tool phase did.
fn timeline(r: &RunResult) -> String {
    let axis = Axis {
        end: r.elapsed_ms.max(1.0),
    };
    let rows = r.instances.len().min(MAX_ROWS);
    let height = 40.0 + rows as f64 * ROW;
    let mut g = String::new();
    let _ = writeln!(
        g,
        "<h2>Timeline</h2>\n<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\">"
    );
    timeline_ticks(&mut g, axis, height);
    for (row, i) in r.instances.iter().take(rows).enumerate() {
        timeline_row(&mut g, axis, &r.timeline, i, 24.0 + row as f64 * ROW);
    }
    let _ = writeln!(g, "</svg>");
    if r.instances.len() > rows {
        let _ = writeln!(
            g,
            "<p>(first {rows} of {} instances)</p>",
            r.instances.len()
        );
    }
    g
}

/// A chart's horizontal axis, from 0 to `end` (ms of the run, ms of boot,
/// MB) over the plot area right of the row labels.
#[derive(Clone, Copy)]
struct Axis {
    /// The value at the right edge (more than 0).
    end: f64,
}

/// Width of the plot area: the page width less the labels and a margin.
const PLOT_WIDTH: f64 = WIDTH - LEFT - 10.0;

impl Axis {
    /// The x coordinate of value `v`.
    fn x(self, v: f64) -> f64 {
        LEFT + v / self.end * PLOT_WIDTH
    }
}

/// Five time marks, start to end: vertical lines labelled in ms.
fn timeline_ticks(g: &mut String, axis: Axis, height: f64) {
    for k in 0..=4 {
        let ms = axis.end * k as f64 / 4.0;
        let _ = writeln!(
            g,
            "<line x1=\"{0:.1}\" y1=\"20\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#d0d7de\"/><text x=\"{0:.1}\" y=\"14\" text-anchor=\"{3}\">{2:.0} ms</text>",
            axis.x(ms),
            height - 10.0,
            ms,
            if k == 4 { "end" } else { "start" }
        );
    }
}

/// One instance's row at `y`: its number, boot bar, tool call bar, teardown
/// bar and a crash mark.
fn timeline_row(g: &mut String, axis: Axis, t: &Timeline, i: &Instance, y: f64) {
    let x = |ms: f64| axis.x(ms);
    let _ = writeln!(g, "<text x=\"4\" y=\"{:.1}\">#{}</text>", y + 10.0, i.index);
    // From the instance's spawn on the run's clock, as long as its boot.
    let start = i.spawned_at_ms.unwrap_or(0.0);
    boot_bar(g, axis, t, i, start, y);
    if let Some(tm) = i.tool_ms {
        let from = t.booted_ms.max(start + i.boot_ms.unwrap_or(0.0));
        let _ = writeln!(
            g,
            "<rect class=\"tool\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#0969da\"><title>#{} tool call {tm:.2} ms</title></rect>",
            x(from),
            (x(from + tm) - x(from)).max(1.0),
            i.index
        );
    }
    teardown_bar(g, axis, t, i, y);
    if i.crashed.is_some() {
        let _ = writeln!(
            g,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#cf222e\">crashed</text>",
            x(t.booted_ms) + 4.0,
            y + 10.0
        );
    }
}

/// The boot bar from `start` (the spawn): green as long as the boot, or red
/// up to the end of the boot phase when it failed.
fn boot_bar(g: &mut String, axis: Axis, t: &Timeline, i: &Instance, start: f64, y: f64) {
    let x = |ms: f64| axis.x(ms);
    match (i.boot_ms, &i.boot_error) {
        (Some(b), _) => {
            let _ = writeln!(
                g,
                "<rect class=\"boot\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#2da44e\"><title>#{} booted in {b:.1} ms</title></rect>",
                x(start),
                (x(start + b) - x(start)).max(1.0),
                i.index
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(
                g,
                "<rect class=\"failed\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#cf222e\"><title>#{}: {}</title></rect>",
                x(start),
                (x(t.booted_ms) - x(start)).max(2.0),
                i.index,
                esc(e)
            );
        }
        _ => {}
    }
}

/// The teardown bar from the start of the teardown phase: grey when the
/// instance was terminated, red otherwise.
fn teardown_bar(g: &mut String, axis: Axis, t: &Timeline, i: &Instance, y: f64) {
    let x = |ms: f64| axis.x(ms);
    let Some(td) = i.teardown_ms else {
        return;
    };
    let from = t.teardown_start_ms;
    let fill = if i.teardown.as_deref() == Some("terminated") {
        "#8c959f"
    } else {
        "#cf222e"
    };
    let _ = writeln!(
        g,
        "<rect class=\"teardown\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"{fill}\"><title>#{} {} in {td:.1} ms</title></rect>",
        x(from),
        (x(from + td) - x(from)).max(1.0),
        i.index,
        esc(i.teardown.as_deref().unwrap_or(""))
    );
}

/// Boot times in `HIST_BINS` bins, with the target as a vertical line.
fn histogram(r: &RunResult, cfg: &RunConfig) -> String {
    let boots: Vec<f64> = r.instances.iter().filter_map(|i| i.boot_ms).collect();
    let mut g = String::from("<h2>Boot times</h2>\n");
    if boots.is_empty() {
        g.push_str("<p>no instance booted</p>\n");
    } else {
        g.push_str(&boot_histogram(&boots, Some(cfg.max_boot_ms)));
    }
    g
}

/// An SVG histogram of `boots` (ms, not empty) in [`HIST_BINS`] bins, with
/// the target as a dashed vertical line when there is one.
pub(crate) fn boot_histogram(boots: &[f64], target_ms: Option<f64>) -> String {
    let mut g = String::new();
    let hi = boots
        .iter()
        .cloned()
        .fold(target_ms.unwrap_or(0.0), f64::max)
        .max(f64::EPSILON)
        * 1.05;
    let mut bins = [0usize; HIST_BINS];
    for b in boots {
        bins[((b / hi * HIST_BINS as f64) as usize).min(HIST_BINS - 1)] += 1;
    }
    let top = *bins.iter().max().unwrap_or(&1) as f64;
    let (w, hgt) = (WIDTH, 200.0);
    let bw = PLOT_WIDTH / HIST_BINS as f64;
    let _ = writeln!(
        g,
        "<svg id=\"histogram\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\">",
        hgt + 30.0
    );
    for (k, n) in bins.iter().enumerate() {
        let bh = *n as f64 / top * (hgt - 20.0);
        let _ = writeln!(
            g,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#2da44e\"><title>{n} boot(s) in {:.0}–{:.0} ms</title></rect>",
            LEFT + k as f64 * bw,
            hgt - bh,
            bw - 2.0,
            hi * k as f64 / HIST_BINS as f64,
            hi * (k + 1) as f64 / HIST_BINS as f64
        );
    }
    if let Some(t) = target_ms {
        let tx = Axis { end: hi }.x(t);
        let _ = writeln!(
            g,
            "<line id=\"target\" x1=\"{tx:.1}\" y1=\"10\" x2=\"{tx:.1}\" y2=\"{hgt}\" stroke=\"#cf222e\" stroke-dasharray=\"4\"/><text x=\"{:.1}\" y=\"20\" fill=\"#cf222e\" text-anchor=\"end\">target {t} ms</text>",
            tx - 4.0
        );
    }
    let _ = writeln!(
        g,
        "<text x=\"{LEFT}\" y=\"{:.1}\">0 ms</text><text x=\"{:.1}\" y=\"{:.1}\">{hi:.0} ms</text>",
        hgt + 16.0,
        w - 80.0,
        hgt + 16.0
    );
    let _ = writeln!(g, "</svg>");
    g
}

/// PSS (and RSS) per instance, with the target.
fn memory(r: &RunResult, cfg: &RunConfig) -> String {
    let mems: Vec<(u32, f64, f64)> = r
        .instances
        .iter()
        .filter_map(|i| {
            Some((
                i.index,
                i.pss_kb? as f64 / 1024.0,
                i.rss_kb? as f64 / 1024.0,
            ))
        })
        .take(MAX_ROWS)
        .collect();
    let mut g = String::from("<h2>Memory per instance</h2>\n");
    if mems.is_empty() {
        g.push_str("<p>nothing measured</p>\n");
        return g;
    }
    let hi = mems.iter().map(|m| m.2).fold(cfg.max_mem_mb, f64::max) * 1.05;
    let height = 30.0 + mems.len() as f64 * ROW;
    let x = |mb: f64| Axis { end: hi }.x(mb);
    let _ = writeln!(
        g,
        "<svg id=\"memory\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\">"
    );
    for (row, (idx, pss, rss)) in mems.iter().enumerate() {
        let y = 10.0 + row as f64 * ROW;
        let _ = writeln!(
            g,
            "<text x=\"4\" y=\"{:.1}\">#{idx}</text><rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#d0d7de\"><title>RSS {rss:.1} MB</title></rect><rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#8250df\"><title>PSS {pss:.1} MB</title></rect>",
            y + 10.0,
            (x(*rss) - LEFT).max(1.0),
            (x(*pss) - LEFT).max(1.0)
        );
    }
    let tx = x(cfg.max_mem_mb);
    let _ = writeln!(
        g,
        "<line x1=\"{tx:.1}\" y1=\"4\" x2=\"{tx:.1}\" y2=\"{height}\" stroke=\"#cf222e\" stroke-dasharray=\"4\"/></svg>"
    );
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
