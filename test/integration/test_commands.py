"""Commands and replies (SPEC §3.1, §3.2, §3.4, §7.1, §7.2)."""
import re
import select
import socket
import time

import pytest

from tfhelpers import HOST, free_port, insecure_context, send_message


def assert_reply(r, code, enhanced=None):
    assert r.code == code, r
    if enhanced is not None:
        assert r.enhanced == enhanced, r


def session_start(tf):
    c = tf.connect()
    c.greeting()
    c.ehlo()
    return c


def test_s3_2_pipelining_replies_in_order(tlsfront_factory, raw_backend_factory):
    # The backend answers slowly: a local refusal must still wait its turn.
    backend = raw_backend_factory(reply_delay=0.15)
    tf = tlsfront_factory(backend.port)
    with tf.connect() as c:
        c.greeting()
        c.send(b"EHLO pipe.test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<one@y>\r\n"
               b"XCLIENT ADDR=10.0.0.1\r\nRCPT TO:<two@y>\r\nSTARTTLS junk\r\n"
               b"RCPT TO:<three@y>\r\nNOOP\r\n")
        replies = c.read_replies(8)
        assert c.cmd("QUIT").code == 221
    assert replies[0].code == 250 and len(replies[0].lines) > 1, replies[0]
    assert replies[1].text == "250 2.1.0 Ok mail FROM:<a@x>"
    assert replies[2].text == "250 2.1.5 Ok rcpt TO:<one@y>"
    assert_reply(replies[3], 502, "5.5.1")
    assert replies[4].text == "250 2.1.5 Ok rcpt TO:<two@y>"
    assert_reply(replies[5], 501, "5.5.4")
    assert replies[6].text == "250 2.1.5 Ok rcpt TO:<three@y>"
    assert replies[7].text == "250 2.0.0 Ok noop"


def test_s3_4_ehlo_rewrite_removes_backend_keywords(tlsfront_factory, raw_backend_factory):
    backend = raw_backend_factory(ehlo_extra=["STARTTLS", "XCLIENT NAME ADDR", "xforward ADDR",
                                              "CHUNKING", "BINARYMIME", "AUTH PLAIN LOGIN",
                                              "AUTH=PLAIN", "DSN"])
    tf = tlsfront_factory(backend.port)
    with tf.connect() as c:
        c.greeting()
        r = c.ehlo()
        assert r.lines[0] == "250-raw.backend", r
        # Continuation marks: every line but the last "250-", the last "250 ".
        assert all(l.startswith("250-") for l in r.lines[:-1]), r
        assert r.lines[-1].startswith("250 "), r
        kws = r.keywords()
        assert kws.count("STARTTLS") == 1, r  # tlsfront's own, the backend's removed
        for gone in ("XCLIENT", "XFORWARD", "CHUNKING", "BINARYMIME", "AUTH"):
            assert gone not in kws, r
        for kept in ("PIPELINING", "SIZE", "8BITMIME", "DSN"):
            assert kept in kws, r
        r = c.cmd("HELO helo.test")
        assert r.text == "250 raw.backend", r  # HELO passes unchanged
        assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("verb", ["XCLIENT ADDR=192.0.2.1 NAME=spoofed", "xforward ADDR=192.0.2.1"])
def test_s3_2_xclient_xforward_refused(tlsfront_factory, raw_backend, verb):
    tf = tlsfront_factory(raw_backend.port)
    with session_start(tf) as c:
        assert_reply(c.cmd(verb), 502, "5.5.1")
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    cmds = raw_backend.command_texts()
    assert "NOOP" in cmds
    assert not any(re.match(r"(?i)x(client|forward)", x) for x in cmds), cmds


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"post /form HTTP/1.0",
                                  b"Host: mx.test", b"USER-AGENT: curl/8"])
