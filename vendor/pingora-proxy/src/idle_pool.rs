//! A keep-alive pool of idle HTTP/1 upstream connections that spawns no task per connection.
//!
//! pingora-core's `TransportConnector` pool spawns an idle-watch task each time a connection
//! goes back to it (`release_stream`), and builds a oneshot channel, an LRU node with an
//! `Arc<Notify>` and a map entry for it; taking the connection out fires the oneshot and waits
//! for that task to give the stream back. On a keep-alive proxy that is a spawn, a few polls
//! and about six allocations per request. Here an idle connection is a plain entry in a map
//! keyed by the peer's reuse hash:
//!
//! - [`IdlePool::take`] pops the most recently idled connection of the peer and tests it
//!   there and then: the same peer address, within the idle timeout, and a non-blocking read
//!   that finds neither data nor EOF (the server has not closed it and sent nothing
//!   unasked). The caller marks it reused, so a request that fails on it is still retried
//!   by the `ReusedOnly` rule, as with Pingora's pool.
//! - [`IdlePool::put`] stores the connection with the time it went idle; beyond the pool's
//!   capacity the oldest idle connection of the same peer (else of any peer) is closed.
//! - One sweep per pool, at most every [`SWEEP_INTERVAL`], closes idle connections the server
//!   has closed or that outlived their idle timeout, so an idle proxy does not hold sockets
//!   in `CLOSE_WAIT`: it is one task for the pool's whole life, started by the first `put`.
//!
//! Whether an entry may be used is [`is_fresh`], a pure function of its times.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How often the sweep looks for connections closed by their server.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a connection idle since `since` may still be used at `now`: always without an
/// idle timeout, else only strictly within it.
pub(crate) fn is_fresh(since: Instant, idle_timeout: Option<Duration>, now: Instant) -> bool {
    idle_timeout.is_none_or(|timeout| now.saturating_duration_since(since) < timeout)
}

/// Whether `stream` can carry another request: a non-blocking read finds nothing. Data means
/// the server sent something unasked (the connection is out of step), EOF or an error that
/// it is gone; either way it is not reusable.
fn is_quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget could make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

struct Idle {
    stream: Stream,
    /// The peer's address, compared at checkout: two peers may share a reuse hash.
    addr: SocketAddr,
    since: Instant,
    idle_timeout: Option<Duration>,
}

#[derive(Default)]
struct Entries {
    by_peer: HashMap<u64, VecDeque<Idle>>,
    len: usize,
    sweeper: bool,
}

impl Entries {
    /// Closes the oldest idle connection, of `key` if it has one, else of any peer.
    fn evict_oldest(&mut self, key: u64) {
        let key = match self.by_peer.get(&key) {
            Some(queue) if !queue.is_empty() => key,
            _ => match self.by_peer.iter().find(|(_, queue)| !queue.is_empty()) {
                Some((other, _)) => *other,
                None => return,
            },
        };
        if let Some(queue) = self.by_peer.get_mut(&key) {
            if queue.pop_front().is_some() {
                self.len -= 1;
            }
        }
    }
}

/// Idle HTTP/1 upstream connections by peer reuse hash.
pub(crate) struct IdlePool {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl IdlePool {
    /// A pool holding at most `capacity` idle connections in all.
    pub(crate) fn new(capacity: usize) -> Arc<IdlePool> {
        Arc::new(IdlePool {
            entries: Mutex::new(Entries::default()),
            capacity,
        })
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Nothing here can panic with the lock held; a poisoned lock still holds valid
        // entries.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection to the peer of `key` at `addr` that can be used now, if any.
    /// Unusable ones met on the way are closed.
    pub(crate) fn take(&self, key: u64, addr: &SocketAddr, now: Instant) -> Option<Stream> {
        let mut closed = Vec::new();
        let found = {
            let mut entries = self.lock();
            let mut found = None;
            if let Some(queue) = entries.by_peer.get_mut(&key) {
                // The most recently idled first: the warmest, and the last to time out.
                while let Some(mut idle) = queue.pop_back() {
                    if idle.addr == *addr
                        && is_fresh(idle.since, idle.idle_timeout, now)
                        && is_quiet(&mut idle.stream)
                    {
                        found = Some(idle.stream);
                        break;
                    }
                    closed.push(idle);
                }
            }
            let taken = closed.len() + usize::from(found.is_some());
            entries.len -= taken;
            found
        };
        // Closed (dropped) outside the lock.
        drop(closed);
        found
    }

    /// Keeps `stream` to the peer of `key` at `addr` for reuse. Starts the pool's sweep the
    /// first time, on the current tokio runtime.
    pub(crate) fn put(
        self: &Arc<Self>,
        key: u64,
        addr: SocketAddr,
        stream: Stream,
        idle_timeout: Option<Duration>,
        now: Instant,
    ) {
        if self.capacity == 0 {
            return;
        }
        let start_sweeper = {
            let mut entries = self.lock();
            if entries.len >= self.capacity {
                entries.evict_oldest(key);
            }
            entries.by_peer.entry(key).or_default().push_back(Idle {
                stream,
                addr,
                since: now,
                idle_timeout,
            });
            entries.len += 1;
            !std::mem::replace(&mut entries.sweeper, true)
        };
        if start_sweeper {
            self.start_sweeper();
        }
    }

    /// Closes every idle connection that its server has closed or whose idle timeout has
    /// passed at `now`.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut closed = Vec::new();
        {
            let mut entries = self.lock();
            let mut removed = 0;
            entries.by_peer.retain(|_, queue| {
                let before = queue.len();
                let mut kept = VecDeque::with_capacity(before);
                for mut idle in queue.drain(..) {
                    if is_fresh(idle.since, idle.idle_timeout, now) && is_quiet(&mut idle.stream) {
                        kept.push_back(idle);
                    } else {
                        closed.push(idle);
                    }
                }
                removed += before - kept.len();
                *queue = kept;
                // A peer's queue stays while it has connections: one that empties and
                // fills again on every request would be allocated again each time.
                !queue.is_empty()
            });
            entries.len -= removed;
        }
        drop(closed);
    }

