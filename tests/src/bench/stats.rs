//! Numbers: wall-clock microseconds, percentiles, and a process's peak RSS and CPU time from
//! `/proc`.

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
    /// `utime + stime` from `/proc/PID/stat`, in seconds.
    pub cpu_seconds: f64,
}

impl ProcStats {
    /// Reads `/proc/PID/status` and `/proc/PID/stat`; zeros where unreadable.
    #[must_use]
    pub fn read(name: &str, pid: u32) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        ProcStats {
            name: name.to_owned(),
            pid,
            peak_rss_mib: hwm_kib / 1024.0,
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
}
