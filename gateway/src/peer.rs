//! Whether the client is still connected, asked while a query runs.
//!
//! pgwire reads the socket only between statements, so a client that disconnects during a
//! long query (or a driver timeout that drops the connection instead of cancelling) would leave
//! the query running to its end. The watch holds a duplicate of the connection's socket and
//! asks the kernel whether the peer has closed its side (POLLRDHUP), which works under TLS too:
//! it does not read, so the TLS stream is undisturbed, and pending data does not mask it.
//!
//! Running queries ask at each beat of one timer shared by the server ([`Beat`]). A timer of
//! each query's own cost two wake-ups of a parked worker thread per query, even a lookup of a
//! fraction of a millisecond: tokio wakes its timer's thread whenever a new timer is due
//! before every other, as a query's timer was when no other query was running.
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::sync::watch;

/// How often running queries ask whether their clients are still there.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A beat every [`CHECK_INTERVAL`], for every connection of a server. It stops when the last
/// copy is dropped.
#[derive(Debug, Clone)]
pub struct Beat(watch::Receiver<()>);

impl Beat {
    /// Starts beating on the current runtime.
    pub fn start() -> Beat {
        let (beats, beat) = watch::channel(());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(CHECK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        if beats.send(()).is_err() {
                            return;
                        }
                    }
                    _ = beats.closed() => return,
                }
            }
        });
        Beat(beat)
    }
}

#[derive(Debug)]
pub struct PeerWatch {
    fd: OwnedFd,
    beat: Beat,
}

impl PeerWatch {
    /// A watch on `socket`, or None if the socket cannot be duplicated.
    pub fn new(socket: &impl std::os::fd::AsFd, beat: Beat) -> Option<PeerWatch> {
        let fd = socket2::SockRef::from(socket).try_clone().ok()?;
        Some(PeerWatch {
            fd: fd.into(),
            beat,
        })
    }

    /// Ends when the client is gone, asked at each beat; never if the beat has stopped.
    pub async fn gone(&self) {
        let mut beat = self.beat.0.clone();
        beat.borrow_and_update();
        loop {
            if beat.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.is_gone() {
                return;
            }
        }
    }

    /// True once the peer has closed the connection or it failed.
    pub fn is_gone(&self) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; the fd is owned by self and open.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        ready > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_the_peer_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let watch = PeerWatch::new(&server, Beat::start()).expect("watch");
        assert!(!watch.is_gone());
        let gone = watch.gone();
        tokio::pin!(gone);
        let early = tokio::time::timeout(CHECK_INTERVAL * 2, &mut gone).await;
        assert!(early.is_err(), "gone while the client is connected");
        drop(client);
        // the FIN arrives asynchronously on loopback; a later beat sees it
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("gone once the client closed");
        assert!(watch.is_gone());
    }
}
