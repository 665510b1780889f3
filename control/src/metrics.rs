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

/// Builds Prometheus exposition text. Samples of one metric family may be added anywhere
/// in any order; the text lists each family once, in the order it first appeared, with its
/// `# HELP` and `# TYPE` lines and then all its samples: Prometheus refuses a family whose
/// samples are split (the host once emitted `hydra_packets_dropped_total{reason=
/// "ft_unknown_flow"}` apart from the family's other reasons).
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: std::collections::HashMap<String, usize>,
}

#[derive(Debug)]
struct Family {
    head: String,
    samples: String,
}

impl Exposition {
    /// Adds one sample to the family `name` (its help and kind are taken from the first).
    pub fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: u64) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    head: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
                    samples: String::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let out = &mut self.families[i].samples;
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
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
        let mut out = String::new();
        for f in self.families {
            out.push_str(&f.head);
            out.push_str(&f.samples);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_familys_samples_come_together_wherever_they_were_added() {
        let mut e = Exposition::default();
        e.sample("drops_total", "counter", "drops", r#"reason="a""#, 1);
        e.sample("other_total", "counter", "other", "", 5);
        e.sample("drops_total", "counter", "drops", r#"reason="b""#, 2);
        assert_eq!(
            e.finish(),
            "# HELP drops_total drops\n# TYPE drops_total counter\n\
             drops_total{reason=\"a\"} 1\ndrops_total{reason=\"b\"} 2\n\
             # HELP other_total other\n# TYPE other_total counter\nother_total 5\n"
        );
    }

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
