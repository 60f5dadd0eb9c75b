"""Certificates and operations (issue 6): several certificate pairs chosen by
key type and SNI, SIGHUP reload, session resumption across workers,
privilege drop, renegotiation refused (SPEC §2, §5, §6).

Certificates are made in a temporary directory with `openssl req -x509`.
Every socket operation has a timeout, every loop is bounded, only
127.0.0.1 is used, ports come from the kernel, and every process started
here is stopped here (or by the tlsfront_factory fixture).
"""
import ctypes
import ctypes.util
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import tfhelpers
from tfhelpers import HOST, IO_TIMEOUT, SmtpClient, free_port, insecure_context, run_tool, \
    wait_until

MESSAGE_HEAD = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: reload\r\n\r\nfirst part\r\n"
MESSAGE_TAIL = b"second part, after the reload\r\n"

# gnutls-cli priority strings that leave the server one choice of key type
# (TLS 1.3: the signature algorithms decide; see the report in the docstring
# of test_s5_certificate_by_key_type).
GNUTLS_ECDSA_ONLY = "NORMAL:-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256"
GNUTLS_RSA_ONLY = "NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-SHA256"
# Python (OpenSSL) at TLS 1.2: the cipher suite decides the key type.
OPENSSL_ECDSA_ONLY = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
OPENSSL_RSA_ONLY = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"


# ---- certificates ---------------------------------------------------------------------

class Pair:
    def __init__(self, cert, key):
        self.cert, self.key = cert, key
        with open(cert) as f:
            self.der = ssl.PEM_cert_to_DER_cert(f.read())

    def __repr__(self):
        return "Pair(%s)" % os.path.basename(self.cert)


def make_pair(directory, name, kind, cn):
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    if kind == "rsa":
        algo = ["-newkey", "rsa:2048"]
    else:
        algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    p = run_tool(["openssl", "req", "-x509", "-nodes", "-days", "30", "-subj", "/CN=" + cn,
                  "-addext", "subjectAltName=DNS:" + cn, "-keyout", key, "-out", cert] + algo,
                 timeout=60)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    return Pair(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    return {
        "rsa": make_pair(d, "rsa", "rsa", "mx.test"),
        "ecdsa": make_pair(d, "ecdsa", "ecdsa", "mx.test"),
        "a": make_pair(d, "a", "ecdsa", "a.test"),
        "b": make_pair(d, "b", "ecdsa", "b.test"),
    }


def name_of(certs, der):
    for k, p in certs.items():
        if p.der == der:
            return k
    return "unknown certificate"


# ---- tlsfront --------------------------------------------------------------------------

def ops_config(backend_port, tcp_port, *, pairs=(), workers=1, log_level="debug", user=None,
               require_tls=False, priority="NORMAL", tls_port=None, tls_enabled=False,
               limits="", extra=""):
    certificates = ""
    if pairs:
        certificates = "certificates = ( %s );" % ", ".join(
            '{ cert = "%s"; key = "%s"; }' % (p.cert, p.key) for p in pairs)
    user_line = 'user = "%s";' % user if user is not None else ""
    tcp_listener = 'tcp = { listen = [ "127.0.0.1:%d" ]; require_tls = %s; };' % (
        tcp_port, "true" if require_tls else "false")
    tls_listener = ""
    if tls_port is not None:
        tls_listener = 'tls = { enabled = %s; listen = [ "127.0.0.1:%d" ]; };' % (
            "true" if tls_enabled else "false", tls_port)
    return f"""# written by test_certificates_reload.py
server_name = "mx.test";
workers = {workers};
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 5; }};
inbound = {{ {tcp_listener} {tls_listener} }};
limits = {{ idle_timeout = 30; shutdown_timeout = 5; {limits} }};
log = {{ level = "{log_level}"; }};
tls = {{
  priority = "{priority}";
  handshake_timeout = 10;
  {certificates}
}};
{user_line}
{extra}
"""


def start_front(factory, backend_port, **kw):
    for attempt in range(3):
        port = free_port()
        try:
            tf = factory(config_text=ops_config(backend_port, port, **kw))
        except tfhelpers.StartError as e:
            if attempt < 2 and "in use" in e.tf.log_text():
                continue
            raise
        assert tf.port == port, tf.log_text()
        tf.ops_kw = dict(kw)
        tf.backend_port = backend_port
        return tf
    raise AssertionError("no free port for tlsfront")


def rewrite(tf, text=None, **changes):
    """Writes a new configuration into tf's file (same port unless given)."""
    if text is None:
        kw = dict(tf.ops_kw)
        port = changes.pop("port", tf.port)
        kw.update(changes)
        text = ops_config(tf.backend_port, port, **kw)
    tmp = tf.config_path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, tf.config_path)


