"""Faults with message accounting (issue 15, point 3; SPEC §3.1, §3.2, §4.2,
§5, §6).

A bounded soak: CLIENTS client threads send numbered messages (an "X-Seq:"
header, unique per attempt) through tlsfront to a real aiosmtpd server in a
process of its own (killable_backend.py) that records every message it
accepts before its 250. Meanwhile the backend is killed (SIGKILL) and
restarted on the same port every KILL_EVERY seconds, and tlsfront gets
SIGHUP every second with a configuration that changes each time. Then:

- every message the client saw 250 for was received by the backend exactly
  once;
- every other message got a 4xx reply (421 4.3.0 when the backend went away
  mid-session, 421 4.3.2 when it could not be reached), never a 5xx and
  never a close without a reply; the client can retry each;
- a message received without its 250 reaching the client is the SMTP
  duplicate window (the backend stored it and was killed before its 250
  went out): counted and shown apart, and allowed only when a kill fell
  between the client's end of data and the 4xx it got;
- tlsfront never exits, every reload succeeds, and its RSS after the run
  (sessions ended) is back within RSS_RETURN_BOUND_KIB of its baseline.

The same with the outbound path: the clients are the legacy server, the
peer is the killable aiosmtpd (with STARTTLS), next_hop points at it.

Figures (messages sent/accepted/4xx/received, kills, reloads, RSS, the
duration) are printed on one "FIGURES" line past pytest's capture (meson's
testlog shows it) and appended to $TLSFRONT_FIGURES when set.

Durations: TLSFRONT_SOAK_SECONDS, else 120 s inbound and 60 s outbound in
the plain build, 40 s and 30 s under ASan+UBSan (TLSFRONT_SANITIZED=1),
which also skips the RSS bound.
"""
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

import tfhelpers
from killable_backend import KillableBackend
from tfhelpers import Closed, SmtpClient, insecure_context, is_sanitized_build, \
    tlsfront_bin, wait_until

SANITIZED = is_sanitized_build(tlsfront_bin())
CLIENTS = 50
KILL_EVERY = 3.0  # seconds between kills of the backend
DOWN_FOR = 0.3  # seconds the backend stays down after each kill
HUP_EVERY = 1.0
MESSAGES_PER_CONNECTION = 5
IO_TIMEOUT = 30.0
# tlsfront's RSS after the run, all sessions ended, against its baseline
# (after a warm-up round): glibc keeps some freed memory in its arenas.
RSS_RETURN_BOUND_KIB = 4 * 1024


def soak_seconds(outbound):
    env = os.environ.get("TLSFRONT_SOAK_SECONDS")
    if env:
        return float(env)
    if SANITIZED:
        return 30.0 if outbound else 40.0
    return 60.0 if outbound else 120.0


