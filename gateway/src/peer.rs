//! Whether the client is still connected, asked while a query runs.
//!
//! pgwire reads the socket only between statements, so a client that disconnects during a
//! long query (or a driver timeout that drops the connection instead of cancelling) would leave
//! the query running to its end. The watch holds a duplicate of the connection's socket and
//! asks the kernel whether the peer has closed its side (POLLRDHUP), which works under TLS too:
//! it does not read, so the TLS stream is undisturbed, and pending data does not mask it.
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Debug)]
pub struct PeerWatch {
    fd: OwnedFd,
}

impl PeerWatch {
    /// A watch on `socket`, or None if the socket cannot be duplicated.
    pub fn new(socket: &tokio::net::TcpStream) -> Option<PeerWatch> {
        let fd = socket2::SockRef::from(socket).try_clone().ok()?;
        Some(PeerWatch { fd: fd.into() })
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
        let watch = PeerWatch::new(&server).expect("watch");
        assert!(!watch.is_gone());
        drop(client);
        // the FIN arrives asynchronously on loopback: poll, bounded
        let mut gone = false;
        for _ in 0..200 {
            if watch.is_gone() {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(gone);
    }
}