def reload_and_wait(tf, status="ok", timeout=10.0):
    """SIGHUP; waits for one more event=reload status=... line; returns it
    (its raw text too, as 'line')."""
    def lines():
        return [l for l in tf.log_text().splitlines()
                if re.search(r"(^|\s)event=reload(\s|$)", l) and "status=" in l]
    before = len(lines())
    tf.send_signal(signal.SIGHUP)
    found = wait_until(lambda: len(lines()) > before, timeout)
    assert found, "no event=reload status= line within %ss:\n%s" % (timeout, tf.log_text())
    line = lines()[before]
    kv = tfhelpers.parse_kv(line)
    kv["line"] = line
    assert kv.get("status") == status, "reload: %s\n---- log ----\n%s" % (line, tf.log_text())
    # status=ok is logged once every worker has the new generation: new
    # connections from now on get it, with no wait.
    return kv


# ---- clients ---------------------------------------------------------------------------

def starttls_peer(port, ctx=None, server_hostname=None, session=None, quit=True):
    """EHLO, STARTTLS; returns (client, DER of the server's certificate)."""
    c = SmtpClient(port)
    try:
        c.greeting()
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.code == 220, r
        c.sock = (ctx or insecure_context()).wrap_socket(c.sock, server_hostname=server_hostname,
                                                        session=session)
        der = c.sock.getpeercert(binary_form=True)
        c.ehlo()  # the TLS 1.3 ticket is read with this reply
        c.tls_session = c.sock.session  # (None once the socket is closed)
        c.session_reused = c.sock.session_reused
        if quit:
            assert c.cmd("QUIT").code == 221
            c.close()
    except Exception:
        c.close()
        raise
    return c, der


def gnutls_cli_cert(port, priority):
    """gnutls-cli --starttls-proto=smtp: (DER of the server certificate, the
    session Description line)."""
    p = run_tool(["gnutls-cli", "--starttls-proto=smtp", "--insecure", "--print-cert",
                  "--priority", priority, "-p", str(port), HOST],
                 input_bytes=b"QUIT\r\n", timeout=30)
    out = p.stdout.decode("utf-8", "replace")
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    desc = re.findall(r"- Description: (.*)", out)
    assert pems, "gnutls-cli --priority %s: no certificate\n%s\n%s" % (
        priority, out[-3000:], p.stderr.decode("utf-8", "replace")[-2000:])
    return ssl.PEM_cert_to_DER_cert(pems[0]), (desc[0] if desc else "")


def tls_event_of(tf, client):
    """The event=tls line of the session of that client address."""
    sid = tf.session_of(client)["id"]
    found = [e for e in tf.events("tls") if e.get("id") == sid]
    assert len(found) == 1, (sid, found, tf.log_text()[-4000:])
    return found[0]


# ---- §5 certificates ----------------------------------------------------------------------

@pytest.mark.parametrize("order", ["rsa_first", "ecdsa_first"])
def test_s5_certificate_by_key_type(tlsfront_factory, aiosmtpd_backend, certs, order):
    """RSA and ECDSA pairs for the same name: an ECDSA-only client gets the
    ECDSA certificate, an RSA-only client the RSA one, whatever the order.
    TLS 1.3 clients (gnutls-cli, by signature algorithms):
      ECDSA only: NORMAL:-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256
      RSA only:   NORMAL:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-SHA256
    TLS 1.2 clients (Python/OpenSSL, by cipher suite): ECDHE-ECDSA-* / ECDHE-RSA-*."""
    pairs = [certs["rsa"], certs["ecdsa"]]
    if order == "ecdsa_first":
        pairs.reverse()
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=pairs)
    failures = []
    for want, priority in (("ecdsa", GNUTLS_ECDSA_ONLY), ("rsa", GNUTLS_RSA_ONLY)):
        der, desc = gnutls_cli_cert(tf.port, priority)
        if der != certs[want].der:
            failures.append("gnutls-cli %s: got %s (%s), want %s"
                            % (priority, name_of(certs, der), desc, want))
        if "TLS1.3" not in desc:
            failures.append("gnutls-cli %s: not TLS 1.3: %s" % (priority, desc))
    for want, ciphers in (("ecdsa", OPENSSL_ECDSA_ONLY), ("rsa", OPENSSL_RSA_ONLY)):
        ctx = insecure_context(max_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(ciphers)
        c, der = starttls_peer(tf.port, ctx)
        if der != certs[want].der:
            failures.append("Python TLS1.2 %s: got %s, want %s"
                            % (ciphers, name_of(certs, der), want))
    assert not failures, "\n".join(failures) + "\n---- log ----\n" + tf.log_text()[-4000:]


@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_s5_sni_selects_certificate(tlsfront_factory, aiosmtpd_backend, certs, order):
    """Pairs for a.test and b.test: the SNI picks the named one; an unknown
    SNI, and no SNI at all, get the first listed (§5, §7.8)."""
    pairs = [certs["a"], certs["b"]] if order == "a_first" else [certs["b"], certs["a"]]
    first = "a" if order == "a_first" else "b"
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=pairs)
    failures = []
    for sni, want in (("b.test", "b"), ("a.test", "a"), ("unknown.test", first),
                      (None, first)):
        c, der = starttls_peer(tf.port, server_hostname=sni)
        got = name_of(certs, der)
        if got != want:
            failures.append("SNI %r: got %s, want %s" % (sni, got, want))
        ev = tls_event_of(tf, c.local)
        if ev.get("sni") != (sni or "none"):
            failures.append("SNI %r: event=tls sni=%r" % (sni, ev.get("sni")))
        summary = tf.session_of(c.local)
        if summary.get("sni") != (sni or "none"):
            failures.append("SNI %r: summary sni=%r" % (sni, summary.get("sni")))
    assert not failures, "\n".join(failures) + "\n---- log ----\n" + tf.log_text()[-4000:]


