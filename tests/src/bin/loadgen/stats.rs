//! Latency samples and their percentiles.

use std::time::Duration;

/// Every latency of a run, in microseconds. A run of ten seconds at a few thousand commands
/// a second keeps well under a megabyte, so the samples are kept whole and sorted once.
#[derive(Default)]
pub struct Latencies {
    micros: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    pub fn count(&self) -> usize {
        self.micros.len()
    }

    /// The `percent`th percentile (nearest rank) in milliseconds; 0 without samples.
    pub fn percentile_ms(&mut self, percent: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let rank = ((percent / 100.0) * self.micros.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.micros.len()) - 1;
        self.micros[index] as f64 / 1000.0
    }

    /// `p50 .. p99 .. p99.9 .. max` for a log line.
    pub fn line(&mut self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(99.9),
            self.percentile_ms(100.0),
            self.count()
        )
    }
}
