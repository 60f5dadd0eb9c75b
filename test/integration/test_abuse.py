"""Abusive clients and backends (issue 15, point 2; SPEC §3.1, §3.2, §5, §6).

Each test prints its figures as one line starting with "FIGURES", written
past pytest's capture so that they reach the terminal and meson's testlog
(and appended to the file $TLSFRONT_FIGURES when it is set); the same
figures are in the assertion messages.

- 10,000 concurrent idle TLS sessions with tlsfront's RSS under a bound, and
  a new session still served;
- a client that stops reading while the backend sends, and a backend that
  stops reading during a 20 MiB DATA: tlsfront's memory stays bounded and
  the session ends at idle_timeout;
- a slow-loris client (one byte per second) holds its slot no longer than
  idle_timeout;
- a connection flood beyond max_connections and beyond RLIMIT_NOFILE = 256:
  no CPU spin, 421 4.7.0 where tlsfront can answer, served again at once;
- a TLS-port client that never sends a ClientHello, or sends it one byte at
  a time, ends at handshake_timeout.

RSS bounds hold for the plain build only: under ASan+UBSan
(TLSFRONT_SANITIZED=1) the same scenarios run, smaller where they are large,
with every correctness assertion and no RSS bound.
"""
import asyncio
import os
import re
import resource
import selectors
import smtplib
import socket
import ssl
import sys
import threading
import time
import warnings

import pytest

import tfhelpers
from killable_backend import KillableBackend
from tfhelpers import HOST, insecure_context, is_sanitized_build, tlsfront_bin, wait_until

SANITIZED = is_sanitized_build(tlsfront_bin())


# ---- figures, process measurements ------------------------------------------

def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


def rss_kib(pid):
    return proc_status_kib(pid, "VmRSS")


def hwm_kib(pid):
    return proc_status_kib(pid, "VmHWM")


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def nofile_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files in /proc/%d/limits" % pid)


@pytest.fixture
def raised_nofile():
    """RLIMIT_NOFILE of this process (and so of tlsfront and the backends it
    starts) raised for tens of thousands of sockets; restored afterwards.
    Without CAP_SYS_RESOURCE (a container may withhold it even from root)
    the hard limit cannot be raised: the soft limit goes up to it."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, old[1])))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def config(backend_port, *, tls_port=None, workers=1, limits="", handshake_timeout=10,
           log_level="info", extra=""):
    tls_in = ""
    if tls_port is not None:
        tls_in = ' tls = { enabled = true; listen = [ "127.0.0.1:%d" ]; };' % tls_port
    return f"""# written by test_abuse.py
server_name = "mx.test";
workers = {workers};
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 10; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:0" ]; }};{tls_in} }};
limits = {{ {limits} }};
log = {{ level = "{log_level}"; }};
tls = {{ handshake_timeout = {handshake_timeout}; }};
{extra}
"""


def listening_port(tf, listener):
    for e in tf.events("listening"):
        if e.get("listener") == listener:
            return int(e["address"].rsplit(":", 1)[1])
    raise AssertionError("no event=listening listener=%s:\n%s" % (listener, tf.log_text()))


def summaries(tf):
    return tf.events("session")


def deliver_tls_port(port, seq, timeout=30):
    """One message over the TLS port (implicit TLS); returns the 250's text."""
    msg = ("From: a@client.test\r\nTo: b@backend.test\r\nX-Seq: %s\r\n"
           "Subject: still served\r\n\r\nhello\r\n" % seq)
    with smtplib.SMTP_SSL(HOST, port, local_hostname="client.test", timeout=timeout,
                          context=insecure_context()) as s:
        s.ehlo()
        assert s.sendmail("a@client.test", ["b@backend.test"], msg) == {}
        s.quit()


def deliver_tcp_port(port, timeout=30):
    with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=timeout) as s:
        s.ehlo()
        s.starttls(context=insecure_context())
        s.ehlo()
        assert s.sendmail("a@client.test", ["b@backend.test"],
                          b"Subject: served\r\n\r\nhello\r\n") == {}
        s.quit()


