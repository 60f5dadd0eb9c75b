"""A real aiosmtpd server in a process of its own, so that a test can kill it
(SIGKILL) and start it again on the same port: the backend of test_soak.py
and of the 10,000-session test of test_abuse.py, and the outbound peer of
the outbound soak.

    python3 killable_backend.py --port PORT --record FILE [--tls CERT KEY]
                                [--nofile N]

Each message's "X-Seq:" header value is appended to FILE, one line each,
with a single write(2) on an O_APPEND descriptor BEFORE the 250 is returned:
a SIGKILL after that write keeps the line (it is in the kernel's page
cache), so the file holds every message this server ever accepted, and
perhaps a few it was killed before confirming (the SMTP duplicate window).

Prints "ready port=N" on stdout once it listens. --port 0 lets the kernel
choose (the first start); restarts pass the port they were given.
--tls offers STARTTLS with that certificate (an outbound peer).
Only 127.0.0.1 is bound. It runs until it is killed.
"""
import argparse
import asyncio
import os
import re
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import time

from aiosmtpd.smtp import SMTP

_SEQ = re.compile(rb"^X-Seq:[ \t]*(\S+)", re.M | re.I)


class SeqRecorder:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        m = _SEQ.search(head)
        seq = m.group(1) if m else b"no-seq"
        os.write(self.fd, seq + b"\n")  # one write, before the 250
        return "250 2.0.0 OK queued %s" % seq.decode("ascii", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--nofile", type=int, default=0)
    args = ap.parse_args()
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
    handler = SeqRecorder(args.record)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)

    def factory():
        return SMTP(handler, hostname="killable.backend", tls_context=ctx,
                    require_starttls=False, timeout=900, data_size_limit=0)

    server = loop.run_until_complete(loop.create_server(factory, sock=sock, backlog=4096))
    print("ready port=%d" % sock.getsockname()[1], flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())


# ---- the test side -----------------------------------------------------------

class KillableBackend:
    """Runs this file as a child process; kill() sends SIGKILL, start() brings
    it back on the same port. Every wait is bounded."""

    START_TIMEOUT = 15.0

    def __init__(self, directory, name="backend", tls=None, nofile=0):
        self.directory = directory
        self.name = name
        self.tls = tls
        self.nofile = nofile
        self.record = os.path.join(directory, name + ".seq")
        open(self.record, "ab").close()
        self.log_path = os.path.join(directory, name + ".log")
        self.port = 0
        self.proc = None
        self.starts = 0
        self.kill_times = []  # time.monotonic() of each SIGKILL
        self.start()

    def start(self):
        last = ""
        for _attempt in range(20):  # the port may be busy for a moment
            args = [sys.executable, os.path.abspath(__file__), "--port", str(self.port),
                    "--record", self.record]
            if self.tls:
                args += ["--tls", self.tls[0], self.tls[1]]
            if self.nofile:
                args += ["--nofile", str(self.nofile)]
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log)
            log.close()
            deadline = time.monotonic() + self.START_TIMEOUT
            line = b""
            while time.monotonic() < deadline and not line.endswith(b"\n"):
                r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
                if r:
                    ch = os.read(self.proc.stdout.fileno(), 64)
                    if not ch:
                        break
                    line += ch
            m = re.match(rb"ready port=(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.starts += 1
                return
            last = line.decode("latin-1", "replace")
            self._reap()
            time.sleep(0.1)
        raise AssertionError("backend %s did not start: %r\n%s" % (self.name, last,
                                                                 self._log_tail()))

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _reap(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def kill(self):
        """SIGKILL, as a crash would; returns the time of the kill."""
        t = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kill_times.append(t)
        self._reap()
        return t

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def pid(self):
        return self.proc.pid if self.proc else None

    def received(self):
        """Every X-Seq line recorded so far, in order (duplicates kept)."""
        with open(self.record, "rb") as f:
            return [l.decode("ascii", "replace") for l in f.read().split(b"\n") if l]

    def stop(self):
        self._reap()