def test_s3_2_http_line_closes(tlsfront_factory, raw_backend, line):
    tf = tlsfront_factory(raw_backend.port)
    with session_start(tf) as c:
        c.send(line + b"\r\n")
        assert_reply(c.read_reply(), 221, "2.7.0")
        assert c.read_until_closed(5) == b""
    assert tf.session_of(c.local)["reason"] == "policy"  # §7.2
    assert not any(x.encode() == line for x in raw_backend.command_texts())


def test_s3_2_long_command_line_refused_session_goes_on(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port)
    with session_start(tf) as c:
        r = c.cmd(b"NOOP " + b"x" * 2995)  # 3000 octets + CRLF > line_length 2048
        assert_reply(r, 500, "5.5.2")
        assert c.cmd("NOOP").code == 250
        # The longest accepted line: 2048 octets, CRLF included.
        assert c.cmd(b"NOOP " + b"y" * (2048 - 7)).code == 250
        assert_reply(c.cmd(b"NOOP " + b"y" * (2048 - 6)), 500, "5.5.2")
        assert c.cmd("QUIT").code == 221
    sizes = [len(x) for x in raw_backend.command_texts() if x.startswith("NOOP")]
    assert sizes == [4, 2048 - 2], sizes


def test_s3_2_long_command_line_in_pieces(front):
    with session_start(front) as c:
        for _ in range(6):  # 6 x 1000 octets without a line end, then the end
            c.send(b"z" * 1000)
            time.sleep(0.02)
        c.send(b"\r\n")
        assert_reply(c.read_reply(), 500, "5.5.2")
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("line", [b"NOOP a\x00b", b"NOOP a\rb"])
def test_s3_2_nul_or_bare_cr_in_command(tlsfront_factory, raw_backend, line):
    tf = tlsfront_factory(raw_backend.port)
    with session_start(tf) as c:
        assert_reply(c.cmd(line), 500, "5.5.2")
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    assert not any("a" in x for x in raw_backend.command_texts() if x.startswith("NOOP")), \
        raw_backend.command_texts()


def test_s3_2_s7_1_max_errors_closes(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, max_errors=3)
    with session_start(tf) as c:
        assert_reply(c.cmd("XCLIENT ADDR=1.2.3.4"), 502, "5.5.1")  # a local refusal
        assert c.cmd("FROBNICATE").code == 500  # aiosmtpd's own 500 counts too
        c.send(b"NOOP \x00\r\n")
        assert_reply(c.read_reply(), 500, "5.5.2")  # the third error is sent...
        assert_reply(c.read_reply(), 421, "4.7.0")  # ... then 421
        assert c.read_until_closed(5) == b""
    assert tf.session_of(c.local)["reason"] == "policy"


def test_s7_1_accepted_message_resets_error_count(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, max_errors=2)
    with session_start(tf) as c:
        assert_reply(c.cmd("XFORWARD NAME=x"), 502, "5.5.1")
        assert send_message(c, "a@b", "c@d", b"Subject: x\r\n\r\nok\r\n.\r\n").code == 250
        assert_reply(c.cmd("XFORWARD NAME=x"), 502, "5.5.1")  # count starts again
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221


def test_s3_2_lf_only_command_lines(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port)
    with tf.connect() as c:
        c.greeting()
        c.send(b"EHLO lf.test\n")
        assert c.read_reply().code == 250
        c.send(b"MAIL FROM:<lf@x>\n")
        assert c.read_reply().code == 250
        c.send(b"RCPT TO:<lf@y>\n")
        assert c.read_reply().code == 250
        c.send(b"DATA\n")
        assert c.read_reply().code == 354
        c.send(b"Subject: lf\r\n\r\nbody\r\n.\r\n")
        assert c.read_reply().code == 250
        c.send(b"QUIT\n")
        assert c.read_reply().code == 221
    assert raw_backend.command_texts()[:4] == ["EHLO lf.test", "MAIL FROM:<lf@x>",
                                               "RCPT TO:<lf@y>", "DATA"]
    assert raw_backend.messages == [b"Subject: lf\r\n\r\nbody\r\n"]
    # Forwarded ending in CRLF: the backend never sees a bare LF.
    raw = bytes(raw_backend.raw[0])
    assert re.search(rb"(?<!\r)\n", raw) is None, raw


