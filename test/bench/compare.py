#!/usr/bin/python3
"""compare.py — tlsfront beside nginx's mail proxy, same run, same machine.

A benchmark, never a pass/fail test: it prints a table and exits 0 whatever
the figures are (it exits 1 only when a tool cannot start). It must never
touch anything outside its own temporary directory and loopback ports.

Builds the C load generator and sink (test/bench/loadgen.c, sink.c) with cc,
makes one ECDSA P-256 certificate, starts the sink backend, a tiny auth_http
responder (Auth-Status: OK and the sink's address; nginx calls it once per
session), nginx (Debian's nginx with libnginx-mod-mail: one worker, STARTTLS,
xclient off, error_log at info) and tlsfront (workers = 1, log level info)
with the same certificate, then measures both, one after the other, with the
same load:

  sessions/s and CPU per session   whole STARTTLS sessions with a 1 KiB
                                   message, --clients-sessions clients
  p50 session time                 one client, with TCP_NODELAY and quick
                                   ACKs, and as an ordinary client (Nagle,
                                   delayed ACKs)
  MB/s and MB per CPU-second       10 MiB messages, 1 and 4 clients
  RSS per idle TLS session         --idle sessions after EHLO over TLS

CPU is the proxy's own (utime + stime from /proc/PID/stat, every nginx
process included). MB = 10^6 bytes of message content.

Usage: test/bench/compare.py [--bin build/tlsfront] [--secs 5] [--idle 500]
       [--quick]     (--quick: about a second per row, for CI)
"""
import argparse
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("process exited: %s" % proc.args)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("no listener on %d" % port)


def build_tools(work):
    cc = os.environ.get("CC", "cc")
    out = {}
    for name, libs in (("loadgen", ["-lgnutls", "-lpthread"]), ("sink", [])):
        exe = os.path.join(work, name)
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", exe,
                        os.path.join(HERE, name + ".c")] + libs, check=True)
        out[name] = exe
    return out


