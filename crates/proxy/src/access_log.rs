//! The access log: one JSON line per finished request (or closed TCP connection), with what the
//! plugins did to it, written by its own thread so that a slow disk never holds a worker. When
//! the writer falls behind, lines are dropped and counted rather than queued without bound.

use std::io::Write;
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;

pub struct AccessLog {
    lines: mpsc::SyncSender<String>,
    stats: Arc<crate::stats::Stats>,
}

impl AccessLog {
    /// Opens the destination (`-` for stdout, else a file appended to) and starts the writer.
    pub fn open(destination: &str, stats: Arc<crate::stats::Stats>) -> std::io::Result<Self> {
        let output: Box<dyn Write + Send> = if destination == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(destination)?,
            )
        };
        let (lines, queue) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(&queue, output))?;
        Ok(Self { lines, stats })
    }

    pub fn write(&self, record: &Record<'_>) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        if self.lines.try_send(line).is_err() {
            self.stats.access_log_dropped();
        }
    }
}

/// One access-log line (docs/config.md, "Access log").
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    pub time: String,
    pub listener: &'a str,
    pub peer: String,
    pub protocol: &'a str,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub request_id: Option<String>,
    pub status: Option<u16>,
    pub details: String,
    pub route: Option<&'a str>,
    pub upstream: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Microseconds, as milliseconds with three decimals and no float noise.
    pub duration_ms: f64,
    pub plugins: PluginsRecord<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginsRecord<'a> {
    pub chain: Vec<&'a str>,
    pub local_reply_by: Option<String>,
    pub failed: Vec<String>,
}

/// Writes lines as they come, flushing whenever the queue runs dry.
fn write_lines(queue: &mpsc::Receiver<String>, output: Box<dyn Write + Send>) {
    let mut output = std::io::BufWriter::new(output);
    loop {
        match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if writeln!(output, "{line}").is_err() {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = output.flush();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = output.flush();
                return;
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-21T14:22:15.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(timestamp(leap), "2024-02-29T12:34:56.789Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_270_935);
        assert_eq!(timestamp(later), "2026-11-21T14:22:15.000Z");
    }
}
