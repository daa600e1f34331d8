//! Reads one protocol's [`VERDICT_SECONDS`] histogram from a server's `/metrics`, so a run can
//! report the server's own time from call data received to verdict written: scrape before,
//! scrape after, quantiles of the difference (as bucket upper bounds).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::metrics::VERDICT_SECONDS;

/// Largest /metrics response read.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Why /metrics could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    /// Connection or read failed.
    #[error("metrics scrape: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("metrics scrape timed out")]
    Timeout,
    /// Not a 200 response.
    #[error("metrics scrape: unexpected response {0:?}")]
    Status(String),
}

/// Cumulative bucket counts of one histogram series, by upper bound in seconds (`+Inf` last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

impl Buckets {
    /// Parses `<VERDICT_SECONDS>_bucket{protocol="<protocol>",le="..."} N` lines.
    pub fn parse(text: &str, protocol: &str) -> Buckets {
        let prefix = format!("{VERDICT_SECONDS}_bucket{{");
        let label = format!("protocol=\"{protocol}\"");
        let mut out: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (labels, value) = rest.split_once("} ")?;
                if !labels.split(',').any(|l| l == label) {
                    return None;
                }
                let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
                let le = le.trim_end_matches('"');
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count = value.trim().parse::<f64>().ok()?;
                Some((bound, count as u64))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(out)
    }

    /// `self - before`, bucket by bucket (a bucket missing before counts from zero).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before
                        .0
                        .iter()
                        .find(|(b, _)| b.total_cmp(&le).is_eq())
                        .map_or(0, |&(_, c)| c);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |&(_, n)| n)
    }

    /// The upper bound of the bucket holding quantile `q`, in seconds (`None`: no data).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * q).ceil() as u64;
        self.0.iter().find(|&&(_, n)| n >= rank).map(|&(le, _)| le)
    }

    /// One line for the loadgen report.
    pub fn summary(&self, protocol: &str) -> String {
        let show = |q| match self.quantile(q) {
            None => "-".to_owned(),
            Some(s) if s.is_infinite() => "+Inf".to_owned(),
            Some(s) => format!("<= {:.0}", s * 1e6),
        };
        format!(
            "in-server verdict time us ({VERDICT_SECONDS}, {protocol}, {} calls): p50 {} p99 {} p99.9 {}",
            self.count(),
            show(0.5),
            show(0.99),
            show(0.999)
        )
    }
}

/// GETs `/metrics` from `addr` and returns the body.
pub async fn fetch(addr: SocketAddr) -> Result<String, ScrapeError> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: callguard\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| ScrapeError::Timeout)??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(ScrapeError::Status(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_the_difference_of_two_scrapes() {
        let before = "callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"0.00001\"} 5\n\
                      callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"0.00005\"} 5\n\
                      callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"+Inf\"} 5\n";
        let after = "callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"0.00001\"} 95\n\
                     callguard_verdict_seconds_bucket{protocol=\"esl\",le=\"0.00001\"} 7\n\
                     callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"0.00005\"} 104\n\
                     callguard_verdict_seconds_bucket{protocol=\"agi\",le=\"+Inf\"} 105\n";
        let run = Buckets::parse(after, "agi").since(&Buckets::parse(before, "agi"));
        assert_eq!(run.count(), 100);
        assert_eq!(run.quantile(0.5), Some(0.00001));
        assert_eq!(run.quantile(0.99), Some(0.00005));
        assert_eq!(run.quantile(1.0), Some(f64::INFINITY));
        assert!(
            run.summary("agi").contains("p99 <= 50 "),
            "{}",
            run.summary("agi")
        );
        assert_eq!(Buckets::default().quantile(0.99), None);
    }
}
