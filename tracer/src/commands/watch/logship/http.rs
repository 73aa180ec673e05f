//! One post of a batch: HTTP/1.1 written by hand (a request line, five headers, the NDJSON
//! body; the answer's status line), every step bounded in time.
use std::{
    io::{self, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::{CONNECT_TIMEOUT, POST_TIMEOUT};
use crate::{cli::HttpUrl, system::connect::connect_log_sink};

/// The most of an answer that is read: its status line is all that matters.
const MAX_ANSWER_HEAD: usize = 1024;

/// What a post came to (an `Err` is retried).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    /// Refused for good, with the status.
    Rejected(u16),
}

/// A status: 2xx accepted, 408, 429 and 5xx worth retrying (an error), the rest refused.
pub fn judge_status(status: u16) -> io::Result<Answer> {
    match status {
        200..=299 => Ok(Answer::Accepted),
        408 | 429 | 500..=599 => Err(io::Error::other(format!("it answered {status}"))),
        _ => Ok(Answer::Rejected(status)),
    }
}

/// The request head of a post of `len` bytes of NDJSON.
pub fn request_head(url: &HttpUrl, len: usize) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tracer/{}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    )
}

/// The status code of an answer's head (`HTTP/1.1 200 OK`).
pub fn parse_status(head: &[u8]) -> io::Result<u16> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP answer: {:?}", text.trim_end()),
        )),
    }
}

/// Posts one body; every step is bounded (connect, then the whole post).
pub(super) fn post(url: &HttpUrl, body: &[u8]) -> io::Result<Answer> {
    let mut conn = connect_log_sink(&url.host, url.port, CONNECT_TIMEOUT)?;
    let deadline = Instant::now() + POST_TIMEOUT;
    write_by(&mut conn, request_head(url, body.len()).as_bytes(), deadline)?;
    write_by(&mut conn, body, deadline)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_ANSWER_HEAD {
        conn.set_read_timeout(Some(left(deadline)?))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    judge_status(parse_status(&head)?)
}

fn write_by(conn: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        conn.set_write_timeout(Some(left(deadline)?))?;
        match conn.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Time left before `deadline` (never zero: a zero timeout means none), or a timeout error.
fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "the post took too long"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_by_hand() {
        let url = crate::cli::parse_http_url("http://127.0.0.1:30007/logs?x=1").unwrap();
        let head = request_head(&url, 42);
        assert!(
            head.starts_with("POST /logs?x=1 HTTP/1.1\r\nHost: 127.0.0.1:30007\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nContent-Type: application/x-ndjson\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nContent-Length: 42\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n").unwrap(),
            200
        );
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\n").unwrap(), 503);
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"").is_err());
        assert_eq!(judge_status(204).unwrap(), Answer::Accepted);
        assert_eq!(judge_status(400).unwrap(), Answer::Rejected(400));
        assert_eq!(judge_status(301).unwrap(), Answer::Rejected(301));
        for retry in [408, 429, 500, 503] {
            assert!(judge_status(retry).is_err(), "{retry}");
        }
    }
}
