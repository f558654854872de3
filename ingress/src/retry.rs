//! Whether a failed request is tried again, and how long each step may take.
//!
//! The rule, after nginx's `proxy_next_upstream` (by default only `error timeout`, never a
//! non-idempotent request once sent) and Envoy's `reset`/`connect-failure` retry policies:
//! - a connect failure (refused, unreachable, connect timeout, TLS handshake): the backend
//!   never saw the request, so any request is retried, once, on a different backend;
//! - a failure after the request was sent (reset, read timeout, broken response): retried
//!   only for idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE)
//!   whose body, if any, was not streamed past what can be replayed;
//! - never once any byte of the response went to the client, never after the total
//!   timeout, never more than one retry;
//! - a 5xx *answer* is passed to the client as it is: the app spoke, and the breaker counts it;
//! - a pooled keep-alive connection that the backend had already closed (it fails before
//!   any answer, and only because it was reused) says nothing about the backend: an
//!   idempotent request is sent again on a fresh connection, to any backend including the
//!   same one, up to [`MAX_STALE_RETRIES`] times, without using up the retry above. This is
//!   what Pingora's default `error_while_proxy` does, and what nginx and HAProxy do for a
//!   reused upstream connection.

use std::time::Duration;

use tokio::time::Instant;

/// The most retries a request gets.
pub const MAX_RETRIES: u32 = 1;

/// The most times a request is sent again because a pooled connection was stale. More than
/// one: the pool may hold several connections the backend closed at once.
pub const MAX_STALE_RETRIES: u32 = 2;

/// Where the attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No connection carried the request: the backend never saw it.
    Connect,
    /// The request was (perhaps partly) sent, and no usable answer came back.
    AfterSent,
    /// The request went out on a reused pooled connection that turned out to be closed
    /// before any answer (Pingora's `RetryType::ReusedOnly` errors on a reused connection).
    StaleConnection,
}

/// What the proxy knows about the failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// The request method, as sent (methods are case-sensitive).
    pub method: &'a str,
    pub failure: Failure,
    /// Retries already made for this request (0 on the first attempt), stale ones apart.
    pub retries: u32,
    /// Attempts already sent again because their pooled connection was stale.
    pub stale_retries: u32,
    /// Request body bytes went upstream that can no longer be replayed.
    pub body_streamed: bool,
    /// Response bytes already went to the client.
    pub response_started: bool,
}

/// Why a request is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    RetryUsed,
    NotIdempotent,
    BodyStreamed,
    ResponseStarted,
    TotalTimeout,
}

#[must_use = "a retry decision must be acted on"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryDecision {
    /// Pick again, excluding every backend tried so far; if none is left, give up.
    RetryElsewhere,
    /// Send again on a fresh connection, to any backend (the same one is fine: only the
    /// connection was at fault).
    RetryFresh,
    GiveUp(GiveUp),
}

/// RFC 9110 §9.2.2 idempotent methods.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// Decides whether the failed `attempt` of a request that started at `started` is retried
/// at `now`.
pub fn decide(
    attempt: &Attempt<'_>,
    timeouts: &Timeouts,
    started: Instant,
    now: Instant,
) -> RetryDecision {
    if attempt.failure == Failure::StaleConnection && attempt.stale_retries < MAX_STALE_RETRIES {
        return decide_stale(attempt, timeouts, started, now);
    }
    if attempt.retries >= MAX_RETRIES {
        return RetryDecision::GiveUp(GiveUp::RetryUsed);
    }
    if attempt.response_started {
        return RetryDecision::GiveUp(GiveUp::ResponseStarted);
    }
    if timeouts.remaining(started, now).is_zero() {
        return RetryDecision::GiveUp(GiveUp::TotalTimeout);
    }
    match attempt.failure {
        Failure::Connect => RetryDecision::RetryElsewhere,
        Failure::AfterSent | Failure::StaleConnection if !is_idempotent(attempt.method) => {
            RetryDecision::GiveUp(GiveUp::NotIdempotent)
        }
        Failure::AfterSent | Failure::StaleConnection if attempt.body_streamed => {
            RetryDecision::GiveUp(GiveUp::BodyStreamed)
        }
        Failure::AfterSent | Failure::StaleConnection => RetryDecision::RetryElsewhere,
    }
}

