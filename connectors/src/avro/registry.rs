//! A Confluent schema registry client: schemas by id and a subject's latest schema,
//! over HTTP/1.1 (`GET`, JSON answers), plain or over TLS (`https://`, rustls; the
//! system's roots, or the PEM file of `schema.registry.ssl.ca.location`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an answer may be: schemas are small.
const MAX_ANSWER: u64 = 16 << 20;
/// The most files a Protobuf schema may reference, transitively.
const MAX_REFERENCES: usize = 256;

/// Why the registry did not give a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The registry answered that it does not have it (404).
    NotFound(String),
    /// The registry could not be reached or failed (network, 5xx): try again later.
    Unavailable(String),
    /// The registry answered something that is not a schema (4xx other than 404,
    /// malformed JSON).
    Bad(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NotFound(m) | RegistryError::Unavailable(m) | RegistryError::Bad(m) => {
                f.write_str(m)
            }
        }
    }
}

/// One registry address: `http[s]://host:port[/prefix]`.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port`, for the connection and the Host header.
    authority: String,
    /// The host, for TLS's server name.
    host: String,
    prefix: String,
    tls: bool,
}

#[derive(Clone)]
pub struct Registry {
    endpoints: Vec<Endpoint>,
    /// `Basic ...` credentials.
    authorization: Option<String>,
    /// For `https://` endpoints.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TLS client configuration trusting the system's roots, or only the certificates of
/// the PEM file `ca` when given.
fn tls_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| format!("schema.registry.ssl.ca.location {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "schema.registry.ssl.ca.location {path}: no certificate in the file"
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("schema.registry.ssl.ca.location {path}: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err("no trusted root certificates on this system for an https:// schema registry; set schema.registry.ssl.ca.location".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("endpoints", &self.endpoints)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "(set)"),
            )
            .finish()
    }
}

