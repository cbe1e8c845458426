//! A fault-injecting HTTP proxy for the remote-layer tests: it forwards requests to a real
//! registry and, as told, answers with an error status, resets the connection, answers slowly,
//! cuts the body short or flips a byte of it. It can also stand in front of the registry as a
//! Bearer-token gate with its own token endpoint and short-lived tokens.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Bearer gate: token lifetime, and the tokens given out with their expiry.
    bearer: Option<u64>,
    tokens: HashMap<String, Instant>,
    /// Requests seen (method, path, range).
    seen: Vec<(String, String, String)>,
    token_requests: usize,
}

/// A running proxy; stops with the process (its threads are detached).
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (st, up, b) = (state.clone(), upstream.to_string(), base.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (st, up, b) = (st.clone(), up.clone(), b.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &b, &st);
                });
            }
        });
        Proxy { base, state }
    }

    /// Queues faults for the next blob requests, one each.
    pub fn push(&self, faults: &[Fault]) {
        self.state.lock().unwrap().faults.extend(faults.iter().cloned());
    }

    /// Applies `f` to every blob request (None: stop).
    pub fn always(&self, f: Option<Fault>) {
        self.state.lock().unwrap().always = f;
    }

    /// Requires Bearer tokens that live `secs` seconds.
    pub fn require_bearer(&self, secs: u64) {
        self.state.lock().unwrap().bearer = Some(secs);
    }

    /// Tokens handed out so far.
    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    /// Blob requests seen: (method, path, Range header).
    pub fn seen(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn serve(mut c: TcpStream, upstream: &str, base: &str, st: &Mutex<State>) -> std::io::Result<()> {
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
    // the token endpoint of the Bearer gate
    if path.starts_with("/token") {
        let mut s = st.lock().unwrap();
        s.token_requests += 1;
        let life = s.bearer.unwrap_or(60);
        let tok = format!("tok{}", s.token_requests);
        s.tokens.insert(tok.clone(), Instant::now() + Duration::from_secs(life));
        let body = format!(r#"{{"token":"{tok}","expires_in":{life}}}"#);
        return write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
    let blob = path.contains("/blobs/");
    let fault = {
        let mut s = st.lock().unwrap();
        if let Some(life) = s.bearer {
            let _ = life;
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
            s.faults.pop_front().or_else(|| s.always.clone())
        } else {
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
