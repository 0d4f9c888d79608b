//! Prometheus metrics on a plain HTTP port: commands by type and outcome, the latency of
//! command handling (which is dominated by the durable append), and projection lag. Kept
//! dependency-free: a few counters behind a mutex and a tiny HTTP responder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency histogram's buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: &[f64] =
    &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0];
/// How long the metrics endpoint waits for a request line.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// The most bytes of a metrics request that are read.
pub const METRICS_REQUEST_BYTES_MAX: usize = 4_096;

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum_ms: f64,
}

#[derive(Default)]
struct Inner {
    /// (command, outcome) -> count; outcome is `ok` or the gRPC code name.
    commands: BTreeMap<(String, String), u64>,
    latency: Histogram,
}

/// Shared by every service; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    pub fn record_command(&self, command: &str, outcome: &str, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner
            .commands
            .entry((command.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        let ms = elapsed.as_secs_f64() * 1_000.0;
        let histogram = &mut inner.latency;
        if histogram.buckets.is_empty() {
            histogram.buckets = vec![0; LATENCY_BUCKETS_MS.len()];
        }
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS_MS) {
            if ms <= *bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_ms += ms;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, log_head: u64, projection_checkpoint: u64) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP ledger_commands_total Commands handled, by command and outcome.\n");
        out.push_str("# TYPE ledger_commands_total counter\n");
        for ((command, outcome), count) in &inner.commands {
            let _ = writeln!(
                out,
                "ledger_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP ledger_command_duration_ms Time to decide and durably append a command.\n",
        );
        out.push_str("# TYPE ledger_command_duration_ms histogram\n");
        for (index, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let count = inner.latency.buckets.get(index).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "ledger_command_duration_ms_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "ledger_command_duration_ms_bucket{{le=\"+Inf\"}} {}",
            inner.latency.count
        );
        let _ = writeln!(
            out,
            "ledger_command_duration_ms_sum {}",
            inner.latency.sum_ms
        );
        let _ = writeln!(
            out,
            "ledger_command_duration_ms_count {}",
            inner.latency.count
        );
        out.push_str(
            "# HELP ledger_projection_lag_events Events the projections have not applied yet.\n",
        );
        out.push_str("# TYPE ledger_projection_lag_events gauge\n");
        let _ = writeln!(
            out,
            "ledger_projection_lag_events {}",
            log_head.saturating_sub(projection_checkpoint)
        );
        out
    }
}

/// Serves `GET /metrics` until the task is aborted. `positions` gives the log head and the
/// projections' checkpoint, both as API positions.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    positions: Arc<dyn Fn() -> (u64, u64) + Send + Sync>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let positions = positions.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; METRICS_REQUEST_BYTES_MAX];
            let read = tokio::time::timeout(
                Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS),
                socket.read(&mut buffer),
            )
            .await;
            let Ok(Ok(length)) = read else { return };
            let request = String::from_utf8_lossy(&buffer[..length]);
            let (status, body) = if request.starts_with("GET /metrics") {
                let (head, checkpoint) = positions();
                ("200 OK", metrics.render(head, checkpoint))
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_latency_are_counted_and_lag_is_the_difference() {
        let metrics = Metrics::default();
        metrics.record_command("AddUsersByEmail", "ok", Duration::from_micros(1_500));
        metrics.record_command("AddUsersByEmail", "ok", Duration::from_millis(30));
        metrics.record_command(
            "AddUsersByEmail",
            "RESOURCE_EXHAUSTED",
            Duration::from_millis(1),
        );
        let text = metrics.render(120, 100);
        assert!(
            text.contains("ledger_commands_total{command=\"AddUsersByEmail\",outcome=\"ok\"} 2")
        );
        assert!(text.contains("outcome=\"RESOURCE_EXHAUSTED\"} 1"));
        assert!(text.contains("ledger_command_duration_ms_bucket{le=\"2\"} 2"));
        assert!(text.contains("ledger_command_duration_ms_bucket{le=\"50\"} 3"));
        assert!(text.contains("ledger_command_duration_ms_count 3"));
        assert!(text.contains("ledger_projection_lag_events 20"));
    }
}
