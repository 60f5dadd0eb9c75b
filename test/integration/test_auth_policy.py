"""The Domino policy (issue 3): the TLS port, require_tls and AUTH
(SPEC §2, §3.4, §3.5, §3.6).

The backend is aiosmtpd with an authenticator that accepts alice / s3cret
and records every attempt it is given, so a test can tell an AUTH that
reached the backend from one that tlsfront refused itself.

Every socket operation has a timeout (tfhelpers.IO_TIMEOUT), every loop is
bounded, only 127.0.0.1 is used, ports come from the kernel, and every
process is stopped by the fixtures that started it.
"""
import base64
import hmac
import re
import smtplib
import socket
import threading
import time

import pytest

import tfhelpers
from tfhelpers import (HOST, IO_TIMEOUT, SmtpClient, free_port, insecure_context, run_tool,
                       wait_until)

# aiosmtpd itself warns about its own legacy attribute on every successful AUTH.
pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data")

USER = "alice"
PASSWORD = "s3cret"
PLAIN_PAYLOAD = base64.b64encode(b"\0alice\0s3cret").decode()  # AGFsaWNlAHMzY3JldA==
B64_USER = base64.b64encode(b"alice").decode()  # YWxpY2U=
B64_PASSWORD = base64.b64encode(b"s3cret").decode()  # czNjcmV0
# A second account whose name a key=value log must quote and escape (§6).
ODD_USER = 'bob "the" b\\uilder x=1'
ODD_PASSWORD = "pa55-w0rd!"
ACCOUNTS = {USER.encode(): PASSWORD.encode(), ODD_USER.encode(): ODD_PASSWORD.encode()}

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: auth\r\n\r\nhello\r\n"


# ---- the backend --------------------------------------------------------------

class AuthBackend(tfhelpers.AiosmtpdBackend):
    """aiosmtpd (real, strict) with AUTH LOGIN / PLAIN; accepts the ACCOUNTS.
    attempts: (mechanism, login bytes, password bytes) of every AUTH the
    backend was asked to check."""

    def __init__(self, cram_md5=False):
        self.attempts = []
        self.lock = threading.Lock()
        super().__init__(server_hostname="auth.backend", authenticator=self._authenticate,
                         auth_require_tls=False)
        if cram_md5:
            # aiosmtpd takes a handler's auth_X__Y method as mechanism X-Y;
            # it finds it on each new connection.
            self.handler.auth_CRAM__MD5 = self._cram_md5

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        login = password = None
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login, auth_data.password
        with self.lock:
            self.attempts.append((mechanism, login, password))
        return AuthResult(success=(login is not None and ACCOUNTS.get(login) == password),
                          handled=False)

    async def _cram_md5(self, server, args):
        """CRAM-MD5 (RFC 2195): a challenge, then base64 of "user SP hexdigest"."""
        from aiosmtpd.smtp import AuthResult
        if len(args) != 1:
            await server.push("501 5.5.4 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = b"<%d.%d@auth.backend>" % (threading.get_ident() % 100000, len(self.attempts))
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes):  # '*' or bad base64: already answered
            return AuthResult(success=False, handled=True)
        login, _, digest = response.rpartition(b" ")
        with self.lock:
            self.attempts.append(("CRAM-MD5", login, None))
        secret = ACCOUNTS.get(login)
        ok = secret is not None and hmac.compare_digest(
            digest, hmac.new(secret, challenge, "md5").hexdigest().encode())
        return AuthResult(success=ok, handled=False)

    def attempt_list(self):
        with self.lock:
            return list(self.attempts)


@pytest.fixture
def auth_backend():
    b = AuthBackend()
    yield b
    b.stop()


@pytest.fixture
def cram_backend():
    b = AuthBackend(cram_md5=True)
    yield b
    b.stop()


# ---- tlsfront -----------------------------------------------------------------

def _b(v):
    return "true" if v else "false"


def policy_config(backend_port, tcp_port, tls_port, *, tls_enabled=False, tcp_auth=None,
                  tls_auth=None, require_tls=None, starttls=None, max_errors=100,
                  log_level="debug", handshake_timeout=10, extra=""):
    """A configuration with both listeners; a policy key given as None is left
    out of the file (its default applies)."""
    tcp = ['listen = [ "127.0.0.1:%d" ];' % tcp_port]
    if starttls is not None:
        tcp.append("starttls = %s;" % _b(starttls))
    if require_tls is not None:
        tcp.append("require_tls = %s;" % _b(require_tls))
    if tcp_auth is not None:
        tcp.append("name_and_password = %s;" % _b(tcp_auth))
    tls = ['enabled = %s;' % _b(tls_enabled), 'listen = [ "127.0.0.1:%d" ];' % tls_port]
    if tls_auth is not None:
        tls.append("name_and_password = %s;" % _b(tls_auth))
    return f"""# written by test_auth_policy.py
server_name = "mx.test";
workers = 1;
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 5; }};
inbound = {{
  tcp = {{ {" ".join(tcp)} }};
  tls = {{ {" ".join(tls)} }};
}};
limits = {{ idle_timeout = 30; max_errors = {max_errors}; shutdown_timeout = 5; }};
log = {{ level = "{log_level}"; }};
tls = {{ priority = "NORMAL"; handshake_timeout = {handshake_timeout}; }};
{extra}
"""


