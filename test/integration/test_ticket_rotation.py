"""The TLS session ticket key rotated on a timer (tls.session_cache_timeout,
modelled on Postfix's smtpd_tls_session_cache_timeout; SPEC §2, §5).

One key for all workers, replaced every session_cache_timeout seconds by
the main thread (event=ticket_key_rotated at debug level); a ticket of the
old key gets a full handshake, a fresh ticket resumes; 0 turns tickets off;
a reload keeps the key unless it changes the period.

Every wait is bounded; only 127.0.0.1 is used; ports come from the kernel.
"""
import re
import signal
import ssl
import subprocess
import time

import pytest

from tfhelpers import HOST, SmtpClient, insecure_context, make_config, run_tool, wait_until


def tls_block(timeout):
    return ('tls = { priority = "NORMAL"; handshake_timeout = 10; session_cache_timeout = %d; };'
            % timeout)


def start(factory, backend_port, timeout=None, workers=2):
    tls = tls_block(timeout) if timeout is not None else None
    return factory(config_text=make_config(backend_port, workers=workers, tls=tls))


def tls13():
    ctx = insecure_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


CTX = tls13()  # a session resumes only with the context that made it


def lifetime_hint(port, tmp_path):
    """The lifetime hint of tlsfront's TLS 1.3 ticket, as openssl reads it
    (Python's ssl does not show it)."""
    sess = tmp_path / "sess.pem"
    proc = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-tls1_3", "-ign_eof",
                             "-connect", "%s:%d" % (HOST, port), "-sess_out", str(sess)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # The ticket follows the handshake; EHLO makes sure it was read.
        proc.communicate(b"EHLO client.test\r\nQUIT\r\n", timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    out = run_tool(["openssl", "sess_id", "-noout", "-text", "-in", str(sess)])
    m = re.search(r"ticket lifetime hint: (\d+)", out.stdout.decode())
    assert m, out.stdout.decode() + out.stderr.decode()
    return int(m.group(1))


def starttls(port, session=None):
    """EHLO, STARTTLS (TLS 1.3), EHLO (the ticket arrives with its reply),
    QUIT. Returns (client address, session, reused by the client's word)."""
    with SmtpClient(port) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.sock = CTX.wrap_socket(c.sock, server_hostname="mx.test", session=session)
        c.ehlo()
        sess, reused = c.sock.session, c.sock.session_reused
        assert c.cmd("QUIT").code == 221
        return c.local, sess, reused


def resumed_logged(tf, local):
    sid = tf.session_of(local)["id"]
    found = [e for e in tf.events("tls") if e.get("id") == sid]
    assert len(found) == 1, found
    return found[0]["resumed"]


def rotations(tf):
    return len(tf.events("ticket_key_rotated"))


def test_s5_ticket_key_rotated_on_timer(tlsfront_factory, aiosmtpd_backend, tmp_path):
    period = 2
    tf = start(tlsfront_factory, aiosmtpd_backend.port, timeout=period)
    assert lifetime_hint(tf.port, tmp_path) == period
    first = tf.wait_event("ticket_key_rotated", timeout=3 * period + 5)[0]
    assert first["period"] == str(period) and first["reason"] == "timer", first
    assert "key" not in " ".join(k for k in first if k != "event"), first

    # Just after a rotation: a ticket resumes at once, here and on the
    # other worker (whichever the kernel picks).
    tries = []
    for _ in range(3):
        n = rotations(tf)
        local, session, reused = starttls(tf.port)
        assert not reused and session is not None and session.has_ticket
        again = [starttls(tf.port, session) for _ in range(2)]
        if rotations(tf) != n:
            tries.append("a rotation came in between")
            tf.wait_event("ticket_key_rotated", n=n + 2, timeout=3 * period + 5)
            continue
        assert resumed_logged(tf, local) == "no"
        for loc, _, re_used in again:
            assert re_used and resumed_logged(tf, loc) == "yes", tf.log_text()[-3000:]
        break
    else:
        pytest.fail("no resumption between two rotations: %r" % tries)

    # A ticket taken just before a rotation, presented just after it (well
    # within its lifetime): the key that made it is gone, full handshake.
    for _ in range(3):
        n = rotations(tf)
        tf.wait_event("ticket_key_rotated", n=n + 1, timeout=3 * period + 5)
        time.sleep(period * 0.7)
        n = rotations(tf)
        _, session, _ = starttls(tf.port)
        issued = time.monotonic()
        if rotations(tf) != n:
            continue  # the ticket came after the rotation: try again
        tf.wait_event("ticket_key_rotated", n=n + 1, timeout=3 * period + 5)
        if time.monotonic() - issued > period * 0.8:
            continue  # too late to tell a rotation from an expiry
        local, _, reused = starttls(tf.port, session)
        assert not reused and resumed_logged(tf, local) == "no", tf.log_text()[-3000:]
        break
    else:
        pytest.fail("could not take a ticket just before a rotation:\n" + tf.log_text()[-3000:])

    # A ticket of the new key resumes again.
    for _ in range(3):
        n = rotations(tf)
        _, session, _ = starttls(tf.port)
        local, _, reused = starttls(tf.port, session)
        if rotations(tf) != n:
            continue
        assert reused and resumed_logged(tf, local) == "yes", tf.log_text()[-3000:]
        break
    else:
        pytest.fail("no resumption after the rotation:\n" + tf.log_text()[-3000:])
    assert "event=ticket_key_rotation_failed" not in tf.log_text()


def test_s5_session_cache_timeout_zero_means_no_tickets(tlsfront_factory, aiosmtpd_backend):
    tf = start(tlsfront_factory, aiosmtpd_backend.port, timeout=0)
    _, session, _ = starttls(tf.port)
    assert session is None or not session.has_ticket
    local, _, reused = starttls(tf.port, session)
    assert not reused and resumed_logged(tf, local) == "no"
    assert rotations(tf) == 0


def test_s5_reload_keeps_ticket_key(tlsfront_factory, aiosmtpd_backend, tmp_path):
    """The default (3600 s): a reload with the same period keeps the key,
    so a ticket from before it resumes after it; a reload that changes the
    period replaces the key at once."""
    tf = start(tlsfront_factory, aiosmtpd_backend.port)
    _, session, _ = starttls(tf.port)
    assert session.has_ticket
    assert lifetime_hint(tf.port, tmp_path) == 3600
    tf.send_signal(signal.SIGHUP)
    tf.wait_event("reload", timeout=10)
    assert wait_until(lambda: [e for e in tf.events("reload") if e.get("status") == "ok"], 10)
    local, _, reused = starttls(tf.port, session)
    assert reused and resumed_logged(tf, local) == "yes", tf.log_text()[-3000:]
    assert rotations(tf) == 0

    with open(tf.config_path) as f:
        text = f.read()
    with open(tf.config_path, "w") as f:
        f.write(text.replace("handshake_timeout = 10;",
                             "handshake_timeout = 10; session_cache_timeout = 600;"))
    tf.send_signal(signal.SIGHUP)
    rotated = tf.wait_event("ticket_key_rotated", timeout=10)[0]
    assert rotated["reason"] == "reload" and rotated["period"] == "600", rotated
    assert wait_until(lambda: len([e for e in tf.events("reload")
                                   if e.get("status") == "ok"]) >= 2, 10)
    local, _, reused = starttls(tf.port, session)
    assert not reused and resumed_logged(tf, local) == "no"
    assert lifetime_hint(tf.port, tmp_path) == 600
    _, fresh, _ = starttls(tf.port)
    local, _, reused = starttls(tf.port, fresh)
    assert reused and resumed_logged(tf, local) == "yes"
