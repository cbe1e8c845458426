//! The one retry policy of remote reads.
//!
//! A request that fails in a way another try may fix (connection reset or refused, timeout,
//! 5xx, 429, a body shorter than announced, bytes that fail their check) is tried again after
//! an exponentially growing, jittered pause, until `attempts` tries were made or `deadline`
//! passed since the first; anything else (4xx, a blob that is not there, a wrong password)
//! fails at once. Every read therefore ends in bounded time with data or an error: the
//! reference retried some failures forever.

use std::time::{Duration, Instant};

/// How an attempt failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// Another try may work.
    Transient(E),
    /// It will not: give up now.
    Permanent(E),
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// Pause after the first failure.
    pub first_pause: Duration,
    /// Longest pause.
    pub max_pause: Duration,
    /// No new try starts this long after the first.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 6 tries, pauses of 100 ms doubling up to 3.2 s, within 30 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_pause: Duration::from_millis(100),
            max_pause: Duration::from_millis(3200),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed try number `n` (0-based), with up to 25 % jitter from `seed`.
    pub fn pause(&self, n: u32, seed: u64) -> Duration {
        let base = self.first_pause.saturating_mul(1u32 << n.min(16)).min(self.max_pause);
        let jitter = base.as_nanos() as u64 / 4;
        let j = if jitter == 0 { 0 } else { seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % jitter };
        base + Duration::from_nanos(j)
    }

    /// Runs `op` (given the try number) until it succeeds, fails permanently, or the tries or
    /// the deadline run out; returns the last error then, with the number of tries made.
    pub fn run<T, E: std::fmt::Display>(
        &self,
        what: &str,
        mut op: impl FnMut(u32) -> Result<T, Failure<E>>,
    ) -> Result<T, (E, u32)> {
        let start = Instant::now();
        let mut n = 0;
        loop {
            match op(n) {
                Ok(v) => return Ok(v),
                Err(Failure::Permanent(e)) => return Err((e, n + 1)),
                Err(Failure::Transient(e)) => {
                    let pause = self.pause(n, start.elapsed().as_nanos() as u64 ^ n as u64);
                    n += 1;
                    if n >= self.attempts.max(1) || start.elapsed() + pause >= self.deadline {
                        tracing::warn!(what, tries = n, error = %e, "giving up");
                        return Err((e, n));
                    }
                    tracing::info!(what, try_no = n, error = %e, pause_ms = pause.as_millis() as u64, "retrying");
                    std::thread::sleep(pause);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short pauses, and a deadline no loaded machine reaches: the tries are what ends it.
    fn quick() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(4),
            deadline: Duration::from_secs(3600),
        }
    }

    #[test]
    fn transient_failures_are_retried_a_bounded_number_of_times() {
        let mut calls = 0;
        let r: Result<(), (String, u32)> = quick().run("x", |_| {
            calls += 1;
            Err(Failure::Transient("503".to_string()))
        });
        assert_eq!(r.unwrap_err(), ("503".to_string(), 4));
        assert_eq!(calls, 4);
        let mut calls = 0;
        let r = quick().run("x", |n| {
            calls += 1;
            if n < 2 {
                Err(Failure::Transient("reset"))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 3);
    }

    #[test]
    fn permanent_failures_stop_at_once_and_the_deadline_holds() {
        let mut calls = 0;
        let r: Result<(), _> = quick().run("x", |_| {
            calls += 1;
            Err(Failure::Permanent("404"))
        });
        assert_eq!(r.unwrap_err(), ("404", 1));
        assert_eq!(calls, 1);
        // the deadline ends it before the tries run out: each try after the first comes after a
        // pause of at least `first_pause`, and a pause that would end past the deadline is not
        // taken, so no more than deadline / first_pause pauses fit
        let p = RetryPolicy { attempts: 1000, deadline: Duration::from_millis(50), ..quick() };
        let mut calls = 0u32;
        let r: Result<(), _> = p.run("x", |_| {
            calls += 1;
            Err(Failure::Transient("slow"))
        });
        assert_eq!(r.unwrap_err(), ("slow", calls));
        assert!(calls <= 1 + 50, "{calls} tries within a deadline of 50 pauses");
    }

    #[test]
    fn pauses_grow_and_are_capped() {
        let p = RetryPolicy::default();
        assert!(p.pause(0, 1) >= Duration::from_millis(100) && p.pause(0, 1) < Duration::from_millis(126));
        assert!(p.pause(3, 1) >= Duration::from_millis(800));
        assert!(p.pause(30, 1) <= Duration::from_millis(4000));
    }
}