def tls_listener_port(tf, timeout=5.0):
    """The TLS port's address from its event=listening line."""
    def find():
        for ev in tf.events("listening"):
            if ev.get("listener") == "tls":
                m = re.match(r"127\.0\.0\.1:(\d+)$", ev.get("address", ""))
                if m:
                    return int(m.group(1))
        return None
    port = wait_until(find, timeout)
    assert port, "no event=listening listener=tls line:\n%s" % tf.log_text()
    return port


def start_front(factory, backend_port, **kw):
    """tlsfront on two ports the kernel picked free a moment ago; retried
    when one was taken in between. Sets tf.tls_port when the port is on."""
    for attempt in range(3):
        tcp_port, tls_port = free_port(), free_port()
        if tcp_port == tls_port:
            continue
        try:
            tf = factory(config_text=policy_config(backend_port, tcp_port, tls_port, **kw))
        except tfhelpers.StartError as e:
            if attempt < 2 and "in use" in e.tf.log_text():
                continue
            raise
        assert tf.port == tcp_port, tf.log_text()
        tf.tls_port = None
        if kw.get("tls_enabled"):
            tf.tls_port = tls_listener_port(tf)
            assert tf.tls_port == tls_port, tf.log_text()
        return tf
    raise AssertionError("no free ports for tlsfront")


# ---- clients ------------------------------------------------------------------

def tls_port_client(port, ctx=None, server_hostname=None):
    """A raw client on the TLS port: the handshake first (§3.1)."""
    c = SmtpClient(port)
    try:
        c.sock = (ctx or insecure_context()).wrap_socket(c.sock, server_hostname=server_hostname)
    except Exception:
        c.close()
        raise
    return c


def open_session(tf, phase):
    """A raw client greeted and past EHLO in the given phase:
    'plaintext' (TCP port, no TLS), 'starttls' (TCP port after STARTTLS and
    the new EHLO), 'tls_port'. Returns (client, EHLO reply)."""
    c = tls_port_client(tf.tls_port) if phase == "tls_port" else tf.connect()
    try:
        c.greeting()
        r = c.ehlo()
        if phase == "starttls":
            c.starttls()
            r = c.ehlo()
    except Exception:
        c.close()
        raise
    return c, r


def smtplib_session(tf, phase):
    """smtplib client, greeted and past EHLO (and STARTTLS) in that phase."""
    if phase == "tls_port":
        s = smtplib.SMTP_SSL(HOST, tf.tls_port, local_hostname="client.test",
                             timeout=IO_TIMEOUT, context=insecure_context())
    else:
        s = smtplib.SMTP(HOST, tf.port, local_hostname="client.test", timeout=IO_TIMEOUT)
    try:
        code, _ = s.ehlo()
        assert code == 250
        if phase == "starttls":
            code, _ = s.starttls(context=insecure_context())
            assert code == 220
            code, _ = s.ehlo()
            assert code == 250
    except Exception:
        s.close()
        raise
    return s


def local_of(sock):
    return "%s:%d" % sock.getsockname()[:2]


def summary_of(tf, client):
    return tf.session_of(client)


def assert_no_password(tf, *passwords):
    """§3.6: no password, in clear or base64, in tlsfront's log."""
    log = tf.log_text()
    for pw in passwords or (PASSWORD,):
        for s in (pw, base64.b64encode(pw.encode()).decode()):
            assert s not in log, "%r in tlsfront's log:\n%s" % (s, log)


def refusal(tls_auth, phase, starttls_offered=True):
    """§3.6: the refusal of a not-permitted AUTH."""
    if phase == "plaintext" and starttls_offered and tls_auth:
        return 530, "5.7.0"
    return 502, "5.5.1"


# ---- §3.6 the AUTH matrix ---------------------------------------------------------

