//! A real PostgreSQL (Debian's `postgresql` package) in a throwaway cluster on a free port of
//! 127.0.0.1, trusting local connections, removed when dropped. Runs as the `postgres` user
//! when the tests run as root (initdb refuses root).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} not found: apt-get install postgresql (scripts/setup-clients does)")
        })
}

fn as_postgres(program: &Path) -> Command {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "lakegate-pg-{}-{}",
            std::process::id(),
            crate::rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let out = as_postgres(&bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-N"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken by a test running beside this one before postgres binds it;
        // postgres then refuses to start, and another port is tried.
        let mut attempts = 0;
        let port = loop {
            attempts += 1;
            let port = free_port();
            let out = as_postgres(&bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-l"])
                .arg(dir.join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.display()
                ))
                .arg("start")
                .stdout(Stdio::null())
                .output()
                .expect("pg_ctl start");
            if out.status.success() {
                break port;
            }
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            assert!(
                attempts < 3 && log.contains("could not bind"),
                "pg_ctl start: {} {log}",
                String::from_utf8_lossy(&out.stderr),
            );
        };
        Postgres { dir, port }
    }

    /// A libpq connection string for the superuser.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
