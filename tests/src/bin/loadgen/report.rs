//! The figures of a run, printed as they come and summed up as one Markdown table.

/// What a figure is held against.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The figure must not exceed this.
    AtMost(f64),
    /// The figure must reach this.
    AtLeast(f64),
}

struct Row {
    workload: &'static str,
    figure: String,
    value: f64,
    unit: &'static str,
    target: Option<Target>,
}

pub struct Report {
    rows: Vec<Row>,
    failures: Vec<String>,
    debug_build: bool,
    ledger_commands_per_second: Option<f64>,
    peer_commands_per_second: Option<f64>,
    /// The store alone under the peer's load: (unkeyed ids, keyed ids), appends per second.
    store_appends_per_second: (Option<f64>, Option<f64>),
}

fn number(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

impl Report {
    pub fn new(debug_build: bool) -> Self {
        Self {
            rows: Vec::new(),
            failures: Vec::new(),
            debug_build,
            ledger_commands_per_second: None,
            peer_commands_per_second: None,
            store_appends_per_second: (None, None),
        }
    }

    /// Records a figure and prints it with its target and ratio.
    pub fn figure(
        &mut self,
        workload: &'static str,
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
    ) {
        let row = Row {
            workload,
            figure: figure.into(),
            value,
            unit,
            target,
        };
        println!(
            "  {}: {} {}{}",
            row.figure,
            number(value),
            unit,
            match target {
                Some(t) => format!("  (target {}, {})", target_text(t, unit), verdict(value, t)),
                None => String::new(),
            }
        );
        self.rows.push(row);
    }

    /// Records that a workload lost data or failed: the run exits non-zero.
    pub fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("  FAILED: {what}");
        self.failures.push(what);
    }

    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn ledger_throughput(&mut self, commands_per_second: f64) {
        self.ledger_commands_per_second = Some(commands_per_second);
    }

    pub fn peer_throughput(&mut self, commands_per_second: f64) {
        self.peer_commands_per_second = Some(commands_per_second);
    }

    pub fn store_throughput(&mut self, keyed: bool, appends_per_second: f64) {
        if keyed {
            self.store_appends_per_second.1 = Some(appends_per_second);
        } else {
            self.store_appends_per_second.0 = Some(appends_per_second);
        }
    }

    /// Workload 2's figures, from the same run: the whole service's throughput (workload 1,
    /// gRPC, decisions and read models included) over the peer's, and the ledger's store
    /// alone under the peer's load over the peer's.
    pub fn compare(&mut self) {
        let Some(peer) = self.peer_commands_per_second.filter(|peer| *peer > 0.0) else {
            return;
        };
        println!("\n== ledger / peer");
        let (unkeyed, keyed) = self.store_appends_per_second;
        for (figure, value) in [
            (
                "service (workload 1 over gRPC) / peer throughput",
                self.ledger_commands_per_second,
            ),
            (
                "ledger store, unkeyed ids (as the peer) / peer throughput",
                unkeyed,
            ),
            (
                "ledger store, keyed ids (retries deduplicated) / peer throughput",
                keyed,
            ),
        ] {
            if let Some(value) = value {
                self.figure("2", figure, value / peer, "x", Some(Target::AtLeast(3.0)));
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut text = String::new();
        if self.debug_build {
            text.push_str(
                "(debug build: figures are not meaningful; build with --release to measure)\n\n",
            );
        }
        text.push_str("| workload | figure | value | target | ratio to target | met |\n");
        text.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for row in &self.rows {
            let (target, ratio, met) = match row.target {
                Some(t) => {
                    let limit = match t {
                        Target::AtMost(limit) | Target::AtLeast(limit) => limit,
                    };
                    (
                        target_text(t, row.unit),
                        format!("{:.2}", row.value / limit),
                        verdict(row.value, t).to_owned(),
                    )
                }
                None => ("".into(), "".into(), "".into()),
            };
            text.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} |\n",
                row.workload,
                row.figure,
                number(row.value),
                row.unit,
                target,
                ratio,
                met
            ));
        }
        for failure in &self.failures {
            text.push_str(&format!("\nFAILED: {failure}\n"));
        }
        text
    }
}

fn target_text(target: Target, unit: &str) -> String {
    match target {
        Target::AtMost(limit) => format!("<= {} {unit}", number(limit)),
        Target::AtLeast(limit) => format!(">= {} {unit}", number(limit)),
    }
}

fn verdict(value: f64, target: Target) -> &'static str {
    let met = match target {
        Target::AtMost(limit) => value <= limit,
        Target::AtLeast(limit) => value >= limit,
    };
    if met { "met" } else { "MISSED" }
}
