//! Numbers: wall-clock microseconds, percentiles, the delivery rate over time and the latency
//! CDF (for the plots), and a process's RSS and CPU time from `/proc`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Microseconds since the Unix epoch.
#[must_use]
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// p50/p95/p99/max of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples_us` (sorted in place); zeros when empty.
    #[must_use]
    pub fn of(samples_us: &mut [u64]) -> Latency {
        if samples_us.is_empty() {
            return Latency::default();
        }
        samples_us.sort_unstable();
        let at = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let index = ((samples_us.len() - 1) as f64 * q).round() as usize;
            #[allow(clippy::cast_precision_loss)]
            let ms = samples_us[index] as f64 / 1000.0;
            ms
        };
        Latency {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Peak RSS and CPU time of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcStats {
    /// `consumer-api`, `dispatch-1`, `ingest`…
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// `VmHWM` from `/proc/PID/status`, in MiB.
    pub peak_rss_mib: f64,
    /// `VmRSS` from `/proc/PID/status`, in MiB.
    pub rss_mib: f64,
    /// `utime + stime` from `/proc/PID/stat`, in seconds.
    pub cpu_seconds: f64,
}

impl ProcStats {
    /// Reads `/proc/PID/status` and `/proc/PID/stat`; zeros where unreadable.
    #[must_use]
    pub fn read(name: &str, pid: u32) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0)
        };
        ProcStats {
            name: name.to_owned(),
            pid,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            rss_mib: kib("VmRSS:") / 1024.0,
            cpu_seconds: cpu_seconds(pid),
        }
    }
}

/// `utime + stime` of `pid` in seconds.
#[must_use]
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => 0.0,
    }
}

/// `getconf CLK_TCK`, 100 if unknown.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `n / seconds`, 0 when no time passed.
#[must_use]
pub fn per_second(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { n / seconds } else { 0.0 }
}

/// Deliveries per second in consecutive bins of `bin_s` seconds from `start_us`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// Width of one bin, in seconds.
    pub bin_s: f64,
    /// Deliveries per second in each bin.
    pub per_s: Vec<f64>,
}

impl Timeline {
    /// Bins `arrivals_us` (Unix µs) from `start_us` into about 60 bins of at least 0.25 s.
    #[must_use]
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn of(arrivals_us: &[u64], start_us: u64) -> Timeline {
        let Some(last) = arrivals_us.iter().max() else {
            return Timeline::default();
        };
        let span_s = last.saturating_sub(start_us) as f64 / 1e6;
        let bin_s = (span_s / 60.0).max(0.25);
        let bins = (span_s / bin_s) as usize + 1;
        let mut counts = vec![0_u64; bins];
        for t in arrivals_us {
            let at = (t.saturating_sub(start_us) as f64 / 1e6 / bin_s) as usize;
            counts[at.min(bins - 1)] += 1;
        }
        Timeline {
            bin_s,
            per_s: counts.into_iter().map(|c| c as f64 / bin_s).collect(),
        }
    }
}

/// The latency CDF of `sorted_us` (ascending) as `(ms, fraction ≤ it)` at 200 quantiles
/// and the last few per mille, where the tail is.
#[must_use]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn cdf(sorted_us: &[u64]) -> Vec<(f64, f64)> {
    if sorted_us.is_empty() {
        return Vec::new();
    }
    let last = sorted_us.len() - 1;
    (0..200)
        .map(|i| f64::from(i) * 0.99 / 200.0)
        .chain((990..=1000).map(|i| f64::from(i) / 1000.0))
        .map(|q| {
            let index = (last as f64 * q).round() as usize;
            (sorted_us[index] as f64 / 1000.0, q)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::of(&mut v);
        assert!((l.p50_ms - 51.0).abs() < 1.1);
        assert!((l.p99_ms - 99.0).abs() < 1.1);
        assert!((l.max_ms - 100.0).abs() < 0.01);
    }

    #[test]
    fn reads_own_process() {
        let s = ProcStats::read("self", std::process::id());
        assert!(s.peak_rss_mib > 0.0);
    }

    #[test]
    fn timeline_and_cdf() {
        let arrivals: Vec<u64> = (0..1000).map(|i| 1_000_000 + i * 10_000).collect();
        let t = Timeline::of(&arrivals, 1_000_000);
        assert!((t.bin_s - 0.25).abs() < 1e-9);
        assert!((t.per_s[0] - 100.0).abs() < 1e-6);
        let total: f64 = t.per_s.iter().map(|r| r * t.bin_s).sum();
        assert!((total - 1000.0).abs() < 1e-6);
        let c = cdf(&[1000, 2000, 3000]);
        assert_eq!(c.first(), Some(&(1.0, 0.0)));
        assert_eq!(c.last(), Some(&(3.0, 1.0)));
    }
}
