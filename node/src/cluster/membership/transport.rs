//! chitchat's UDP transport with every datagram sealed by the cluster keyring.
//!
//! chitchat 0.11 exposes its message encoding (`Serializable for ChitchatMessage`), so this
//! is a plain wrapper: serialize, seal, send; receive, open, reassemble, deserialize.
//! Anything that fails along the way is dropped and counted, never passed to chitchat.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use proto::api::GossipStats;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::seal::{Keyring, MAX_DATAGRAM, Reassembler};

/// Transport counters, shared with the API.
#[derive(Debug, Default)]
pub struct TransportStats {
    encrypted: std::sync::atomic::AtomicBool,
    datagrams_sent: AtomicU64,
    datagrams_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    dropped_unauthenticated: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_oversize: AtomicU64,
    round_trips: AtomicU64,
    round_trip_micros: AtomicU64,
}

impl TransportStats {
    pub fn snapshot(&self) -> GossipStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GossipStats {
            encrypted: self.encrypted.load(Ordering::Relaxed),
            datagrams_sent: load(&self.datagrams_sent),
            datagrams_received: load(&self.datagrams_received),
            bytes_sent: load(&self.bytes_sent),
            bytes_received: load(&self.bytes_received),
            dropped_unauthenticated: load(&self.dropped_unauthenticated),
            dropped_malformed: load(&self.dropped_malformed),
            dropped_oversize: load(&self.dropped_oversize),
            round_trips: load(&self.round_trips),
            round_trip_micros_total: load(&self.round_trip_micros),
        }
    }

    fn count(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// UDP transport that seals with `keyring`, or sends chitchat's plain encoding when
/// `keyring` is `None` (`--insecure-no-encryption`).
pub struct SealedUdpTransport {
    keyring: Option<Arc<Keyring>>,
    stats: Arc<TransportStats>,
}

impl SealedUdpTransport {
    pub fn new(keyring: Option<Keyring>) -> SealedUdpTransport {
        let stats = Arc::new(TransportStats::default());
        stats.encrypted.store(keyring.is_some(), Ordering::Relaxed);
        SealedUdpTransport {
            keyring: keyring.map(Arc::new),
            stats,
        }
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind gossip socket {listen_addr}/udp"))?;
        let mut rng = StdRng::from_os_rng();
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            stats: self.stats.clone(),
            reassembler: Reassembler::default(),
            next_msg_id: rand::RngCore::next_u64(&mut rng),
            rng,
            recv_buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            syns_sent: HashMap::new(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keyring: Option<Arc<Keyring>>,
    stats: Arc<TransportStats>,
    reassembler: Reassembler,
    next_msg_id: u64,
    rng: StdRng,
    recv_buf: Box<[u8]>,
    /// When this node last sent a SYN to each peer: its SYN-ACK ends a gossip round
    /// trip, the round time `/metrics` shows.
    syns_sent: HashMap<SocketAddr, Instant>,
}

/// Peers whose SYN-ACK is awaited, at most: a peer that never answers is forgotten when
/// the table is full.
const MAX_PENDING_SYNS: usize = 4096;

impl SealedSocket {
    async fn send_datagram(&self, to: SocketAddr, datagram: &[u8]) -> anyhow::Result<()> {
        self.socket
            .send_to(datagram, to)
            .await
            .with_context(|| format!("cannot send gossip to {to}"))?;
        TransportStats::count(&self.stats.datagrams_sent, 1);
        TransportStats::count(&self.stats.bytes_sent, datagram.len() as u64);
        Ok(())
    }

    /// Turns one datagram into a message, or `None` if it must be dropped.
    fn decode(&mut self, from: SocketAddr, len: usize) -> Option<ChitchatMessage> {
        let datagram = &self.recv_buf[..len];
        let plaintext = match &self.keyring {
            None => datagram.to_vec(),
            Some(keyring) => match keyring.open(datagram) {
                Ok(fragment) => self.reassembler.push(from, fragment, Instant::now())?,
                Err(err) => {
                    TransportStats::count(&self.stats.dropped_unauthenticated, 1);
                    debug!(%from, len, error = %err, "dropped unauthenticated gossip datagram");
                    return None;
                }
            },
        };
        let mut cursor = plaintext.as_slice();
        match ChitchatMessage::deserialize(&mut cursor) {
            Ok(message) => Some(message),
            Err(err) => {
                TransportStats::count(&self.stats.dropped_malformed, 1);
                debug!(%from, len, error = %err, "dropped malformed gossip message");
                None
            }
        }
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::OutOfMemory
    )
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        if matches!(message, ChitchatMessage::Syn { .. }) {
            if self.syns_sent.len() >= MAX_PENDING_SYNS {
                self.syns_sent.clear();
            }
            self.syns_sent.insert(to, Instant::now());
        }
        let plaintext = message.serialize_to_vec();
        let Some(keyring) = self.keyring.clone() else {
            if plaintext.len() > MAX_DATAGRAM {
                TransportStats::count(&self.stats.dropped_oversize, 1);
                return Ok(());
            }
            return self.send_datagram(to, &plaintext).await;
        };
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        match keyring.seal(&plaintext, msg_id, &mut self.rng) {
            Ok(datagrams) => {
                for datagram in datagrams {
                    self.send_datagram(to, &datagram).await?;
                }
                Ok(())
            }
            Err(err) => {
                TransportStats::count(&self.stats.dropped_oversize, 1);
                warn!(%to, error = %err, "gossip message not sent");
                Ok(())
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(received) => received,
                Err(err) if is_transient(&err) => continue,
                Err(err) => return Err(err).context("gossip socket failed"),
            };
            TransportStats::count(&self.stats.datagrams_received, 1);
            TransportStats::count(&self.stats.bytes_received, len as u64);
            if let Some(message) = self.decode(from, len) {
                if matches!(message, ChitchatMessage::SynAck { .. })
                    && let Some(sent) = self.syns_sent.remove(&from)
                {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    TransportStats::count(&self.stats.round_trips, 1);
                    TransportStats::count(&self.stats.round_trip_micros, micros);
                }
                return Ok((from, message));
            }
        }
    }
}