def make_cert(work):
    key, cert = os.path.join(work, "ecdsa.key"), os.path.join(work, "ecdsa.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=bench.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class AuthHandler(http.server.BaseHTTPRequestHandler):
    sink_port = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", "127.0.0.1")
        self.send_header("Auth-Port", str(self.sink_port))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Proxy:
    def __init__(self, name, proc, port, pids_fn):
        self.name, self.proc, self.port, self.pids = name, proc, port, pids_fn

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_nginx(work, cert, key, auth_port):
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""load_module %(mod)s;
worker_processes 1;
daemon off;
master_process on;
pid %(w)s/nginx.pid;
error_log %(w)s/nginx-error.log info;
events { worker_connections 8192; }
mail {
  server_name bench.test;
  auth_http 127.0.0.1:%(ap)d/auth;
  xclient off;
  server {
    listen 127.0.0.1:%(p)d;
    protocol smtp;
    smtp_auth none;
    starttls on;
    ssl_certificate %(c)s;
    ssl_certificate_key %(k)s;
    ssl_protocols TLSv1.3;
  }
}
""" % {"mod": NGINX_MAIL_MODULE, "w": work, "ap": auth_port, "p": port, "c": cert, "k": key})
    proc = subprocess.Popen(["nginx", "-e", os.path.join(work, "nginx-error.log"), "-p", work,
                             "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Proxy("nginx", proc, port, lambda: [proc.pid] + children(proc.pid))


def start_tlsfront(binary, work, cert, key, sink_port):
    port = free_port()
    conf = os.path.join(work, "tlsfront.conf")
    with open(conf, "w") as f:
        f.write("""server_name = "bench.test";
workers = 1;
backend = { address = "127.0.0.1:%d"; client_info = "none"; };
tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };
inbound = { tcp = { listen = [ "127.0.0.1:%d" ]; starttls = true; }; };
limits = { max_connections = 100000; max_connections_per_ip = 100000; };
log = { level = "info"; };
""" % (sink_port, cert, key, port))
    log = open(os.path.join(work, "tlsfront.log"), "w")
    proc = subprocess.Popen([binary, "-c", conf], stdout=log, stderr=log)
    wait_port(port, proc)
    return Proxy("tlsfront", proc, port, lambda: [proc.pid])


def kv(line):
    return dict(x.split("=", 1) for x in line.split())


def loadgen(tools, proxy, *args):
    pids = proxy.pids()
    c0, s0 = cpu_seconds(pids), cpu_seconds([tools["sink_pid"]])
    out = subprocess.run([tools["loadgen"], "--port", str(proxy.port)] + list(args),
                         check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pids) - c0
    r = kv(out.strip().splitlines()[-1])
    r["loadgen_cpu"] = float(r.get("cpu", 0))
    r["cpu"] = cpu
    # How busy the tools were, in cores (CPU-seconds per second): far
    # below 1 means they were not what limited the row.
    secs = float(r["secs"]) or 1
    r["tools"] = "proxy %.2f, loadgen %.2f, sink %.2f" % (
        cpu / secs, r["loadgen_cpu"] / secs,
        (cpu_seconds([tools["sink_pid"]]) - s0) / secs)
    return r


def idle_rss(tools, proxy, n):
    pids = proxy.pids()
    before = rss_kib(pids)
    p = subprocess.Popen([tools["loadgen"], "--port", str(proxy.port), "--mode", "idle",
                          "--count", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    ready = kv(p.stdout.readline().strip())
    time.sleep(1)
    after = rss_kib(pids)
    p.stdin.close()
    p.wait(60)
    return (after - before) / max(1, int(ready.get("ready", 0))), int(ready.get("errors", 0))


def measure(tools, proxy, a, busy):
    m = {}
    # Idle memory first, in the fresh process: after the load rows the
    # heap holds freed buffers that new sessions reuse without growing
    # RSS, which would favour whichever proxy freed the most.
    idle_kib, errors = idle_rss(tools, proxy, a.idle)
    r = loadgen(tools, proxy, "--mode", "sessions", "--clients", str(a.session_clients),
                "--secs", str(a.secs), "--size", "1024", "--quickack")
    busy["sessions/s"] = r["tools"]
    s = int(r["sessions"])
    m["sessions/s (%d clients, 1 KiB message)" % a.session_clients] = float(r["sessions_per_s"])
    m["ms of proxy CPU per session"] = r["cpu"] * 1000 / max(1, s)
    errors += int(r["errors"])
    r = loadgen(tools, proxy, "--mode", "sessions", "--clients", "1", "--secs", str(a.secs),
                "--size", "1024", "--quickack")
    m["p50 session time, quick ACKs (ms)"] = float(r["p50_ms"])
    errors += int(r["errors"])
    r = loadgen(tools, proxy, "--mode", "sessions", "--clients", "1", "--secs", str(a.secs),
                "--size", "1024")
    m["p50 session time, ordinary client (ms)"] = float(r["p50_ms"])
    errors += int(r["errors"])
    for n in (1, 4):
        r = loadgen(tools, proxy, "--mode", "throughput", "--clients", str(n), "--secs",
                    str(a.secs), "--size", str(a.size))
        mb = int(r["bytes"]) / 1e6
        m["MB/s, %d client%s" % (n, "s" if n > 1 else "")] = float(r["mbps"])
        busy["MB/s, %d client%s" % (n, "s" if n > 1 else "")] = r["tools"]
        m["MB per proxy CPU-second, %d client%s" % (n, "s" if n > 1 else "")] = (
            mb / r["cpu"] if r["cpu"] else float("nan"))
        errors += int(r["errors"])
    m["KiB RSS per idle TLS session (%d)" % a.idle] = idle_kib
    m["errors"] = errors
    return m


LOWER_IS_BETTER = ("ms", "KiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "tlsfront"))
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--size", type=int, default=10 * 1024 * 1024)
    ap.add_argument("--session-clients", type=int, default=4)
    ap.add_argument("--only", choices=("tlsfront", "nginx"))
    ap.add_argument("--quick", action="store_true", help="a short run for CI")
    a = ap.parse_args()
    if a.quick:
        a.secs, a.idle, a.size = 0.5, 20, 1024 * 1024
    if a.only != "tlsfront" and not (shutil.which("nginx") and
                                     os.path.exists(NGINX_MAIL_MODULE)):
        print("nginx or libnginx-mod-mail missing: measuring tlsfront only")
        a.only = "tlsfront"

    work = tempfile.mkdtemp(prefix="tlsfront-compare-")
    procs = []
    try:
        tools = build_tools(work)
        cert, key = make_cert(work)
        sink = subprocess.Popen([tools["sink"]], stdout=subprocess.PIPE, text=True)
        procs.append(sink)
        sink_port = int(kv(sink.stdout.readline())["port"])
        tools["sink_pid"] = sink.pid
        AuthHandler.sink_port = sink_port
        auth = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AuthHandler)
        threading.Thread(target=auth.serve_forever, daemon=True).start()

        results, busy = {}, {}
        if a.only != "nginx":
            tf = start_tlsfront(os.path.abspath(a.bin), work, cert, key, sink_port)
            try:
                busy["tlsfront"] = {}
                results["tlsfront"] = measure(tools, tf, a, busy["tlsfront"])
            finally:
                tf.stop()
        if a.only != "tlsfront":
            ng = start_nginx(work, cert, key, auth.server_address[1])
            try:
                busy["nginx"] = {}
                results["nginx"] = measure(tools, ng, a, busy["nginx"])
            finally:
                ng.stop()
        auth.shutdown()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    names = [n for n in ("nginx", "tlsfront") if n in results]
    print("load average after the run: %s; %g s per row" % (load, a.secs))
    print()
    print("| measure | " + " | ".join(names) + (" | tlsfront / nginx | ahead |"
                                                 if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (2 if len(names) == 2 else 0)) + "|")
    for row in results[names[0]]:
        vals = [results[n][row] for n in names]
        cells = ["%.3f" % v if isinstance(v, float) and v < 10 else
                 ("%.1f" % v if isinstance(v, float) else str(v)) for v in vals]
        line = "| %s | %s |" % (row, " | ".join(cells))
        if len(names) == 2:
            ng, tf = vals
            ratio = tf / ng if ng else float("nan")
            lower = row.startswith(LOWER_IS_BETTER) or row == "errors" or \
                any(row.startswith(p) for p in ("p50", "KiB"))
            ahead = (tf <= ng) if lower else (tf >= ng)
            line += " %.2f | %s |" % (ratio, "yes" if ahead else "no")
        print(line)
    print()
    print("Cores busy during the load rows (CPU-seconds per second of the run; the")
    print("load generator and the sink must stay far from 1 to measure the proxy):")
    print()
    for n in names:
        for row, text in busy[n].items():
            print("- %s, %s: %s" % (n, row, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
