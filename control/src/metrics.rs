//! Counters rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter (or a gauge when set).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the value (for gauges).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds Prometheus exposition text.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Adds one sample, with `# HELP`/`# TYPE` lines the first time the name appears.
    pub fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: u64) {
        if !self.0.contains(&format!("# TYPE {name} ")) {
            let _ = writeln!(self.0, "# HELP {name} {help}");
            let _ = writeln!(self.0, "# TYPE {name} {kind}");
        }
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    /// `hydra_build_info{daemon, version, wire}` = 1: which build answers (a Prometheus
    /// convention; alerts and dashboards join on it).
    pub fn build_info(&mut self, daemon: &str, version: &str, wire: u8) {
        self.sample(
            "hydra_build_info",
            "gauge",
            "The daemon's build: name, version and datagram wire version; always 1",
            &format!(r#"daemon="{daemon}",version="{version}",wire="{wire}""#),
            1,
        );
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_writes_help_once() {
        let mut e = Exposition::default();
        e.sample("x_total", "counter", "things", r#"reason="a""#, 1);
        e.sample("x_total", "counter", "things", r#"reason="b""#, 2);
        let t = e.finish();
        assert_eq!(t.matches("# HELP").count(), 1);
        assert!(t.contains("x_total{reason=\"b\"} 2"));
    }
}
