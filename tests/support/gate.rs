//! A TCP proxy that can hold back the bytes of *new* connections while the ones it
//! already carries keep working: a subscriber (re)connecting through a slow or
//! congested path, while the command connection is fine.
//!
//! [`ConnectionGate::hold_after`] holds every connection accepted after the first `n`
//! (counting from the start); [`ConnectionGate::hold_new`] holds those accepted from
//! now on. A held connection is accepted at once (the client's TCP handshake completes)
//! but nothing it sends reaches the server until [`ConnectionGate::release`]; then its
//! bytes flow, in order. Dropping the gate closes every connection.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running gate in front of one server.
pub struct ConnectionGate {
    addr: SocketAddr,
    /// Connections numbered above this (1-based, in accept order) are held.
    limit: Arc<watch::Sender<u64>>,
    accepted: Arc<AtomicU64>,
    acceptor: JoinHandle<()>,
    closed: Arc<watch::Sender<bool>>,
}

impl ConnectionGate {
    /// A gate to the test server on `port` of 127.0.0.1; every connection passes.
    pub async fn to_port(port: u16) -> Self {
        let upstream = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gate");
        let addr = listener.local_addr().expect("gate address");
        let limit = Arc::new(watch::Sender::new(u64::MAX));
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(watch::Sender::new(false));
        let acceptor = tokio::spawn(accept(
            listener,
            upstream,
            limit.clone(),
            accepted.clone(),
            closed.clone(),
        ));
        Self {
            addr,
            limit,
            accepted,
            acceptor,
            closed,
        }
    }

    /// `redis://127.0.0.1:<gate port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Holds every connection accepted after the first `n`, until [`release`](Self::release).
    pub fn hold_after(&self, n: u64) {
        self.limit.send_replace(n);
    }

    /// Holds every connection accepted from now on, until [`release`](Self::release).
    pub fn hold_new(&self) {
        self.hold_after(self.accepted());
    }

    /// Lets every held connection through, and every later one.
    pub fn release(&self) {
        self.limit.send_replace(u64::MAX);
    }
}

impl Drop for ConnectionGate {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.closed.send_replace(true);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    limit: Arc<watch::Sender<u64>>,
    accepted: Arc<AtomicU64>,
    closed: Arc<watch::Sender<bool>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let number = accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let limit = limit.subscribe();
        let closed = closed.subscribe();
        tokio::spawn(serve(client, upstream, number, limit, closed));
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    number: u64,
    mut limit: watch::Receiver<u64>,
    mut closed: watch::Receiver<bool>,
) {
    let carry = async {
        // Held: the client's bytes wait in the socket's buffer, unread.
        if limit.wait_for(|limit| number <= *limit).await.is_err() {
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    };
    tokio::select! {
        () = carry => {}
        _ = closed.wait_for(|closed| *closed) => {}
    }
}