# ---- §5 reload ----------------------------------------------------------------------------

def test_s5_reload_new_certificate_session_in_flight_completes(tlsfront_factory,
                                                                aiosmtpd_backend, certs):
    """Started with cert A (2 workers); a session gets as far as the message
    content; the file is rewritten to cert B, SIGHUP: event=reload status=ok,
    every new connection sees B, and the session opened before finishes its
    message (250) with both parts delivered."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["a"]], workers=2)
    old, der = starttls_peer(tf.port, quit=False)
    with old:
        assert der == certs["a"].der
        assert old.cmd("MAIL FROM:<a@example.org>").code == 250
        assert old.cmd("RCPT TO:<b@example.net>").code == 250
        assert old.cmd("DATA").code == 354
        old.send(MESSAGE_HEAD)

        rewrite(tf, pairs=[certs["b"]])
        ev = reload_and_wait(tf, "ok")
        assert "generation" not in ev or ev["generation"] == "2", ev

        seen = []
        for _ in range(6):
            _, der = starttls_peer(tf.port)
            seen.append(name_of(certs, der))
        assert seen == ["b"] * 6, seen

        old.send(MESSAGE_TAIL + b".\r\n")
        r = old.read_reply()
        assert r.code == 250, r
        assert old.cmd("QUIT").code == 221
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["content"] == MESSAGE_HEAD + MESSAGE_TAIL
    assert tf.session_of(old.local)["messages"] == "1"


def test_s5_rotation_under_live_traffic_fails_no_session(tlsfront_factory, aiosmtpd_backend,
                                                        certs):
    """Issue 6, done when: certificates rotate under live traffic with no
    failed session. Six clients deliver messages over STARTTLS without pause
    while the certificate is rotated A -> B -> A -> ... twelve times by SIGHUP
    (a reload every 0.1 s or so, sessions in every phase of their life during
    each): every session delivers, and both certificates were served."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["a"]], workers=2)
    stop = threading.Event()
    failures, seen, delivered = [], [], [0]
    lock = threading.Lock()

    def traffic():
        for _ in range(2000):  # bounded; stopped long before
            if stop.is_set():
                return
            try:
                c, der = starttls_peer(tf.port, quit=False)
                with c:
                    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
                    assert c.cmd("RCPT TO:<b@example.net>").code == 250
                    assert c.cmd("DATA").code == 354
                    c.send(MESSAGE_HEAD + MESSAGE_TAIL + b".\r\n")
                    assert c.read_reply().code == 250
                    assert c.cmd("QUIT").code == 221
                with lock:
                    seen.append(name_of(certs, der))
                    delivered[0] += 1
            except Exception as e:  # every failure is reported, none hidden
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=traffic) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for pair in ("b", "a") * 6:
            time.sleep(0.1)
            rewrite(tf, pairs=[certs[pair]])
            reload_and_wait(tf, "ok")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert delivered[0] >= 4, delivered
    assert "a" in seen and "b" in seen, seen
    assert aiosmtpd_backend.wait_messages(delivered[0])