/// A stale pooled connection, with stale retries left.
fn decide_stale(
    attempt: &Attempt<'_>,
    timeouts: &Timeouts,
    started: Instant,
    now: Instant,
) -> RetryDecision {
    if attempt.response_started {
        RetryDecision::GiveUp(GiveUp::ResponseStarted)
    } else if timeouts.remaining(started, now).is_zero() {
        RetryDecision::GiveUp(GiveUp::TotalTimeout)
    } else if !is_idempotent(attempt.method) {
        RetryDecision::GiveUp(GiveUp::NotIdempotent)
    } else if attempt.body_streamed {
        RetryDecision::GiveUp(GiveUp::BodyStreamed)
    } else {
        RetryDecision::RetryFresh
    }
}

/// How long each step of proxying may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection to a backend. Default 5 s (Envoy's cluster
    /// `connect_timeout`): a replica on the cluster's network answers a SYN in
    /// milliseconds, so this only bounds dead hosts, and leaves time for the retry.
    pub connect: Duration,
    /// Between two reads from the backend, including the wait for the response head.
    /// Default 60 s (nginx's `proxy_read_timeout`): enough for a slow page, short enough
    /// to free a stuck connection.
    pub read: Duration,
    /// For the whole exchange until the response head, retries included. Default 90 s:
    /// a connect timeout, a full read timeout and a retry's connect fit within it. The
    /// body streams on under the read timeout alone.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            total: Duration::from_secs(90),
        }
    }
}

impl Timeouts {
    /// Time left of the total budget for a request that started at `started`.
    pub fn remaining(&self, started: Instant, now: Instant) -> Duration {
        self.total
            .saturating_sub(now.saturating_duration_since(started))
    }

    /// The connect timeout for an attempt made at `now`: never past the total budget.
    pub fn connect_for(&self, started: Instant, now: Instant) -> Duration {
        self.connect.min(self.remaining(started, now))
    }

    /// The read timeout for an attempt made at `now`: never past the total budget.
    pub fn read_for(&self, started: Instant, now: Instant) -> Duration {
        self.read.min(self.remaining(started, now))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn attempt(method: &str, failure: Failure) -> Attempt<'_> {
        Attempt {
            method,
            failure,
            retries: 0,
            stale_retries: 0,
            body_streamed: false,
            response_started: false,
        }
    }

    fn decide_now(attempt: &Attempt<'_>) -> RetryDecision {
        let t0 = Instant::now();
        decide(attempt, &Timeouts::default(), t0, t0)
    }

    #[test]
    fn a_failed_connect_is_retried_once_whatever_the_method() {
        for method in ["GET", "POST", "PATCH", "CONNECT"] {
            let mut first = attempt(method, Failure::Connect);
            first.body_streamed = true; // nothing went out on a failed connect anyway
            assert_eq!(
                decide_now(&first),
                RetryDecision::RetryElsewhere,
                "{method}"
            );
            first.retries = 1;
            assert_eq!(decide_now(&first), RetryDecision::GiveUp(GiveUp::RetryUsed));
        }
    }

