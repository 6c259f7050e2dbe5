"""Lakegate against its peers, on one machine, in one run (issue 6; see BENCHMARKS.md).

Starts, on 127.0.0.1 and the same data (the quickstart's), a throwaway PostgreSQL cluster,
PgBouncer in front of it, datafusion-postgres-cli serving the same Parquet files, and the
gateway; drives each with the same pgbench scripts and psql, and prints medians and ratios
(gateway / peer) as a Markdown report with the machine it ran on.

usage: python3 bench/run.py [--smoke] [--gateway PATH] [--datafusion-postgres PATH] [--out FILE]
  --smoke    tiny durations, connection counts and scale factor: checks the harness works (CI)
  --gateway  the lakegate binary (default: $CARGO_TARGET_DIR/release/lakegate); tpch-direct
             and stream-rows (bench/direct) are taken from the same folder
  --datafusion-postgres  datafusion-postgres-cli (default: on PATH or ~/.cargo/bin); a full run
             installs it with `cargo install` when missing (a release build of DataFusion, 30-60
             minutes on 2 cores); --smoke runs without it when it is not installed
  --only     idle | queries | connections | stream | tpch (repeatable): run only these
"""
import argparse
import asyncio
import functools
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart"
PASSWORD = "bench-secret"
# The peer the issue names: crates.io's datafusion-postgres-cli, on the DataFusion version the
# gateway is built on (55), so the ratio is what each adds around the same engine.
DFPG_VERSION = "0.19.0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit():
    """Each gateway connection holds two file descriptors (its socket and the duplicate
    gateway/src/peer.rs polls), so 10,000 connections need more than the 20,000 a container
    often allows. Raised where permitted (root), else to the hard limit; the report says which."""
    import resource
    want = 65536
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fd_limit(pid):
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


