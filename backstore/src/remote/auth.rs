//! Registry authentication: the `WWW-Authenticate` challenge (Basic or Bearer with realm,
//! service and scope) and the token a Bearer realm answers with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Send `Authorization: Basic base64(user:password)`.
    Basic,
    /// Get a token from `realm` (with `service` and `scope`), then send `Authorization: Bearer`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter, if any.
        service: Option<String>,
        /// `scope` parameter, if any.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value; `None` for schemes we do not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas and escaped quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

/// A Bearer token and when to stop using it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token.
    pub value: String,
    /// Renew after this instant.
    pub renew_at: Instant,
}

/// Tokens the registry hands out without a lifetime are kept this long (the distribution
/// spec's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

impl Token {
    /// Parses a token endpoint's JSON answer (`token` or `access_token`, `expires_in`);
    /// renews at 90 % of the lifetime.
    pub fn from_json(body: &[u8], now: Instant) -> Option<Token> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let a: Answer = serde_json::from_slice(body).ok()?;
        let value = if a.token.is_empty() { a.access_token } else { a.token };
        if value.is_empty() {
            return None;
        }
        let life = a.expires_in.filter(|&s| s > 0).map(Duration::from_secs).unwrap_or(DEFAULT_LIFETIME);
        Some(Token { value, renew_at: now + life.mul_f64(0.9) })
    }

    /// True if it should be renewed before use.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.renew_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("bearer realm=http://x/t"),
            Some(Challenge::Bearer { realm: "http://x/t".into(), service: None, scope: None })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a Bearer challenge needs a realm");
    }

    #[test]
    fn tokens() {
        let now = Instant::now();
        let t = Token::from_json(br#"{"token":"abc","expires_in":100}"#, now).unwrap();
        assert_eq!(t.value, "abc");
        assert!(!t.expired(now + Duration::from_secs(89)) && t.expired(now + Duration::from_secs(91)));
        let t = Token::from_json(br#"{"access_token":"xyz"}"#, now).unwrap();
        assert_eq!(t.value, "xyz");
        assert!(t.expired(now + Duration::from_secs(60)));
        assert!(Token::from_json(b"{}", now).is_none());
        assert!(Token::from_json(b"not json", now).is_none());
    }
}