@pytest.mark.parametrize("tls_enabled", [False, True], ids=["tlsport_off", "tlsport_on"])
@pytest.mark.parametrize("tls_auth", [False, True], ids=["tls_nap_false", "tls_nap_true"])
@pytest.mark.parametrize("tcp_auth", [False, True], ids=["tcp_nap_false", "tcp_nap_true"])
def test_s3_6_auth_matrix(tlsfront_factory, auth_backend, tcp_auth, tls_auth, tls_enabled):
    """tcp.name_and_password x tls.name_and_password x TLS port on/off, in
    every phase: EHLO advertising, the exact refusal, or a login that the
    backend checks (smtplib) and that the summary line shows as auth=yes."""
    tf = start_front(tlsfront_factory, auth_backend.port, tcp_auth=tcp_auth, tls_auth=tls_auth,
                     tls_enabled=tls_enabled)
    phases = ["plaintext", "starttls"] + (["tls_port"] if tls_enabled else [])
    failures = []
    expected_attempts = 0
    for phase in phases:
        permitted = tcp_auth if phase == "plaintext" else tls_auth
        where = "phase=%s permitted=%s" % (phase, permitted)

        # Raw client: what EHLO offers, and STARTTLS where it is not offered.
        c, ehlo = open_session(tf, phase)
        with c:
            kws = ehlo.keywords()
            if ("AUTH" in kws) != permitted:
                failures.append("%s: AUTH advertised=%s: %r" % (where, "AUTH" in kws, ehlo.lines))
            if ("STARTTLS" in kws) != (phase == "plaintext"):
                failures.append("%s: STARTTLS advertised=%s: %r"
                                % (where, "STARTTLS" in kws, ehlo.lines))
            if phase == "tls_port":
                r = c.cmd("STARTTLS")
                if (r.code, r.enhanced) != (503, "5.5.1"):
                    failures.append("%s: STARTTLS on the TLS port: %r (want 503 5.5.1)"
                                    % (where, r))
            if not permitted:
                want = refusal(tls_auth, phase)
                for line in ("AUTH PLAIN " + PLAIN_PAYLOAD, "AUTH LOGIN", "auth plain"):
                    r = c.cmd(line)
                    if (r.code, r.enhanced) != want:
                        failures.append("%s: %r -> %r (want %d %s)"
                                        % (where, line, r, want[0], want[1]))
                r = c.cmd("NOOP")
                if r.code != 250:
                    failures.append("%s: NOOP after refused AUTH: %r" % (where, r))
            r = c.cmd("QUIT")
            if r.code != 221:
                failures.append("%s: QUIT: %r" % (where, r))
            summary = summary_of(tf, c.local)
            if summary.get("auth") != "no" or summary.get("user") != "none":
                failures.append("%s: raw session summary auth=%r user=%r"
                                % (where, summary.get("auth"), summary.get("user")))
            want_listener = "tls" if phase == "tls_port" else "tcp"
            if summary.get("listener") != want_listener:
                failures.append("%s: summary listener=%r" % (where, summary.get("listener")))

        if permitted:
            # A permitted AUTH goes to the backend, which checks the password.
            s = smtplib_session(tf, phase)
            try:
                if not s.has_extn("auth"):
                    failures.append("%s: smtplib sees no AUTH: %r" % (where, s.esmtp_features))
                    s.esmtp_features["auth"] = "LOGIN PLAIN"
                local = local_of(s.sock)
                try:
                    code, text = s.login(USER, PASSWORD)
                    expected_attempts += 1
                    if code != 235:
                        failures.append("%s: login -> %d %r" % (where, code, text))
                except smtplib.SMTPException as e:
                    failures.append("%s: login raised %r" % (where, e))
                s.quit()
            finally:
                s.close()
            summary = summary_of(tf, local)
            if summary.get("auth") != "yes" or summary.get("user") != USER:
                failures.append("%s: summary after 235 has auth=%r user=%r: %r"
                                % (where, summary.get("auth"), summary.get("user"), summary))

    attempts = auth_backend.attempt_list()
    if len(attempts) != expected_attempts:
        failures.append("the backend was asked %d times, expected %d: %r"
                        % (len(attempts), expected_attempts, attempts))
    assert not failures, "\n".join(failures) + "\n---- log ----\n" + tf.log_text()[-6000:]


