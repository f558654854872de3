//! The DNS server's sockets (`--dns-addr`): UDP and TCP on one address, moving bytes
//! between askers, [`exchange`] and, for names outside the zone, the recursor.
//!
//! Why not `hickory-server`'s `ServerFuture`: it spawns a task per datagram, drops
//! undecodable packets with no way to count them, and lets UDP answers to clients without
//! EDNS grow to 4096 bytes where RFC 1035 allows 512, the very truncation bug this server
//! must not have. hickory-proto still does all the wire format.
//!
//! One task reads the UDP socket and answers in line, so a flood costs one decode and one
//! encode per packet and never a task. TCP takes at most [`MAX_TCP_CONNECTIONS`] at once,
//! each closed after [`TCP_IDLE`] without a query. At most [`MAX_FORWARDS`] forwarded
//! questions wait on the recursor; past that they get SERVFAIL at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::ResponseCode;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::{debug, info, warn};

use super::askers::TenantSubnets;
use super::exchange::{Action, DropCause, Transport, exchange, servfail};
use super::zone::Zone;

pub const MAX_TCP_CONNECTIONS: usize = 256;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
pub const MAX_FORWARDS: usize = 256;
/// How long the recursor has to answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts of what the server saw, read by `/metrics` at each scrape.
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Answers sent, by transport (UDP, TCP) and code ([`RCODES`]).
    answers: [[AtomicU64; RCODES.len() + 1]; 2],
    truncated: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    malformed: AtomicU64,
    not_a_query: AtomicU64,
    tcp_refused: AtomicU64,
}

/// The codes counted on their own, with their names as dig prints them; the rest count
/// as `other`.
pub const RCODES: [ResponseCode; 6] = [
    ResponseCode::NoError,
    ResponseCode::NXDomain,
    ResponseCode::Refused,
    ResponseCode::FormErr,
    ResponseCode::NotImp,
    ResponseCode::ServFail,
];
const RCODE_NAMES: [&str; 6] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "SERVFAIL",
];

