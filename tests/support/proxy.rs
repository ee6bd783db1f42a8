//! A fault-injecting TCP proxy in front of a test server (toxiproxy's model, in-process).
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every accepted connection
//! to the upstream server through two pumps (client → server, server → client). The
//! [`Handle`] changes the behaviour of every current and future connection at run time
//! through a `tokio::sync::watch` channel:
//!
//! - [`Mode::Pass`]: bytes are forwarded as they arrive;
//! - [`Mode::Latency`]: each chunk is delivered the given time after it arrived, in each
//!   direction (so a round trip costs twice that); chunks stay in order;
//! - [`Mode::Blackhole`]: bytes are read and dropped in both directions, including
//!   chunks still queued for delivery; connections stay open (no RST, no FIN), and new
//!   connections are accepted but carry nothing (toxiproxy's `timeout` toxic with 0);
//! - [`Mode::Hold`]: a partition as TCP lives it: nothing gets through, but bytes are
//!   kept, in order, and delivered when the mode changes (retransmission after the
//!   partition heals, within the kernel's retransmission timeout);
//!
//! and two per-connection faults: [`Handle::cut`] closes every current connection at
//! once (new ones are accepted), and [`Handle::silence`] makes every current connection
//! silent for good — bytes dropped both ways, no FIN, no RST — while new connections
//! work: a NAT or load balancer that lost its state for existing flows, or a peer that
//! vanished without a reset.
//!
//! The proxy's tasks run on the runtime that called [`FaultProxy::start`]; dropping the
//! [`FaultProxy`] stops accepting and closes every connection.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with the bytes of every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Deliver each chunk this long after it arrived, in each direction.
    Latency(Duration),
    /// Read and drop everything, in both directions; keep the connections open.
    Blackhole,
    /// Let nothing through, keeping the bytes for when the mode changes.
    Hold,
}

/// Counters, for tests that need to know that traffic was attempted.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since the start.
    pub accepted: AtomicU64,
    /// Bytes read from clients (whether forwarded or dropped).
    pub bytes_up: AtomicU64,
    /// Bytes read from the server (whether forwarded or dropped).
    pub bytes_down: AtomicU64,
    /// Times [`Handle::cut`] was called.
    pub cuts: AtomicU64,
    /// Times [`Handle::silence`] was called.
    pub silences: AtomicU64,
}

/// Changes a running proxy's behaviour; cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    mode: Arc<watch::Sender<Mode>>,
    cut: Arc<watch::Sender<u64>>,
    silence: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
}

impl Handle {
    /// Applies `mode` to every current and future connection.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Closes every connection open now (both sides); later connections are served.
    pub fn cut(&self) {
        self.stats.cuts.fetch_add(1, Ordering::Relaxed);
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Makes every connection open now drop all bytes, both ways, until it is closed
    /// (by a peer or [`cut`](Self::cut)), without telling either side; later
    /// connections are served normally.
    pub fn silence(&self) {
        self.stats.silences.fetch_add(1, Ordering::Relaxed);
        self.silence.send_modify(|generation| *generation += 1);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A running proxy; dropping it closes its listener and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    handle: Handle,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (e.g. `127.0.0.1:<port of a RedisServer>`) on the
    /// current runtime.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let handle = Handle {
            mode: Arc::new(watch::Sender::new(Mode::Pass)),
            cut: Arc::new(watch::Sender::new(0)),
            silence: Arc::new(watch::Sender::new(0)),
            stats: Arc::new(Stats::default()),
        };
        let acceptor = tokio::spawn(accept(listener, upstream, handle.clone()));
        Self {
            addr,
            handle,
            acceptor,
        }
    }

    /// A proxy in front of the test server listening on `port` of 127.0.0.1.
    pub async fn to_port(port: u16) -> Self {
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<proxy port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn set(&self, mode: Mode) {
        self.handle.set(mode);
    }

    pub fn cut(&self) {
        self.handle.cut();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        // Closes the connections: every connection task watches the cut generation.
        self.handle.cut();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, handle: Handle) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        handle.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Subscribed now: only cuts after this connection was accepted close it.
        let cut = handle.cut.subscribe();
        let silence = handle.silence.subscribe();
        tokio::spawn(serve(client, upstream, handle.clone(), cut, silence));
    }
}

/// One proxied connection: ends (closing both sockets) when either direction ends or
/// the connection is cut.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    handle: Handle,
    mut cut: watch::Receiver<u64>,
    mut silence: watch::Receiver<u64>,
) {
    let connect = TcpStream::connect(upstream);
    let server = tokio::select! {
        server = connect => match server {
            Ok(server) => server,
            Err(_) => return,
        },
        _ = cut.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let silenced = Arc::new(AtomicBool::new(false));
    let up = pump(
        client_read,
        server_write,
        handle.mode.subscribe(),
        silenced.clone(),
        handle.stats.clone(),
        true,
    );
    let down = pump(
        server_read,
        client_write,
        handle.mode.subscribe(),
        silenced.clone(),
        handle.stats.clone(),
        false,
    );
    tokio::pin!(up, down);
    loop {
        tokio::select! {
            _ = &mut up => return,
            _ = &mut down => return,
            // A closed sender (the proxy dropped) also ends the connection.
            _ = cut.changed() => return,
            changed = silence.changed() => match changed {
                Ok(()) => silenced.store(true, Ordering::SeqCst),
                Err(_) => return,
            },
        }
    }
}

/// Copies one direction, applying the mode: a reader queues chunks with their delivery
/// time, a writer delivers them then (or drops them while blackholed).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    silenced: Arc<AtomicBool>,
    stats: Arc<Stats>,
    upstream: bool,
) {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reading = {
        let mode = mode.clone();
        let silenced = silenced.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let counter = if upstream {
                    &stats.bytes_up
                } else {
                    &stats.bytes_down
                };
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if silenced.load(Ordering::SeqCst) {
                    continue;
                }
                let at = match *mode.borrow() {
                    Mode::Blackhole => continue,
                    Mode::Pass | Mode::Hold => Instant::now(),
                    Mode::Latency(d) => Instant::now() + d,
                };
                if queue.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            // Dropping `queue` lets the writer finish what is queued, then stop.
        }
    };
    let writing = async move {
        while let Some((at, chunk)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            // Held bytes wait for the partition to heal (or for the connection to end).
            if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
                break;
            }
            if *mode.borrow() == Mode::Blackhole || silenced.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
