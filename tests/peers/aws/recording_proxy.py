"""A recording HTTP proxy between the gateway and moto.

moto ignores what STS callers send beyond the role (SourceIdentity, tags), so the tests read
what the gateway really sent from here: every request is forwarded unchanged (Host included,
so SigV4 signatures still verify) and written as one JSON line with the signing access key,
the form body of STS calls, the operation and input of JSON calls (Athena, Glue) and the
upstream status. Prints `proxy listening PORT` when ready.

usage: recording_proxy.py UPSTREAM_PORT LOG_FILE
"""
import http.client
import http.server
import json
import re
import sys
import threading
import urllib.parse

UPSTREAM_PORT = int(sys.argv[1])
LOG = open(sys.argv[2], "a", buffering=1)
LOCK = threading.Lock()
CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        upstream = http.client.HTTPConnection("127.0.0.1", UPSTREAM_PORT, timeout=60)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                upstream.putheader(key, value)
        upstream.endheaders(body)
        response = upstream.getresponse()
        payload = response.read()
        upstream.close()

        match = CREDENTIAL.search(self.headers.get("Authorization", ""))
        record = {
            "method": self.command,
            "path": urllib.parse.urlsplit(self.path).path,
            "query": urllib.parse.urlsplit(self.path).query,
            "access_key": match.group(1) if match else None,
            "service": match.group(2) if match else None,
            "status": response.status,
        }
        # Query-protocol calls (STS; AssumeRoleWithWebIdentity is not even signed).
        if "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            record["form"] = dict(urllib.parse.parse_qsl(body.decode()))
            record["response"] = payload.decode(errors="replace")
        # JSON-protocol calls (Glue, Athena): the operation and its input.
        target = self.headers.get("X-Amz-Target")
        if target:
            record["target"] = target
            try:
                record["json"] = json.loads(body or b"{}")
            except ValueError:
                record["json"] = None
        with LOCK:
            LOG.write(json.dumps(record) + "\n")

        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(payload)))
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The caller left before the whole answer (it stopped reading once it had what
            # it needed); the request is recorded, and the proxy serves the next caller.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"proxy listening {server.server_address[1]}", flush=True)
server.serve_forever()
