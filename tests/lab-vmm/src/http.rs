//! The envd stand-in's HTTP/1.1 handling: just enough to answer E2B's orchestrator
//! (`GET /health`, `POST /init`) the way envd does. The QEMU guest's handler script
//! (guest/handler.sh) gives the same answers.

/// Requests larger than this are answered with 400 instead of buffered forever.
pub const MAX_REQUEST: usize = 64 * 1024;

pub const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
pub const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
pub const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What to do with the bytes received so far on one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Headers or body still incomplete: keep reading.
    Incomplete,
    /// The whole request is in: send this response and close.
    Respond(&'static [u8]),
    /// `GET /stream?bytes=N`: a 200 with N bytes of body, for traffic on a long connection.
    Stream(u64),
}

/// Decides on a response once the request (headers and any Content-Length body) is complete.
pub fn parse(buf: &[u8]) -> Parse {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return too_big_or_incomplete(buf.len());
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Parse::Respond(BAD_REQUEST);
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let Some(body_len) = content_length(lines) else {
        return Parse::Respond(BAD_REQUEST);
    };
    let body_have = buf.len() - (head_end + 4);
    if body_have < body_len {
        return too_big_or_incomplete(buf.len());
    }
    if let Some(n) = stream_bytes(request_line) {
        return Parse::Stream(n);
    }
    Parse::Respond(route(request_line))
}

/// `GET /stream?bytes=N HTTP/1.1` → N.
fn stream_bytes(request_line: &str) -> Option<u64> {
    let mut parts = request_line.split_ascii_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    let query = target.strip_prefix("/stream?bytes=")?;
    (method == "GET").then(|| query.parse().ok()).flatten()
}

/// The head of a streamed response of `n` bytes.
pub fn stream_head(n: u64) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn too_big_or_incomplete(len: usize) -> Parse {
    if len > MAX_REQUEST {
        Parse::Respond(BAD_REQUEST)
    } else {
        Parse::Incomplete
    }
}

/// The body length announced by the headers (0 when absent); `None` if malformed.
fn content_length<'a>(headers: impl Iterator<Item = &'a str>) -> Option<usize> {
    for line in headers {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            return value.trim().parse().ok();
        }
    }
    Some(0)
}

fn route(request_line: &str) -> &'static [u8] {
    let mut parts = request_line.split_ascii_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/health") | ("POST", "/init") => NO_CONTENT,
        _ => NOT_FOUND,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_envd() {
        let get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(get), Parse::Respond(NO_CONTENT));
        let query = b"GET /health?x=1 HTTP/1.1\r\n\r\n";
        assert_eq!(parse(query), Parse::Respond(NO_CONTENT));
        let other = b"GET /nope HTTP/1.1\r\n\r\n";
        assert_eq!(parse(other), Parse::Respond(NOT_FOUND));
        let stream = b"GET /stream?bytes=1000 HTTP/1.1\r\n\r\n";
        assert_eq!(parse(stream), Parse::Stream(1000));
    }

    #[test]
    fn waits_for_the_body() {
        let head = b"POST /init HTTP/1.1\r\ncontent-length: 4\r\n\r\n".to_vec();
        assert_eq!(parse(&head), Parse::Incomplete);
        let mut full = head;
        full.extend_from_slice(b"{}\r\n");
        assert_eq!(parse(&full), Parse::Respond(NO_CONTENT));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::Incomplete);
        let bad = b"POST /init HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse(bad), Parse::Respond(BAD_REQUEST));
        let huge = vec![b'a'; MAX_REQUEST + 1];
        assert_eq!(parse(&huge), Parse::Respond(BAD_REQUEST));
    }
}
