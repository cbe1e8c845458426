//! A fault-injecting HTTP proxy for the remote-layer tests: it forwards requests to a real
//! registry and, as told, answers with an error status, resets the connection, answers slowly,
//! cuts the body short or flips a byte of it, or holds requests until told to let them go. It
//! can also stand in front of the registry as a Bearer-token gate with its own token endpoint
//! and short-lived tokens.
//!
//! It counts requests as they arrive, before it answers them: a request a client got its answer
//! to is in [`Proxy::seen`]. For requests no one waited for (a background fetch cut short by the
//! end of a process), [`Proxy::settle`] waits until every request sent before it is counted.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long past the lifetime it announced the Bearer gate still takes a token: the client must
/// renew at the announced lifetime, and a loaded machine's delay between getting a token and
/// using it must fail nothing.
const BEARER_GRACE: Duration = Duration::from_secs(60);
/// A held request goes on after this long even if nobody lets it go (a test that failed).
const HOLD_LIMIT: Duration = Duration::from_secs(300);
/// How long [`Proxy::settle`] may take.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// What to do to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Wait this long before answering.
    Slow(Duration),
    /// Send only this many body bytes, then close.
    Truncate(usize),
    /// Flip one byte in the middle of the body.
    Corrupt,
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    /// A fault applied to every blob request while set.
    always: Option<Fault>,
    /// Blob requests whose range starts at or after this offset wait while it is set.
    hold_from: Option<u64>,
    /// Requests waiting now.
    held: usize,
    /// Bearer gate: token lifetime, and the tokens given out with their expiry.
    bearer: Option<u64>,
    tokens: HashMap<String, Instant>,
    /// Requests seen (method, path, range), and when each arrived.
    seen: Vec<(String, String, String)>,
    arrived: Vec<Instant>,
    token_requests: usize,
    /// Connections accepted, and those whose request was read (and counted if it is one).
    accepted: usize,
    settled: usize,
}

/// The state and the condition variable a change of it is signalled on.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a connection as settled once: when marked (its request counted), or when dropped
/// (whatever way its handling ended).
struct Settled<'a> {
    sh: &'a Shared,
    done: bool,
}

impl Settled<'_> {
    /// Counts it, under the lock the caller holds.
    fn mark(&mut self, s: &mut State) {
        if !self.done {
            self.done = true;
            s.settled += 1;
            self.sh.changed.notify_all();
        }
    }
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.sh.lock();
            self.mark(&mut s);
        }
    }
}