/// Standard base64 (with or without padding) decoded; `None` when it is not base64.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (HTTP basic authentication).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Registry {
    /// `urls`: one or more comma-separated `http[s]://host:port[/path]` addresses,
    /// tried in order; `ca`: a PEM file of the certificates that `https://` registries'
    /// chains must end in (else the system's roots).
    pub fn new(
        urls: &str,
        user: Option<&str>,
        password: Option<&str>,
        ca: Option<&str>,
    ) -> Result<Self, String> {
        let mut endpoints = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
                (r, false)
            } else if let Some(r) = url.strip_prefix("https://") {
                (r, true)
            } else {
                return Err(format!(
                    "schema.registry must be http://host:port or https://host:port, not '{url}'"
                ));
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() || authority.contains('@') {
                return Err(format!(
                    "schema.registry '{url}' has no host (credentials go in schema.registry.username and schema.registry.password)"
                ));
            }
            let host = match authority.rsplit_once(':') {
                Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => h,
                _ => authority,
            };
            let authority = if host.len() < authority.len() {
                authority.to_string()
            } else {
                format!("{authority}:{}", if tls { 443 } else { 80 })
            };
            endpoints.push(Endpoint {
                authority,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                prefix: path.to_string(),
                tls,
            });
        }
        if endpoints.is_empty() {
            return Err("schema.registry is empty".into());
        }
        let authorization = match (user, password) {
            (None, None) => None,
            (Some(u), p) => Some(format!(
                "Basic {}",
                base64(format!("{u}:{}", p.unwrap_or_default()).as_bytes())
            )),
            (None, Some(_)) => {
                return Err("schema.registry.password needs schema.registry.username".into())
            }
        };
        if ca.is_some() && !endpoints.iter().any(|e| e.tls) {
            return Err(
                "schema.registry.ssl.ca.location applies to https:// registries only".into(),
            );
        }
        let tls = if endpoints.iter().any(|e| e.tls) {
            Some(tls_config(ca)?)
        } else {
            None
        };
        Ok(Self {
            endpoints,
            authorization,
            tls,
        })
    }

    /// The schema text of a schema id.
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let answer = self.get(&format!("/schemas/ids/{id}"))?;
        schema_text(&answer, &format!("schema id {id}"))
    }

    /// The latest schema text registered under `subject`.
    pub fn latest(&self, subject: &str) -> Result<String, RegistryError> {
        let answer = self.get(&format!("/subjects/{}/versions/latest", percent(subject)))?;
        schema_text(&answer, &format!("subject {subject}"))
    }

    /// Registers `schema` under `subject` (or finds it there): its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.request(
            &format!("/subjects/{}/versions", percent(subject)),
            Some(&body),
        )?;
        answer
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                RegistryError::Bad(format!(
                    "the registry's answer to registering subject {subject} has no id: {answer}"
                ))
            })
    }

    /// The Protobuf schema of id `id` in its serialized form: the schema's
    /// `FileDescriptorProto`, then those of the files it references (transitively).
    pub fn protobuf_by_id(&self, id: u32) -> Result<Vec<Vec<u8>>, RegistryError> {
        self.protobuf_files(
            &format!("/schemas/ids/{id}?format=serialized"),
            &format!("schema id {id}"),
        )
    }

    /// The latest Protobuf schema of `subject`, as [`Registry::protobuf_by_id`] gives it.
    pub fn protobuf_latest(&self, subject: &str) -> Result<Vec<Vec<u8>>, RegistryError> {
        self.protobuf_files(
            &format!(
                "/subjects/{}/versions/latest?format=serialized",
                percent(subject)
            ),
            &format!("subject {subject}"),
        )
    }

    fn protobuf_files(&self, path: &str, what: &str) -> Result<Vec<Vec<u8>>, RegistryError> {
        let mut files = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![(path.to_string(), what.to_string())];
        while let Some((path, what)) = todo.pop() {
            if files.len() >= MAX_REFERENCES {
                return Err(RegistryError::Bad(format!(
                    "{what}: more than {MAX_REFERENCES} referenced files"
                )));
            }
            let answer = self.get(&path)?;
            match answer.get("schemaType").and_then(Value::as_str) {
                Some(t) if t.eq_ignore_ascii_case("PROTOBUF") => {}
                t => {
                    return Err(RegistryError::Bad(format!(
                        "{what} is a {} schema, not Protobuf",
                        t.unwrap_or("AVRO")
                    )))
                }
            }
            let text = answer
                .get("schema")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    RegistryError::Bad(format!("the answer for {what} has no schema"))
                })?;
            files.push(unbase64(text).ok_or_else(|| {
                RegistryError::Bad(format!(
                    "{what}: the schema is not a base64 serialized descriptor (does the registry support ?format=serialized?)"
                ))
            })?);
            let references = answer.get("references").and_then(Value::as_array);
            for r in references.into_iter().flatten() {
                let (Some(subject), Some(version)) = (
                    r.get("subject").and_then(Value::as_str),
                    r.get("version").and_then(Value::as_i64),
                ) else {
                    return Err(RegistryError::Bad(format!(
                        "{what}: a reference without subject and version: {r}"
                    )));
                };
                if seen.insert((subject.to_string(), version)) {
                    todo.push((
                        format!(
                            "/subjects/{}/versions/{version}?format=serialized",
                            percent(subject)
                        ),
                        format!("subject {subject} version {version}"),
                    ));
                }
            }
        }
        Ok(files)
    }

    fn get(&self, path: &str) -> Result<Value, RegistryError> {
        self.request(path, None)
    }

    /// `GET path`, or `POST path` with a JSON `body`, to the first endpoint that answers.
    fn request(&self, path: &str, body: Option<&str>) -> Result<Value, RegistryError> {
        let mut last = None;
        for e in &self.endpoints {
            match self.request_to(e, path, body) {
                Err(RegistryError::Unavailable(m)) => last = Some(m),
                other => return other,
            }
        }
        Err(RegistryError::Unavailable(last.unwrap_or_default()))
    }

    fn request_to(
        &self,
        e: &Endpoint,
        path: &str,
        body: Option<&str>,
    ) -> Result<Value, RegistryError> {
        let scheme = if e.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{}{path}", e.authority, e.prefix);
        let unavailable =
            |what: String| RegistryError::Unavailable(format!("schema registry {url}: {what}"));
        let addr = e
            .authority
            .to_socket_addrs()
            .map_err(|err| unavailable(err.to_string()))?
            .next()
            .ok_or_else(|| unavailable("no address".into()))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|err| unavailable(err.to_string()))?;
        let io = |err: std::io::Error| unavailable(err.to_string());
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nUser-Agent: sabot\r\nConnection: close\r\n",
            e.prefix, e.authority
        );
        if let Some(a) = &self.authorization {
            request.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(b) = body {
            request.push_str(&format!(
                "Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        let answer = match (&self.tls, e.tls) {
            (Some(config), true) => {
                let name = rustls::pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|err| RegistryError::Bad(format!("schema registry {url}: {err}")))?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|err| RegistryError::Bad(format!("schema registry {url}: {err}")))?;
                let mut tls = rustls::StreamOwned::new(conn, stream);
                exchange(&mut tls, request.as_bytes()).map_err(|err| tls_error(&url, err))?
            }
            _ => {
                let mut plain = stream;
                exchange(&mut plain, request.as_bytes()).map_err(io)?
            }
        };
        let (status, body) = parse_response(&answer).map_err(unavailable)?;
        let json = || -> Result<Value, RegistryError> {
            serde_json::from_slice(&body).map_err(|err| {
                RegistryError::Bad(format!(
                    "schema registry {url}: the answer is not JSON: {err}"
                ))
            })
        };
        let message = || {
            json()
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect())
        };
        match status {
            200..=299 => json(),
            404 => Err(RegistryError::NotFound(format!(
                "schema registry {url}: not found ({})",
                message()
            ))),
            401 | 403 => Err(RegistryError::Bad(format!(
                "schema registry {url}: not allowed ({status}: {})",
                message()
            ))),
            500.. => Err(unavailable(format!("{status}: {}", message()))),
            _ => Err(RegistryError::Bad(format!(
                "schema registry {url}: {status}: {}",
                message()
            ))),
        }
    }
}