/// A reading of [`DnsCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// `(transport, rcode, count)`, rcode as dig prints it (`NOERROR`, `NXDOMAIN`, `other`).
    pub answers: Vec<(&'static str, String, u64)>,
    pub truncated: u64,
    pub forwarded: u64,
    pub forward_failures: u64,
    /// Packets dropped or answered FORMERR, by cause.
    pub dropped: Vec<(&'static str, u64)>,
    /// TCP connections closed at once: [`MAX_TCP_CONNECTIONS`] were open.
    pub tcp_refused: u64,
}

impl DnsCounters {
    fn answered(&self, transport: Transport, rcode: ResponseCode) {
        let row = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        };
        let column = RCODES
            .iter()
            .position(|known| *known == rcode)
            .unwrap_or(RCODES.len());
        self.answers[row][column].fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, cause: DropCause) {
        match cause {
            DropCause::Malformed => &self.malformed,
            DropCause::NotAQuery => &self.not_a_query,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> DnsStats {
        let mut answers = Vec::new();
        for (row, transport) in ["udp", "tcp"].into_iter().enumerate() {
            for (column, count) in self.answers[row].iter().enumerate() {
                let rcode = RCODE_NAMES
                    .get(column)
                    .copied()
                    .unwrap_or("other")
                    .to_string();
                answers.push((transport, rcode, count.load(Ordering::Relaxed)));
            }
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DnsStats {
            answers,
            truncated: load(&self.truncated),
            forwarded: load(&self.forwarded),
            forward_failures: load(&self.forward_failures),
            dropped: vec![
                (DropCause::Malformed.label(), load(&self.malformed)),
                (DropCause::NotAQuery.label(), load(&self.not_a_query)),
            ],
            tcp_refused: load(&self.tcp_refused),
        }
    }
}

/// The server's bound sockets, bound before the agent reports ready.
pub struct DnsListeners {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl DnsListeners {
    /// Binds UDP and TCP on `addr` (port 0: the same free port for both).
    pub async fn bind(addr: SocketAddr) -> io::Result<DnsListeners> {
        let udp = UdpSocket::bind(addr).await?;
        let udp_addr = udp.local_addr()?;
        let tcp = TcpListener::bind(udp_addr).await?;
        Ok(DnsListeners { udp, tcp })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// What the server answers from, shared by its tasks.
pub struct DnsService {
    pub zones: watch::Receiver<Arc<Zone>>,
    pub askers: Arc<TenantSubnets>,
    pub recursor: Option<SocketAddr>,
    pub counters: Arc<DnsCounters>,
}

impl DnsService {
    /// Answers one packet: the bytes to send back, if any (forwarding included).
    async fn handle(
        &self,
        packet: &[u8],
        source: SocketAddr,
        transport: Transport,
        rng: &mut SmallRng,
        forwards: &Arc<Semaphore>,
    ) -> Option<Vec<u8>> {
        let outcome = {
            let zone = self.zones.borrow().clone();
            let asker = self.askers.asker(source.ip());
            exchange(
                packet,
                transport,
                &zone,
                &asker,
                self.recursor.is_some(),
                rng,
            )
        };
        if outcome.malformed {
            self.counters.dropped(DropCause::Malformed);
        }
        if outcome.truncated {
            self.counters.truncated.fetch_add(1, Ordering::Relaxed);
        }
        match outcome.action {
            Action::Reply(bytes) => {
                if let Some(rcode) = outcome.rcode {
                    self.counters.answered(transport, rcode);
                }
                Some(bytes)
            }
            Action::Drop(cause) => {
                if !outcome.malformed {
                    self.counters.dropped(cause);
                }
                None
            }
            Action::Forward => {
                let recursor = self.recursor?;
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let answer = match forwards.clone().try_acquire_owned() {
                    Ok(_permit) => forward(packet, recursor, transport).await,
                    Err(_) => Err(io::Error::other("too many questions wait on the recursor")),
                };
                match answer {
                    Ok(bytes) => Some(bytes),
                    Err(err) => {
                        debug!(%recursor, error = %err, "the recursor did not answer");
                        self.counters
                            .forward_failures
                            .fetch_add(1, Ordering::Relaxed);
                        self.counters.answered(transport, ResponseCode::ServFail);
                        servfail(packet)
                    }
                }
            }
        }
    }
}

/// Serves `listeners` until `stop`.
pub async fn serve(
    listeners: DnsListeners,
    service: Arc<DnsService>,
    mut stop: watch::Receiver<bool>,
) {
    let addr = listeners.local_addr().ok();
    info!(?addr, recursor = ?service.recursor, "DNS server ready");
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let udp = Arc::new(listeners.udp);
    let tcp = tokio::spawn(tcp_loop(
        listeners.tcp,
        service.clone(),
        forwards.clone(),
        stop.clone(),
    ));
    tokio::select! {
        () = udp_loop(udp, service, forwards) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
    tcp.abort();
}

async fn udp_loop(socket: Arc<UdpSocket>, service: Arc<DnsService>, forwards: Arc<Semaphore>) {
    let mut rng = SmallRng::from_os_rng();
    // One byte more than the largest query taken: a packet that fills it was cut by the
    // kernel and is malformed.
    let mut buffer = vec![0u8; usize::from(super::exchange::MAX_UDP_PAYLOAD) + 1];
    loop {
        let (len, source) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                // ICMP errors of earlier sends surface here on some systems: not fatal.
                debug!(error = %err, "DNS UDP receive failed");
                continue;
            }
        };
        let packet = &buffer[..len];
        if len == buffer.len() {
            service.counters.dropped(DropCause::Malformed);
            continue;
        }
        if is_forward(packet, &service) {
            // The recursor's answer may take seconds: never in line with other askers.
            let packet = packet.to_vec();
            let (socket, service, forwards) = (socket.clone(), service.clone(), forwards.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::from_os_rng();
                if let Some(answer) = service
                    .handle(&packet, source, Transport::Udp, &mut rng, &forwards)
                    .await
                {
                    let _ = socket.send_to(&answer, source).await;
                }
            });
            continue;
        }
        if let Some(answer) = service
            .handle(packet, source, Transport::Udp, &mut rng, &forwards)
            .await
            && let Err(err) = socket.send_to(&answer, source).await
        {
            debug!(%source, error = %err, "DNS UDP answer not sent");
        }
    }
}

/// Whether `packet` would be forwarded (a cheap look before answering in line).
fn is_forward(packet: &[u8], service: &DnsService) -> bool {
    if service.recursor.is_none() {
        return false;
    }
    let Ok(request) = hickory_proto::op::Message::from_vec(packet) else {
        return false;
    };
    let zone = service.zones.borrow();
    request
        .queries()
        .first()
        .is_some_and(|query| !zone.config().domain.zone_of(&query.name().to_lowercase()))
}

async fn tcp_loop(
    listener: TcpListener,
    service: Arc<DnsService>,
    forwards: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            service.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let (service, forwards, mut stop) = (service.clone(), forwards.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tcp_connection(stream, source, service, forwards) => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(
    stream: TcpStream,
    source: SocketAddr,
    service: Arc<DnsService>,
    forwards: Arc<Semaphore>,
) {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(usize::from(u16::MAX))
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    let mut rng = SmallRng::from_os_rng();
    loop {
        let packet = match tokio::time::timeout(TCP_IDLE, framed.next()).await {
            Ok(Some(Ok(packet))) => packet,
            // Idle, closed, or a broken frame: the connection ends.
            _ => return,
        };
        let Some(answer) = service
            .handle(&packet, source, Transport::Tcp, &mut rng, &forwards)
            .await
        else {
            continue;
        };
        if framed.send(bytes::Bytes::from(answer)).await.is_err() {
            return;
        }
    }
}

/// Asks the recursor `packet` as it came, over the asker's transport, and returns its
/// answer as it is (the ids match: the question is the asker's own).
async fn forward(packet: &[u8], recursor: SocketAddr, transport: Transport) -> io::Result<Vec<u8>> {
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        match transport {
            Transport::Udp => {
                let local: SocketAddr = if recursor.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(recursor).await?;
                socket.send(packet).await?;
                let mut buffer = vec![0u8; usize::from(super::exchange::MAX_UDP_PAYLOAD)];
                loop {
                    let len = socket.recv(&mut buffer).await?;
                    // Only the answer to this question: same id.
                    if len >= 2 && packet.len() >= 2 && buffer[..2] == packet[..2] {
                        return Ok(buffer[..len].to_vec());
                    }
                }
            }
            Transport::Tcp => {
                let stream = TcpStream::connect(recursor).await?;
                let codec = LengthDelimitedCodec::builder()
                    .length_field_length(2)
                    .max_frame_length(usize::from(u16::MAX))
                    .new_codec();
                let mut framed = Framed::new(stream, codec);
                framed.send(bytes::Bytes::copy_from_slice(packet)).await?;
                match framed.next().await {
                    Some(Ok(answer)) => Ok(answer.to_vec()),
                    Some(Err(err)) => Err(err),
                    None => Err(io::Error::other("the recursor closed the connection")),
                }
            }
        }
    })
    .await
    .map_err(|_| io::Error::other("the recursor did not answer in time"))?
}