def rss_kib(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for %d" % (key, pid))


# ---- one client thread ----------------------------------------------------------

class Attempt:
    """One message attempt: its X-Seq, where it ended and how."""
    __slots__ = ("seq", "outcome", "stage", "reply", "t_eod", "t_done")

    def __init__(self, seq):
        self.seq = seq
        self.outcome = None  # "250", "4xx", "5xx", "closed" (no reply), "other"
        self.stage = None  # mail, rcpt, data, eod
        self.reply = ""
        self.t_eod = None  # when the end of data was sent
        self.t_done = None


def message(seq, rng):
    body = "".join("line %d of %s %s\r\n" % (i, seq, "x" * rng.randint(0, 200))
                   for i in range(rng.randint(1, 80)))
    return ("From: c@soak.test\r\nTo: r@backend.test\r\nX-Seq: %s\r\n"
            "Subject: soak %s\r\n\r\n%s" % (seq, seq, body)).encode() + b".\r\n"


class SoakClient(threading.Thread):
    """Connects, (STARTTLS,) sends up to MESSAGES_PER_CONNECTION messages per
    connection until the deadline, reconnecting after every 4xx/close.
    Records every message attempt and every session-level reply."""

    def __init__(self, index, port, deadline, starttls, ehlo_name="soak.test"):
        super().__init__(daemon=True)
        self.index = index
        self.port = port
        self.deadline = deadline
        self.starttls = starttls
        self.ehlo_name = ehlo_name
        self.attempts = []
        self.session_replies = {}  # reply code/status before any message -> count
        self.errors = []  # unexpected: a 5xx or a close without a reply outside a message
        self.rng = random.Random(index)
        self.n = 0

    def _note(self, key):
        self.session_replies[key] = self.session_replies.get(key, 0) + 1

    def run(self):
        for _ in range(100000):
            if time.monotonic() >= self.deadline:
                return
            try:
                self._connection()
            except Exception as e:  # recorded, never raised in a thread
                self.errors.append("%s: %s" % (type(e).__name__, e))
                time.sleep(0.1)

    def _reply_or_none(self, c):
        try:
            return c.read_reply()
        except (Closed, OSError, ssl.SSLError, AssertionError):
            return None

    def _connection(self):
        try:
            c = SmtpClient(self.port, timeout=IO_TIMEOUT)
        except OSError as e:
            self._note("connect:" + type(e).__name__)
            time.sleep(0.1)
            return
        try:
            r = self._reply_or_none(c)
            if r is None or r.code != 220:
                self._note("greeting:%s" % (r and "%d %s" % (r.code, r.enhanced) or "closed"))
                if r is None or r.code >= 500:
                    self.errors.append("greeting: %r" % r)
                time.sleep(0.1)
                return
            if not self._hello(c):
                time.sleep(0.1)
                return
            for _ in range(MESSAGES_PER_CONNECTION):
                if time.monotonic() >= self.deadline:
                    break
                if not self._message(c):
                    time.sleep(0.05)
                    return
            try:
                c.send(b"QUIT\r\n")
                self._reply_or_none(c)
            except (OSError, ssl.SSLError):
                pass
        finally:
            c.close()

    def _hello(self, c):
        for step in ("ehlo", "starttls", "ehlo2"):
            if step == "starttls" and not self.starttls:
                break
            if step == "ehlo2" and not self.starttls:
                break
            try:
                if step == "starttls":
                    r = c.cmd("STARTTLS")
                    if r.code == 220:
                        c.sock = insecure_context().wrap_socket(c.sock)
                        continue
                else:
                    r = c.cmd("EHLO " + self.ehlo_name)
                    if r.code == 250:
                        continue
            except (Closed, OSError, ssl.SSLError, AssertionError) as e:
                self._note("%s:closed" % step)
                # A close without a reply outside a message: tlsfront must
                # have said 421 first (§3.2).
                self.errors.append("%s: closed without a reply (%s)" % (step, type(e).__name__))
                return False
            self._note("%s:%d %s" % (step, r.code, r.enhanced))
            if r.code >= 500:
                self.errors.append("%s: %s" % (step, r.text))
            return False
        return True

    def _message(self, c):
        """One message; returns False when the connection cannot go on."""
        self.n += 1
        a = Attempt("c%02d-%06d" % (self.index, self.n))
        self.attempts.append(a)
        steps = (("mail", b"MAIL FROM:<c%d@soak.test>\r\n" % self.index, 250),
                 ("rcpt", b"RCPT TO:<r@backend.test>\r\n", 250),
                 ("data", b"DATA\r\n", 354),
                 ("eod", message(a.seq, self.rng), 250))
        for stage, data, want in steps:
            a.stage = stage
            sent_ok = True
            try:
                c.send(data)
            except (OSError, ssl.SSLError):
                sent_ok = False
            if stage == "eod":
                a.t_eod = time.monotonic()
            r = self._reply_or_none(c)
            a.t_done = time.monotonic()
            if r is None:
                a.outcome = "closed"
                a.reply = "no reply%s" % ("" if sent_ok else " (send failed)")
                return False
            a.reply = r.lines[0][:60]
            if r.code == want:
                if stage == "eod":
                    a.outcome = "250"
                    return True
                continue
            a.outcome = "4xx" if 400 <= r.code < 500 else "5xx" if r.code >= 500 else "other"
            if r.code == 421:
                return False
            # Another 4xx (a refusal the client would retry): start afresh.
            try:
                c.send(b"RSET\r\n")
                r2 = self._reply_or_none(c)
            except (OSError, ssl.SSLError):
                r2 = None
            return r2 is not None and r2.code == 250
        return True


# ---- the faults -------------------------------------------------------------------

class Faults(threading.Thread):
    """Kills and restarts the backend every KILL_EVERY seconds and sends
    tlsfront SIGHUP every HUP_EVERY seconds (rewriting its configuration
    first, alternating max_errors), until the deadline."""

    def __init__(self, tf, backend, deadline, config_for):
        super().__init__(daemon=True)
        self.tf = tf
        self.backend = backend
        self.deadline = deadline
        self.config_for = config_for
        self.kills = 0
        self.hups = 0
        self.errors = []

    def run(self):
        next_kill = time.monotonic() + KILL_EVERY
        flip = False
        for _ in range(100000):
            now = time.monotonic()
            if now >= self.deadline:
                break
            try:
                if now >= next_kill:
                    self.backend.kill()
                    self.kills += 1
                    time.sleep(DOWN_FOR)
                    self.backend.start()
                    next_kill = time.monotonic() + KILL_EVERY + random.uniform(-0.5, 0.5)
                flip = not flip
                with open(self.tf.config_path, "w") as f:
                    f.write(self.config_for(flip))
                self.tf.send_signal(signal.SIGHUP)
                self.hups += 1
            except Exception as e:
                self.errors.append("%s: %s" % (type(e).__name__, e))
            time.sleep(HUP_EVERY)
        if not self.backend.running():
            self.backend.start()


# ---- accounting ---------------------------------------------------------------------

def account(clients, received, kill_times):
    """Checks every attempt against what the backend received; returns
    (figures dict, list of violations)."""
    counts = {}
    for seq in received:
        counts[seq] = counts.get(seq, 0) + 1
    attempts = [a for c in clients for a in c.attempts]
    by_seq = {a.seq: a for a in attempts}
    bad = []
    fig = {"sent": len(attempts), "accepted": 0, "refused_4xx": 0, "closed_no_reply": 0,
           "refused_5xx": 0, "received": len(received), "duplicate_window": 0,
           "lost": 0, "received_twice": 0}
    for a in attempts:
        got = counts.get(a.seq, 0)
        if a.outcome == "250":
            fig["accepted"] += 1
            if got != 1:
                bad.append("%s: 250 but received %d times" % (a.seq, got))
                fig["lost" if got == 0 else "received_twice"] += 1
            continue
        if a.outcome == "4xx":
            fig["refused_4xx"] += 1
        elif a.outcome == "closed":
            fig["closed_no_reply"] += 1
            bad.append("%s: connection closed without a reply at %s (%s)"
                       % (a.seq, a.stage, a.reply))
        elif a.outcome is None:
            bad.append("%s: no outcome at %s" % (a.seq, a.stage))
        else:
            fig["refused_5xx"] += 1
            bad.append("%s: %s at %s" % (a.seq, a.reply, a.stage))
        if got:
            # The duplicate window: stored, then killed before the 250 went
            # out. Only after the end of data, and only with a kill then.
            killed = any(a.t_eod is not None and a.t_eod - 0.05 <= k <= a.t_done + 0.05
                         for k in kill_times)
            if a.stage == "eod" and got == 1 and killed:
                fig["duplicate_window"] += 1
            else:
                bad.append("%s: %s at %s (%s) but received %d times, kill at that moment: %s"
                           % (a.seq, a.outcome, a.stage, a.reply, got, killed))
    strangers = [s for s in counts if s not in by_seq and not s.startswith("warmup-")]
    if strangers:
        bad.append("received messages nobody sent: %r" % strangers[:10])
    return fig, bad


def run_soak(tf, backend, port, seconds, config_for, starttls_every, figures, extra_figures):
    rss_base = rss_kib(tf.pid)
    t0 = time.monotonic()
    deadline = t0 + seconds
    clients = [SoakClient(i, port, deadline, starttls=(starttls_every and i % starttls_every == 0))
               for i in range(CLIENTS)]
    faults = Faults(tf, backend, deadline, config_for)
    for c in clients:
        c.start()
    faults.start()
    exited = None
    for _ in range(int(seconds / 0.5) + 10):
        if not tf.running():
            exited = tf.proc.returncode
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    faults.join(30)
    for c in clients:
        c.join(IO_TIMEOUT + 30)
    duration = time.monotonic() - t0
    stuck = [c.index for c in clients if c.is_alive()]
    # Every session ends (the clients quit or were closed): then the RSS.
    settled = wait_until(lambda: not _open_client_sessions(tf), timeout=30, step=0.5)
    time.sleep(1.0)
    rss_after = rss_kib(tf.pid)
    hwm = rss_kib(tf.pid, "VmHWM")
    received = backend.received()
    fig, bad = account(clients, received, backend.kill_times)
    session_replies = {}
    for c in clients:
        for k, v in c.session_replies.items():
            session_replies[k] = session_replies.get(k, 0) + v
    reload_ok = len([e for e in tf.events("reload") if e.get("status") == "ok"])
    reload_failed = len([e for e in tf.events("reload") if e.get("status") == "failed"])
    client_errors = [e for c in clients for e in c.errors]
    line = figures(seconds="%.0f" % duration, clients=CLIENTS, **fig,
                   session_replies=",".join("%s=%d" % (k.replace(" ", "_"), v)
                                            for k, v in sorted(session_replies.items())),
                   kills=faults.kills, backend_starts=backend.starts, sighups=faults.hups,
                   reloads_ok=reload_ok, reloads_failed=reload_failed,
                   rss_base_kib=rss_base, rss_peak_kib=hwm, rss_after_kib=rss_after,
                   rss_growth_kib=rss_after - rss_base, **extra_figures)
    assert exited is None and tf.running(), "tlsfront exited (%s): %s" % (exited, line)
    assert not stuck, "clients still running: %r; %s" % (stuck, line)
    assert not faults.errors, "%r; %s" % (faults.errors[:5], line)
    assert not client_errors, "%d unexpected client events, first: %r; %s" % (
        len(client_errors), client_errors[:5], line)
    assert not bad, "%d accounting violations, first: %r; %s" % (len(bad), bad[:10], line)
    assert fig["accepted"] > 0 and fig["refused_4xx"] > 0, line
    assert faults.kills >= seconds / 6, line  # a kill every ~4.5 s: 3 s, the restart, the 1 s step
    assert reload_failed == 0 and reload_ok >= seconds / HUP_EVERY / 3, line
    assert settled, "sessions still open after the run: " + line
    if not SANITIZED:
        assert rss_after - rss_base < RSS_RETURN_BOUND_KIB, line
    # And it still serves, then stops cleanly.
    return line


def _open_client_sessions(tf):
    """Sessions that began (event=connect, debug) and have not ended: the
    count of summary lines against the connect lines."""
    return len(tf.events("connect")) - len(tf.events("session"))


def warm_up(port, starttls, n=CLIENTS):
    """One message per client, all at once, before the baseline."""
    def one(i):
        try:
            c = SmtpClient(port, timeout=IO_TIMEOUT)
            c.greeting()
            c.ehlo()
            if starttls:
                c.starttls()
                c.ehlo()
            tfhelpers.send_message(c, "w@soak.test", "r@backend.test",
                                   b"X-Seq: warmup-%d\r\n\r\nwarm\r\n.\r\n" % i)
            c.cmd("QUIT")
            c.close()
        except Exception:
            pass
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


# ---- inbound ---------------------------------------------------------------------------

def inbound_config(backend_port, flip):
    return f"""# written by test_soak.py (flip={flip})
server_name = "mx.test";
workers = 2;
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 5; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:0" ]; }}; }};
limits = {{ idle_timeout = 60; max_errors = {11 if flip else 10}; max_connections_per_ip = 1000; }};
log = {{ level = "debug"; }};
tls = {{ handshake_timeout = 10; }};
"""


@pytest.fixture
def killable(tmp_path):
    made = []

    def make(**kw):
        b = KillableBackend(str(tmp_path), name="killable%d" % len(made), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_soak_inbound_backend_killed_and_sighup(tlsfront_factory, killable, figures):
    """CLIENTS clients (every other one over STARTTLS) through tlsfront's TCP
    port to a killable aiosmtpd: the accounting of the module docstring."""
    seconds = soak_seconds(False)
    backend = killable()
    tf = tlsfront_factory(config_text=inbound_config(backend.port, False))
    warm_up(tf.port, starttls=True)
    received_warm = len(backend.received())
    line = run_soak(tf, backend, tf.port, seconds, lambda flip: inbound_config(backend.port, flip),
                    starttls_every=2, figures=figures,
                    extra_figures={"warmup_received": received_warm})
    c = tf.connect()
    c.greeting()
    c.ehlo()
    r = tfhelpers.send_message(c, "a@soak.test", "r@backend.test",
                               b"X-Seq: after-soak\r\n\r\nstill here\r\n.\r\n")
    assert r.code == 250, line
    c.cmd("QUIT")
    c.close()
    assert tf.stop(timeout=20) == 0, line


# ---- outbound ----------------------------------------------------------------------------

def outbound_config(peer_port, out_port, flip):
    dead = OUT_DEAD_PORT[0]
    return f"""# written by test_soak.py (flip={flip})
server_name = "out.test";
workers = 2;
backend = {{ address = "127.0.0.1:{dead}"; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:0" ]; }}; }};
outbound = {{ enabled = true; listen = [ "127.0.0.1:{out_port}" ]; next_hop = "127.0.0.1:{peer_port}";
  tls = "negotiated"; connect_timeout = 5; }};
limits = {{ idle_timeout = 60; max_errors = {11 if flip else 10}; max_connections_per_ip = 1000; }};
log = {{ level = "debug"; }};
tls = {{ priority = "NORMAL"; handshake_timeout = 10; }};
"""


OUT_DEAD_PORT = [0]


def _peer_cert(d):
    key, pem = os.path.join(d, "peer.key"), os.path.join(d, "peer.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", pem, "-days", "2",
                    "-subj", "/CN=localhost"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    return pem, key


def test_soak_outbound_peer_killed_and_sighup(tlsfront_factory, killable, tmp_path, figures):
    """The outbound path: CLIENTS legacy-server threads send through the
    outbound listener; the peer (aiosmtpd with STARTTLS, so tlsfront
    negotiates TLS) is killed and restarted; SIGHUP every second. The same
    accounting: 421 4.4.1 when the peer cannot be reached, 421 4.3.0 when it
    goes away mid-session."""
    seconds = soak_seconds(True)
    peer = killable(tls=_peer_cert(str(tmp_path)))
    out_port = tfhelpers.free_port()
    OUT_DEAD_PORT[0] = tfhelpers.free_port()
    tf = tlsfront_factory(config_text=outbound_config(peer.port, out_port, False))
    tf.wait_event("started")  # after every listener is bound
    warm_up(out_port, starttls=False)
    received_warm = len(peer.received())
    tls_before = len(tf.events("tls"))
    line = run_soak(tf, peer, out_port, seconds,
                    lambda flip: outbound_config(peer.port, out_port, flip),
                    starttls_every=0, figures=figures,
                    extra_figures={"warmup_received": received_warm})
    tls_sessions = len(tf.events("tls")) - tls_before
    assert tls_sessions > 0, "no outbound session negotiated TLS: " + line
    c = SmtpClient(out_port)
    c.greeting()
    c.ehlo("legacy.test")
    r = tfhelpers.send_message(c, "a@soak.test", "r@peer.test",
                               b"X-Seq: after-soak\r\n\r\nstill here\r\n.\r\n")
    assert r.code == 250, line
    c.cmd("QUIT")
    c.close()
    assert tf.stop(timeout=20) == 0, line


def test_backend_killed_during_the_starttls_handshake_gets_421_over_tls(tlsfront_factory,
                                                                        killable, figures):
    """The case the inbound soak found: the backend dies while the client's
    STARTTLS handshake is in progress. The 421 4.3.0 of §3.2 cannot be sent
    in plaintext then; tlsfront completes the handshake and sends it over
    TLS, rather than dropping the connection mid-handshake without a word."""
    backend = killable()
    tf = tlsfront_factory(config_text=inbound_config(backend.port, False))
    c = tf.connect()
    c.greeting()
    c.ehlo()
    r = c.cmd("STARTTLS")
    assert r.code == 220, r
    backend.kill()
    time.sleep(0.5)  # tlsfront sees the backend's end while it awaits the ClientHello
    c.sock = insecure_context().wrap_socket(c.sock)
    reply = c.read_reply()
    closed = c.is_closed()
    c.close()
    summary = tf.session_of(c.local)
    line = figures(reply=repr(reply.lines[0]), tls=summary["tls"], reason=summary["reason"],
                   closed=closed)
    assert reply.code == 421 and reply.enhanced == "4.3.0", line
    assert summary["tls"] != "none" and summary["reason"] == "backend_closed", line
    assert closed, line