def test_s3_2_idle_timeout(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, idle_timeout=2)
    with tf.connect() as c:
        c.greeting()
        t0 = time.monotonic()
        c.ehlo()
        r = c.read_reply()
        waited = time.monotonic() - t0
        assert_reply(r, 421, "4.4.2")
        assert 1.5 <= waited <= 6, waited
        assert c.read_until_closed(5) == b""
    assert tf.session_of(c.local)["reason"] == "timeout"


def test_s3_2_idle_timeout_not_rearmed_by_partial_line(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, idle_timeout=2)
    t0 = time.monotonic()
    with tf.connect() as c:
        c.greeting()
        for _ in range(5):  # a byte every 0.4 s for 1.6 s, never a whole line
            c.send(b"N")
            time.sleep(0.4)
        r = c.read_reply()
        waited = time.monotonic() - t0
        assert_reply(r, 421, "4.4.2")
        # Re-armed by the trickle, it would come at 1.6 + 2 s or later.
        assert waited < 3.3, waited
    assert tf.session_of(c.local)["reason"] == "timeout"


def test_s3_1_backend_not_listening(tlsfront_factory):
    tf = tlsfront_factory(free_port())
    with tf.connect() as c:
        assert_reply(c.read_reply(), 421, "4.3.2")
        assert c.read_until_closed(5) == b""
    tf.session_of(c.local)