def test_s3_6_plaintext_auth_refused_by_default(tlsfront_factory, auth_backend):
    """No name_and_password key at all: plaintext AUTH is refused (530 5.7.0,
    since STARTTLS is offered and AUTH is permitted after it: the TLS port's
    default true applies to STARTTLS sessions although that port is off)."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    with tf.connect() as c:
        c.greeting()
        r = c.ehlo()
        assert "AUTH" not in r.keywords(), r
        assert "STARTTLS" in r.keywords(), r
        r = c.cmd("AUTH PLAIN " + PLAIN_PAYLOAD)
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        assert auth_backend.attempt_list() == []
        c.starttls()
        r = c.ehlo()
        assert "AUTH" in r.keywords(), r
        r = c.cmd("AUTH PLAIN " + PLAIN_PAYLOAD)
        assert r.code == 235, r
        assert c.cmd("QUIT").code == 221
    assert auth_backend.attempt_list() == [("PLAIN", b"alice", b"s3cret")]
    assert summary_of(tf, c.local)["auth"] == "yes"


def test_s3_6_auth_refused_502_when_starttls_not_offered(tlsfront_factory, auth_backend):
    """Plaintext AUTH not permitted and STARTTLS not offered: 502 5.5.1 even
    though AUTH would be permitted on a TLS session."""
    tf = start_front(tlsfront_factory, auth_backend.port, starttls=False, tcp_auth=False,
                     tls_auth=True)
    with tf.connect() as c:
        c.greeting()
        r = c.ehlo()
        assert "AUTH" not in r.keywords() and "STARTTLS" not in r.keywords(), r
        r = c.cmd("AUTH PLAIN " + PLAIN_PAYLOAD)
        assert (r.code, r.enhanced) == (502, "5.5.1"), r
        r = c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (502, "5.5.1"), r
        assert c.cmd("QUIT").code == 221
    assert auth_backend.attempt_list() == []


def test_s3_6_auth_refusals_count_as_errors(tlsfront_factory, auth_backend):
    """§7.1: AUTH refusals are protocol errors: with max_errors = 3 the third
    refused AUTH is answered, then 421 4.7.0 and close."""
    tf = start_front(tlsfront_factory, auth_backend.port, max_errors=3)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        for _ in range(3):
            r = c.cmd("AUTH LOGIN")
            assert (r.code, r.enhanced) == (530, "5.7.0"), r
        r = c.read_reply()
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert c.is_closed(5)
    assert summary_of(tf, c.local)["reason"] == "policy"


# ---- §3.6 real clients --------------------------------------------------------------

def test_s3_6_smtplib_starttls_login_sendmail(tlsfront_factory, auth_backend):
    tf = start_front(tlsfront_factory, auth_backend.port)
    s = smtplib_session(tf, "starttls")
    try:
        assert s.has_extn("auth"), s.esmtp_features
        local = local_of(s.sock)
        code, _ = s.login(USER, PASSWORD)
        assert code == 235
        assert s.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        s.quit()
    finally:
        s.close()
    assert auth_backend.wait_messages(1)
    [msg] = auth_backend.messages
    assert msg["mail_from"] == "alice@example.org" and msg["rcpt_tos"] == ["bob@example.net"]
    assert msg["content"] == MESSAGE
    summary = summary_of(tf, local)
    assert summary["auth"] == "yes", summary
    assert summary["user"] == USER, summary  # §3.6: as Postfix's sasl_username
    assert summary["listener"] == "tcp" and summary["tls"].startswith("TLS1."), summary
    assert summary["messages"] == "1" and summary["reason"] == "quit", summary
    assert_no_password(tf)


def test_s3_6_smtplib_ssl_tls_port_login_sendmail(tlsfront_factory, auth_backend):
    tf = start_front(tlsfront_factory, auth_backend.port, tls_enabled=True)
    s = smtplib_session(tf, "tls_port")
    try:
        assert s.has_extn("auth"), s.esmtp_features
        assert not s.has_extn("starttls"), s.esmtp_features
        local = local_of(s.sock)
        code, _ = s.login(USER, PASSWORD)
        assert code == 235
        assert s.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        s.quit()
    finally:
        s.close()
    assert auth_backend.wait_messages(1)
    assert auth_backend.messages[0]["content"] == MESSAGE
    summary = summary_of(tf, local)
    assert summary["listener"] == "tls", summary
    assert summary["auth"] == "yes" and summary["messages"] == "1", summary
    assert summary["user"] == USER, summary
    assert summary["tls"].startswith("TLS1."), summary
    assert_no_password(tf)


def test_s3_6_smtplib_wrong_password_is_backends_535(tlsfront_factory, auth_backend):
    tf = start_front(tlsfront_factory, auth_backend.port)
    s = smtplib_session(tf, "starttls")
    try:
        local = local_of(s.sock)
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(USER, "wrong-password")
        assert e.value.smtp_code == 535
        assert s.noop()[0] == 250
        s.quit()
    finally:
        s.close()
    # smtplib tries PLAIN, then LOGIN: each attempt was the backend's to check.
    attempts = auth_backend.attempt_list()
    assert attempts and all(a[1:] == (b"alice", b"wrong-password") for a in attempts), attempts
    summary = summary_of(tf, local)
    assert summary["auth"] == "no" and summary["user"] == "none", summary
    assert_no_password(tf, "wrong-password")


@pytest.mark.parametrize("mech", ["LOGIN", "PLAIN"])
@pytest.mark.parametrize("mode", ["starttls", "tlsc"])
def test_s3_6_swaks_auth(tlsfront_factory, auth_backend, mode, mech):
    """swaks --auth LOGIN and --auth PLAIN over STARTTLS on the TCP port
    (--tls) and over implicit TLS on the TLS port (--tlsc)."""
    tf = start_front(tlsfront_factory, auth_backend.port, tls_enabled=True)
    port = tf.port if mode == "starttls" else tf.tls_port
    args = ["swaks", "--server", HOST, "--port", str(port), "--helo", "client.test",
            "--from", "alice@example.org", "--to", "bob@example.net",
            "--auth", mech, "--auth-user", USER, "--auth-password", PASSWORD,
            "--timeout", "10", "--tls" if mode == "starttls" else "--tlsc"]
    p = run_tool(args, timeout=30)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out + p.stderr.decode("utf-8", "replace")
    # swaks marks lines sent and received inside TLS with "~>" / "<~".
    assert re.search(r"^ ~> AUTH %s\b" % mech, out, re.M), out
    assert re.search(r"^<~  235 ", out, re.M), out
    assert auth_backend.wait_messages(1), out
    assert auth_backend.attempt_list() == [(mech, b"alice", b"s3cret")]
    [summary] = tf.wait_event("session")
    assert summary["auth"] == "yes", summary
    assert summary["user"] == USER, summary  # LOGIN's first line / PLAIN's authcid
    assert_no_password(tf)
    assert summary["listener"] == ("tcp" if mode == "starttls" else "tls"), summary
    assert summary["messages"] == "1" and summary["reason"] == "quit", summary


@pytest.mark.parametrize("mech", ["LOGIN", "PLAIN"])
def test_s3_6_swaks_plaintext_auth_refused_by_default(tlsfront_factory, auth_backend, mech):
    """swaks --auth without --tls against the default configuration: §3.6
    makes plaintext AUTH not permitted (inbound.tcp.name_and_password
    defaults to false), so AUTH is not advertised and swaks fails; an AUTH
    sent anyway gets 530 5.7.0 (STARTTLS is offered and AUTH would be
    permitted after it). swaks itself never sends AUTH that the EHLO reply
    does not advertise (it exits 28, "Host did not advertise
    authentication"), so the 530 is checked with a raw AUTH on the same
    instance. The backend is never asked to check anything."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    args = ["swaks", "--server", HOST, "--port", str(tf.port), "--helo", "client.test",
            "--from", "alice@example.org", "--to", "bob@example.net",
            "--auth", mech, "--auth-user", USER, "--auth-password", PASSWORD,
            "--timeout", "10"]
    p = run_tool(args, timeout=30)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    assert p.returncode != 0, out
    assert p.returncode == 28, out  # swaks: authentication not advertised
    assert "did not advertise authentication" in out, out
    ehlo = re.findall(r"^<-  250[- ](.*)$", out, re.M)
    assert "STARTTLS" in ehlo, out
    # (the first line is the backend's name, "auth.backend": not a keyword)
    assert not any(re.match(r"AUTH([ =]|$)", k, re.I) for k in ehlo[1:]), out
    assert not re.search(r"^ [-~]> AUTH", out, re.M | re.I), out
    assert not re.search(r"^ [-~]> MAIL", out, re.M), out
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("AUTH " + mech)
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        assert c.cmd("QUIT").code == 221
    assert auth_backend.attempt_list() == []
    assert auth_backend.messages == []
    assert_no_password(tf)