@pytest.mark.parametrize("broken", ["key_mismatch", "missing_cert", "syntax_error"])
def test_s5_reload_failure_changes_nothing(tlsfront_factory, aiosmtpd_backend, certs, tmp_path,
                                          broken):
    """A reload that fails (a key not matching its certificate, a missing
    file, a syntax error) logs event=reload status=failed naming the file
    (and line), and new connections still get the old certificate; a good
    reload afterwards still works."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["a"]])
    if broken == "key_mismatch":
        mixed = Pair.__new__(Pair)
        mixed.cert, mixed.key = certs["b"].cert, certs["rsa"].key
        rewrite(tf, pairs=[mixed], log_level="error")
        must_name = [certs["b"].cert]
    elif broken == "missing_cert":
        missing = Pair.__new__(Pair)
        missing.cert, missing.key = str(tmp_path / "no-such-cert.pem"), certs["b"].key
        rewrite(tf, pairs=[missing], log_level="error")
        must_name = [missing.cert]
    else:
        text = ops_config(tf.backend_port, tf.port, pairs=[certs["b"]], log_level="error")
        lines = text.splitlines()
        lines.insert(3, "workers = ;")  # a syntax error on line 4
        rewrite(tf, text="\n".join(lines) + "\n")
        must_name = ["%s:4" % tf.config_path]
    ev = reload_and_wait(tf, "failed")
    for name in must_name:
        assert name in ev["line"], (name, ev["line"])
    assert tf.running()
    for _ in range(3):
        c, der = starttls_peer(tf.port)
        assert name_of(certs, der) == "a"
    # The log level of the failed file (error) was not applied either.
    assert [e for e in tf.events("connect") if e.get("client") == c.local], tf.log_text()

    rewrite(tf, pairs=[certs["b"]])
    reload_and_wait(tf, "ok")
    _, der = starttls_peer(tf.port)
    assert name_of(certs, der) == "b"


@pytest.mark.parametrize("key", ["inbound.tcp.listen", "workers", "user",
                                 "inbound.tls.enabled"])
def test_s5_reload_restart_keys_warn_and_keep_old_value(tlsfront_factory, aiosmtpd_backend,
                                                        certs, key):
    """Listen addresses, workers, user and a listener's enabled (§7.6) need
    a restart: a reload changing one logs a warning event=reload key=KEY,
    succeeds for the rest, and the old value stays."""
    tls_port = free_port()
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["a"]],
                     tls_port=tls_port, tls_enabled=False)
    # event=listening comes before the workers start; event=started after.
    tf.wait_event("started")
    threads_before = len(os.listdir("/proc/%d/task" % tf.pid))
    new_port = free_port()
    change = {"inbound.tcp.listen": {"port": new_port}, "workers": {"workers": 2},
              "user": {"user": "nobody"}, "inbound.tls.enabled": {"tls_enabled": True}}[key]
    # The certificate changes too: the rest of the file does apply.
    rewrite(tf, pairs=[certs["b"]], **change)
    reload_and_wait(tf, "ok")
    warns = [l for l in tf.log_text().splitlines()
             if re.search(r"(^|\s)event=reload(\s|$)", l) and "key=%s " % key in l + " "]
    assert warns, "no event=reload key=%s warning:\n%s" % (key, tf.log_text())
    assert "level=warn" in warns[0], warns
    _, der = starttls_peer(tf.port)  # the old port still serves, with the new certificate
    assert der == certs["b"].der
    if key == "inbound.tcp.listen":
        with pytest.raises(OSError):
            socket.create_connection((HOST, new_port), timeout=IO_TIMEOUT).close()
    elif key == "inbound.tls.enabled":
        with pytest.raises(OSError):
            socket.create_connection((HOST, tls_port), timeout=IO_TIMEOUT).close()
    elif key == "workers":
        assert len(os.listdir("/proc/%d/task" % tf.pid)) == threads_before
    elif key == "user":
        assert _ids(tf.pid)["Uid"] == [os.geteuid()] * 4


def test_s5_reload_log_level(tlsfront_factory, aiosmtpd_backend):
    """log.level changed by reload takes effect: info (no debug lines), then
    debug (event=connect lines), then info again."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, log_level="info")

    def session():
        with tf.connect() as c:
            c.greeting()
            assert c.cmd("QUIT").code == 221
        tf.session_of(c.local)
        return c.local

    def connect_lines(client):
        return [e for e in tf.events("connect") if e.get("client") == client]

    first = session()
    assert not tf.events("connect") and "level=debug" not in tf.log_text(), tf.log_text()
    rewrite(tf, log_level="debug")
    reload_and_wait(tf, "ok")
    second = session()
    assert connect_lines(second), tf.log_text()
    assert not connect_lines(first)
    rewrite(tf, log_level="info")
    reload_and_wait(tf, "ok")
    third = session()
    assert not connect_lines(third), tf.log_text()