def wait_for_port(port, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def as_service_user(cmd):
    """PostgreSQL and PgBouncer refuse to run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15"):
        path = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if path.exists():
            return str(path)
    raise SystemExit(f"{name} not found: apt-get install postgresql pgbouncer")


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.tmp = Path(tempfile.mkdtemp(prefix="lakegate-bench-"))
        os.chmod(self.tmp, 0o777)
        self.procs = []
        self.results = []
        self.dfpg = None

    # ---------- peers ----------
    def start_postgres(self):
        data = self.tmp / "pg"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        pwfile = self.tmp / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        subprocess.run(
            as_service_user([pg_bin("initdb"), "-D", str(data), "-U", "bench", "--pwfile", str(pwfile),
                             "--auth-host=scram-sha-256", "--auth-local=trust", "-N"]),
            check=True, stdout=subprocess.DEVNULL)
        # Same TLS certificate as the gateway: both peers pay for TLS.
        cert, key = data / "server.crt", data / "server.key"
        shutil.copy(self.cert, cert)
        shutil.copy(self.key, key)
        os.chmod(key, 0o600)
        if os.geteuid() == 0:
            for f in (cert, key):
                shutil.chown(f, "postgres", "postgres")
        self.pg_port = free_port()
        proc = subprocess.Popen(
            as_service_user([pg_bin("postgres"), "-D", str(data), "-p", str(self.pg_port), "-k", str(self.tmp),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "ssl=on",
                             "-c", "max_connections=300", "-c", "shared_buffers=256MB"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.pg_pid = proc.pid
        self.pg_data = data
        wait_for_port(self.pg_port, proc)
        self.load_postgres()

    def load_postgres(self):
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        hcp = pq.read_table(QUICKSTART / "data/gtm/hcp/part-0.parquet")
        csv = self.tmp / "hcp.csv"
        pacsv.write_csv(hcp, csv)
        os.chmod(csv, 0o644)
        self.hcp_ids = (min(hcp.column("hcp_id").to_pylist()), max(hcp.column("hcp_id").to_pylist()))
        self.psql_pg(
            "CREATE SCHEMA gtm; CREATE TABLE gtm.hcp (hcp_id bigint PRIMARY KEY, full_name text, "
            "email text, country text, specialty text, npi text);\n"
            f"\\copy gtm.hcp FROM '{csv}' WITH (FORMAT csv, HEADER true)\n"
            "ALTER ROLE bench SET search_path = gtm; ANALYZE;")

    def psql_pg(self, sql):
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.pg_url()], input=sql,
                       text=True, check=True, stdout=subprocess.DEVNULL)

    def start_pgbouncer(self):
        self.bouncer_port = free_port()
        ini = self.tmp / "pgbouncer.ini"
        users = self.tmp / "userlist.txt"
        users.write_text(f'"bench" "{PASSWORD}"\n')
        ini.write_text(
            "[databases]\n"
            f"gtm = host=127.0.0.1 port={self.pg_port} dbname=postgres user=bench password={PASSWORD}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.bouncer_port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {users}\npool_mode = transaction\n"
            "max_client_conn = 2000\ndefault_pool_size = 32\n"
            f"client_tls_sslmode = require\nclient_tls_cert_file = {self.tmp / 'pg' / 'server.crt'}\n"
            f"client_tls_key_file = {self.tmp / 'pg' / 'server.key'}\nserver_tls_sslmode = disable\n"
            f"logfile = {self.tmp / 'pgbouncer.log'}\n")
        for f in (ini, users):
            os.chmod(f, 0o644)
        proc = subprocess.Popen(as_service_user([shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(ini)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_for_port(self.bouncer_port, proc)

    def find_dfpg(self):
        """datafusion-postgres-cli: the given path, on PATH, or installed now from crates.io."""
        candidates = [self.args.datafusion_postgres, shutil.which("datafusion-postgres-cli"),
                      str(Path.home() / ".cargo" / "bin" / "datafusion-postgres-cli")]
        for candidate in candidates:
            if candidate and Path(candidate).exists():
                return candidate
        if self.smoke:
            print("datafusion-postgres-cli not installed: the smoke run goes without it", file=sys.stderr)
            return None
        print(f"installing datafusion-postgres-cli {DFPG_VERSION} (cargo install, a long release build) ...",
              file=sys.stderr)
        subprocess.run(["cargo", "install", "datafusion-postgres-cli", "--version", DFPG_VERSION, "--locked"],
                       check=True)
        return str(Path.home() / ".cargo" / "bin" / "datafusion-postgres-cli")

    def launch_dfpg(self, tables):
        """datafusion-postgres-cli serving `tables` ({name: parquet file or folder}) with the
        gateway's certificate; its port once it listens."""
        port = free_port()
        cmd = [self.dfpg, "-p", str(port), "--host", "127.0.0.1",
               "--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        for name, path in tables.items():
            cmd += ["--parquet", f"{name}:{path}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "RUST_LOG": "error"})
        self.procs.append(proc)
        wait_for_port(port, proc)
        return port, proc.pid

    def start_dfpg(self):
        self.dfpg = self.find_dfpg()
        if self.dfpg:
            hcp = QUICKSTART / "data/gtm/hcp/part-0.parquet"
            self.dfpg_port, self.dfpg_pid = self.launch_dfpg({"hcp": hcp})

    def start_oidc(self):
        """The tests' OpenID provider (npm oidc-provider): RS256 JWT access tokens for frank
        (group gtm-stewards, a steward like carol), checked by the gateway on every login."""
        script = ROOT / "tests" / "peers" / "oidc" / "provider.mjs"
        if not (script.parent / "node_modules" / "oidc-provider").exists():
            raise SystemExit("oidc-provider missing: run scripts/setup-clients (npm ci in tests/peers/oidc)")
        proc = subprocess.Popen(["node", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        self.issuer, self.tokens = None, {}
        while len(self.tokens) < 2:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the OpenID provider did not start")
            parts = line.split()
            if parts[:1] == ["issuer"]:
                self.issuer = parts[1]
            elif parts[:1] == ["token"]:
                self.tokens[parts[1]] = parts[2]

    def start_gateway(self):
        self.start_oidc()
        gw = self.tmp / "gw"
        gw.mkdir()
        config = (QUICKSTART / "lakegate.yaml").read_text()
        config = (config.replace("catalog: catalog.yaml", f"catalog: {QUICKSTART / 'catalog.yaml'}")
                  .replace("policy: policy", f"policy: {QUICKSTART / 'policy'}")
                  .replace("cert: certs/server.crt", f"cert: {gw / 'server.crt'}")
                  .replace("key: certs/server.key", f"key: {gw / 'server.key'}"))
        config += f"\noidc:\n  - issuer: {self.issuer}\n    audience: urn:lakegate\n"
        (gw / "lakegate.yaml").write_text(config)
        subprocess.run([self.args.gateway, "generate-demo", "--dir", str(QUICKSTART)], check=True)
        self.gw_port, self.gw_pid = self.launch_gateway(gw / "lakegate.yaml")
        self.cert, self.key = gw / "server.crt", gw / "server.key"
        os.chmod(self.cert, 0o644)
        os.chmod(self.key, 0o644)

    def launch_gateway(self, config):
        """Starts a gateway on a free port; its port and PID once it listens."""
        proc = subprocess.Popen([self.args.gateway, "serve", "--listen", "127.0.0.1:0", "--config",
                                 str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "LAKEGATE_LOG": "error"},
                                preexec_fn=raise_fd_limit)
        self.procs.append(proc)
        line = proc.stdout.readline()
        match = re.match(r"lakegate listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            raise SystemExit(f"gateway did not start: {line!r}")
        return int(match.group(1)), proc.pid

    def start_tpch_gateway(self):
        """TPC-H data (tpchgen-cli; scale factor 1, 0.01 for --smoke) registered in a catalog file
        of its own, served by a second gateway with bench/tpch/policy.yaml."""
        gw = self.tmp / "gw-tpch"
        gw.mkdir()
        self.tpch_sf = 0.01 if self.smoke else 1
        gen = Path(sys.executable).parent / "tpchgen-cli"
        if not gen.exists():
            raise SystemExit(f"{gen} missing: run scripts/setup-clients (tests/clients/python/requirements.txt)")
        subprocess.run([str(gen), "parquet", "-s", str(self.tpch_sf), "--parts", "1",
                        "--output-dir", str(gw / "tpch")], check=True, capture_output=True)
        (gw / "catalog.yaml").write_text("databases:\n  - name: tpch\n    tables: []\n")
        config = (QUICKSTART / "lakegate.yaml").read_text()
        config = (config.replace("catalog: catalog.yaml", f"catalog: {gw / 'catalog.yaml'}")
                  .replace("policy: policy", f"policy: {ROOT / 'bench' / 'tpch' / 'policy.yaml'}")
                  .replace("default_schema: gtm", "default_schema: tpch")
                  .replace("cert: certs/server.crt", f"cert: {gw / 'server.crt'}")
                  .replace("key: certs/server.key", f"key: {gw / 'server.key'}"))
        (gw / "lakegate.yaml").write_text(config)
        for table in sorted(p.name for p in (gw / "tpch").iterdir()):
            subprocess.run([self.args.gateway, "catalog", "register", "--config", str(gw / "lakegate.yaml"),
                            "--database", "tpch", "--table", table, "--location", f"tpch/{table}"],
                           check=True, capture_output=True)
        self.tpch_port, self.tpch_pid = self.launch_gateway(gw / "lakegate.yaml")
        self.tpch_data = gw / "tpch"

    # ---------- connection strings ----------
    def pg_url(self):
        return f"host=127.0.0.1 port={self.pg_port} dbname=postgres user=bench password={PASSWORD} sslmode=require"

    def bouncer_url(self):
        return f"host=127.0.0.1 port={self.bouncer_port} dbname=gtm user=bench password={PASSWORD} sslmode=require"

    def gw_url(self):
        # carol: a steward, unmasked and unfiltered, so every system does the same work
        return f"host=127.0.0.1 port={self.gw_port} dbname=gtm user=carol password=carol sslmode=require"

    def gw_token_url(self):
        # frank: a steward known only to the OpenID provider; his JWT is the password
        return (f"host=127.0.0.1 port={self.gw_port} dbname=gtm user=frank "
                f"password={self.tokens['frank']} sslmode=require")

    def dfpg_url(self):
        # datafusion-postgres-cli has no authentication: any user name is let in
        return f"host=127.0.0.1 port={self.dfpg_port} dbname=datafusion user=postgres sslmode=require"

    def systems(self):
        systems = [("lakegate", self.gw_url()), ("postgresql", self.pg_url()), ("pgbouncer", self.bouncer_url())]
        if self.dfpg:
            systems.append(("datafusion-postgres", self.dfpg_url()))
        return systems

    # ---------- measurements ----------
    def pgbench(self, url, script, clients, seconds, connect_each=False, mode="simple", system=None):
        """tps and latencies; with `system`, also the CPU per transaction of that system's
        server processes and of pgbench itself (the two share this machine's cores)."""
        path = self.tmp / f"script-{abs(hash(script))}.sql"
        path.write_text(script)
        logdir = Path(tempfile.mkdtemp(dir=self.tmp))
        cmd = ["pgbench", "-n", "-M", mode, "-f", str(path), "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(seconds), "-l", "--log-prefix", str(logdir / "tx")]
        if connect_each:
            cmd.append("-C")
        backends = self.client_backends(system)
        server_before = self.server_cpu_seconds(system)
        client_before = Bench.children_cpu_seconds()
        out = subprocess.run(cmd + [url], capture_output=True, text=True)
        client_cpu = Bench.children_cpu_seconds() - client_before
        if out.returncode != 0:
            raise SystemExit(f"pgbench failed: {out.stderr}")
        self.wait_for_backends_to_end(system, backends)
        server_after = self.server_cpu_seconds(system)
        tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
        transactions = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
        latencies = []
        for log in logdir.iterdir():
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]) / 1000.0)
        latencies.sort()
        pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
        result = {"tps": tps, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}
        if server_before is not None and transactions:
            result["server_cpu_us"] = (server_after - server_before) * 1e6 / transactions
            result["pgbench_cpu_us"] = client_cpu * 1e6 / transactions
        return result

    def server_pid(self, system):
        """The process whose CPU counts a system's: the gateway's or datafusion-postgres's own,
        PostgreSQL's postmaster (its ended backends' CPU is added to its children's)."""
        if system == "lakegate":
            return self.gw_pid
        if system == "datafusion-postgres":
            return getattr(self, "dfpg_pid", None)
        if system == "postgresql":
            return int((self.pg_data / "postmaster.pid").read_text().split()[0])
        return None  # PgBouncer's CPU is its own and PostgreSQL's: left out

    def server_cpu_seconds(self, system):
        pid = self.server_pid(system) if system else None
        if pid is None:
            return None
        # /proc/PID/stat after the command's ")": utime, stime, cutime, cstime are the 12th-15th
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def children_cpu_seconds():
        import resource
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def client_backends(self, system):
        """PostgreSQL's backends serving clients (PgBouncer's pooled ones included), but this
        question's own; None for other systems."""
        if system != "postgresql":
            return None
        query = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        out = subprocess.run(["psql", "-X", "-A", "-t", "-c", query, self.pg_url()], capture_output=True, text=True)
        if out.returncode != 0:
            # without the count, PostgreSQL's CPU would be read before its backends ended
            raise SystemExit(f"counting PostgreSQL's backends failed: {out.stderr}")
        return int(out.stdout.strip())

    def wait_for_backends_to_end(self, system, before, timeout=30):
        """PostgreSQL's backends count in the postmaster's CPU once it has reaped them: waits
        until pgbench's have ended (as many backends left as before it ran)."""
        if before is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client_backends(system) <= before:
                return
            time.sleep(0.05)
        raise SystemExit("PostgreSQL's benchmark backends did not end")

    def repeat(self, f, runs):
        samples = [f() for _ in range(runs)]
        return Bench.medians(samples)

    @staticmethod
    def medians(samples):
        return {k: statistics.median(s[k] for s in samples) for k in samples[0]}

    def interleaved(self, measures, runs):
        """Each system's median of `runs`, taken in rounds of one run per system: this
        machine's speed moves by 10-30% over minutes, and a row whose systems ran back to back
        compared them at different speeds (a ratio that moved by 0.2 between whole runs)."""
        samples = {system: [] for system in measures}
        for _ in range(runs):
            for system, measure in measures.items():
                samples[system].append(measure())
        return {system: Bench.medians(s) for system, s in samples.items()}

    def bench_queries(self):
        seconds, runs = (1, 1) if self.smoke else (10, 3)
        lo, hi = self.hcp_ids
        lookup = f"\\set id random({lo}, {hi})\nSELECT * FROM gtm.hcp WHERE hcp_id = :id;\n"
        # (name, script, pgbench protocol): "prepared" sends the id as a parameter of one
        # prepared statement, as JDBC, asyncpg and Npgsql do; "simple" sends a new text each time
        scripts = [
            ("SELECT 1", "SELECT 1;\n", "simple"),
            ("point lookup", lookup, "simple"),
            ("point lookup, prepared", lookup, "prepared"),
        ]
        for name, script, mode in scripts:
            for clients in (1, 32):
                measures = {}
                for system, url in self.systems():
                    if mode == "prepared" and system == "pgbouncer":
                        continue  # PgBouncer 1.18's transaction pooling keeps no prepared statements
                    # datafusion-postgres serves the file as `hcp` in its default schema
                    text = script.replace("gtm.hcp", "hcp") if system == "datafusion-postgres" else script
                    measures[system] = functools.partial(
                        self.pgbench, url, text, clients, seconds, mode=mode, system=system)
                self.results.append(("queries", f"{name}, {clients} client(s)", self.interleaved(measures, runs)))

    def bench_connections(self):
        seconds, runs = (1, 1) if self.smoke else (10, 3)
        login = lambda url, system: functools.partial(
            self.pgbench, url, "SELECT 1;\n", 4, seconds, connect_each=True, system=system)
        # A company token as the password: the gateway verifies the JWT (signature, issuer,
        # audience, expiry) against the provider's cached JWKS on every login.
        measured = self.interleaved({
            "lakegate": login(self.gw_url(), "lakegate"),
            "postgresql": login(self.pg_url(), "postgresql"),
            "lakegate, token": login(self.gw_token_url(), "lakegate"),
        }, runs)
        row = {"lakegate": measured["lakegate"], "postgresql": measured["postgresql"]}
        self.results.append(("connections", "new connection + SCRAM + TLS + SELECT 1, 4 clients", row))
        token_row = {"lakegate": measured["lakegate, token"], "postgresql": measured["postgresql"]}
        self.results.append(("connections", "new connection + OIDC token (JWT) + TLS + SELECT 1, 4 clients; "
                              "PostgreSQL with SCRAM", token_row))

    def bench_stream(self):
        rows = 100_000 if self.smoke else 10_000_000
        runs = 1 if self.smoke else 3
        pids = {"lakegate": self.gw_pid, "datafusion-postgres": getattr(self, "dfpg_pid", None)}

        def measure(system, url, args):
            def once():
                self.reset_peak_rss(pids.get(system))
                start = time.perf_counter()
                subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url] + args,
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                elapsed = time.perf_counter() - start
                result = {"rows_per_s": rows / elapsed, "seconds": elapsed}
                if pids.get(system):
                    result["peak_rss_mb"] = self.peak_rss_mb(pids[system])
                return result
            return self.repeat(once, runs)

        # COPY: datafusion-postgres 0.19 has no COPY, so it is measured in the SELECT below.
        copy = [f"\\copy (SELECT * FROM generate_series(1, {rows})) TO '/dev/null'"]
        row = {system: measure(system, url, ["-c", copy[0]]) for system, url in self.systems()[:2]}
        self.results.append(("stream", f"COPY (SELECT * FROM generate_series(1, {rows:,})) TO STDOUT via psql", row))
        # The same rows as a query result (psql -A -t, output to /dev/null): every system,
        # datafusion-postgres included, sends DataRows; psql keeps the whole result in memory.
        select = ["-A", "-t", "-c", f"SELECT * FROM generate_series(1, {rows})"]
        row = {system: measure(system, url, select) for system, url in self.systems() if system != "pgbouncer"}
        self.results.append(("stream", f"SELECT * FROM generate_series(1, {rows:,}) via psql (text rows)", row))
        # The same rows to a binary-format client that counts them without decoding values
        # (`bench/direct/src/stream_rows.rs`): what the server sends, with psql's formatting
        # and memory out of the way.
        client = Path(self.args.gateway).parent / "stream-rows"
        if not client.exists():
            raise SystemExit(f"{client} missing: cargo build [--release] -p lakegate-bench-direct")

        def binary(system, url):
            def once():
                self.reset_peak_rss(pids.get(system))
                out = subprocess.run([str(client), str(self.cert), url, f"SELECT * FROM generate_series(1, {rows})"],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"stream-rows failed on {system}: {out.stderr}")
                got, seconds = out.stdout.split()
                if int(got) != rows:
                    raise SystemExit(f"stream-rows got {got} rows from {system}, expected {rows}")
                result = {"rows_per_s": rows / float(seconds), "seconds": float(seconds)}
                if pids.get(system):
                    result["peak_rss_mb"] = self.peak_rss_mb(pids[system])
                return result
            return self.repeat(once, runs)

        row = {system: binary(system, url) for system, url in self.systems() if system != "pgbouncer"}
        self.results.append(("stream", f"SELECT * FROM generate_series(1, {rows:,}), binary rows (tokio-postgres, extended protocol)", row))

    def bench_tpch(self):
        """TPC-H-like queries as carol through the gateway (row filter on lineitem, phone numbers
        hashed), against the same queries and rules (as views) in DataFusion directly."""
        import psycopg
        self.start_tpch_gateway()
        runs = 1 if self.smoke else 5
        queries = sorted((ROOT / "bench" / "tpch").glob("q*.sql"), key=lambda p: int(p.stem[1:]))
        direct = Path(self.args.gateway).parent / "tpch-direct"
        if not direct.exists():
            raise SystemExit(f"{direct} missing: cargo build [--release] -p lakegate-bench-direct")
        out = subprocess.run([str(direct), str(self.tpch_data), str(runs)] + [str(q) for q in queries],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"tpch-direct failed: {out.stderr}")
        datafusion = {}
        for line in out.stdout.splitlines():
            file, ms, rows = line.split()
            datafusion[Path(file).stem] = {"ms": float(ms), "rows": int(rows)}
        url = f"host=127.0.0.1 port={self.tpch_port} dbname=gtm user=carol password=carol sslmode=require"
        lakegate = self.time_queries(url, queries, runs)
        dfpg = {}
        if self.dfpg:
            # The raw files as `raw_<table>` and the rules as tpch-direct's views over them.
            tables = {f"raw_{d.name}": d for d in sorted(self.tpch_data.iterdir())}
            port, _ = self.launch_dfpg(tables)
            views = subprocess.run([str(direct), "--views"], capture_output=True, text=True, check=True)
            url = f"host=127.0.0.1 port={port} dbname=datafusion user=postgres sslmode=require"
            with psycopg.connect(url, autocommit=True) as conn:
                for view in views.stdout.splitlines():
                    conn.execute(view)
            dfpg = self.time_queries(url, queries, runs)
        for query in queries:
            row = {"lakegate": lakegate[query.stem], "datafusion": datafusion[query.stem]}
            if dfpg:
                row["datafusion-postgres"] = dfpg[query.stem]
            for system, result in row.items():
                if result["rows"] != row["datafusion"]["rows"]:
                    raise SystemExit(f"{query.name}: {system} returned {result['rows']} rows, "
                                     f"DataFusion {row['datafusion']['rows']}")
            self.results.append(("tpch", f"TPC-H {query.stem.upper()} (SF {self.tpch_sf}) as carol: "
                                         "lineitem row filter, c_phone hashed", row))

    @staticmethod
    def time_queries(url, queries, runs):
        """Median time and row count of each query over one connection, after a warm-up run
        (as tpch-direct does)."""
        import psycopg
        results = {}
        with psycopg.connect(url) as conn:
            for query in queries:
                sql = query.read_text()
                with conn.cursor() as cur:
                    cur.execute(sql)
                    rows = len(cur.fetchall())
                    times = []
                    for _ in range(runs):
                        start = time.perf_counter()
                        cur.execute(sql)
                        cur.fetchall()
                        times.append((time.perf_counter() - start) * 1000)
                results[query.stem] = {"ms": statistics.median(times), "rows": rows}
        return results

    def bench_idle(self):
        counts = [50] if self.smoke else [1000, 10000]
        # Stop before the machine runs out: the report says where it stopped.
        limit_mb = 6 * 1024
        row = {}
        for count in counts:
            before = self.rss_mb(self.gw_pid)
            opened, rss = asyncio.run(self.open_idle(count, limit_mb))
            row[f"{count} idle"] = {"opened": opened, "rss_mb": rss, "before_mb": before,
                                    "mb_per_connection": (rss - before) / max(opened, 1),
                                    "gateway_fd_limit": fd_limit(self.gw_pid)}
        self.results.append(("memory", "gateway RSS with idle TLS connections (logged in, one query each)", row))

    async def open_idle(self, count, limit_mb):
        """Opens up to `count` connections in batches; stops when the gateway's RSS passes
        `limit_mb`. Returns how many were open and the RSS with all of them open."""
        import asyncpg
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connections = []

        async def one():
            c = await asyncpg.connect(host="127.0.0.1", port=self.gw_port, user="carol", password="carol",
                                      database="gtm", ssl=context, statement_cache_size=0, timeout=120)
            await c.fetchval("SELECT 1")
            connections.append(c)

        failures = []
        while len(connections) < count and self.rss_mb(self.gw_pid) < limit_mb:
            batch = min(250, count - len(connections))
            results = await asyncio.gather(*(one() for _ in range(batch)), return_exceptions=True)
            failures += [r for r in results if isinstance(r, Exception)]
            if len(failures) > 10:
                break
        if failures:
            print(f"  {len(failures)} connection(s) failed, e.g. {failures[0]!r}", file=sys.stderr)
        opened, rss = len(connections), self.rss_mb(self.gw_pid)
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        return opened, rss

    @staticmethod
    def rss_mb(pid):
        return Bench.status_kb(pid, "VmRSS") / 1024

    @staticmethod
    def reset_peak_rss(pid):
        """Starts the process's peak RSS (VmHWM) afresh, so a peak is this step's, not the
        highest since start (Linux: 5 > /proc/PID/clear_refs)."""
        if pid:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError as e:
                print(f"cannot reset the peak RSS of {pid}: {e}", file=sys.stderr)

    @staticmethod
    def peak_rss_mb(pid):
        return Bench.status_kb(pid, "VmHWM") / 1024

    @staticmethod
    def status_kb(pid, field):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    # ---------- report ----------
    def report(self):
        lines = ["# Lakegate benchmark run", ""]
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), platform.processor())
        mem = Bench.meminfo_gb()
        pg_version = subprocess.run([pg_bin("postgres"), "--version"], capture_output=True, text=True).stdout.strip()
        bouncer = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        lines += [f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}",
                  f"- peers: {pg_version}; {bouncer}; "
                  + (f"datafusion-postgres-cli {DFPG_VERSION} ({self.dfpg}); " if self.dfpg
                     else "datafusion-postgres-cli not installed (left out); ")
                  + f"gateway binary {self.args.gateway}",
                  f"- mode: {'smoke (tiny, numbers meaningless)' if self.smoke else 'full'}; medians of repeated runs",
                  f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
        for kind, name, row in self.results:
            lines.append(f"## {name}")
            lines.append("")
            keys = list(next(iter(row.values())).keys())
            lines.append("| system | " + " | ".join(keys) + " |")
            lines.append("|---|" + "---|" * len(keys))
            for system, values in row.items():
                lines.append(f"| {system} | " + " | ".join(Bench.fmt(values.get(k)) for k in keys) + " |")
            if kind in ("queries", "connections", "stream", "tpch") and "lakegate" in row:
                key = {"queries": "tps", "connections": "tps", "stream": "rows_per_s", "tpch": "ms"}[kind]
                for peer in row:
                    if peer != "lakegate" and row[peer].get(key):
                        lines.append("")
                        lines.append(f"lakegate / {peer} ({key}): **{row['lakegate'][key] / row[peer][key]:.2f}**")
                    if peer != "lakegate" and row[peer].get("server_cpu_us") and row["lakegate"].get("server_cpu_us"):
                        lines.append(f"lakegate / {peer} (server_cpu_us, lower is better): "
                                     f"{row['lakegate']['server_cpu_us'] / row[peer]['server_cpu_us']:.2f}")
            lines.append("")
        return "\n".join(lines)

    @staticmethod
    def meminfo_gb():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
        return 0

    @staticmethod
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.2f}"
        return "" if v is None else str(v)

    def close(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/lakegate-target"))
    parser.add_argument("--gateway", default=str(Path(target) / "release" / "lakegate"))
    parser.add_argument("--datafusion-postgres", dest="datafusion_postgres")
    parser.add_argument("--out")
    parser.add_argument("--only", choices=["queries", "connections", "stream", "idle", "tpch"], action="append",
                        help="run only these measurements (repeatable)")
    args = parser.parse_args()
    if not Path(args.gateway).exists():
        raise SystemExit(f"{args.gateway} missing: cargo build --release -p lakegate (or pass --gateway)")
    bench = Bench(args)
    try:
        bench.start_gateway()
        bench.start_postgres()
        bench.start_pgbouncer()
        if not args.only or {"queries", "stream", "tpch"} & set(args.only):
            bench.start_dfpg()
        # Idle memory first: later steps (the 10-million-row stream) leave the allocator's
        # high-water mark behind, which would be counted against the idle connections.
        steps = {"idle": bench.bench_idle, "queries": bench.bench_queries,
                 "connections": bench.bench_connections, "stream": bench.bench_stream,
                 "tpch": bench.bench_tpch}
        for name, step in steps.items():
            if args.only and name not in args.only:
                continue
            print(f"running {step.__name__} ...", file=sys.stderr)
            step()
        text = bench.report()
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