# ---- §3.6 SASL continuation lines ----------------------------------------------------

def test_s3_6_auth_login_quit_continuation_is_sasl_data(tlsfront_factory, auth_backend):
    """AUTH LOGIN, the user name, then the literal line QUIT as the password:
    tlsfront passes it on unparsed, the backend decodes it as base64 and
    fails the authentication (535), and the session stays open."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    c, _ = open_session(tf, "starttls")
    with c:
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334, r
        r = c.cmd(B64_USER)
        assert r.code == 334, r
        r = c.cmd("QUIT")
        assert r.code == 535, "QUIT inside an AUTH exchange was not SASL data: %r" % r
        assert wait_until(lambda: auth_backend.attempt_list(), 5)
        assert auth_backend.attempt_list() == [("LOGIN", b"alice", base64.b64decode("QUIT"))]
        r = c.cmd("NOOP")
        assert r.code == 250, r
        r = c.cmd("QUIT")
        assert r.code == 221, r
        assert c.is_closed(5)
    summary = summary_of(tf, c.local)
    assert summary["auth"] == "no" and summary["reason"] == "quit", summary
    assert summary["user"] == "none", summary  # the name of a 535 is forgotten


def test_s3_6_auth_cancel_and_commands_inside_exchange(tlsfront_factory, auth_backend):
    """Command-looking lines inside an AUTH exchange are SASL data: MAIL FROM
    as a PLAIN response is not a command (the backend cannot decode it), and
    '*' cancels at the backend (501); then a real AUTH still works."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    c, _ = open_session(tf, "starttls")
    with c:
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334, r
        r = c.cmd("*")
        assert r.code == 501, r
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334, r
        r = c.cmd("MAIL FROM:<x@example.org>")
        assert r.code == 501, "MAIL inside AUTH PLAIN was taken as a command: %r" % r
        assert auth_backend.handler.mail_from == []
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334, r
        r = c.cmd(PLAIN_PAYLOAD)
        assert r.code == 235, r
        assert c.cmd("QUIT").code == 221
    summary = summary_of(tf, c.local)
    assert summary["auth"] == "yes" and summary["user"] == USER, summary


def test_s3_6_password_never_logged_at_debug(tlsfront_factory, auth_backend):
    """log.level = debug, AUTH permitted everywhere, in every phase: AUTH
    LOGIN with a wrong password, then AUTH PLAIN (empty initial response)
    with the right one. Neither the passwords nor any SASL payload reach
    tlsfront's stderr."""
    tf = start_front(tlsfront_factory, auth_backend.port, tcp_auth=True, tls_auth=True,
                     tls_enabled=True, log_level="debug")
    wrong = "hunter2-Wrong"
    for phase in ("plaintext", "starttls", "tls_port"):
        c, _ = open_session(tf, phase)
        with c:
            assert c.cmd("AUTH LOGIN").code == 334
            assert c.cmd(B64_USER).code == 334
            r = c.cmd(base64.b64encode(wrong.encode()).decode())
            assert r.code == 535, (phase, r)
            assert c.cmd("AUTH PLAIN").code == 334
            r = c.cmd(PLAIN_PAYLOAD)
            assert r.code == 235, (phase, r)
            assert c.cmd("QUIT").code == 221
        summary = summary_of(tf, c.local)
        assert summary["auth"] == "yes" and summary["user"] == USER, (phase, summary)
    log = tf.log_text()
    assert "event=connect" in log, "not a debug log:\n" + log
    secrets = [PASSWORD, B64_PASSWORD, PLAIN_PAYLOAD, B64_USER, wrong,
               base64.b64encode(wrong.encode()).decode(),
               # the base64 of the password at the three alignments a log
               # line could hold it in a longer blob
               base64.b64encode(b"\0" + PASSWORD.encode()).decode()[2:-2],
               base64.b64encode(b"\0\0" + PASSWORD.encode()).decode()[3:-2]]
    leaked = [s for s in secrets if s in log]
    assert not leaked, "secrets %r in tlsfront's log:\n%s" % (leaked, log)
    assert len(auth_backend.attempt_list()) == 6


