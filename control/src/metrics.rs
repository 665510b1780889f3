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

/// Upper bounds (seconds) of the [`Histogram`] buckets: from a millisecond, for failover and
/// view-change times around the detector's 25 ms, to ten seconds.
pub const SECONDS_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations in seconds (Prometheus `histogram`: cumulative buckets `le`,
/// `_sum`, `_count`), over [`SECONDS_BUCKETS`]; lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = SECONDS_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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

    /// Adds a histogram family `name` (seconds): its buckets, sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let i = self.families.len();
        self.families.push(Family {
            head: format!("# HELP {name} {help}\n# TYPE {name} histogram\n"),
            samples: String::new(),
        });
        self.index.insert(name.to_string(), i);
        let out = &mut self.families[i].samples;
        let mut cumulative = 0;
        for (b, n) in SECONDS_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += h.buckets[SECONDS_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
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
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        for ms in [3, 20, 20, 30_000] {
            h.observe(std::time::Duration::from_millis(ms));
        }
        let mut e = Exposition::default();
        e.histogram("pause_seconds", "pauses", &h);
        let t = e.finish();
        assert!(t.contains("# TYPE pause_seconds histogram\n"), "{t}");
        assert!(t.contains("pause_seconds_bucket{le=\"0.001\"} 0\n"), "{t}");
        assert!(t.contains("pause_seconds_bucket{le=\"0.005\"} 1\n"), "{t}");
        assert!(t.contains("pause_seconds_bucket{le=\"0.025\"} 3\n"), "{t}");
        assert!(t.contains("pause_seconds_bucket{le=\"10\"} 3\n"), "{t}");
        assert!(t.contains("pause_seconds_bucket{le=\"+Inf\"} 4\n"), "{t}");
        assert!(t.contains("pause_seconds_sum 30.043\n"), "{t}");
        assert!(t.contains("pause_seconds_count 4\n"), "{t}");
        assert_eq!(h.count(), 4);
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
