#!/usr/bin/python3
"""bench.py — measures tlsfront's speed and memory (never a pass/fail test).

Starts an aiosmtpd backend (in this process, on its own thread) and tlsfront
in front of it, both on loopback, then measures:

  1. sessions: N sequential STARTTLS sessions (EHLO, STARTTLS, EHLO, MAIL,
     RCPT, DATA with a small message, QUIT): sessions per second and the
     median session time;
  2. concurrent: C clients each doing S such sessions at once;
  3. idle: K TLS sessions opened and left idle after EHLO over TLS; tlsfront's
     RSS growth per idle TLS session (VmRSS before and after, from /proc);
  4. throughput: one 20 MiB message over STARTTLS: MiB/s and peak RSS.

Usage: test/bench/bench.py [--bin build/tlsfront] [--sessions 200]
       [--concurrency 8] [--idle 500]
Prints a Markdown table, suitable for test/bench/RESULTS.md.
"""
import argparse
import os
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import tfhelpers  # noqa: E402  (the integration suite's backend and helpers)

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
MESSAGE = b"Subject: bench\r\n\r\n" + (b"x" * 98 + b"\r\n") * 20


def rss_kib(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start_tlsfront(binary, backend_port, workdir):
    conf = os.path.join(workdir, "bench.conf")
    with open(conf, "w") as f:
        f.write('server_name = "bench.test";\nworkers = 2;\n'
                'backend = { address = "127.0.0.1:%d"; };\n'
                'inbound = { tcp = { listen = [ "127.0.0.1:0" ]; }; };\n'
                'limits = { max_connections = 100000; max_connections_per_ip = 100000; };\n'
                'log = { level = "warn"; };\n' % backend_port)
    log = open(os.path.join(workdir, "tlsfront.log"), "w+")
    # Log level warn: the listening line is info, so ask -t for nothing and
    # find the port by asking the kernel which sockets the process holds.
    proc = subprocess.Popen([binary, "-c", conf], stderr=log)
    deadline = time.monotonic() + 10
    port = None
    while port is None and time.monotonic() < deadline:
        time.sleep(0.05)
        port = listening_port(proc.pid)
    if port is None:
        proc.kill()
        raise SystemExit("tlsfront did not start")
    return proc, port


def listening_port(pid):
    """The TCP port pid listens on, from /proc/net/tcp and its fds."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                return int(parts[1].split(":")[1], 16)
    return None


def one_session(port, message=MESSAGE):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    # smtplib leaves Nagle on: with a delayed ACK that alone costs ~40 ms
    # per exchange, which would measure the client, not tlsfront.
    s.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.ehlo("bench.client")
    s.starttls(context=CTX)
    s.ehlo("bench.client")
    s.sendmail("a@bench.test", ["b@bench.test"], message)
    s.quit()


def bench_sessions(port, n):
    times = []
    t0 = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        one_session(port)
        times.append(time.monotonic() - t)
    total = time.monotonic() - t0
    return n / total, statistics.median(times) * 1000


def bench_concurrent(port, clients, each):
    errors = []

    def run():
        try:
            for _ in range(each):
                one_session(port)
        except Exception as e:  # counted, never hidden
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    total = time.monotonic() - t0
    return clients * each / total, len(errors)


def bench_idle(pid, port, k):
    before = rss_kib(pid)
    socks = []
    for _ in range(k):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO bench.client\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        f.readline()
        tls = CTX.wrap_socket(raw)
        tls.sendall(b"EHLO bench.client\r\n")
        tf = tls.makefile("rb")
        while not tf.readline().startswith(b"250 "):
            pass
        socks.append((tls, tf, f))
    time.sleep(1)
    after = rss_kib(pid)
    for tls, tf, f in socks:
        tls.close()
    return (after - before) / k


def bench_throughput(pid, port):
    body = (b"Subject: big\r\n\r\n" +
            b"".join(b"line %08d of the bench message, some text to fill it up\r\n" % i
                     for i in range(20 * 1024 * 1024 // 58)))
    t0 = time.monotonic()
    one_session(port, body)
    secs = time.monotonic() - t0
    return len(body) / secs / (1024 * 1024), rss_kib(pid, "VmHWM")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "build", "tlsfront"))
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--idle", type=int, default=500)
    args = ap.parse_args()

    backend = tfhelpers.AiosmtpdBackend()
    workdir = tempfile.mkdtemp(prefix="tlsfront-bench-")
    proc, port = start_tlsfront(os.path.abspath(args.bin), backend.port, workdir)
    try:
        base = rss_kib(proc.pid)
        rate, median_ms = bench_sessions(port, args.sessions)
        crate, cerr = bench_concurrent(port, args.concurrency,
                                       max(1, args.sessions // args.concurrency))
        mibs, hwm = bench_throughput(proc.pid, port)
        per_idle = bench_idle(proc.pid, port, args.idle)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        backend.stop()
    print("| measure | value |")
    print("|---|---|")
    print("| RSS at start | %d KiB |" % base)
    print("| sequential STARTTLS sessions (EHLO, STARTTLS, EHLO, one 2 KB message, QUIT) "
          "| %.0f sessions/s, median %.1f ms |" % (rate, median_ms))
    print("| %d concurrent clients | %.0f sessions/s, %d errors |"
          % (args.concurrency, crate, cerr))
    print("| RSS per idle TLS session (%d sessions after EHLO over TLS) | %.1f KiB |"
          % (args.idle, per_idle))
    print("| one 20 MiB message over STARTTLS | %.1f MiB/s, peak RSS %d KiB |" % (mibs, hwm))


if __name__ == "__main__":
    main()