def test_s3_6_summary_user_cram_md5(tlsfront_factory, cram_backend):
    """smtplib's CRAM-MD5 over STARTTLS: the user of the response line
    ("user SP digest") is the summary's user; a failed CRAM-MD5 names no
    one."""
    tf = start_front(tlsfront_factory, cram_backend.port)
    sessions = []
    for password in ("wrong", PASSWORD):
        s = smtplib_session(tf, "starttls")
        try:
            assert "CRAM-MD5" in s.esmtp_features.get("auth", "").upper(), s.esmtp_features
            sessions.append(local_of(s.sock))
            s.user, s.password = USER, password
            if password == PASSWORD:
                code, _ = s.auth("CRAM-MD5", s.auth_cram_md5, initial_response_ok=False)
                assert code == 235
            else:
                with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                    s.auth("CRAM-MD5", s.auth_cram_md5, initial_response_ok=False)
                assert e.value.smtp_code == 535
            s.quit()
        finally:
            s.close()
    assert [a[:2] for a in cram_backend.attempt_list()] == [("CRAM-MD5", b"alice")] * 2
    failed, ok = (summary_of(tf, local) for local in sessions)
    assert failed["auth"] == "no" and failed["user"] == "none", failed
    assert ok["auth"] == "yes" and ok["user"] == USER, ok
    assert_no_password(tf, PASSWORD, "wrong")


