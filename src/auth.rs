//! Bearer-token auth: an access file maps credentials to roles; every call
//! carries `authorization: Bearer <token>`; `Handshake` trades a basic
//! `user:password` for a session token.
//!
//! Access file, one credential per line (`#` starts a comment):
//!
//! ```text
//! # role   credential
//! read     3c6e0b8a9c15224a8228b9a98ca1531d
//! write    9f86d081884c7d659a2feaa0c55ad015
//! admin    alice:correct-horse-battery-staple
//! ```
//!
//! A credential with a `:` is a user and password for `Handshake`; anything
//! else is a bearer token. Tokens and passwords are compared in constant time
//! and never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Shortest accepted bearer token or password (guessing must not pay).
pub const MIN_SECRET_LEN: usize = 16;

/// How long a token issued by `Handshake` stays valid.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most live sessions; the oldest is dropped beyond this.
const MAX_SESSIONS: usize = 10_000;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Queries, describe, list, health.
    Read,
    /// Also DoPut, create_collection, delete, compact.
    Write,
    /// Also ingest_path (makes the server read its own files).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

struct User {
    name: String,
    password: Vec<u8>,
    role: Role,
}

struct Session {
    user: String,
    role: Role,
    issued: Instant,
}

/// Failed sign-ins of one user name: how many in a row, and until when
/// Handshake refuses it without looking at the password.
#[derive(Default)]
struct Failures {
    count: u32,
    until: Option<Instant>,
}

impl Failures {
    /// One more failure: past `free` in a row, a wait of 1 s doubling with
    /// each further one, at most [`MAX_BACK_OFF`].
    fn failed(&mut self, now: Instant, free: u32) {
        self.count += 1;
        if self.count >= free {
            let wait = Duration::from_secs(1u64 << (self.count - free).min(6)).min(MAX_BACK_OFF);
            self.until = Some(now + wait);
        }
    }
}

/// Sessions one user may hold at once; a new one lets go of their oldest
/// (never another user's).
const SESSIONS_PER_USER: usize = 32;

/// Failed sign-ins in a row a user name gets before Handshake backs off:
/// 1 s, doubling with each further failure, at most [`MAX_BACK_OFF`].
const FREE_FAILURES: u32 = 3;
const MAX_BACK_OFF: Duration = Duration::from_secs(60);

/// Failed sign-ins in a row one address gets (whatever the user names)
/// before Handshake backs off for it the same way.
const FREE_PEER_FAILURES: u32 = 10;

/// The address a call came from, as the connection knows it (a request
/// extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// User names whose failures are remembered at most (names need not exist:
/// a flood of made-up names must not grow memory without bound).
const MAX_FAILING_NAMES: usize = 10_000;

/// The credentials of a server with auth on.
pub struct Auth {
    tokens: Vec<(Vec<u8>, Role)>,
    users: Vec<User>,
    /// Live sessions by token (a hash lookup with the map's random keys).
    sessions: Mutex<HashMap<Vec<u8>, Session>>,
    failures: Mutex<HashMap<Vec<u8>, Failures>>,
    /// The same per address (at most [`MAX_FAILING_NAMES`] remembered).
    peer_failures: Mutex<HashMap<std::net::IpAddr, Failures>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Auth").field("tokens", &self.tokens.len()).field("users", &self.users.len()).finish()
    }
}