# ---- a scripted backend: one that sends a lot, or stops reading -------------

class ScriptedBackend:
    """A threaded SMTP backend on 127.0.0.1 port 0.

    help_reply_lines: HELP gets a multi-line 214 reply of that many 80-octet
    lines (a backend with a lot to say).
    stall_in_data: after its 354 the backend reads nothing more (a backend
    that stops reading during DATA); it closes when stopped.
    """

    def __init__(self, help_reply_lines=400, stall_in_data=False):
        self.help = "".join("214-%s\r\n" % ("h" * 76) for _ in range(help_reply_lines - 1))
        self.help = (self.help + "214 end of help\r\n").encode()
        self.stall_in_data = stall_in_data
        self.stopping = threading.Event()
        self.stalled = threading.Event()
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((HOST, 0))
        self.srv.listen(64)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.conns = []
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        for _ in range(10 ** 6):
            if self.stopping.is_set():
                return
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        conn.settimeout(60)
        buf = b""
        try:
            conn.sendall(b"220 scripted.backend ESMTP\r\n")
            for _ in range(10 ** 6):
                if self.stopping.is_set():
                    return
                i = buf.find(b"\n")
                if i < 0:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                line, buf = buf[:i].rstrip(b"\r"), buf[i + 1:]
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-scripted.backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"HELP":
                    conn.sendall(self.help)
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    if self.stall_in_data:
                        self.stalled.set()
                        self.stopping.wait(120)  # reads nothing more
                        return
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def stop(self):
        self.stopping.set()
        try:
            self.srv.close()
        except OSError:
            pass
        for c in list(self.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def scripted_backend():
    made = []

    def make(**kw):
        b = ScriptedBackend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def killable_backend(tmp_path):
    made = []

    def make(**kw):
        b = KillableBackend(str(tmp_path), name="backend%d" % len(made), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ---- 10,000 idle TLS sessions ---------------------------------------------------

# Plain build, Debian 12 (GnuTLS 3.7.9, glibc 2.36, 2 workers): see the
# FIGURES line of the test. The bound leaves room over what was measured.
IDLE_SESSIONS = 1000 if SANITIZED else 10000
IDLE_KIB_PER_SESSION_BOUND = 24  # nginx mail proxy: 23.5 (DESIGN.md); measured 18.4
# tlsfront's own descriptors besides two per session (listeners, epoll,
# eventfds, the reserve, stdio) and a margin.
IDLE_FD_OVERHEAD = 200


async def _hold_tls_sessions(port, n, deadline, concurrency=200):
    """Opens n implicit-TLS sessions and reads each one's greeting; returns
    (held [(reader, writer)], failures {reason: count})."""
    ctx = insecure_context()
    held, failures = [], {}
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            left = deadline - time.monotonic()
            if left <= 0:
                failures["deadline"] = failures.get("deadline", 0) + 1
                return
            w = None
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="mx.test",
                                            ssl_handshake_timeout=min(left, 120)),
                    min(left, 120))
                line = await asyncio.wait_for(r.readline(), min(left, 120))
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                key = type(e).__name__
                failures[key] = failures.get(key, 0) + 1
                if w is not None:
                    w.close()
                return
            if line.startswith(b"220 "):
                held.append((r, w))
            else:
                key = line[:3].decode("latin-1") or "closed"
                failures[key] = failures.get(key, 0) + 1
                w.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return held, failures


async def _close_all(held):
    for _, w in held:
        w.close()
    await asyncio.sleep(0)
    for _, w in held:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


