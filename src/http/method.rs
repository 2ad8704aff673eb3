//! The request method as the client sent it. workers-rs reads a method it does not know
//! (`PROPFIND`, `PURGE`, `SEARCH`, ...) as `GET`, which would serve it as a read; routes here match
//! on [`Method`] instead, where such a method is [`Method::Other`] and matches no route, so it gets
//! the route's 405 with `Allow`.

use worker::Request;

/// The methods the routes answer, and everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other method, verbatim: it matches no route.
    Other(String),
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1); the Fetch standard upper-cases only DELETE,
    /// GET, HEAD, OPTIONS, POST and PUT before a Worker sees them, so `patch` stays `patch`.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The method of `req`, read from the JavaScript request (not workers-rs's mapping).
    pub fn of(req: &Request) -> Self {
        Self::parse(&req.inner().method())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_parse_and_anything_else_is_other() {
        let cases = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("PATCH", Method::Patch),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
        ];
        for (raw, method) in cases {
            assert_eq!(Method::parse(raw), method, "{raw}");
        }
        for raw in ["PROPFIND", "PURGE", "SEARCH", "FOO", "patch", "get", "CONNECT", "TRACE", ""] {
            assert_eq!(Method::parse(raw), Method::Other(raw.to_owned()), "{raw}");
        }
    }
}