/// The `schema` of an answer; only Avro schemas (`schemaType` absent or `AVRO`).
fn schema_text(answer: &Value, what: &str) -> Result<String, RegistryError> {
    if let Some(t) = answer.get("schemaType").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(RegistryError::Bad(format!(
                "{what} is a {t} schema, not Avro"
            )));
        }
    }
    answer
        .get("schema")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            RegistryError::Bad(format!("the registry's answer for {what} has no schema"))
        })
}

/// Sends `request` and reads the answer until the server closes the connection. A TLS
/// peer that closes without a close_notify (as many HTTP servers do) ends the answer
/// too: the body's length is checked when it is parsed.
fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut answer = Vec::new();
    match stream.take(MAX_ANSWER).read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(e),
    }
}

/// An error of a TLS exchange: a certificate that is not trusted (or any other TLS
/// refusal) will not pass by waiting; a network failure may.
fn tls_error(url: &str, e: std::io::Error) -> RegistryError {
    let refused = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if refused {
        RegistryError::Bad(format!("schema registry {url}: TLS: {e}"))
    } else {
        RegistryError::Unavailable(format!("schema registry {url}: {e}"))
    }
}

/// Escapes what a path segment cannot hold.
fn percent(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status and body of an HTTP/1.1 response (`Content-Length`, chunked, or to the
/// end of the connection).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an incomplete HTTP response")?;
    let head = std::str::from_utf8(&answer[..head_end]).map_err(|_| "a garbled HTTP response")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("an HTTP response without a status")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = &answer[head_end + 4..];
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("a truncated chunked HTTP body")?;
            let size_text =
                std::str::from_utf8(&rest[..line_end]).map_err(|_| "a garbled chunk")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "a garbled chunk size")?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Ok((status, out));
            }
            if rest.len() < size {
                return Err("a truncated chunked HTTP body".into());
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
    }
    match length {
        Some(n) if body.len() < n => Err("a truncated HTTP body".into()),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_responses() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        for s in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff\x10zz"] {
            assert_eq!(unbase64(&base64(s)).as_deref(), Some(s));
        }
        assert_eq!(unbase64("not base64!"), None);
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (404, br#"{"a":1}"#.to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn addresses() {
        assert!(Registry::new("r:8081", None, None, None).is_err());
        assert!(Registry::new("http://r:8081", None, None, Some("/ca.pem")).is_err());
        assert!(Registry::new("https://r", None, None, Some("/no/such/ca.pem")).is_err());
        let r = Registry::new("http://a:1/base/, http://b", Some("u"), None, None).unwrap();
        assert_eq!(r.endpoints[0].prefix, "/base");
        assert_eq!(r.endpoints[1].authority, "b:80");
        assert!(r.tls.is_none());
        assert_eq!(percent("topic-value"), "topic-value");
        assert_eq!(percent("a b/c"), "a%20b%2Fc");
        // Nothing listens on port 1: unavailable, not an answer.
        let down = Registry::new("http://127.0.0.1:1", None, None, None).unwrap();
        assert!(matches!(
            down.schema_by_id(1),
            Err(RegistryError::Unavailable(_))
        ));
    }
}
