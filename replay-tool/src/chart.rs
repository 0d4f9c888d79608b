//! `chart`: seat use of one license over time, as an SVG (plotters, SVG backend only):
//! accepted, invited and waitlisted members as stacked step areas (the top of the invited
//! band is the seats held, accepted + invited) against the seat line, changing at the
//! events that changed them.

use std::path::Path;

use chrono::{DateTime, Utc};
use ledger::RecordedEvent;
use plotters::prelude::*;
use serde::Serialize;

use crate::error::{Failure, Result};
use crate::replay::decode;

/// The license's numbers from one moment on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SeatSample {
    pub at: DateTime<Utc>,
    pub seats: u64,
    pub accepted: u64,
    pub invited: u64,
    pub waitlisted: u64,
}

impl SeatSample {
    pub fn held(&self) -> u64 {
        self.accepted + self.invited
    }
}

/// The samples of a license stream in `[from, to]`: one at `from` (the state then), one
/// after every event inside the range that changed a number, and one at `to`.
pub fn seat_samples(
    events: &[RecordedEvent],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SeatSample>> {
    let mut license = domain::License::default();
    let sample = |license: &domain::License, at| {
        license.state().map(|s| {
            let c = s.counts();
            SeatSample {
                at,
                seats: u64::from(s.seats()),
                accepted: c.accepted,
                invited: c.invited,
                waitlisted: c.waitlisted,
            }
        })
    };
    let mut out: Vec<SeatSample> = Vec::new();
    let mut started = false;
    for e in events {
        if e.recorded_at > to {
            break;
        }
        if !started && e.recorded_at >= from {
            if let Some(s) = sample(&license, from) {
                out.push(s);
            }
            started = true;
        }
        let (meta, event) = decode(e)?;
        license.apply(&meta, &event);
        if started && let Some(s) = sample(&license, e.recorded_at) {
            let same = out.last().is_some_and(|l| {
                (l.seats, l.accepted, l.invited, l.waitlisted)
                    == (s.seats, s.accepted, s.invited, s.waitlisted)
            });
            if same {
                continue;
            }
            // Events of one append share their time: keep the state after the last of them.
            match out.last_mut() {
                Some(l) if l.at == s.at => *l = s,
                _ => out.push(s),
            }
        }
    }
    if !started && let Some(s) = sample(&license, from) {
        out.push(s);
    }
    if let Some(last) = out.last().copied() {
        out.push(SeatSample { at: to, ..last });
    }
    Ok(out)
}

/// A line of the chart: its legend, colour, width and value.
type Series = (&'static str, RGBColor, u32, fn(&SeatSample) -> u64);

/// A step line: each value holds until the next sample.
fn steps(samples: &[SeatSample], value: impl Fn(&SeatSample) -> u64) -> Vec<(i64, i64)> {
    let mut pts = Vec::with_capacity(samples.len() * 2);
    for (i, s) in samples.iter().enumerate() {
        let x = s.at.timestamp();
        let y = value(s) as i64;
        if i > 0 {
            pts.push((x, value(&samples[i - 1]) as i64));
        }
        pts.push((x, y));
    }
    pts
}

/// Draws the chart to `out` (SVG).
pub fn draw(license: &str, samples: &[SeatSample], out: &Path) -> Result<()> {
    if samples.is_empty() {
        return Err(Failure::usage(format!(
            "license '{license}' did not exist in that time range; nothing to draw"
        )));
    }
    let draw_err = |e: &dyn std::fmt::Display| {
        Failure::usage(format!("cannot draw the chart to {}: {e}", out.display()))
    };
    let x0 = samples.first().expect("not empty").at.timestamp();
    let mut x1 = samples.last().expect("not empty").at.timestamp();
    if x1 <= x0 {
        x1 = x0 + 86_400;
    }
    let y_max = samples
        .iter()
        .map(|s| s.seats.max(s.held()).max(s.held() + s.waitlisted))
        .max()
        .unwrap_or(1) as i64;
    let y_top = (y_max + y_max / 10 + 1).max(5);
    let span = x1 - x0;
    let root = SVGBackend::new(out, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Seat use of license {license}"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0i64..y_top)
        .map_err(|e| draw_err(&e))?;
    let fmt = if span > 3 * 86_400 {
        "%Y-%m-%d"
    } else {
        "%m-%d %H:%M"
    };
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(10)
        .x_desc("time (UTC)")
        .y_desc("members")
        .x_label_formatter(&|x| {
            DateTime::<Utc>::from_timestamp(*x, 0)
                .map(|t| t.format(fmt).to_string())
                .unwrap_or_default()
        })
        .draw()
        .map_err(|e| draw_err(&e))?;
    // Stacked areas: accepted at the bottom, invited on top of it (so the top of the blue
    // band is the seats held), the waitlist on top of that; the seat line drawn over all.
    let bands: [Series; 3] = [
        (
            "waitlisted (stacked on held)",
            RGBColor(240, 150, 60),
            0,
            |s| s.held() + s.waitlisted,
        ),
        (
            "invited (held = accepted + invited)",
            RGBColor(90, 140, 230),
            0,
            |s| s.held(),
        ),
        ("accepted", RGBColor(60, 170, 90), 0, |s| s.accepted),
    ];
    for (name, color, _, value) in bands {
        let fill = color.mix(0.75);
        chart
            .draw_series(AreaSeries::new(steps(samples, value), 0, fill).border_style(color))
            .map_err(|e| draw_err(&e))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 24, y + 6)], fill.filled()));
    }
    let seat_line = BLACK.stroke_width(3);
    chart
        .draw_series(LineSeries::new(steps(samples, |s| s.seats), seat_line))
        .map_err(|e| draw_err(&e))?
        .label("seats")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], seat_line));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(&e))?;
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}