impl Auth {
    /// Reads an access file (format in the module docs).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::parse(&text).map_err(|reason| Error::Invalid { field: "--auth-file".into(), value: path.display().to_string(), reason })
    }

    /// Parses access-file text; the error names the line, never the secret.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut auth = Auth { tokens: Vec::new(), users: Vec::new(), sessions: Mutex::default(), failures: Mutex::default(), peer_failures: Mutex::default() };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split_whitespace();
            let (Some(role), Some(cred), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {n}: expected `<role> <token>` or `<role> <user>:<password>`"));
            };
            let role = Role::parse(role).ok_or_else(|| format!("line {n}: role {role:?} is not read, write or admin"))?;
            match cred.split_once(':') {
                Some((user, password)) => {
                    if user.is_empty() || password.len() < MIN_SECRET_LEN {
                        return Err(format!("line {n}: user must be non-empty and the password at least {MIN_SECRET_LEN} characters"));
                    }
                    if auth.users.iter().any(|u| u.name == user) {
                        return Err(format!("line {n}: user {user:?} appears twice"));
                    }
                    auth.users.push(User { name: user.to_string(), password: password.as_bytes().to_vec(), role });
                }
                None => {
                    if cred.len() < MIN_SECRET_LEN {
                        return Err(format!("line {n}: a token must be at least {MIN_SECRET_LEN} characters"));
                    }
                    auth.tokens.push((cred.as_bytes().to_vec(), role));
                }
            }
        }
        if auth.tokens.is_empty() && auth.users.is_empty() {
            return Err("no credentials: add lines `<role> <token>` or `<role> <user>:<password>`".into());
        }
        Ok(auth)
    }

    /// The role of the caller whose `authorization` header is `header`.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Role> {
        let Some(header) = header else {
            return Err(Error::Unauthenticated(
                "no `authorization: Bearer <token>` header; use a token from the server's access file or get one with Handshake".into(),
            ));
        };
        let Some(token) = strip_scheme(header, b"bearer ") else {
            return Err(Error::Unauthenticated("the authorization header must be `Bearer <token>`".into()));
        };
        let mut found: Option<Role> = None;
        // Every candidate is compared, so timing does not tell which matched.
        for (t, role) in &self.tokens {
            if constant_time_eq(t, token) {
                found = Some(*role);
            }
        }
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get(token).filter(|s| s.issued.elapsed() < SESSION_TTL) {
            found = Some(session.role);
        }
        found.ok_or_else(|| Error::Unauthenticated("invalid or expired bearer token".into()))
    }

    /// The role of a caller from all its `authorization` header values:
    /// exactly one is taken (with several, which one would count is a guess
    /// a client should not rely on).
    pub fn check_headers<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> Result<Role> {
        let mut values = values.into_iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Error::Unauthenticated("send one authorization header, not several".into()));
        }
        self.check(first)
    }

    /// `Handshake`: checks a `Basic base64(user:password)` header and issues
    /// a session token for the user's role. Failures back off per user name
    /// and per `peer` address.
    pub fn handshake(&self, header: Option<&[u8]>, peer: Option<std::net::IpAddr>) -> Result<(String, Role)> {
        let encoded = header
            .and_then(|h| strip_scheme(h, b"basic "))
            .ok_or_else(|| Error::Unauthenticated("Handshake needs an `authorization: Basic base64(user:password)` header".into()))?;
        let decoded = base64_decode(encoded).ok_or_else(|| Error::Unauthenticated("the Basic credentials are not valid base64".into()))?;
        let (user, password) = match decoded.iter().position(|b| *b == b':') {
            Some(i) => (&decoded[..i], &decoded[i + 1..]),
            None => return Err(Error::Unauthenticated("the Basic credentials must be user:password".into())),
        };
        let now = Instant::now();
        if let Some(ip) = peer {
            let failures = self.peer_failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = failures.get(&ip).and_then(|f| f.until).filter(|u| *u > now) {
                return Err(Error::Unauthenticated(format!(
                    "too many failed sign-ins from this address: retry in {} s",
                    until.duration_since(now).as_secs_f64().ceil() as u64
                )));
            }
        }
        {
            let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = failures.get(user).and_then(|f| f.until).filter(|u| *u > now) {
                return Err(Error::Unauthenticated(format!(
                    "too many failed sign-ins for this user: retry in {} s",
                    until.duration_since(now).as_secs_f64().ceil() as u64
                )));
            }
        }
        let mut found = None;
        for u in &self.users {
            let name_ok = constant_time_eq(u.name.as_bytes(), user);
            let pass_ok = constant_time_eq(&u.password, password);
            if name_ok & pass_ok {
                found = Some((u.name.clone(), u.role));
            }
        }
        let Some((name, role)) = found else {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if failures.len() >= MAX_FAILING_NAMES && !failures.contains_key(user) {
                failures.retain(|_, f| f.until.is_some_and(|u| u > now));
                if failures.len() >= MAX_FAILING_NAMES {
                    failures.clear();
                }
            }
            failures.entry(user.to_vec()).or_default().failed(now, FREE_FAILURES);
            drop(failures);
            if let Some(ip) = peer {
                let mut failures = self.peer_failures.lock().unwrap_or_else(|p| p.into_inner());
                if failures.len() >= MAX_FAILING_NAMES && !failures.contains_key(&ip) {
                    failures.retain(|_, f| f.until.is_some_and(|u| u > now));
                    if failures.len() >= MAX_FAILING_NAMES {
                        failures.clear();
                    }
                }
                failures.entry(ip).or_default().failed(now, FREE_PEER_FAILURES);
            }
            return Err(Error::Unauthenticated("wrong user name or password".into()));
        };
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
        if let Some(ip) = peer {
            self.peer_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
        }
        let token = random_token()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.issued.elapsed() < SESSION_TTL);
        let oldest = |sessions: &HashMap<Vec<u8>, Session>, of: Option<&str>| {
            sessions.iter().filter(|(_, s)| of.is_none_or(|u| s.user == u)).min_by_key(|(_, s)| s.issued).map(|(t, _)| t.clone())
        };
        if sessions.values().filter(|s| s.user == name).count() >= SESSIONS_PER_USER {
            if let Some(t) = oldest(&sessions, Some(&name)) {
                sessions.remove(&t);
            }
        }
        if sessions.len() >= MAX_SESSIONS {
            if let Some(t) = oldest(&sessions, None) {
                sessions.remove(&t);
            }
        }
        sessions.insert(token.as_bytes().to_vec(), Session { user: name, role, issued: now });
        Ok((token, role))
    }
}

