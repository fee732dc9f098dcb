//! The throughput bench's report: each row's ratios to the ceiling and the peer, and the table.

use crate::*;

/// Fills in each row's ratio to the ceiling (same phase, size and calls in flight) and to the
/// peer (same phase, size and in flight; the peer's single unbounded delivery row for both of
/// ours).
pub(crate) fn ratios(rows: &mut [Row]) {
    let snapshot = rows.to_vec();
    for row in rows.iter_mut().filter(|r| r.system != System::Ceiling) {
        // The peer's unbounded delivery is compared with 64 calls in flight.
        let calls = if row.in_flight == 0 {
            64
        } else {
            row.in_flight
        };
        row.vs_ceiling = snapshot
            .iter()
            .find(|c| {
                c.system == System::Ceiling
                    && c.phase == row.phase
                    && c.size == row.size
                    && c.in_flight == calls
            })
            .map(|c| row.rate / c.rate);
        if row.system == System::Websocket {
            row.vs_nats = snapshot
                .iter()
                .find(|p| {
                    p.system == System::Nats
                        && p.phase == row.phase
                        && p.size == row.size
                        && (p.in_flight == row.in_flight
                            || matches!(row.phase, Phase::Delivery | Phase::Burst))
                })
                .map(|p| row.rate / p.rate);
        }
    }
}

pub(crate) fn print(rows: &[Row]) {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "\n{:<9} {:<8} {:<7} {:>6} {:>5} {:>7} {:>9} {:>9} {:>8} {:>8} {:>5} {:>5} {:>6} {:>7} {:>7} {:>7}",
        "system",
        "phase",
        "format",
        "bytes",
        "infl",
        "msgs",
        "rate/s",
        "sink/s",
        "p50 us",
        "p99 us",
        "lost",
        "fail",
        "cpu s",
        "rss MiB",
        "/ceil",
        "/nats"
    );
    for r in rows {
        println!(
            "{:<9} {:<8} {:<7} {:>6} {:>5} {:>7} {:>9.0} {:>9} {:>8} {:>8} {:>5} {:>5} {:>6} {:>7} {:>7} {:>7}",
            r.system.name(),
            r.phase.name(),
            r.format,
            r.size,
            if r.in_flight == 0 {
                "unb".to_string()
            } else if r.defaults {
                "def".to_string()
            } else {
                r.in_flight.to_string()
            },
            r.messages,
            r.rate,
            opt(r.sink_rate, 0),
            opt(r.p50_us, 0),
            opt(r.p99_us, 0),
            r.lost,
            r.failed,
            opt(r.cpu_seconds, 2),
            opt(r.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            opt(r.vs_ceiling, 2),
            opt(r.vs_nats, 2),
        );
    }
}