def test_10000_idle_tls_sessions_bounded_rss_and_still_serving(
        tlsfront_factory, killable_backend, raised_nofile, figures):
    """10,000 implicit-TLS sessions (1,000 under ASan), each past its
    handshake and the backend's greeting, held idle at once: tlsfront's RSS
    per session stays under IDLE_KIB_PER_SESSION_BOUND KiB, and a new session
    still delivers a message while they are held.

    10,000 sessions take 20,000 descriptors in tlsfront, plus its own. Where
    the hard RLIMIT_NOFILE cannot be raised above 20,000 (this project's
    build container: root without CAP_SYS_RESOURCE, hard limit 20,000) the
    test holds as many as fit, (limit - IDLE_FD_OVERHEAD) / 2 = 9,900, says
    so in its FIGURES line (sessions_wanted, sessions, nofile) and in a
    warning, and fails below 90 % of the goal."""
    wanted = IDLE_SESSIONS
    n = min(wanted, (raised_nofile - IDLE_FD_OVERHEAD) // 2)
    assert n >= 0.9 * wanted, \
        "RLIMIT_NOFILE %d is too low for %d sessions" % (raised_nofile, wanted)
    if n < wanted:
        warnings.warn("RLIMIT_NOFILE hard limit %d: %d idle TLS sessions instead of %d"
                      % (raised_nofile, n, wanted))
    backend = killable_backend()
    tls_port = tfhelpers.free_port()
    tf = tlsfront_factory(config_text=config(
        backend.port, tls_port=tls_port, workers=2, handshake_timeout=120,
        limits="max_connections = %d; max_connections_per_ip = %d; idle_timeout = 900;"
        % (n + 100, n + 100)))
    assert nofile_limit(tf.pid) >= 2 * n + IDLE_FD_OVERHEAD
    # A first session warms up what every session shares (GnuTLS's
    # precomputations, the malloc arenas of both workers).
    deliver_tls_port(tls_port, "warmup-1")
    deliver_tls_port(tls_port, "warmup-2")
    time.sleep(0.5)
    base_kib = rss_kib(tf.pid)

    loop = asyncio.new_event_loop()
    try:
        t0 = time.monotonic()
        held, failures = loop.run_until_complete(
            _hold_tls_sessions(tls_port, n, deadline=t0 + (600 if SANITIZED else 400)))
        open_seconds = time.monotonic() - t0
        time.sleep(1.0)
        held_kib = rss_kib(tf.pid)
        tf_fds = open_fds(tf.pid)
        # A new session while they are all held.
        t1 = time.monotonic()
        deliver_tls_port(tls_port, "while-held")
        new_session_seconds = time.monotonic() - t1
        still_held = len(held)
        loop.run_until_complete(_close_all(held))
    finally:
        loop.close()
    ended = wait_until(lambda: len(summaries(tf)) >= n + 3, timeout=120, step=0.5)
    after_kib = rss_kib(tf.pid)
    per_session = (held_kib - base_kib) / max(1, still_held)
    line = figures(sessions_wanted=wanted, sessions=n, nofile=raised_nofile, held=still_held, failures=dict(failures) or "none",
                   open_seconds="%.1f" % open_seconds, rss_base_kib=base_kib,
                   rss_held_kib=held_kib, kib_per_session="%.1f" % per_session,
                   rss_after_close_kib=after_kib, tlsfront_fds=tf_fds,
                   new_session_seconds="%.3f" % new_session_seconds)
    assert still_held == n, line
    assert tf_fds >= 2 * n, line  # every session really held its client and backend
    assert "while-held" in backend.received(), line
    assert ended, "not every session ended after the clients closed: " + line
    assert tf.running()
    if not SANITIZED:
        assert per_session < IDLE_KIB_PER_SESSION_BOUND, line


# ---- a client that stops reading; a backend that stops reading ----------------

GROWTH_BOUND_KIB = 4 * 1024  # what one stuck session may add to tlsfront's peak RSS


def test_client_that_stops_reading_while_the_backend_sends(tlsfront_factory, scripted_backend,
                                                           figures):
    """After STARTTLS the client pipelines 300 HELP commands, each answered by
    the backend with a 32 KiB reply (9.4 MiB in all), and reads nothing:
    tlsfront stops reading the backend once 256 KiB wait for the client, its
    peak RSS grows by less than GROWTH_BOUND_KIB, and the session ends at
    idle_timeout (reason=timeout); the connection is closed at most
    CONN_LIFE_LINGER (10 s) later."""
    idle = 5
    backend = scripted_backend(help_reply_lines=400)
    tf = tlsfront_factory(config_text=config(backend.port, limits="idle_timeout = %d;" % idle))
    deliver_tcp_port(tf.port)  # warm-up: one complete TLS session
    before = hwm_kib(tf.pid)

    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    raw.settimeout(10)
    raw.connect((HOST, tf.port))
    c = tfhelpers.SmtpClient.__new__(tfhelpers.SmtpClient)
    c.sock, c.buf, c.sent, c.received = raw, b"", 0, 0
    c.local = "%s:%d" % raw.getsockname()[:2]
    c.greeting()
    c.ehlo()
    c.starttls()
    c.ehlo()
    t0 = time.monotonic()
    c.send(b"HELP\r\n" * 300)  # and never read again
    peak = before
    summary = None
    for _ in range(int((idle + 20) / 0.2)):
        peak = max(peak, hwm_kib(tf.pid))
        found = [s for s in summaries(tf) if s.get("client") == c.local]
        if found:
            summary = found[0]
            break
        time.sleep(0.2)
    ended_after = time.monotonic() - t0
    # The close: the client's socket sees the end within the linger bound.
    closed_after = None
    tls_sock = c.sock  # the TLS socket (raw was wrapped by it)
    tls_sock.settimeout(1)
    got = 0
    close_deadline = t0 + idle + 10 + 10
    for _ in range(10 ** 6):
        if time.monotonic() > close_deadline:
            break
        try:
            chunk = tls_sock.recv(1 << 20)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            closed_after = time.monotonic() - t0
            break
        got += len(chunk)
    c.close()
    line = figures(idle_timeout=idle, backend_replies_bytes=300 * len(backend.help),
                   hwm_before_kib=before, hwm_peak_kib=peak, growth_kib=peak - before,
                   session_ended_s="%.1f" % ended_after,
                   reason=summary and summary.get("reason"),
                   closed_s=closed_after and "%.1f" % closed_after, client_read_after=got)
    assert summary is not None, "no summary line within %ss: %s" % (idle + 20, line)
    assert summary["reason"] == "timeout", line
    assert idle - 0.5 <= float(summary["duration"]) <= idle + 3, line
    assert closed_after is not None and closed_after <= idle + 10 + 5, line
    assert got < 300 * len(backend.help), line  # the backend could not push it all
    assert tf.running()
    deliver_tcp_port(tf.port)
    if not SANITIZED:
        assert peak - before < GROWTH_BOUND_KIB, line


def test_backend_that_stops_reading_during_a_20_mib_data(tlsfront_factory, scripted_backend,
                                                         figures):
    """The backend answers DATA with 354 and reads nothing more while the
    client sends 20 MiB over TLS: tlsfront stops reading the client, its
    peak RSS grows by less than GROWTH_BOUND_KIB, and the session ends at
    idle_timeout (no byte received for that long) with reason=timeout."""
    idle = 5
    backend = scripted_backend(stall_in_data=True)
    tf = tlsfront_factory(config_text=config(backend.port, limits="idle_timeout = %d;" % idle))
    c = tf.connect()
    c.greeting()
    c.ehlo()
    c.starttls()
    c.ehlo()
    before = hwm_kib(tf.pid)
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@backend.test>").code == 250
    assert c.cmd("DATA").code == 354
    assert backend.stalled.wait(10)
    chunk = (b"x" * 998 + b"\r\n") * 1024  # 1000 KiB of 1000-octet lines
    sent = [0]
    error = []

    def sender():
        c.sock.settimeout(idle + 30)
        try:
            for _ in range(21):
                c.sock.sendall(chunk)
                sent[0] += len(chunk)
        except (OSError, ssl.SSLError) as e:
            error.append(type(e).__name__)

    t0 = time.monotonic()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    peak = before
    summary = None
    for _ in range(int((idle + 20) / 0.2)):
        peak = max(peak, hwm_kib(tf.pid))
        found = [s for s in summaries(tf) if s.get("client") == c.local]
        if found:
            summary = found[0]
            break
        time.sleep(0.2)
    ended_after = time.monotonic() - t0
    th.join(idle + 40)
    c.close()
    line = figures(idle_timeout=idle, client_sent_kib=sent[0] // 1024,
                   hwm_before_kib=before, hwm_peak_kib=peak, growth_kib=peak - before,
                   session_ended_s="%.1f" % ended_after,
                   reason=summary and summary.get("reason"),
                   client_error=error[0] if error else "none")
    assert summary is not None, "no summary line: " + line
    assert summary["reason"] == "timeout", line
    assert idle - 0.5 <= ended_after <= idle + 3, line
    assert sent[0] < 20 * 1024 * 1024, line  # the client was pushed back
    assert not th.is_alive(), line
    assert tf.running()
    if not SANITIZED:
        assert peak - before < GROWTH_BOUND_KIB, line


# ---- slow loris ----------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "starttls"])
def test_slow_loris_holds_no_slot_past_idle_timeout(tlsfront_factory, aiosmtpd_backend, tls,
                                                    figures):
    """With max_connections = 1, a client that sends one byte per second of
    a command line that never ends (in plaintext, or one TLS record per
    byte after STARTTLS) holds the only slot: another client gets
    421 4.7.0. At idle_timeout after its last complete line it gets
    421 4.4.2 and is closed, and the next client is served at once."""
    idle = 5
    tf = tlsfront_factory(config_text=config(
        aiosmtpd_backend.port, limits="idle_timeout = %d; max_connections = 1;" % idle))
    loris = tf.connect()
    loris.greeting()
    loris.ehlo()
    if tls:
        loris.starttls()
        loris.ehlo()
    t0 = time.monotonic()
    payload = b"MAIL FROM:<" + b"s" * 200
    sent = 0
    refused_meanwhile = None
    reply = None
    loris.sock.settimeout(0.05)
    for i in range(idle + 15):
        try:
            loris.sock.sendall(payload[i:i + 1])
            sent += 1
        except (OSError, ssl.SSLError):
            break
        if i == 2:
            other = tf.connect()
            r = other.read_reply()
            refused_meanwhile = "%d %s" % (r.code, r.enhanced)
            other.close()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and reply is None:
            try:
                chunk = loris.sock.recv(4096)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                reply = "closed"
                break
            loris.buf += chunk
            if b"\r\n" in loris.buf:
                reply = loris.buf.split(b"\r\n")[0].decode("latin-1")
        if reply is not None:
            break
    held = time.monotonic() - t0
    closed = loris.is_closed(timeout=5)
    loris.close()
    t1 = time.monotonic()
    # The client sees the close a moment before tlsfront's last close
    # callback frees the slot: a 421 4.7.0 within that moment is retried
    # (bounded at 2 s, reported as next_wait_s).
    for _ in range(40):
        nxt = tf.connect()
        served = nxt.read_reply()
        nxt.close()
        if served.code == 220 or time.monotonic() - t1 > 2:
            break
        time.sleep(0.05)
    line = figures(idle_timeout=idle, tls=tls, bytes_sent=sent, held_s="%.1f" % held,
                   loris_got=repr(reply), other_client_meanwhile=repr(refused_meanwhile),
                   next_client=served.code, next_wait_s="%.2f" % (time.monotonic() - t1))
    assert refused_meanwhile == "421 4.7.0", line
    assert reply is not None and reply.startswith("421 4.4.2"), line
    assert closed, line
    assert held <= idle + 2, line
    assert served.code == 220, line
    summary = [s for s in summaries(tf) if s.get("client") == loris.local][0]
    assert summary["reason"] == "timeout", summary


# ---- a connection flood beyond max_connections and RLIMIT_NOFILE ---------------

FLOOD = 400  # connections kept open at once
FLOOD_NOFILE = 256
FLOOD_WINDOW = 5.0  # seconds of flood over which tlsfront's CPU time is measured
# tlsfront's CPU time per connection of the flood it answered, in ms: what
# accepting, a 421 or a greeting costs (measured 0.05-0.2 ms, plain build).
# A busy loop on EMFILE burns CPU without answering anyone (before the fix:
# 2.4 CPU s in 5 s of flood, 700,000 log lines, never served again).
FLOOD_CPU_MS_PER_CONNECTION = 5.0 if SANITIZED else 1.0


def _connect_nb(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((HOST, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return s


def _first_line_outcome(data, eof):
    """'220', '421 4.7.0', ... of the first reply line, 'closed' for an end
    without a reply, None while the line is incomplete."""
    if b"\r\n" not in data:
        return "closed" if eof else None
    line = data.split(b"\r\n")[0]
    if line.startswith(b"220"):
        return "220"
    m = re.match(rb"(\d{3}) (\d\.\d\.\d)", line)
    return (m.group(1) + b" " + m.group(2)).decode() if m else line[:20].decode("latin-1")


def _flood(port, n, seconds):
    """Keeps n connections open for seconds, as a flooding client does:
    each one refused or closed by tlsfront is replaced by a new one at
    once; one that got a 220 greeting stays open, silent. Returns (outcome
    counts over every connection, the sockets still open)."""
    sel = selectors.DefaultSelector()
    bufs = {}
    counts = {"attempts": 0}

    def add():
        s = _connect_nb(port)
        counts["attempts"] += 1
        if s is None:
            counts["connect_failed"] = counts.get("connect_failed", 0) + 1
            return
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)

    for _ in range(n):
        add()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            bufs[s] += chunk
            out = _first_line_outcome(bufs[s], not chunk)
            if out is None:
                continue
            counts[out] = counts.get(out, 0) + 1
            sel.unregister(s)
            if out == "220":
                continue  # a session: it stays open, silent, holding its place
            s.close()
            del bufs[s]
            if time.monotonic() < deadline:
                add()  # the flood goes on
    for s, data in bufs.items():
        if not data:
            counts["waiting"] = counts.get("waiting", 0) + 1
    sel.close()
    return counts, list(bufs)


@pytest.mark.parametrize("max_connections", [100, 1000])
def test_connection_flood_beyond_max_connections_and_descriptors(
        tlsfront_factory, aiosmtpd_backend, tmp_path, monkeypatch, raised_nofile, figures,
        max_connections):
    """tlsfront runs with RLIMIT_NOFILE = 256 (prlimit, as `ulimit -n 256`)
    and two workers. For FLOOD_WINDOW seconds, FLOOD connections are kept
    open at once: each one refused or closed is replaced at once, each one
    greeted stays open without a word. max_connections = 100 fits in the
    descriptors (the flood goes beyond it); 1000 would need 2000 (the flood
    goes beyond the descriptors). tlsfront's CPU time over the flood stays
    proportional to the connections it answers, under
    FLOOD_CPU_MS_PER_CONNECTION each, and about nil while the flood stays
    open without new connections (no busy loop on EMFILE); the connections it can
    answer get a 220 greeting, or 421 4.7.0 over max_connections, or
    421 4.3.2 when no descriptor is left for the backend, never a 5xx; once
    the flood is closed a new session is served at once."""
    real = tlsfront_bin()
    wrapper = tmp_path / "tlsfront-nofile"
    wrapper.write_text('#!/bin/sh\nexec prlimit --nofile=%d:%d -- "%s" "$@"\n'
                       % (FLOOD_NOFILE, FLOOD_NOFILE, real))
    wrapper.chmod(0o755)
    monkeypatch.setenv("TLSFRONT_BIN", str(wrapper))
    tf = tlsfront_factory(config_text=config(
        aiosmtpd_backend.port, workers=2,
        limits="max_connections = %d; max_connections_per_ip = 10000; idle_timeout = 60;"
        % max_connections))
    monkeypatch.setenv("TLSFRONT_BIN", real)
    assert nofile_limit(tf.pid) == FLOOD_NOFILE
    deliver_tcp_port(tf.port)
    cpu0 = cpu_seconds(tf.pid)
    t0 = time.monotonic()
    counts, socks = _flood(tf.port, FLOOD, FLOOD_WINDOW)
    window = time.monotonic() - t0
    cpu_flood = cpu_seconds(tf.pid) - cpu0
    fds_during = open_fds(tf.pid)
    accept_errors = len(tf.events("accept_error"))
    # The greeted sessions stay open a little longer: tlsfront stays quiet.
    cpu1 = cpu_seconds(tf.pid)
    time.sleep(2.0)
    cpu_held = cpu_seconds(tf.pid) - cpu1
    for s in socks:
        s.close()
    t1 = time.monotonic()
    served = wait_until(lambda: _try_serve(tf.port), timeout=15, step=0.2)
    served_after = time.monotonic() - t1
    answered = sum(v for k, v in counts.items() if k not in ("attempts", "waiting"))
    ms_per = 1000.0 * cpu_flood / max(1, answered)
    line = figures(nofile=FLOOD_NOFILE, max_connections=max_connections, flood=FLOOD,
                   outcomes=",".join("%s:%d" % (k.replace(" ", "_"), v) for k, v in sorted(counts.items())), window_s="%.1f" % window,
                   cpu_s_during_flood="%.2f" % cpu_flood, answered=answered,
                   cpu_ms_per_connection="%.3f" % ms_per, cpu_s_next_2s="%.2f" % cpu_held,
                   tlsfront_fds=fds_during, accept_error_lines=accept_errors,
                   served_again_s="%.2f" % served_after)
    assert tf.running(), line
    assert ms_per < FLOOD_CPU_MS_PER_CONNECTION, line
    assert cpu_held < 0.3, line
    assert not any(k[:1] == "5" for k in counts), line
    assert counts.get("closed", 0) == 0, "closed without a reply: " + line
    assert counts.get("220", 0) >= min(max_connections, 50), line
    if max_connections == 100:
        assert counts.get("220", 0) <= max_connections, line
        assert counts.get("421 4.7.0", 0) > 0, line
    assert served, line
    assert served_after < 5, line
    assert accept_errors < 100, "a log line per refused accept: " + line


def _try_serve(port):
    try:
        deliver_tcp_port(port, timeout=5)
        return True
    except (OSError, smtplib.SMTPException):
        return False


# ---- the TLS port: no ClientHello, or one byte at a time -----------------------

def _client_hello():
    """The bytes of a real ClientHello (Python's ssl, in memory)."""
    ctx = insecure_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="mx.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100, data[:10]
    return data


@pytest.mark.parametrize("mode", ["silent", "byte_by_byte"])
def test_tls_port_handshake_ends_at_handshake_timeout(tlsfront_factory, aiosmtpd_backend, mode,
                                                      figures):
    """On the TLS port a client that completes TCP but sends no ClientHello,
    or sends a real ClientHello one byte every 0.5 s, is closed at
    handshake_timeout (event=tls_timeout, reason=timeout) and never reaches
    the backend; idle_timeout (60 s) plays no part."""
    hs = 3
    tls_port = tfhelpers.free_port()
    tf = tlsfront_factory(config_text=config(
        aiosmtpd_backend.port, tls_port=tls_port, handshake_timeout=hs,
        limits="idle_timeout = 60;"))
    hello = _client_hello()
    s = socket.create_connection((HOST, tls_port), timeout=10)
    local = "%s:%d" % s.getsockname()[:2]
    s.settimeout(0.5)
    t0 = time.monotonic()
    sent = 0
    closed_after = None
    for i in range(int((hs + 10) / 0.5)):
        if mode == "byte_by_byte" and i < len(hello):
            try:
                s.sendall(hello[i:i + 1])
                sent += 1
            except OSError:
                closed_after = time.monotonic() - t0
                break
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            closed_after = time.monotonic() - t0
            break
    s.close()
    summary = tf.session_of(local)
    line = figures(mode=mode, handshake_timeout=hs, hello_bytes=len(hello), bytes_sent=sent,
                   closed_s=closed_after and "%.2f" % closed_after,
                   reason=summary.get("reason"), duration=summary.get("duration"))
    assert closed_after is not None and hs - 0.5 <= closed_after <= hs + 2, line
    assert summary["reason"] == "timeout" and summary["tls"] == "none", line
    assert tf.events("tls_timeout"), line
    if mode == "byte_by_byte":
        assert 0 < sent < len(hello), line