def test_s3_6_summary_user_quoted_and_login_initial_response(tlsfront_factory, auth_backend):
    """A user name holding a space, '"', '\\' and '=' is logged quoted and
    escaped: the summary stays one key=value line that parses back to the
    name. AUTH LOGIN with the user name as initial response names the user
    too. Passwords never appear."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    c, _ = open_session(tf, "starttls")
    with c:
        payload = base64.b64encode(b"\0" + ODD_USER.encode() + b"\0" + ODD_PASSWORD.encode())
        r = c.cmd("AUTH PLAIN " + payload.decode())
        assert r.code == 235, r
        assert c.cmd("QUIT").code == 221
    summary = summary_of(tf, c.local)
    assert summary["user"] == ODD_USER, summary
    assert summary["auth"] == "yes" and summary["reason"] == "quit", summary
    [line] = [l for l in tf.log_text().splitlines()
              if "event=session" in l and "client=%s " % c.local in l]
    assert 'user="bob \\"the\\" b\\\\uilder x=1" auth=yes ' in line, line

    c, _ = open_session(tf, "starttls")
    with c:
        r = c.cmd("AUTH LOGIN " + B64_USER)
        assert r.code == 334, r
        r = c.cmd(B64_PASSWORD)
        assert r.code == 235, r
        assert c.cmd("QUIT").code == 221
    summary = summary_of(tf, c.local)
    assert summary["user"] == USER and summary["auth"] == "yes", summary
    assert auth_backend.attempt_list() == [("PLAIN", ODD_USER.encode(), ODD_PASSWORD.encode()),
                                           ("LOGIN", b"alice", b"s3cret")]
    assert_no_password(tf, PASSWORD, ODD_PASSWORD)
    assert payload.decode() not in tf.log_text()


# ---- §3.5 require_tls ------------------------------------------------------------------

REFUSED_BEFORE_TLS = ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>", "DATA",
                      "VRFY alice", "EXPN staff", "XYZZY frobnicate", "BDAT 10 LAST",
                      "AUTH PLAIN " + PLAIN_PAYLOAD, "mail from:<lower@example.org>"]


def test_s3_5_require_tls_matrix(tlsfront_factory, auth_backend):
    """require_tls = true: before STARTTLS only EHLO HELO STARTTLS NOOP RSET
    HELP QUIT pass, every other command (unknown ones and AUTH too, even with
    tcp.name_and_password = true) gets 530 5.7.0 and never reaches the
    backend; after STARTTLS the same commands pass."""
    tf = start_front(tlsfront_factory, auth_backend.port, require_tls=True, tcp_auth=True,
                     tls_enabled=True)
    failures = []
    with tf.connect() as c:
        c.greeting()
        r = c.ehlo()
        if "STARTTLS" not in r.keywords():
            failures.append("EHLO without STARTTLS: %r" % r)
        for line in ("HELO client.test", "EHLO client.test", "NOOP", "RSET", "HELP"):
            r = c.cmd(line)
            if not 200 <= r.code < 300:
                failures.append("before STARTTLS %r -> %r (want the backend's 2xx)" % (line, r))
        for line in REFUSED_BEFORE_TLS:
            r = c.cmd(line)
            if (r.code, r.enhanced) != (530, "5.7.0"):
                failures.append("before STARTTLS %r -> %r (want 530 5.7.0)" % (line, r))
        if auth_backend.handler.mail_from or auth_backend.attempt_list():
            failures.append("commands reached the backend before TLS: MAIL %r AUTH %r"
                            % (auth_backend.handler.mail_from, auth_backend.attempt_list()))

        c.starttls()
        c.ehlo()
        r = c.cmd("VRFY alice")
        if r.code == 530:
            failures.append("after STARTTLS VRFY -> %r" % r)
        r = c.cmd("XYZZY frobnicate")
        if r.code == 530 or r.code != 500:
            failures.append("after STARTTLS an unknown command -> %r (want the backend's 500)"
                            % r)
        r = c.cmd("AUTH PLAIN " + PLAIN_PAYLOAD)
        if r.code != 235:
            failures.append("after STARTTLS AUTH -> %r" % r)
        r = c.cmd("MAIL FROM:<alice@example.org>")
        if r.code != 250:
            failures.append("after STARTTLS MAIL -> %r" % r)
        r = c.cmd("RCPT TO:<bob@example.net>")
        if r.code != 250:
            failures.append("after STARTTLS RCPT -> %r" % r)
        r = c.cmd("DATA")
        if r.code != 354:
            failures.append("after STARTTLS DATA -> %r" % r)
        else:
            c.send(MESSAGE + b".\r\n")
            r = c.read_reply()
            if r.code != 250:
                failures.append("end of data -> %r" % r)
        r = c.cmd("QUIT")
        if r.code != 221:
            failures.append("QUIT -> %r" % r)
    if not auth_backend.wait_messages(1, 5):
        failures.append("no message at the backend")
    elif auth_backend.handler.mail_from != ["alice@example.org"]:
        failures.append("backend MAIL FROMs: %r" % auth_backend.handler.mail_from)

    # The TLS port's sessions are TLS sessions: require_tls does not stop them.
    with tls_port_client(tf.tls_port) as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("MAIL FROM:<carol@example.org>")
        if r.code != 250:
            failures.append("TLS port MAIL -> %r" % r)
        c.cmd("QUIT")
    assert not failures, "\n".join(failures) + "\n---- log ----\n" + tf.log_text()[-6000:]


def test_s3_5_require_tls_quit_before_starttls(tlsfront_factory, auth_backend):
    tf = start_front(tlsfront_factory, auth_backend.port, require_tls=True)
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("QUIT")
        assert r.code == 221, r
        assert c.is_closed(5)
    assert summary_of(tf, c.local)["reason"] == "quit"


@pytest.mark.parametrize("order", ["starttls_first", "require_tls_first"])
def test_s2_s3_5_require_tls_without_starttls_is_config_error(tmp_path, tlsfront_bin, order):
    """require_tls = true with starttls = false: FILE:LINE (the later of the
    two keys), exit 1, for -t and for a real start, which binds nothing."""
    port = free_port()
    keys = ["    starttls = false;", "    require_tls = true;"]
    if order == "require_tls_first":
        keys.reverse()
    text = ("backend = { address = \"127.0.0.1:%d\"; };\n"
            "inbound = {\n  tcp = {\n    listen = [ \"127.0.0.1:%d\" ];\n%s\n%s\n  };\n};\n"
            % (free_port(), port, keys[0], keys[1]))
    path = str(tmp_path / "require_tls.conf")
    with open(path, "w") as f:
        f.write(text)
    later_line = text.splitlines().index(keys[1]) + 1
    p = run_tool([tlsfront_bin, "-t", "-c", path], timeout=20)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, (p.returncode, err)
    assert re.search(r"(^|\n)%s:%d: " % (re.escape(path), later_line), err), (later_line, err)
    assert "require_tls" in err, err

    p = run_tool([tlsfront_bin, "-c", path], timeout=20)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, (p.returncode, err)
    assert "%s:%d: " % (path, later_line) in err, err
    assert "event=listening" not in err, err


def _port_25_free():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 25))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_s3_5_require_tls_on_port_25_warns(tlsfront_factory, auth_backend):
    """require_tls on a listener bound to port 25: allowed, with a warning at
    start (RFC 3207 §4); on another port, no such warning."""
    if not _port_25_free():
        pytest.skip("cannot bind 127.0.0.1:25 here (not root, or something listens there)")
    text = policy_config(auth_backend.port, 25, free_port(), require_tls=True)
    try:
        tf = tlsfront_factory(config_text=text)
    except tfhelpers.StartError as e:
        if "in use" in e.tf.log_text() or "permission" in e.tf.log_text().lower():
            pytest.skip("127.0.0.1:25 was taken: " + e.tf.log_text()[-300:])
        raise
    assert tf.port == 25
    warn = wait_until(lambda: [l for l in tf.log_text().splitlines()
                               if "level=warn" in l and "require_tls" in l], 5)
    assert warn, "no warning for require_tls on port 25:\n" + tf.log_text()
    assert "127.0.0.1:25" in warn[0] or "25" in warn[0], warn
    # It is allowed: the listener serves, and still requires TLS.
    with tf.connect() as c:
        c.greeting()
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@example.org>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r
        c.cmd("QUIT")

    other = start_front(tlsfront_factory, auth_backend.port, require_tls=True)
    tfhelpers.wait_until(lambda: other.events("started"), 5)
    assert not [l for l in other.log_text().splitlines()
                if "level=warn" in l and "require_tls" in l], other.log_text()


# ---- §3.4 AUTH keywords, §3.2 / §7.3 AUTH lines -------------------------------------------

def test_s3_4_auth_keyword_forms_removed_and_kept(tlsfront_factory, raw_backend_factory):
    """Both the AUTH and the old AUTH= keyword (any case) are removed while
    AUTH is not permitted, the last line's '250 ' mark being fixed; after
    STARTTLS (tls.name_and_password true) they pass."""
    backend = raw_backend_factory(ehlo_extra=["auth=PLAIN LOGIN", "AUTH PLAIN LOGIN"])
    tf = start_front(tlsfront_factory, backend.port)
    with tf.connect() as c:
        c.greeting()
        r = c.ehlo()
        assert not [l for l in r.lines if "AUTH" in l.upper()], r
        assert r.lines[-1].startswith("250 ") and all(l.startswith("250-") for l in r.lines[:-1])
        c.starttls()
        r = c.ehlo()
        auth = [l[4:] for l in r.lines if "AUTH" in l.upper()]
        assert auth == ["auth=PLAIN LOGIN", "AUTH PLAIN LOGIN"], r
        assert r.lines[-1] == "250 AUTH PLAIN LOGIN", r
        c.cmd("QUIT")


def test_s3_2_auth_lines_up_to_12288_octets(tlsfront_factory, raw_backend):
    """line_length = 2048, but an AUTH line may hold up to 12288 octets (CRLF
    included): one of 12288 reaches the backend whole; one of 12289 is
    tlsfront's 500 5.5.2 and never reaches it; the session goes on."""
    tf = start_front(tlsfront_factory, raw_backend.port)
    c, _ = open_session(tf, "starttls")
    with c:
        fits = "AUTH PLAIN " + "A" * (12288 - 2 - len("AUTH PLAIN "))
        c.send(fits.encode() + b"\r\n")
        c.read_reply()  # the raw backend does not know AUTH: its own 500
        assert wait_until(lambda: fits in raw_backend.command_texts(), 5), \
            "the 12288-octet AUTH line did not reach the backend whole"
        too_long = "AUTH PLAIN " + "B" * (12289 - 2 - len("AUTH PLAIN "))
        r = c.cmd(too_long)
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        r = c.cmd("NOOP")
        assert r.code == 250, r
        assert not [t for t in raw_backend.command_texts() if t.startswith("AUTH PLAIN B")]
        c.cmd("QUIT")


