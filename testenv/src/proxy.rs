//! A TCP relay in front of a real server that a test can cut and restore: the server's outage
//! as a client sees it (connections reset, new ones refused), without stopping a server other
//! tests share.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    /// Every relayed connection dropped, new ones closed at once.
    Cut,
    /// Connections stay open but nothing passes, either way: a server that accepts traffic and
    /// never answers (a hung node, a partition that drops packets).
    Stalled,
}

/// Relays every connection to its upstream while up; when cut, drops every relayed connection
/// and closes each new one at once; when stalled, holds every connection open and passes
/// nothing.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and relays to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (state, watch) = watch::channel(State::Up);
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                let now = *watch.borrow();
                match now {
                    State::Cut => {
                        drop(client);
                        continue;
                    }
                    State::Stalled => {
                        // Accepted, and then silence until the stall ends.
                        tokio::spawn(async move {
                            let _ = watch.wait_for(|state| *state != State::Stalled).await;
                            drop(client);
                        });
                        continue;
                    }
                    State::Up => {}
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|state| *state != State::Up) => {}
                    }
                    // Stalled: both ends stay open, and nothing is copied, until the stall
                    // ends; the connection is then dropped (what was in flight is lost).
                    if *watch.borrow() == State::Stalled {
                        let _ = watch.wait_for(|state| *state != State::Stalled).await;
                    }
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// `host:port` to give the client instead of the server's.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The outage begins: relayed connections drop, new ones are closed at once.
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// The server hangs: connections stay open and nothing passes until [`Self::restore`] (which
    /// drops them) or [`Self::cut`].
    pub fn stall(&self) {
        self.state.send_replace(State::Stalled);
    }

    /// The server is back.
    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
