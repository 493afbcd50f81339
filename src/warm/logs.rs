//! Access-log lines → the request they record (method, still-encoded path and query, status).
//!
//! Each format is a small pure function; [`LineParser`] picks one per line by its shape, so a
//! file that mixes formats (or a pipe of several logs) still works:
//! - nginx/Apache common and combined: `ip - user [date] "GET /p?q HTTP/1.1" 200 123 "ref" "ua"`
//! - ALB: `https 2024-… elb client target t t t 200 200 in out "GET https://host:443/p?q HTTP/1.1" …`
//! - CloudFront standard (W3C, tab-separated): path and query in separate fields, placed by the
//!   `#Fields:` header when one was seen, else by the documented default order.
//! - imgedge's JSON access log (`edge.access_log.format: json`): `{"method":"GET","uri":"/p?q",…}`
//! - imgedge's former `access` line (tracing fmt): `… access: method=GET uri=/p?q status=200 …`
//! - one URL (`http://host/p?q`) or path (`/p?q`) per line.

use std::fmt;

/// One request found in a log line. Path and query are as on the wire (percent-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The method, when the format records it.
    pub method: Option<String>,
    /// The path, percent-encoded as received.
    pub path: String,
    /// The query string without `?`, when there was one.
    pub query: Option<String>,
    /// The status the server answered, when the format records it.
    pub status: Option<u16>,
}

/// What a line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Blank, or a comment/header (`#…`): neither a request nor an error.
    Comment,
    /// A request.
    Request(LoggedRequest),
}

/// Why a line could not be read. Such lines are counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// No known format matches the line.
    #[error("no known log format matches")]
    UnknownFormat,
    /// The format was recognised but its request field is malformed.
    #[error("malformed request field")]
    MalformedRequest,
}

impl fmt::Display for LoggedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.query {
            Some(q) => write!(f, "{}?{q}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// Column positions of a CloudFront standard log, from its `#Fields:` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CloudFrontFields {
    method: usize,
    stem: usize,
    status: usize,
    query: usize,
}

impl Default for CloudFrontFields {
    // The documented order: date time x-edge-location sc-bytes c-ip cs-method cs(Host)
    // cs-uri-stem sc-status cs(Referer) cs(User-Agent) cs-uri-query …
    fn default() -> Self {
        CloudFrontFields {
            method: 5,
            stem: 7,
            status: 8,
            query: 11,
        }
    }
}

/// Parses lines of any supported format; remembers a CloudFront `#Fields:` header.
#[derive(Debug, Default, Clone)]
pub struct LineParser {
    cloudfront: CloudFrontFields,
}

impl LineParser {
    /// Parse one line (without its newline).
    pub fn parse(&mut self, line: &str) -> Result<Line, BadLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Ok(Line::Comment);
        }
        if let Some(fields) = trimmed.strip_prefix("#Fields:") {
            if let Some(f) = cloudfront_fields(fields) {
                self.cloudfront = f;
            }
            return Ok(Line::Comment);
        }
        if trimmed.starts_with('#') {
            return Ok(Line::Comment);
        }
        if trimmed.starts_with('{') {
            return parse_json(trimmed).map(Line::Request);
        }
        if line.contains('\t') {
            return parse_cloudfront(line, &self.cloudfront).map(Line::Request);
        }
        if let Some(r) = parse_imgedge(trimmed) {
            return r.map(Line::Request);
        }
        if trimmed.contains('"') {
            return if is_alb(trimmed) {
                parse_alb(trimmed)
            } else {
                parse_combined(trimmed)
            }
            .map(Line::Request);
        }
        parse_url(trimmed).map(Line::Request)
    }
}

/// `#Fields: date time … cs-uri-stem sc-status … cs-uri-query …` → column positions.
fn cloudfront_fields(header: &str) -> Option<CloudFrontFields> {
    let names: Vec<&str> = header.split_whitespace().collect();
    let pos = |n: &str| names.iter().position(|x| *x == n);
    Some(CloudFrontFields {
        method: pos("cs-method")?,
        stem: pos("cs-uri-stem")?,
        status: pos("sc-status")?,
        query: pos("cs-uri-query")?,
    })
}

/// A CloudFront standard log line: tab-separated, `-` for an empty field.
fn parse_cloudfront(line: &str, f: &CloudFrontFields) -> Result<LoggedRequest, BadLine> {
    let cols: Vec<&str> = line.split('\t').collect();
    let get = |i: usize| cols.get(i).copied().filter(|v| !v.is_empty() && *v != "-");
    let path = get(f.stem).ok_or(BadLine::MalformedRequest)?;
    if !path.starts_with('/') {
        return Err(BadLine::MalformedRequest);
    }
    Ok(LoggedRequest {
        method: get(f.method).map(str::to_string),
        path: path.to_string(),
        query: get(f.query).map(str::to_string),
        status: get(f.status).and_then(|s| s.parse().ok()),
    })
}