    #[test]
    fn after_sending_only_idempotent_methods_without_a_streamed_body_are_retried() {
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            let sent = attempt(method, Failure::AfterSent);
            assert_eq!(decide_now(&sent), RetryDecision::RetryElsewhere, "{method}");
            let streamed = Attempt {
                body_streamed: true,
                ..sent
            };
            assert_eq!(
                decide_now(&streamed),
                RetryDecision::GiveUp(GiveUp::BodyStreamed)
            );
        }
        for method in ["POST", "PATCH", "CONNECT", "get"] {
            assert_eq!(
                decide_now(&attempt(method, Failure::AfterSent)),
                RetryDecision::GiveUp(GiveUp::NotIdempotent),
                "{method}"
            );
        }
    }

    #[test]
    fn no_retry_once_the_response_started_or_the_budget_is_spent() {
        let started = Attempt {
            response_started: true,
            ..attempt("GET", Failure::AfterSent)
        };
        assert_eq!(
            decide_now(&started),
            RetryDecision::GiveUp(GiveUp::ResponseStarted)
        );
        let t0 = Instant::now();
        let timeouts = Timeouts::default();
        let late = t0 + timeouts.total;
        assert_eq!(
            decide(&attempt("GET", Failure::Connect), &timeouts, t0, late),
            RetryDecision::GiveUp(GiveUp::TotalTimeout)
        );
    }

    #[test]
    fn a_stale_pooled_connection_is_sent_again_without_using_the_retry() {
        let mut stale = attempt("GET", Failure::StaleConnection);
        stale.retries = 1;
        assert_eq!(decide_now(&stale), RetryDecision::RetryFresh);
        stale.stale_retries = 1;
        assert_eq!(decide_now(&stale), RetryDecision::RetryFresh);
        // Stale retries used up: the ordinary rule, whose one retry is spent here.
        stale.stale_retries = MAX_STALE_RETRIES;
        assert_eq!(decide_now(&stale), RetryDecision::GiveUp(GiveUp::RetryUsed));
        stale.retries = 0;
        assert_eq!(decide_now(&stale), RetryDecision::RetryElsewhere);
        assert_eq!(
            decide_now(&attempt("POST", Failure::StaleConnection)),
            RetryDecision::GiveUp(GiveUp::NotIdempotent)
        );
        let streamed = Attempt {
            body_streamed: true,
            ..attempt("PUT", Failure::StaleConnection)
        };
        assert_eq!(
            decide_now(&streamed),
            RetryDecision::GiveUp(GiveUp::BodyStreamed)
        );
    }

    #[test]
    fn per_attempt_timeouts_never_outlast_the_total() {
        let t0 = Instant::now();
        let timeouts = Timeouts::default();
        assert_eq!(timeouts.connect_for(t0, t0), Duration::from_secs(5));
        assert_eq!(timeouts.read_for(t0, t0), Duration::from_secs(60));
        let later = t0 + Duration::from_secs(87);
        assert_eq!(timeouts.connect_for(t0, later), Duration::from_secs(3));
        assert_eq!(timeouts.read_for(t0, later), Duration::from_secs(3));
        assert_eq!(
            timeouts.remaining(t0, t0 + Duration::from_secs(500)),
            Duration::ZERO
        );
    }

    proptest! {
        /// Whatever the attempt, a retry is only granted on the first failure, before any
        /// response byte, and for a non-idempotent method only if it never left.
        #[test]
        fn retries_are_never_unsafe(
            method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH"), Just("HEAD")],
            failure in prop_oneof![Just(Failure::Connect), Just(Failure::AfterSent), Just(Failure::StaleConnection)],
            retries in 0u32..3,
            stale_retries in 0u32..4,
            body_streamed in any::<bool>(),
            response_started in any::<bool>(),
            elapsed in 0u64..200,
        ) {
            let attempt = Attempt {
                method,
                failure,
                retries,
                stale_retries,
                body_streamed,
                response_started,
            };
            let t0 = Instant::now();
            let decision = decide(&attempt, &Timeouts::default(), t0, t0 + Duration::from_secs(elapsed));
            let connect = failure == Failure::Connect;
            if decision == RetryDecision::RetryElsewhere {
                prop_assert_eq!(retries, 0);
                prop_assert!(!response_started);
                prop_assert!(elapsed < 90);
                prop_assert!(connect || (is_idempotent(method) && !body_streamed));
            }
            if decision == RetryDecision::RetryFresh {
                prop_assert_eq!(failure, Failure::StaleConnection);
                prop_assert!(stale_retries < MAX_STALE_RETRIES);
                prop_assert!(!response_started);
                prop_assert!(elapsed < 90);
                prop_assert!(is_idempotent(method) && !body_streamed);
            }
        }
    }
}
