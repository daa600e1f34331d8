//! Admin API requests: parsing a request head (method, path, decoded query, headers) and
//! deciding how its body is framed. Pure: bytes in, values out; the caller owns the socket.

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method token as sent (`GET`, `POST`...).
    pub method: String,
    /// Path, percent-decoded, without the query.
    pub path: String,
    /// Query parameters in order, percent-decoded. `+` stays `+` (RFC 3986, not HTML forms):
    /// `?number=+74951234567` must reach the normalizer with its plus.
    pub query: Vec<(String, String)>,
    /// Headers in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
}

/// How the body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (no `Content-Length`, or 0).
    None,
    /// Exactly this many bytes.
    Length(usize),
    /// `Transfer-Encoding` is not supported here (clients send `Content-Length` for JSON).
    Chunked,
}

/// Why a head was refused (all answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not UTF-8.
    #[error("request head is not text")]
    NotText,
    /// The request line is not `METHOD SP /target SP HTTP/1.x`.
    #[error("bad request line")]
    RequestLine,
    /// A header line without a valid `name:`.
    #[error("bad header line")]
    Header,
    /// A `%` not followed by two hex digits, or decoding to bad UTF-8.
    #[error("bad percent-encoding in the request target")]
    Encoding,
    /// `Content-Length` is not a number, or given twice with different values.
    #[error("bad Content-Length")]
    ContentLength,
}

impl Head {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How the body is framed.
    pub fn body(&self) -> Result<Body, RequestError> {
        if self.header("transfer-encoding").is_some() {
            return Ok(Body::Chunked);
        }
        let mut length = None;
        for (_, value) in self.headers.iter().filter(|(n, _)| n == "content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RequestError::ContentLength);
            }
            // Too many digits for usize is simply "too large": saturate, the cap refuses it.
            let n = value.parse::<usize>().unwrap_or(usize::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(RequestError::ContentLength);
            }
            length = Some(n);
        }
        Ok(match length {
            None | Some(0) => Body::None,
            Some(n) => Body::Length(n),
        })
    }

    /// The token of `Authorization: Bearer TOKEN`, if sent.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Parses a complete head (through the blank line, as cut by [`crate::http::head_end`]).
pub fn parse_head(head: &[u8]) -> Result<Head, RequestError> {
    let text = std::str::from_utf8(head).map_err(|_| RequestError::NotText)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(RequestError::RequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::RequestLine);
    };
    if !is_token(method)
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || target.bytes().any(|b| b.is_ascii_control() || b >= 0x80)
    {
        return Err(RequestError::RequestLine);
    }
    let mut headers = Vec::new();
    for header in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = header.split_once(':').ok_or(RequestError::Header)?;
        if !is_token(name) {
            return Err(RequestError::Header);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect::<Result<Vec<_>, RequestError>>()?;
    Ok(Head {
        method: method.to_owned(),
        path: percent_decode(path)?,
        query,
        headers,
    })
}

/// Decodes `%XX` escapes; everything else (including `+`) is kept as is.
pub fn percent_decode(text: &str) -> Result<String, RequestError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(RequestError::Encoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| RequestError::Encoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| RequestError::Encoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::Encoding)
}

/// RFC 9110 `token`: what methods and header names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_headers_and_bearer() {
        let head = parse_head(
            b"GET /api/check?number=+7%20(495)%20123&did=&x HTTP/1.1\r\n\
              Authorization: Bearer  cg_abc \r\nContent-Length: 0\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(head.path, "/api/check");
        assert_eq!(head.param("number"), Some("+7 (495) 123"));
        assert_eq!(head.param("did"), Some(""));
        assert_eq!(head.param("x"), Some(""));
        assert_eq!(head.bearer(), Some("cg_abc"));
        assert_eq!(head.body(), Ok(Body::None));
    }

    #[test]
    fn body_framing() {
        let with = |headers: &str| {
            parse_head(format!("POST /api/rules HTTP/1.1\r\n{headers}\r\n").as_bytes())
                .expect("valid")
                .body()
        };
        assert_eq!(with("Content-Length: 12\r\n"), Ok(Body::Length(12)));
        assert_eq!(
            with("Content-Length: 99999999999999999999999\r\n"),
            Ok(Body::Length(usize::MAX))
        );
        assert_eq!(with("Transfer-Encoding: chunked\r\n"), Ok(Body::Chunked));
        for bad in [
            "Content-Length: -1\r\n",
            "Content-Length: 1\r\nContent-Length: 2\r\n",
        ] {
            assert_eq!(with(bad), Err(RequestError::ContentLength), "{bad}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"hello\r\n\r\n"[..],
            b"GET /x\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x?a=%zz HTTP/1.1\r\n\r\n",
            b"GET /x?a=%ff HTTP/1.1\r\n\r\n",
            b"GET /x?a=% HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let no_bearer =
            parse_head(b"GET / HTTP/1.1\r\nAuthorization: Basic eA==\r\n\r\n").expect("valid");
        assert_eq!(no_bearer.bearer(), None);
    }
}