/// `header` without its case-insensitive auth scheme prefix.
fn strip_scheme<'a>(header: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    if header.len() < scheme.len() || !header[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = header[scheme.len()..].trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// Equality whose time depends only on the lengths, not on where the bytes
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// 32 random bytes from the kernel, hex-encoded.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).map_err(Error::io("/dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Standard base64 (with or without padding); `None` on any other byte.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let data: &[u8] = {
        let mut end = input.len();
        while end > 0 && input[end - 1] == b'=' {
            end -= 1;
        }
        &input[..end]
    };
    if data.len() % 4 == 1 || input.len() - data.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\nread  rrrrrrrrrrrrrrrr-read\nwrite wwwwwwwwwwwwwwww-write # trailing\nadmin alice:alice-password-long\n";

    #[test]
    fn tokens_map_to_their_roles() {
        let auth = Auth::parse(FILE).unwrap();
        assert_eq!(auth.check(Some(b"Bearer rrrrrrrrrrrrrrrr-read")).unwrap(), Role::Read);
        assert_eq!(auth.check(Some(b"bearer wwwwwwwwwwwwwwww-write")).unwrap(), Role::Write);
        assert!(matches!(auth.check(Some(b"Bearer rrrrrrrrrrrrrrrr-reaX")), Err(Error::Unauthenticated(_))));
        assert!(matches!(auth.check(Some(b"Bearer rrrrrrrrrrrrrrrr-read2")), Err(Error::Unauthenticated(_))));
        assert!(matches!(auth.check(None), Err(Error::Unauthenticated(_))));
        assert!(matches!(auth.check(Some(b"Basic abc")), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn handshake_issues_a_session_token_for_the_users_role() {
        let auth = Auth::parse(FILE).unwrap();
        let basic = format!("Basic {}", "YWxpY2U6YWxpY2UtcGFzc3dvcmQtbG9uZw=="); // alice:alice-password-long
        let (token, role) = auth.handshake(Some(basic.as_bytes()), None).unwrap();
        assert_eq!(role, Role::Admin);
        assert_eq!(token.len(), 64);
        assert_eq!(auth.check(Some(format!("Bearer {token}").as_bytes())).unwrap(), Role::Admin);
        let wrong = "Basic YWxpY2U6d3Jvbmc="; // alice:wrong
        assert!(matches!(auth.handshake(Some(wrong.as_bytes()), None), Err(Error::Unauthenticated(_))));
    }

    fn basic(user: &str, password: &str) -> String {
        use base64_test::encode;
        format!("Basic {}", encode(format!("{user}:{password}").as_bytes()))
    }

    mod base64_test {
        pub fn encode(bytes: &[u8]) -> String {
            const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for c in bytes.chunks(3) {
                let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
                for i in 0..4 {
                    out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
                }
            }
            out
        }
    }

    #[test]
    fn failed_sign_ins_back_off_per_address_whatever_the_user_names() {
        let auth = Auth::parse("admin alice:alice-password-long\n").unwrap();
        let (attacker, other): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap());
        for k in 0..FREE_PEER_FAILURES {
            let e = auth.handshake(Some(basic(&format!("user{k}"), "guess").as_bytes()), Some(attacker)).unwrap_err();
            assert!(e.to_string().contains("wrong user name or password"), "{e}");
        }
        // A new name from that address waits; alice from elsewhere does not.
        let e = auth.handshake(Some(basic("user-new", "guess").as_bytes()), Some(attacker)).unwrap_err();
        assert!(e.to_string().contains("from this address"), "{e}");
        auth.handshake(Some(basic("alice", "alice-password-long").as_bytes()), Some(other)).unwrap();
    }

    #[test]
    fn failed_sign_ins_back_off_per_user_and_sessions_are_capped_per_user() {
        let auth = Auth::parse(
            "admin alice:alice-password-long
read bob:bob-password-longer
",
        )
        .unwrap();
        assert_eq!(basic("alice", "alice-password-long"), "Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQtbG9uZw==");
        for _ in 0..FREE_FAILURES {
            let e = auth.handshake(Some(basic("alice", "guess").as_bytes()), None).unwrap_err();
            assert!(e.to_string().contains("wrong user name or password"), "{e}");
        }
        // Backing off: even the right password is refused, saying why.
        let e = auth.handshake(Some(basic("alice", "alice-password-long").as_bytes()), None).unwrap_err();
        assert!(e.to_string().contains("too many failed sign-ins"), "{e}");
        // Another user is not held back.
        let (bob, _) = auth.handshake(Some(basic("bob", "bob-password-longer").as_bytes()), None).unwrap();
        // Once the wait is over, the right password works and clears it.
        std::thread::sleep(Duration::from_millis(1100));
        auth.handshake(Some(basic("alice", "alice-password-long").as_bytes()), None).unwrap();
        // Many sessions of one user let go of that user's oldest only.
        let first = auth.handshake(Some(basic("alice", "alice-password-long").as_bytes()), None).unwrap().0;
        for _ in 0..3 * SESSIONS_PER_USER {
            auth.handshake(Some(basic("alice", "alice-password-long").as_bytes()), None).unwrap();
        }
        assert!(auth.check(Some(format!("Bearer {first}").as_bytes())).is_err(), "alice's oldest session is gone");
        assert_eq!(auth.check(Some(format!("Bearer {bob}").as_bytes())).unwrap(), Role::Read, "bob's session stays");
        let alices = auth.sessions.lock().unwrap().values().filter(|s| s.user == "alice").count();
        assert_eq!(alices, SESSIONS_PER_USER);
    }

    #[test]
    fn bad_access_files_name_the_line_not_the_secret() {
        for (text, needle) in [
            ("reader abcdefghijklmnopq", "line 1: role"),
            ("read short", "at least 16"),
            ("read a b", "line 1: expected"),
            ("admin bob:short", "at least 16"),
            ("# only comments\n", "no credentials"),
        ] {
            let err = Auth::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains("abcdefghijklmnopq") && !err.contains("short\""), "{err}");
        }
    }

    #[test]
    fn base64_and_constant_time_eq() {
        assert_eq!(base64_decode(b"YWxpY2U6d3Jvbmc=").unwrap(), b"alice:wrong");
        assert_eq!(base64_decode(b"YQ").unwrap(), b"a");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"Y$==").is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