def test_s5_reload_policy_applies_to_new_sessions_only(tlsfront_factory, aiosmtpd_backend):
    """require_tls turned on by reload: a new session gets 530 5.7.0 for MAIL
    before STARTTLS; a session opened before keeps its configuration."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, require_tls=False)
    with tf.connect() as old:
        old.greeting()
        old.ehlo()
        rewrite(tf, require_tls=True)
        reload_and_wait(tf, "ok")
        with tf.connect() as new:
            new.greeting()
            new.ehlo()
            r = new.cmd("MAIL FROM:<a@example.org>")
            assert (r.code, r.enhanced) == (530, "5.7.0"), r
            new.cmd("QUIT")
        r = old.cmd("MAIL FROM:<a@example.org>")
        assert r.code == 250, "the session in flight lost its configuration: %r" % r
        old.cmd("QUIT")


def test_s5_reload_priority(tlsfront_factory, aiosmtpd_backend, certs):
    """tls.priority is reloaded: after a reload without TLS 1.3, new
    sessions negotiate TLS 1.2."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["a"]])
    c, _ = starttls_peer(tf.port)
    assert tls_event_of(tf, c.local)["tls"] == "TLS1.3"
    rewrite(tf, priority="NORMAL:-VERS-TLS1.3")
    reload_and_wait(tf, "ok")
    c, _ = starttls_peer(tf.port)
    assert tls_event_of(tf, c.local)["tls"] == "TLS1.2"


def test_s5_reload_backend_address(tlsfront_factory, aiosmtpd_backend):
    """backend.address is reloaded: new sessions go to the new backend, a
    session in flight finishes with the old one."""
    second = tfhelpers.AiosmtpdBackend()
    try:
        tf = start_front(tlsfront_factory, aiosmtpd_backend.port)
        old, _ = starttls_peer(tf.port, quit=False)
        with old:
            rewrite(tf, text=ops_config(second.port, tf.port))
            reload_and_wait(tf, "ok")
            new, _ = starttls_peer(tf.port, quit=False)
            with new:
                r = tfhelpers.send_message(new, "new@example.org", "b@example.net",
                                           b"Subject: new\r\n\r\nnew\r\n.\r\n")
                assert r.code == 250, r
                new.cmd("QUIT")
            r = tfhelpers.send_message(old, "old@example.org", "b@example.net",
                                       b"Subject: old\r\n\r\nold\r\n.\r\n")
            assert r.code == 250, r
            old.cmd("QUIT")
        assert second.wait_messages(1) and aiosmtpd_backend.wait_messages(1)
        assert [m["mail_from"] for m in second.messages] == ["new@example.org"]
        assert [m["mail_from"] for m in aiosmtpd_backend.messages] == ["old@example.org"]
    finally:
        second.stop()