/// A running proxy; stops with the process (its threads are detached).
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        let (sh, up, b) = (shared.clone(), upstream.to_string(), base.clone());
        std::thread::spawn(move || {
            // (connections are accepted in the order they were made: see `settle`)
            for conn in l.incoming().flatten() {
                sh.lock().accepted += 1;
                let (sh, up, b) = (sh.clone(), up.clone(), b.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &b, &sh);
                });
            }
        });
        Proxy { base, shared }
    }

    /// Queues faults for the next blob requests, one each.
    pub fn push(&self, faults: &[Fault]) {
        self.shared.lock().faults.extend(faults.iter().cloned());
    }

    /// Faults queued by [`Proxy::push`] and not yet applied.
    pub fn pending(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// Applies `f` to every blob request (None: stop).
    pub fn always(&self, f: Option<Fault>) {
        self.shared.lock().always = f;
    }

    /// Holds blob requests whose range starts at or after `offset` (a request without a range
    /// starts at 0) until called again with an offset they start before, or None; counted
    /// first, they wait before their fault (if any) and before being forwarded.
    pub fn hold_from(&self, offset: Option<u64>) {
        self.shared.lock().hold_from = offset;
        self.shared.changed.notify_all();
    }

    /// Requests being held now.
    pub fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// Requires Bearer tokens, announced to live `secs` seconds (the gate takes them for
    /// [`BEARER_GRACE`] longer).
    pub fn require_bearer(&self, secs: u64) {
        self.shared.lock().bearer = Some(secs);
    }

    /// Tokens handed out so far.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// Blob requests seen: (method, path, Range header).
    pub fn seen(&self) -> Vec<(String, String, String)> {
        self.shared.lock().seen.clone()
    }

    /// As [`Proxy::seen`], with the instant each request arrived.
    pub fn seen_at(&self) -> Vec<(Instant, (String, String, String))> {
        let s = self.shared.lock();
        s.arrived.iter().copied().zip(s.seen.iter().cloned()).collect()
    }

    /// Waits until every request sent to the proxy before this call has been read (and, if it
    /// is a blob request, counted in [`Proxy::seen`]), whether or not its client still waits
    /// for the answer. A connection made before ours is ahead of it in the listening socket's
    /// queue, which is first in, first out: once ours is answered, it has been accepted, and
    /// then it only has to be read like every connection accepted so far.
    pub fn settle(&self) {
        let mut c = TcpStream::connect(self.base.trim_start_matches("http://")).unwrap();
        c.set_read_timeout(Some(SETTLE_LIMIT)).unwrap();
        write!(c, "GET /__settle HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "the proxy did not answer its settle request: {answer:?}");
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut s = self.shared.lock();
        while s.settled < s.accepted {
            let now = Instant::now();
            assert!(now < deadline, "requests to the proxy still unread after {SETTLE_LIMIT:?}");
            s = self.shared.changed.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The first offset of a `Range: bytes=A-B` header (0 without one).
fn range_start(range: &str) -> u64 {
    range.strip_prefix("bytes=").and_then(|r| r.split('-').next()).and_then(|a| a.parse().ok()).unwrap_or(0)
}

fn serve(mut c: TcpStream, upstream: &str, base: &str, sh: &Shared) -> std::io::Result<()> {
    let mut settled = Settled { sh, done: false };
    let mut r = BufReader::new(c.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut first = head.lines().next().unwrap_or("").to_string();
    // as a P2P prefix: "/p2p/http://host:port/v2/..." is the registry's "/v2/..."
    if let Some(i) = first.find(" /p2p/") {
        let rest = &first[i + 6..];
        if let Some(after) = rest.split_once("://").map(|(_, r)| r) {
            let path = after.find('/').map_or("/", |j| &after[j..]);
            first = format!("{} {}", &first[..i], path);
            head = head.replacen(head.lines().next().unwrap_or(""), &first, 1);
        }
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    if path == "/__settle" {
        drop(settled);
        return write!(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    // the token endpoint of the Bearer gate
    if path.starts_with("/token") {
        let mut s = sh.lock();
        s.token_requests += 1;
        let life = s.bearer.unwrap_or(60);
        let tok = format!("tok{}", s.token_requests);
        s.tokens.insert(tok.clone(), Instant::now() + Duration::from_secs(life) + BEARER_GRACE);
        let body = format!(r#"{{"token":"{tok}","expires_in":{life}}}"#);
        return write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
    let blob = path.contains("/blobs/");
    let fault = {
        let mut s = sh.lock();
        if s.bearer.is_some() {
            let auth = header("authorization");
            let ok =
                auth.strip_prefix("Bearer ").and_then(|t| s.tokens.get(t)).is_some_and(|exp| Instant::now() < *exp);
            if !ok {
                drop(s);
                return write!(
                    c,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{base}/token\",service=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
        if blob {
            s.seen.push((method.clone(), path.clone(), header("range")));
            s.arrived.push(Instant::now());
            let fault = s.faults.pop_front().or_else(|| s.always.clone());
            settled.mark(&mut s);
            let start = range_start(&header("range"));
            let deadline = Instant::now() + HOLD_LIMIT;
            if s.hold_from.is_some_and(|h| start >= h) {
                s.held += 1;
                while s.hold_from.is_some_and(|h| start >= h) && Instant::now() < deadline {
                    s = sh.changed.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
                }
                s.held -= 1;
            }
            fault
        } else {
            settled.mark(&mut s);
            None
        }
    };
    match &fault {
        Some(Fault::Status(code)) => {
            return write!(c, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        Some(Fault::Reset) => {
            let _ = c.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Slow(d)) => std::thread::sleep(*d),
        _ => {}
    }
    // forward, one request per connection
    let mut up = TcpStream::connect(upstream)?;
    let mut fwd = String::new();
    for l in head.lines() {
        if l.is_empty() {
            continue;
        }
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("authorization:") {
            continue;
        }
        fwd.push_str(l);
        fwd.push_str("\r\n");
    }
    fwd.push_str("Connection: close\r\n\r\n");
    up.write_all(fwd.as_bytes())?;
    let len: usize = header("content-length").parse().unwrap_or(0);
    if len > 0 {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        up.write_all(&body)?;
    }
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let (h, b) = resp.split_at(split);
    let mut b = b.to_vec();
    match fault {
        Some(Fault::Truncate(n)) => {
            c.write_all(h)?;
            c.write_all(&b[..n.min(b.len())])?;
            return Ok(());
        }
        Some(Fault::Corrupt) if !b.is_empty() => {
            let mid = b.len() / 2;
            b[mid] ^= 0x5a;
        }
        _ => {}
    }
    c.write_all(h)?;
    c.write_all(&b)
}