/// imgedge's own access line: `… access: method=GET uri=/image/x?size=1 status=200 cache="HIT" …`.
/// `None` when the line is not one.
fn parse_imgedge(line: &str) -> Option<Result<LoggedRequest, BadLine>> {
    let line = if line.contains('\u{1b}') {
        strip_ansi(line)
    } else {
        line.to_string()
    };
    if !line.contains(" access:") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|tok| tok.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
    };
    let uri = field("uri")?;
    Some(split_target(&uri).map(|(path, query)| LoggedRequest {
        method: field("method"),
        path,
        query,
        status: field("status").and_then(|s| s.parse().ok()),
    }))
}

/// Terminal colours, in case a log was captured from a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// ALB lines start with the request type and an ISO timestamp.
fn is_alb(line: &str) -> bool {
    let mut it = line.split(' ');
    let kind = it.next().unwrap_or("");
    let time = it.next().unwrap_or("");
    matches!(kind, "http" | "https" | "h2" | "grpcs" | "ws" | "wss")
        && time.len() >= 20
        && time.as_bytes()[4] == b'-'
        && time.contains('T')
}

/// The first double-quoted field (backslash escapes respected) and the text after it.
fn first_quoted(line: &str) -> Option<(&str, &str)> {
    let start = line.find('"')? + 1;
    let bytes = line.as_bytes();
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some((&line[start..i], &line[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// `GET /path?q HTTP/1.1` → method and target.
fn request_line(req: &str) -> Result<(String, &str), BadLine> {
    let mut parts = req.split(' ').filter(|s| !s.is_empty());
    let method = parts.next().ok_or(BadLine::MalformedRequest)?;
    let target = parts.next().ok_or(BadLine::MalformedRequest)?;
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BadLine::MalformedRequest);
    }
    Ok((method.to_string(), target))
}

/// nginx/Apache common or combined format.
fn parse_combined(line: &str) -> Result<LoggedRequest, BadLine> {
    let (req, rest) = first_quoted(line).ok_or(BadLine::UnknownFormat)?;
    let (method, target) = request_line(req)?;
    let (path, query) = split_target(target)?;
    Ok(LoggedRequest {
        method: Some(method),
        path,
        query,
        status: rest.split_whitespace().next().and_then(|s| s.parse().ok()),
    })
}

/// A JSON access-log line: `method`, `uri` (the request target) and `status`.
fn parse_json(line: &str) -> Result<LoggedRequest, BadLine> {
    #[derive(serde::Deserialize)]
    struct Json {
        method: Option<String>,
        uri: String,
        status: Option<u16>,
    }
    let j: Json = serde_json::from_str(line).map_err(|_| BadLine::UnknownFormat)?;
    let (path, query) = split_target(&j.uri)?;
    Ok(LoggedRequest {
        method: j.method,
        path,
        query,
        status: j.status,
    })
}

/// An Application Load Balancer log line: the request field holds an absolute URL.
fn parse_alb(line: &str) -> Result<LoggedRequest, BadLine> {
    let (req, _) = first_quoted(line).ok_or(BadLine::MalformedRequest)?;
    let (method, target) = request_line(req)?;
    let (path, query) = split_target(target)?;
    // type time elb client target rpt tpt spt elb_status_code …
    let status = line.split(' ').nth(8).and_then(|s| s.parse().ok());
    Ok(LoggedRequest {
        method: Some(method),
        path,
        query,
        status,
    })
}

/// One URL or path on its own line.
fn parse_url(line: &str) -> Result<LoggedRequest, BadLine> {
    if line.contains(char::is_whitespace) {
        return Err(BadLine::UnknownFormat);
    }
    if !(line.starts_with('/') || line.starts_with("http://") || line.starts_with("https://")) {
        return Err(BadLine::UnknownFormat);
    }
    let (path, query) = split_target(line)?;
    Ok(LoggedRequest {
        method: None,
        path,
        query,
        status: None,
    })
}

/// A request target (origin-form `/p?q` or absolute-form `http://host/p?q`) → path and query.
/// A fragment, which a browser never sends but a pasted URL may carry, is dropped.
pub fn split_target(target: &str) -> Result<(String, Option<String>), BadLine> {
    let target = target.split('#').next().unwrap_or("");
    let path_and_query = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => return Err(BadLine::MalformedRequest),
        }
    } else {
        target
    };
    if !path_and_query.starts_with('/') {
        return Err(BadLine::MalformedRequest);
    }
    Ok(match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string()).filter(|q| !q.is_empty())),
        None => (path_and_query.to_string(), None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> LoggedRequest {
        match LineParser::default().parse(line) {
            Ok(Line::Request(r)) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn bad(line: &str) -> BadLine {
        match LineParser::default().parse(line) {
            Err(e) => e,
            other => panic!("{line}: expected a bad line, got {other:?}"),
        }
    }

    #[test]
    fn nginx_combined() {
        let r = req(
            r#"203.0.113.9 - - [22/Nov/2026:05:54:11 +0000] "GET /image/3972b16287e5kite.jpg?size=300x200&utm_source=mail HTTP/1.1" 200 18234 "https://shop.example/p/1" "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)""#,
        );
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.path, "/image/3972b16287e5kite.jpg");
        assert_eq!(r.query.as_deref(), Some("size=300x200&utm_source=mail"));
        assert_eq!(r.status, Some(200));
    }

    #[test]
    fn apache_common_with_encoded_path_and_escaped_quote() {
        let r = req(
            r#"10.1.2.3 - frank [10/Oct/2000:13:55:36 -0700] "HEAD /image/a%2Fb/c.jpg HTTP/1.0" 304 -"#,
        );
        assert_eq!(r.method.as_deref(), Some("HEAD"));
        assert_eq!(r.path, "/image/a%2Fb/c.jpg");
        assert_eq!(r.query, None);
        assert_eq!(r.status, Some(304));
        // nginx escapes a quote in the request as \x22, Apache as \"; neither ends the field.
        let r = req(
            r#"::1 - - [10/Oct/2000:13:55:36 -0700] "GET /image/k.jpg?x=\"y\"&size=10x HTTP/1.1" 200 5 "-" "curl/8""#,
        );
        assert_eq!(r.query.as_deref(), Some(r#"x=\"y\"&size=10x"#));
    }

    #[test]
    fn combined_malformed() {
        assert_eq!(
            bad(r#"1.2.3.4 - - [x] "GARBAGE" 400 0 "-" "-""#),
            BadLine::MalformedRequest
        );
        assert_eq!(
            bad(r#"1.2.3.4 - - [x] "get /image/a HTTP/1.1" 200 0"#),
            BadLine::MalformedRequest
        );
        assert_eq!(
            bad(r#"1.2.3.4 - - [x] "GET /image/a HTTP/1.1 200 0"#),
            BadLine::UnknownFormat
        );
    }

    #[test]
    fn alb() {
        let r = req(
            r#"https 2026-11-22T05:54:11.349371Z app/imgedge-lb/50dc6c495c0c9188 192.168.131.39:2817 10.0.0.1:80 0.000 0.001 0.000 200 200 34 366 "GET https://img.example.com:443/image/3972b16287e5kite.jpg?q=70&size=640x HTTP/1.1" "Mozilla/5.0 (Windows NT 10.0)" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 "Root=1-58337262-36d228ad5d99923122bbe354" "img.example.com" "arn:aws:acm:us-east-2:123456789012:certificate/12345678" 0 2026-11-22T05:54:11.348000Z "forward" "-" "-" "10.0.0.1:80" "200" "-" "-""#,
        );
        assert_eq!(r.path, "/image/3972b16287e5kite.jpg");
        assert_eq!(r.query.as_deref(), Some("q=70&size=640x"));
        assert_eq!(r.status, Some(200));
        let r = req(
            r#"http 2026-11-22T05:54:12.000000Z app/lb/1 1.2.3.4:1 - -1 -1 -1 502 - 34 366 "GET http://img.example.com:80/image/x.png HTTP/1.1" "-" - - arn "-" "-" "-" 0 2026-11-22T05:54:12.000000Z "forward" "-" "-" "-" "-" "-" "-""#,
        );
        assert_eq!(r.path, "/image/x.png");
        assert_eq!(r.status, Some(502));
        assert_eq!(
            bad(
                r#"https 2026-11-22T05:54:11.349371Z app/lb/1 1.2.3.4:1 - 0 0 0 400 - 0 0 "- - - " "-""#
            ),
            BadLine::MalformedRequest
        );
    }

    #[test]
    fn cloudfront_default_and_header_order() {
        let line = "2026-11-22\t05:54:11\tFRA56-C1\t18234\t203.0.113.9\tGET\td111111abcdef8.cloudfront.net\t/image/3972b16287e5kite.jpg\t200\t-\tMozilla/5.0%20(X11;%20Linux)\tsize=300x200&utm_campaign=x\t-\tMiss\tabc==\timg.example.com\thttps\t421\t0.003\t-\tTLSv1.3\tTLS_AES_128_GCM_SHA256\tMiss\tHTTP/2.0\t-\t-\t11040\t0.003\tMiss\timage/jpeg\t18234\t-\t-";
        let r = req(line);
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.path, "/image/3972b16287e5kite.jpg");
        assert_eq!(r.query.as_deref(), Some("size=300x200&utm_campaign=x"));
        assert_eq!(r.status, Some(200));
        // No query is "-".
        let r = req(
            "2026-11-22\t05:54:11\tFRA56-C1\t1\t1.2.3.4\tGET\th\t/image/a%20b.jpg\t404\t-\t-\t-\t-",
        );
        assert_eq!(
            (r.path.as_str(), r.query, r.status),
            ("/image/a%20b.jpg", None, Some(404))
        );
        // A #Fields header with another order is honoured for the following lines.
        let mut p = LineParser::default();
        assert_eq!(p.parse("#Version: 1.0"), Ok(Line::Comment));
        assert_eq!(
            p.parse("#Fields: date time cs-uri-query cs-uri-stem cs-method sc-status"),
            Ok(Line::Comment)
        );
        match p.parse("2026-11-22\t05:54:11\tsize=10x\t/image/k.jpg\tGET\t200") {
            Ok(Line::Request(r)) => {
                assert_eq!(r.path, "/image/k.jpg");
                assert_eq!(r.query.as_deref(), Some("size=10x"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(bad("a\tb\tc"), BadLine::MalformedRequest);
    }

    #[test]
    fn imgedge_json_line() {
        let r = req(
            r#"{"time":"2026-11-22T08:01:02.345Z","client":"10.0.0.1","method":"GET","uri":"/image/a.jpg?size=100x","status":200,"cache":"HIT"}"#,
        );
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.path, "/image/a.jpg");
        assert_eq!(r.query.as_deref(), Some("size=100x"));
        assert_eq!(r.status, Some(200));
        assert_eq!(bad(r#"{"method":"GET"}"#), BadLine::UnknownFormat);
    }

    #[test]
    fn imgedge_access_line() {
        let r = req(
            r#"2026-11-22T05:54:11.123456Z  INFO access: method=GET uri=/image/3972b16287e5kite.jpg?size=300x200&fit=cover status=200 cache="MISS" ms=41.2"#,
        );
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.path, "/image/3972b16287e5kite.jpg");
        assert_eq!(r.query.as_deref(), Some("size=300x200&fit=cover"));
        assert_eq!(r.status, Some(200));
        // Captured from a terminal: colours around the level and target.
        let r = req("\u{1b}[2m2026-11-22T05:54:11Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2maccess\u{1b}[0m\u{1b}[2m:\u{1b}[0m \u{1b}[3mmethod\u{1b}[0m\u{1b}[2m=\u{1b}[0mHEAD \u{1b}[3muri\u{1b}[0m\u{1b}[2m=\u{1b}[0m/image/k.jpg \u{1b}[3mstatus\u{1b}[0m\u{1b}[2m=\u{1b}[0m200");
        assert_eq!(r.method.as_deref(), Some("HEAD"));
        assert_eq!(r.path, "/image/k.jpg");
        assert_eq!(r.status, Some(200));
        assert_eq!(
            bad(r#"2026-11-22T05:54:11Z INFO access: method=GET uri=image/x status=200"#),
            BadLine::MalformedRequest
        );
    }

    #[test]
    fn url_per_line() {
        let r = req("https://img.example.com/image/k.jpg?size=10x#frag");
        assert_eq!(
            (r.path.as_str(), r.query.as_deref()),
            ("/image/k.jpg", Some("size=10x"))
        );
        let r = req("  /image/k%2Ejpg?  ");
        assert_eq!((r.path.as_str(), r.query), ("/image/k%2Ejpg", None));
        assert_eq!(r.method, None);
        assert_eq!(bad("http://host-without-path"), BadLine::MalformedRequest);
        assert_eq!(bad("not a log line"), BadLine::UnknownFormat);
        assert_eq!(bad("image/k.jpg"), BadLine::UnknownFormat);
    }

    #[test]
    fn comments_and_blanks() {
        let mut p = LineParser::default();
        for l in ["", "   ", "\r", "# a comment", "#Version: 1.0"] {
            assert_eq!(p.parse(l), Ok(Line::Comment), "{l:?}");
        }
    }
}