def test_s7_3_auth_continuation_with_nul_cancels_exchange(tlsfront_factory, auth_backend):
    """A SASL line holding a NUL: 500 5.5.2 to the client, '*' to the backend
    (whose 501 the client never sees); the next command gets its own reply.
    A continuation ending in a bare LF is forwarded as a line."""
    tf = start_front(tlsfront_factory, auth_backend.port)
    c, _ = open_session(tf, "starttls")
    with c:
        assert c.cmd("AUTH LOGIN").code == 334
        c.send(b"YWxp\x00Y2U=\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (500, "5.5.2"), r
        r = c.cmd("NOOP")
        assert r.code == 250, "reply out of order after the cancelled AUTH: %r" % r
        assert auth_backend.attempt_list() == []

        assert c.cmd("AUTH LOGIN").code == 334
        c.send(B64_USER.encode() + b"\n")
        r = c.read_reply()
        assert r.code == 334, r
        c.send(B64_PASSWORD.encode() + b"\n")
        r = c.read_reply()
        assert r.code == 235, r
        assert c.cmd("QUIT").code == 221
    assert auth_backend.attempt_list() == [("LOGIN", b"alice", b"s3cret")]
    assert summary_of(tf, c.local)["auth"] == "yes"


# ---- §3.1, §3.5, §7.5 the TLS port's handshake --------------------------------------

def test_s3_5_s7_5_tls_port_silent_client_handshake_timeout(tlsfront_factory, raw_backend):
    """A client that connects to the TLS port and sends nothing is closed
    once tls.handshake_timeout (1 s) has passed, without a word; its summary
    says listener=tls tls=none reason=timeout, and the backend was never
    connected (§3.1: on the TLS port the handshake comes first)."""
    tf = start_front(tlsfront_factory, raw_backend.port, tls_enabled=True, handshake_timeout=1)
    t0 = time.monotonic()
    with SmtpClient(tf.tls_port) as c:
        data = c.read_until_closed(IO_TIMEOUT)
        waited = time.monotonic() - t0
    assert data == b"", data
    assert 0.9 <= waited <= 8, waited
    summary = summary_of(tf, c.local)
    assert summary["listener"] == "tls", summary
    assert summary["tls"] == "none" and summary["cipher"] == "none", summary
    assert summary["reason"] == "timeout", summary
    assert summary["bytes_in"] == "0" and summary["bytes_out"] == "0", summary
    assert tf.wait_event("tls_timeout")[0]["client"] == c.local
    assert raw_backend.connections == 0 and raw_backend.command_texts() == []


def test_s3_5_s7_5_tls_port_plaintext_client_is_a_tls_error(tlsfront_factory, raw_backend):
    """A client that speaks plaintext SMTP on the TLS port fails the
    handshake: closed with no SMTP reply, summary listener=tls tls=none
    reason=tls_error, and not one byte reaches the backend (it is never
    connected). handshake_timeout is long here so that a slow machine cannot
    turn the failure into a timeout; the failure comes at once."""
    tf = start_front(tlsfront_factory, raw_backend.port, tls_enabled=True, handshake_timeout=10)
    t0 = time.monotonic()
    with SmtpClient(tf.tls_port) as c:
        c.send(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        data = c.read_until_closed(IO_TIMEOUT)
        waited = time.monotonic() - t0
    # Perhaps a TLS alert record, never an SMTP reply.
    assert not re.match(rb"\d{3}[ -]", data), data
    assert waited < 9, waited  # not the handshake timeout
    summary = summary_of(tf, c.local)
    assert summary["listener"] == "tls", summary
    assert summary["tls"] == "none" and summary["cipher"] == "none", summary
    assert summary["reason"] == "tls_error", summary
    assert summary["bytes_in"] == "0" and summary["messages"] == "0", summary
    assert [e for e in tf.events("tls_error") if e.get("client") == c.local], tf.log_text()
    time.sleep(0.2)  # a late connection to the backend would show by now
    assert raw_backend.connections == 0, raw_backend.connections
    assert raw_backend.raw == [] and raw_backend.command_texts() == []
