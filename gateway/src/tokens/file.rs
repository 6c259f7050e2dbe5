//! The embedded token store: one JSON file (mode 0600), read and written whole under an
//! advisory lock, so the gateway and `lakegate token revoke` on the same host never lose each
//! other's changes. Several gateway hosts share tokens through PostgreSQL instead.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use async_trait::async_trait;

use super::{AccessToken, StoreError, TokenStore};

pub struct FileStore {
    path: PathBuf,
}

/// An flock held until dropped (closing the file releases it).
struct Lock {
    _file: File,
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(self.path.display().to_string(), e.to_string())
    }

    fn lock(&self, exclusive: bool) -> Result<Lock, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| self.error(e))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc != 0 {
            return Err(self.error(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }

    fn read(&self) -> Result<Vec<AccessToken>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes.is_empty() => Ok(Vec::new()),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(self.path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Written beside the file and renamed over it: a crash leaves the old or the new file.
    fn write(&self, tokens: &[AccessToken]) -> Result<(), StoreError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let text = serde_json::to_vec_pretty(tokens).map_err(|e| self.error(e))?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.error(e))?;
        file.write_all(&text).map_err(|e| self.error(e))?;
        file.sync_all().map_err(|e| self.error(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.error(e))
    }

    /// Reads, changes and writes the file under the exclusive lock.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Vec<AccessToken>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock(true)?;
        let mut tokens = self.read()?;
        let out = f(&mut tokens)?;
        self.write(&tokens)?;
        Ok(out)
    }

    fn snapshot(&self) -> Result<Vec<AccessToken>, StoreError> {
        let _lock = self.lock(false)?;
        self.read()
    }
}

/// Runs a short read or write of the token file. On the main runtime's workers it tells the
/// runtime first, so other tasks move to another worker meanwhile; a connection thread
/// (`runtimes`) has only its own connections to hold up, and tokio cannot move them.
fn blocking_briefly<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[async_trait]
impl TokenStore for FileStore {
    async fn insert(&self, token: &AccessToken) -> Result<(), StoreError> {
        blocking_briefly(|| {
            self.change(|tokens| {
                tokens.push(token.clone());
                Ok(())
            })
        })
    }

    async fn get(&self, id: &str) -> Result<Option<AccessToken>, StoreError> {
        blocking_briefly(|| Ok(self.snapshot()?.into_iter().find(|t| t.id == id)))
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<AccessToken>, StoreError> {
        blocking_briefly(|| {
            let mut tokens: Vec<AccessToken> = self
                .snapshot()?
                .into_iter()
                .filter(|t| owner.is_none_or(|o| t.owner == o))
                .collect();
            tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at));
            Ok(tokens)
        })
    }

    async fn revoke(&self, id: &str, owner: Option<&str>, at: u64) -> Result<bool, StoreError> {
        blocking_briefly(|| {
            self.change(|tokens| {
                let found = tokens
                    .iter_mut()
                    .find(|t| t.id == id && owner.is_none_or(|o| t.owner == o));
                Ok(match found {
                    Some(token) => {
                        token.revoked_at.get_or_insert(at);
                        true
                    }
                    None => false,
                })
            })
        })
    }

    async fn update_snapshot(&self, token: &AccessToken) -> Result<(), StoreError> {
        blocking_briefly(|| {
            self.change(|tokens| {
                if let Some(stored) = tokens.iter_mut().find(|t| t.id == token.id) {
                    stored.groups = token.groups.clone();
                    stored.attributes = token.attributes.clone();
                    stored.checked_at = token.checked_at;
                    stored.sealed_refresh = token.sealed_refresh.clone();
                }
                Ok(())
            })
        })
    }

    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError> {
        blocking_briefly(|| {
            self.change(|tokens| {
                if let Some(stored) = tokens.iter_mut().find(|t| t.id == id) {
                    stored.last_used_at = Some(at);
                }
                Ok(())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, owner: &str, created_at: u64) -> AccessToken {
        AccessToken {
            id: id.into(),
            hash: "h".into(),
            owner: owner.into(),
            name: "n".into(),
            method: "oidc".into(),
            issuer: "i".into(),
            groups: vec!["g".into()],
            attributes: Default::default(),
            created_at,
            expires_at: created_at + 10,
            checked_at: created_at,
            last_used_at: None,
            revoked_at: None,
            sealed_refresh: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn revocations_survive_snapshot_updates_and_owners_are_kept_apart() {
        let dir = std::env::temp_dir().join(format!("lakegate-tokens-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = FileStore::new(dir.join("tokens.json"));
        assert!(store.list(None).await.expect("empty").is_empty());
        store.insert(&token("a", "erin", 1)).await.expect("insert");
        store.insert(&token("b", "frank", 2)).await.expect("insert");
        let stale = store.get("a").await.expect("get").expect("a");

        assert!(!store.revoke("a", Some("frank"), 5).await.expect("revoke"));
        assert!(store.revoke("a", Some("erin"), 5).await.expect("revoke"));
        // a re-check that read the token before the revocation writes its snapshot after it
        let mut rechecked = stale.clone();
        rechecked.groups = vec!["new".into()];
        store.update_snapshot(&rechecked).await.expect("update");
        let now = store.get("a").await.expect("get").expect("a");
        assert_eq!(now.revoked_at, Some(5));
        assert_eq!(now.groups, vec!["new"]);

        let ids: Vec<String> = store
            .list(None)
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec!["b", "a"], "newest first");
        assert_eq!(store.list(Some("erin")).await.expect("list").len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("tokens.json"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the gateway's user reads the file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
