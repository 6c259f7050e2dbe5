//! A raw PostgreSQL protocol connection over TLS, for tests that must send exactly the
//! messages a client sends (the Npgsql replay, PostgreSQL 18's OAUTHBEARER exchange).
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Gateway;

pub struct Conn {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
}

impl Conn {
    /// SSLRequest, the TLS handshake, then a StartupMessage with these parameters in order.
    pub async fn start(gateway: &Gateway, parameters: &[(&str, &str)]) -> Conn {
        let mut tcp = TcpStream::connect(("127.0.0.1", gateway.port))
            .await
            .expect("connect");
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.expect("SSLRequest");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("SSL answer");
        assert_eq!(&answer, b"S", "the gateway accepts TLS");
        let stream = TlsConnector::from(std::sync::Arc::new(gateway.tls_config()))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let mut conn = Conn {
            stream,
            buffer: BytesMut::new(),
        };
        let mut startup = BytesMut::new();
        frontend::startup_message(parameters.iter().copied(), &mut startup).expect("startup");
        conn.send(startup).await;
        conn
    }

    pub async fn send(&mut self, bytes: BytesMut) {
        self.stream.write_all(&bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next backend message, or None once the gateway closed the connection.
    pub async fn try_next(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.buffer).expect("backend message") {
                return Some(message);
            }
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buffer.put_slice(&chunk[..n]);
        }
    }

    pub async fn next(&mut self) -> Message {
        self.try_next()
            .await
            .expect("the gateway closed the connection")
    }
}