    fn start_sweeper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a caller outside tokio): connections are still tested at
            // checkout; let a later `put` try again.
            self.lock().sweeper = false;
            return;
        };
        let pool: Weak<IdlePool> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                // The pool is gone with its proxy: so is the sweep.
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep(Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::UniqueID;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A connected pair: the pool's side as a Pingora stream, and the server's side.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(
            client.unwrap(),
        ));
        (stream, accepted.unwrap().0)
    }

    #[test]
    fn freshness_is_strictly_within_the_idle_timeout() {
        let since = Instant::now();
        let timeout = Some(Duration::from_secs(5));
        assert!(is_fresh(since, None, since + Duration::from_secs(3600)));
        assert!(is_fresh(since, timeout, since + Duration::from_secs(4)));
        assert!(!is_fresh(since, timeout, since + Duration::from_secs(5)));
        // A clock read before `since` (another thread's) is no age at all.
        assert!(is_fresh(since + Duration::from_secs(1), timeout, since));
    }

    #[tokio::test]
    async fn a_connection_put_back_is_taken_again_by_its_peer_only() {
        let pool = IdlePool::new(8);
        let (stream, _server) = pair().await;
        let now = Instant::now();
        pool.put(1, addr(80), stream, None, now);
        assert_eq!(pool.len(), 1);
        assert!(pool.take(2, &addr(80), now).is_none(), "another key");
        assert!(
            pool.take(1, &addr(81), now).is_none(),
            "same hash, another address"
        );
        // The mismatch closed it: it is not handed out later either.
        assert_eq!(pool.len(), 0);

        let (stream, _server) = pair().await;
        pool.put(1, addr(80), stream, None, now);
        assert!(pool.take(1, &addr(80), now).is_some());
        assert!(pool.take(1, &addr(80), now).is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_or_wrote_on_is_not_reused() {
        let pool = IdlePool::new(8);
        let now = Instant::now();
        let (closed, server) = pair().await;
        pool.put(1, addr(80), closed, None, now);
        drop(server);
        let (chatty, mut server) = pair().await;
        server.write_all(b"HTTP/1.1 408\r\n\r\n").await.unwrap();
        pool.put(1, addr(80), chatty, None, now);
        // Let the FIN and the bytes arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(1, &addr(80), now).is_none());
        assert_eq!(pool.len(), 0);
        drop(server);
    }

    #[tokio::test]
    async fn a_connection_past_its_idle_timeout_is_not_reused() {
        let pool = IdlePool::new(8);
        let now = Instant::now();
        let (stream, _server) = pair().await;
        pool.put(1, addr(80), stream, Some(Duration::from_secs(2)), now);
        assert!(pool
            .take(1, &addr(80), now + Duration::from_secs(2))
            .is_none());
    }

    #[tokio::test]
    async fn the_most_recently_idled_connection_goes_first_and_capacity_evicts_the_oldest() {
        let pool = IdlePool::new(2);
        let now = Instant::now();
        let (first, _s1) = pair().await;
        let (second, _s2) = pair().await;
        let (third, _s3) = pair().await;
        let (first_id, second_id, third_id) = (first.id(), second.id(), third.id());
        pool.put(1, addr(80), first, None, now);
        pool.put(1, addr(80), second, None, now);
        pool.put(1, addr(80), third, None, now);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take(1, &addr(80), now).map(|s| s.id()), Some(third_id));
        assert_eq!(
            pool.take(1, &addr(80), now).map(|s| s.id()),
            Some(second_id)
        );
        assert!(
            pool.take(1, &addr(80), now).is_none(),
            "{first_id} was evicted"
        );
    }

    #[tokio::test]
    async fn the_sweep_closes_connections_their_server_closed() {
        let pool = IdlePool::new(8);
        let now = Instant::now();
        let (open, _server) = pair().await;
        let (closed, server) = pair().await;
        pool.put(1, addr(80), open, None, now);
        pool.put(2, addr(80), closed, None, now);
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(now);
        assert_eq!(pool.len(), 1);
        assert!(pool.take(1, &addr(80), now).is_some());
    }
}
