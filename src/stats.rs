//! Statistics of a sample: the one percentile rule (nearest rank) and the
//! summary every report prints (run, cycles, report merge, mcp bench), and
//! the terminal histogram of boot times.

use serde::Serialize;
use std::time::Duration;

/// Nearest-rank percentile `p` (0..=100) of `sorted` (ascending, non-empty):
/// the one statistics rule of every ukload report.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// min / median / p95 / p99 / max (nearest rank) and mean of a sample.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// Summarizes `values` (any order); `None` for no samples.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Some(Stats {
            count: v.len(),
            min: v[0],
            median: nearest_rank(&v, 50.0),
            p95: nearest_rank(&v, 95.0),
            p99: nearest_rank(&v, 99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    /// Summarizes durations, in milliseconds.
    pub fn of_millis(samples: &[Duration]) -> Option<Stats> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Stats::of(&ms)
    }
}

/// A one-line histogram of boot times for a terminal (`▁▂▃▄▅▆▇█`).
pub fn sparkline(boots: &[f64], bins: usize) -> Option<String> {
    if boots.is_empty() || bins == 0 {
        return None;
    }
    let lo = boots.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = boots.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(f64::EPSILON);
    let mut counts = vec![0usize; bins];
    for b in boots {
        let k = ((((b - lo) / span) * bins as f64) as usize).min(bins - 1);
        counts[k] += 1;
    }
    let top = *counts.iter().max()? as f64;
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let line: String = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                ' '
            } else {
                BARS[(((c as f64 / top) * 7.0).round() as usize).min(7)]
            }
        })
        .collect();
    Some(format!("{lo:.1} ms {line} {hi:.1} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_spans_min_to_max() {
        let s = sparkline(&[1.0, 1.0, 2.0, 10.0], 8).unwrap();
        assert!(s.starts_with("1.0 ms █"), "{s}");
        assert!(s.ends_with("▃ 10.0 ms"), "{s}");
        assert_eq!(sparkline(&[], 8), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Stats::of_millis(&samples).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.median, 50.0);
        assert_eq!(s.p95, 95.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert!((s.mean - 50.5).abs() < 1e-9);
        let one = Stats::of_millis(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((one.min, one.median, one.p99), (7.0, 7.0, 7.0));
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn nearest_rank_of_twenty_samples_and_of_one() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.min, s.median, s.p95, s.max), (1.0, 10.0, 19.0, 20.0));
        assert_eq!(Stats::of(&[]), None);
        let one = Stats::of(&[7.5]).unwrap();
        assert_eq!((one.median, one.p95), (7.5, 7.5));
    }
}