def test_s5_reload_limits_new_sessions_only(tlsfront_factory, aiosmtpd_backend):
    """limits are reloaded (§5): max_connections_per_ip 3 -> 1. Before the
    reload a second connection from 127.0.0.1 is served; after it a new one
    (the third) gets 421 4.7.0 (reason=limit), while the two sessions opened
    before go on, and one of them completes its message."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port,
                     limits="max_connections_per_ip = 3;")
    with tf.connect() as old, tf.connect() as second:
        old.greeting()
        old.ehlo()
        assert old.cmd("MAIL FROM:<a@example.org>").code == 250
        assert old.cmd("RCPT TO:<b@example.net>").code == 250
        assert old.cmd("DATA").code == 354
        old.send(MESSAGE_HEAD)
        second.greeting()  # two of three: served

        rewrite(tf, limits="max_connections_per_ip = 1;")
        reload_and_wait(tf, "ok")

        with tf.connect() as new:
            r = new.read_reply()
            assert (r.code, r.enhanced) == (421, "4.7.0"), r
            assert new.read_until_closed(5) == b""
        assert tf.session_of(new.local)["reason"] == "limit"

        old.send(MESSAGE_TAIL + b".\r\n")
        r = old.read_reply()
        assert r.code == 250, "the session in flight lost its message: %r" % r
        assert old.cmd("QUIT").code == 221
        assert second.cmd("NOOP").code == 250, "the session in flight was cut"
        assert second.cmd("QUIT").code == 221
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["content"] == MESSAGE_HEAD + MESSAGE_TAIL
    summary = tf.session_of(old.local)
    assert summary["messages"] == "1" and summary["reason"] == "quit", summary


@pytest.fixture
def shared_dir():
    """A directory user nobody can read (pytest's own tmp_path is root's
    alone): after the privilege drop tlsfront re-reads its file and
    certificates from here on SIGHUP."""
    d = tempfile.mkdtemp(prefix="tlsfront-reload-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_s5_s6_reload_as_nobody_unreadable_key_changes_nothing(aiosmtpd_backend, shared_dir):
    """Started as root with user = "nobody", certificate files readable by
    nobody: a reload to another readable pair works; a reload to a pair
    whose key is root's alone (0600) fails with event=reload status=failed
    naming the key file and "Permission denied", and new TLS sessions still
    get the certificate of the last good reload."""
    if os.geteuid() != 0:
        pytest.skip("needs root to test a reload after the privilege drop")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")
    pairs = {n: make_pair(shared_dir, n, "ecdsa", n + ".test") for n in ("a", "b", "c")}
    for p in pairs.values():
        os.chmod(p.cert, 0o644)
        os.chmod(p.key, 0o644)  # a test key; a real one would be group-readable
    root_only = Pair.__new__(Pair)
    root_only.cert = pairs["c"].cert
    root_only.key = os.path.join(shared_dir, "c-root-only.key")
    shutil.copyfile(pairs["c"].key, root_only.key)
    os.chown(root_only.key, 0, 0)
    os.chmod(root_only.key, 0o600)

    port = free_port()
    tf = tfhelpers.TlsFront(shared_dir, ops_config(aiosmtpd_backend.port, port,
                                                   pairs=[pairs["a"]], user="nobody"))
    try:
        tf.ops_kw = {"pairs": [pairs["a"]], "user": "nobody"}
        tf.backend_port = aiosmtpd_backend.port
        assert tf.port == port
        tf.wait_event("privileges")
        assert _ids(tf.pid)["Uid"] == [pwd.getpwnam("nobody").pw_uid] * 4
        _, der = starttls_peer(tf.port)
        assert name_of(pairs, der) == "a"

        rewrite(tf, pairs=[pairs["b"]])
        reload_and_wait(tf, "ok")  # as nobody: the file and the pair are read
        _, der = starttls_peer(tf.port)
        assert name_of(pairs, der) == "b"

        rewrite(tf, pairs=[root_only])
        ev = reload_and_wait(tf, "failed")
        assert root_only.key in ev["line"], ev["line"]
        assert "permission denied" in ev["line"].lower(), ev["line"]
        assert tf.running()
        for _ in range(3):
            c, der = starttls_peer(tf.port, quit=False)
            with c:
                assert name_of(pairs, der) == "b"
                r = tfhelpers.send_message(c, "a@example.org", "b@example.net",
                                           b"Subject: after\r\n\r\nhi\r\n.\r\n")
                assert r.code == 250, r
                c.cmd("QUIT")
        assert aiosmtpd_backend.wait_messages(3)
    finally:
        try:
            tf.stop(timeout=10)
        finally:
            tf.kill()
    bad = tf.sanitizer_lines()
    assert not bad, "sanitizer report in tlsfront's log:\n" + tf.log_text()[-20000:]


# ---- §5 resumption -----------------------------------------------------------------------

def implicit_tls_peer(port, ctx, session=None):
    """The TLS port: handshake, greeting, EHLO (the ticket comes before the
    greeting), QUIT; returns the closed client with its session."""
    c = SmtpClient(port)
    try:
        c.sock = ctx.wrap_socket(c.sock, session=session)
        c.greeting()
        c.ehlo()
        c.tls_session = c.sock.session
        c.session_reused = c.sock.session_reused
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    return c


@pytest.mark.parametrize("where", ["starttls", "tls_port"])
def test_s5_resumption_logged(tlsfront_factory, aiosmtpd_backend, certs, where):
    """A TLS 1.3 ticket from the first connection resumes the second, after
    STARTTLS and on the TLS port: event=tls resumed=no, then resumed=yes."""
    tls_port = free_port()
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["ecdsa"]],
                     tls_port=tls_port, tls_enabled=True)
    assert wait_until(lambda: [e for e in tf.events("listening")
                               if e.get("address") == "127.0.0.1:%d" % tls_port], 5)
    ctx = insecure_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if where == "starttls":
        first, _ = starttls_peer(tf.port, ctx)
    else:
        first = implicit_tls_peer(tls_port, ctx)
    session = first.tls_session
    assert session is not None and session.has_ticket, "no TLS 1.3 ticket from tlsfront"
    if where == "starttls":
        second, _ = starttls_peer(tf.port, ctx, session=session)
    else:
        second = implicit_tls_peer(tls_port, ctx, session=session)
    assert second.session_reused, "the client did not resume"
    assert tls_event_of(tf, first.local)["resumed"] == "no"
    assert tls_event_of(tf, second.local)["resumed"] == "yes"


def test_s5_resumption_across_two_workers(tlsfront_factory, aiosmtpd_backend, certs):
    """workers = 2, listening sockets shared with SO_REUSEPORT: the kernel
    spreads connections over both workers by their source port, so a ticket
    key that is not shared would fail about half of these. Every one of 12
    resumptions of one ticket is logged resumed=yes."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["ecdsa"]], workers=2)
    ctx = insecure_context()
    first, _ = starttls_peer(tf.port, ctx)
    session = first.tls_session
    assert session is not None and session.has_ticket
    results = []
    for _ in range(12):
        c, _ = starttls_peer(tf.port, ctx, session=session)
        results.append((c.local, c.session_reused))
    logged = [(local, reused, tls_event_of(tf, local)["resumed"]) for local, reused in results]
    bad = [x for x in logged if x[2] != "yes" or not x[1]]
    assert not bad, "not resumed (client, client says reused, log says): %r" % bad


