//! NOTICE messages for the client of one connection, from work that runs where the wire is
//! out of reach (an engine polling a remote query). The connection's handler sends them while
//! it waits for the first rows.
use tokio::sync::{Mutex, mpsc};

#[derive(Debug)]
pub struct Notices {
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for Notices {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Notices {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Notices {
    pub fn send(&self, text: String) {
        // The receiver lives as long as the session: a send fails only after it ended.
        let _ = self.tx.send(text);
    }

    /// The receiving end, held by whoever writes to the client now.
    pub async fn receiver(&self) -> tokio::sync::MutexGuard<'_, mpsc::UnboundedReceiver<String>> {
        self.rx.lock().await
    }
}