class FullBacklog:
    """A backend that never completes a TCP handshake: a socket listening on
    127.0.0.1 with listen(0) whose accept queue is filled by connections
    nobody accepts. Linux then drops every new SYN (the connecting side keeps
    retrying), so a connect() to it neither succeeds nor fails."""

    MAX_FILLERS = 32

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((HOST, 0))
        self.srv.listen(0)
        self.port = self.srv.getsockname()[1]
        self.fillers = []
        for _ in range(self.MAX_FILLERS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            self.fillers.append(s)
            s.connect_ex((HOST, self.port))
            # Loopback answers a SYN at once: 0.5 s without an answer means
            # the SYN was dropped, the queue is full.
            _, writable, _ = select.select([], [s], [], 0.5)
            if not writable:
                return
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert err == 0, "filler connection failed: %s" % err
        self.close()
        raise AssertionError("the accept queue never filled after %d connections"
                             % self.MAX_FILLERS)

    def close(self):
        for s in self.fillers:
            s.close()
        self.srv.close()


def test_s3_1_backend_connect_timeout(tlsfront_factory):
    """§3.1.2: a backend whose TCP handshake never completes: after
    backend.connect_timeout the client gets 421 4.3.2 and is closed, and the
    log says event=backend_timeout."""
    backend = FullBacklog()
    try:
        tf = tlsfront_factory(backend.port, connect_timeout=1)
        t0 = time.monotonic()
        with tf.connect() as c:
            r = c.read_reply()
            waited = time.monotonic() - t0
            assert_reply(r, 421, "4.3.2")
            assert c.read_until_closed(5) == b""
        # Not before the timeout (a little slack for timer granularity).
        assert 0.9 <= waited <= 8, waited
        [ev] = tf.wait_event("backend_timeout")
        assert ev["backend"] == "127.0.0.1:%d" % backend.port, ev
        summary = tf.session_of(c.local)
        assert summary["reason"] == "error", summary
        assert summary["tls"] == "none" and summary["messages"] == "0", summary
        assert not tf.events("backend_unavailable"), tf.log_text()
    finally:
        backend.close()


def test_s3_2_backend_closes_mid_session(tlsfront_factory, raw_backend_factory):
    backend = raw_backend_factory(close_on="MAIL")
    tf = tlsfront_factory(backend.port)
    with session_start(tf) as c:
        assert_reply(c.cmd("MAIL FROM:<a@b>"), 421, "4.3.0")
        assert c.read_until_closed(5) == b""
    assert tf.session_of(c.local)["reason"] == "backend_closed"


@pytest.mark.parametrize("greeting", ["220 raw.backend ESMTP legacy mailer (v1.2)",
                                      "220-raw.backend first line\r\n220 second line",
                                      "554 5.3.2 raw.backend no service here"])
def test_s3_1_backend_greeting_relayed_unchanged(tlsfront_factory, raw_backend_factory,
                                                  greeting):
    backend = raw_backend_factory(greeting=greeting)
    tf = tlsfront_factory(backend.port)
    with tf.connect() as c:
        r = c.read_reply()
        assert r.raw == greeting.encode() + b"\r\n", r
        assert c.cmd("QUIT").code == 221


def test_s3_5_starttls_220_after_earlier_pipelined_replies(tlsfront_factory,
                                                            raw_backend_factory):
    backend = raw_backend_factory(reply_delay=0.2)
    tf = tlsfront_factory(backend.port)
    with tf.connect() as c:
        c.greeting()
        c.send(b"EHLO slow.test\r\nNOOP\r\nsTaRtTlS\r\n")  # verbs: any case (§3.2)
        r1, r2, r3 = c.read_replies(3)
        assert r1.code == 250 and "STARTTLS" in r1.keywords(), r1
        assert r2.text == "250 2.0.0 Ok noop", r2
        assert r3.code == 220 and r3.enhanced == "2.0.0", r3
        c.sock = insecure_context().wrap_socket(c.sock)
        r = c.ehlo()
        assert "STARTTLS" not in r.keywords()
        assert c.cmd("QUIT").code == 221


def test_s3_7_bytes_before_354_held_and_discarded(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, max_errors=2)
    with session_start(tf) as c:
        assert c.cmd("MAIL FROM:<a@x>").code == 250
        # No RCPT: aiosmtpd refuses DATA (503). The content sent with it must
        # never be read as commands.
        c.send(b"DATA\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n.\r\n")
        r = c.read_reply()
        assert r.code == 503, r
        # 503 is one error; the discarded bytes another: max_errors = 2.
        r = c.read_reply()
        assert r.code == 421 and r.enhanced == "4.7.0", r
        assert c.read_until_closed(5) == b""
    assert "evil@x" not in aiosmtpd_backend.handler.mail_from
    assert "victim@y" not in aiosmtpd_backend.handler.rcpt_to
    assert tf.session_of(c.local)["reason"] == "policy"


def test_s3_2_idle_timeout_rearmed_by_data_bytes(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, idle_timeout=2)
    with session_start(tf) as c:
        assert c.cmd("MAIL FROM:<slow@x>").code == 250
        assert c.cmd("RCPT TO:<r@y>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: slow\r\n\r\n")
        for _ in range(8):  # 4 s of content, a byte every 0.5 s, no line end
            c.send(b"x")
            time.sleep(0.5)
        c.send(b"\r\n.\r\n")
        assert c.read_reply().code == 250
        assert c.cmd("QUIT").code == 221
    assert aiosmtpd_backend.messages[0]["content"] == b"Subject: slow\r\n\r\nxxxxxxxx\r\n"


def test_s3_2_unknown_commands_passed_unchanged(tlsfront_factory, raw_backend):
    tf = tlsfront_factory(raw_backend.port)
    with session_start(tf) as c:
        assert c.cmd("FROBNICATE  two  spaces\tand tab").code == 500
        assert c.cmd("vrfy someone").code == 500
        assert c.cmd("QUIT").code == 221
    cmds = raw_backend.command_texts()
    assert "FROBNICATE  two  spaces\tand tab" in cmds, cmds
    assert "vrfy someone" in cmds, cmds


def test_s7_1_refused_recipients_do_not_count(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, max_errors=2)
    with session_start(tf) as c:
        assert c.cmd("MAIL FROM:<a@x>").code == 250
        for i in range(4):
            assert c.cmd("RCPT TO:<unknown%d@y>" % i).code == 550
        assert c.cmd("RCPT TO:<known@y>").code == 250
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    assert tf.session_of(c.local)["reason"] == "quit"