# ---- §6 privileges --------------------------------------------------------------------------

def _ids(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = [int(x) for x in v.split()]
    return out


def test_s6_privilege_drop_to_nobody(tlsfront_factory, aiosmtpd_backend, certs):
    if os.geteuid() != 0:
        pytest.skip("needs root to test the privilege drop")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["ecdsa"]],
                     user="nobody", workers=2)
    tf.wait_event("started")
    tasks = os.listdir("/proc/%d/task" % tf.pid)
    assert len(tasks) >= 3, tasks  # main thread and two workers
    for tid in [int(t) for t in tasks]:
        ids = _ids(tid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, (tid, ids)
        assert ids["Gid"] == [nobody.pw_gid] * 4, (tid, ids)
        assert 0 not in ids["Groups"], (tid, ids)
    [ev] = tf.events("privileges")
    assert ev.get("user") == "nobody", ev
    c, der = starttls_peer(tf.port, quit=False)
    with c:
        assert der == certs["ecdsa"].der
        r = tfhelpers.send_message(c, "a@example.org", "b@example.net",
                                   b"Subject: as nobody\r\n\r\nhi\r\n.\r\n")
        assert r.code == 250, r
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)


def test_s2_s6_unknown_user_is_config_error(tmp_path, tlsfront_bin):
    text = ('backend = { address = "127.0.0.1:%d"; };\n'
            'inbound = { tcp = { listen = [ "127.0.0.1:%d" ]; }; };\n'
            '\n'
            'user = "no-such-user";\n' % (free_port(), free_port()))
    path = str(tmp_path / "user.conf")
    with open(path, "w") as f:
        f.write(text)
    for args in ([tlsfront_bin, "-t", "-c", path], [tlsfront_bin, "-c", path]):
        p = run_tool(args, timeout=20)
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode == 1, (args, p.returncode, err)
        assert "%s:4: " % path in err, err
        assert "event=listening" not in err, err


# ---- §5 renegotiation -----------------------------------------------------------------------

def test_s5_renegotiation_refused_openssl(tlsfront_factory, aiosmtpd_backend, certs, tmp_path):
    """openssl s_client -starttls smtp -tls1_2, then "R": tlsfront refuses
    the renegotiation and logs event=tls_renegotiation_refused."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["ecdsa"]])
    out_path = str(tmp_path / "s_client.out")
    with open(out_path, "wb") as out:
        p = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-tls1_2",
                              "-connect", "%s:%d" % (HOST, tf.port)],
                             stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        tf.wait_event("tls", 1, timeout=10)
        time.sleep(0.2)
        p.stdin.write(b"R\n")
        p.stdin.flush()
        refused = wait_until(lambda: tf.events("tls_renegotiation_refused"), 5)
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    with open(out_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    if "RENEGOTIATING" not in text:
        pytest.skip("this openssl s_client did not renegotiate:\n" + text[-1500:])
    assert refused, "no event=tls_renegotiation_refused:\n%s\n---- s_client ----\n%s" % (
        tf.log_text(), text[-1500:])
    assert "Verify return code" in text  # it did complete the first handshake


class GnuTLSClient:
    """A TLS 1.2 client on libgnutls through ctypes, for what no command-line
    client does: ask for a renegotiation and carry on when it is refused."""

    GNUTLS_CLIENT = 1 << 1
    GNUTLS_CRD_CERTIFICATE = 1
    E_AGAIN, E_INTERRUPTED = -28, -52

    def __init__(self, sock):
        name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
        try:
            g = ctypes.CDLL(name)
        except OSError as e:
            pytest.skip("libgnutls not loadable: %s" % e)
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        g.gnutls_strerror.restype = cp
        g.gnutls_strerror.argtypes = [ctypes.c_int]
        g.gnutls_init.argtypes = [ctypes.POINTER(vp), ctypes.c_uint]
        g.gnutls_certificate_allocate_credentials.argtypes = [ctypes.POINTER(vp)]
        g.gnutls_certificate_free_credentials.argtypes = [vp]
        g.gnutls_priority_set_direct.argtypes = [vp, cp, vp]
        g.gnutls_credentials_set.argtypes = [vp, ctypes.c_int, vp]
        g.gnutls_transport_set_int2.argtypes = [vp, ctypes.c_int, ctypes.c_int]
        g.gnutls_handshake.argtypes = [vp]
        g.gnutls_alert_get.argtypes = [vp]
        g.gnutls_deinit.argtypes = [vp]
        g.gnutls_record_send.argtypes = [vp, cp, sz]
        g.gnutls_record_send.restype = ctypes.c_ssize_t
        g.gnutls_record_recv.argtypes = [vp, ctypes.c_char_p, sz]
        g.gnutls_record_recv.restype = ctypes.c_ssize_t
        self.g = g
        self.sock = sock
        # Blocking with kernel timeouts: GnuTLS reads the fd itself.
        sock.settimeout(None)
        tv = struct.pack("ll", int(IO_TIMEOUT), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.session = vp()
        self.cred = vp()
        assert g.gnutls_init(ctypes.byref(self.session), self.GNUTLS_CLIENT) == 0
        assert g.gnutls_certificate_allocate_credentials(ctypes.byref(self.cred)) == 0
        assert g.gnutls_priority_set_direct(self.session, b"NORMAL:-VERS-TLS1.3", None) == 0
        assert g.gnutls_credentials_set(self.session, self.GNUTLS_CRD_CERTIFICATE,
                                        self.cred) == 0
        g.gnutls_transport_set_int2(self.session, sock.fileno(), sock.fileno())
        self.buf = b""

    def error(self, rc):
        return self.g.gnutls_strerror(rc).decode()

    def handshake(self):
        for _ in range(100):
            rc = self.g.gnutls_handshake(self.session)
            if rc not in (self.E_AGAIN, self.E_INTERRUPTED):
                return rc
        return rc

    def alert(self):
        return self.g.gnutls_alert_get(self.session)

    def send(self, data):
        n = self.g.gnutls_record_send(self.session, data, len(data))
        assert n == len(data), "gnutls_record_send: %d %s" % (n, self.error(n))

    def read_reply(self):
        """One SMTP reply (bytes), or raises AssertionError naming the end."""
        for _ in range(200):
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    reply = b"\r\n".join(lines[:i + 1]) + b"\r\n"
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return reply
            out = ctypes.create_string_buffer(16384)
            n = self.g.gnutls_record_recv(self.session, out, 16384)
            if n > 0:
                self.buf += out.raw[:n]
            elif n == 0:
                raise AssertionError("connection closed by tlsfront (TLS EOF); unread %r"
                                     % self.buf)
            elif n != self.E_INTERRUPTED:  # E_AGAIN: SO_RCVTIMEO expired
                raise AssertionError("gnutls_record_recv: %d %s" % (n, self.error(n)))
        raise AssertionError("no complete reply in 200 reads: %r" % self.buf)

    def close(self):
        if self.session:
            self.g.gnutls_deinit(self.session)
            self.session = None
        if self.cred:
            self.g.gnutls_certificate_free_credentials(self.cred)
            self.cred = None


def test_s5_renegotiation_refused(tlsfront_factory, aiosmtpd_backend, certs):
    """A TLS 1.2 client asks for a renegotiation: tlsfront refuses it. A
    GnuTLS server can only renegotiate or end the session (its manual,
    gnutls_record_recv), so the client gets the no_renegotiation alert (100)
    and the session ends with reason=tls_error; nothing was renegotiated."""
    tf = start_front(tlsfront_factory, aiosmtpd_backend.port, pairs=[certs["ecdsa"]])
    c = tf.connect()
    g = None
    try:
        c.greeting()
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.code == 220, r
        g = GnuTLSClient(c.sock)
        rc = g.handshake()
        assert rc == 0, "handshake: %d %s" % (rc, g.error(rc))
        g.send(b"EHLO client.test\r\n")
        assert g.read_reply().startswith(b"250")
        rc = g.handshake()  # the renegotiation request
        assert rc < 0, "tlsfront accepted a renegotiation"
        assert g.alert() == 100, "alert %d (%s), want no_renegotiation (100)" % (
            g.alert(), g.error(rc))
        assert wait_until(lambda: tf.events("tls_renegotiation_refused"), 5), tf.log_text()
    finally:
        if g:
            g.close()
        c.close()
    assert wait_until(lambda: tf.session_of(c.local), 5), tf.log_text()
    assert tf.session_of(c.local)["reason"] == "tls_error"
