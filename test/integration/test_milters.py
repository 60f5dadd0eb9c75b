"""Milters (issue 14): tlsfront speaks the milter protocol (version 6) to the
milters of inbound.milters and outbound.milters.

Real components only: the test milter is milter_script.py (python3-milter,
libmilter) run as a subprocess on a loopback port (or a Unix socket), whose
answers each test chooses with a rules file and which logs every event and
macro it is given; DKIM is a real OpenDKIM (opendkim -f) with a key made by
opendkim-genkey, and signatures are checked with python3-dkim. The backend
(and the outbound peer) is aiosmtpd recording every envelope and content;
the clients are smtplib or tfhelpers.SmtpClient, over STARTTLS.

What tlsfront must do (issue 14):
- inbound, the milters get connect, HELO, MAIL, RCPT, DATA, the header
  fields, end of headers, the body and end of message, with the macros
  Postfix sends (j, _, {daemon_name}, {client_addr}, {client_port}, i,
  {auth_type}, {auth_authen}, {tls_version}, {cipher}, {cipher_bits},
  {mail_addr}, {rcpt_addr}, ...);
- a reject or tempfail at MAIL/RCPT refuses that command with the
  milter's reply ("550 5.7.1 Command rejected", "451 4.7.1 Service
  unavailable - try again later", or the setreply code and text) and the
  backend never sees the command;
- the message is held until every milter answered end of message; then the
  modified message goes to the backend. Reject/tempfail at end of message:
  the milter's reply, the backend gets nothing; discard: 250, the backend
  gets nothing. Add/insert/change/delete header, replace body, quarantine
  (the header "X-Tlsfront-Quarantine: REASON"), add/delete recipient,
  change sender;
- default_action (accept, tempfail, reject) applies to a milter that cannot
  be reached, times out (timeout seconds per reply) or breaks the protocol;
- with milters, EHLO advertises SIZE = min(backend's, message_size_limit);
  a larger message gets 552 5.3.4;
- outbound, the milters (OpenDKIM signing) change what the peer receives.

The test_fixture_* tests check the fixtures themselves (the test milter,
OpenDKIM signing and verifying) under a private Postfix (smtpd_milters,
see postfix_backend.py): they need no tlsfront milter support.

Every socket operation has a timeout, every loop is bounded, only
127.0.0.1 is used, and every process is stopped by the fixture that
started it.
"""
import hashlib
import json
import os
import random
import re
import signal
import smtplib
import subprocess
import time

import pytest

import postfix_backend
import tfhelpers
from tfhelpers import (HOST, IO_TIMEOUT, SmtpClient, free_port, insecure_context,
                       is_sanitized_build, tlsfront_bin, wait_until)

PYTHON = "/usr/bin/python3"
MILTER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "milter_script.py")
OPENDKIM = "/usr/sbin/opendkim"
OPENDKIM_GENKEY = "/usr/sbin/opendkim-genkey"
START_TIMEOUT = 15.0  # seconds for a milter or OpenDKIM to listen

TEMPFAIL_LINE = "451 4.7.1 Service unavailable - try again later"
REJECT_LINE = "550 5.7.1 Command rejected"

MSG = (b"From: Alice <alice@example.org>\r\n"
       b"To: Bob <bob@example.net>\r\n"
       b"Subject: original subject\r\n"
       b"X-Remove: remove me\r\n"
       b"Message-ID: <milter-test-1@example.org>\r\n"
       b"\r\n"
       b"Hello milters.\r\n"
       b"Second line.\r\n")
SENDER = "alice@example.org"
RCPT = "bob@example.net"


# ---- helpers ------------------------------------------------------------------------

def listening_tcp(port):
    """A TCP socket listens on 127.0.0.1:port (read from /proc/net/tcp: no
    probe connection that a milter would log)."""
    return postfix_backend.is_listening(port, HOST)


def listening_unix(path):
    try:
        with open("/proc/net/unix") as f:
            return any(line.rstrip("\n").endswith(" " + path) for line in f)
    except OSError:
        return False


def split_message(content):
    """(header fields [(name, value)], body bytes) of a CRLF message; folded
    fields unfolded (CRLF removed), the value without the space after the
    colon."""
    head, sep, body = content.partition(b"\r\n\r\n")
    assert sep, "no empty line in %r" % content[:500]
    fields = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line.decode("latin-1"))
            continue
        name, colon, value = line.decode("latin-1").partition(":")
        assert colon, "not a header field: %r" % line
        fields.append((name, value[1:] if value.startswith(" ") else value))
    return fields, body


def without_field(content, name):
    """content with every field of that name (and its continuation lines)
    taken out of the header section."""
    head, sep, body = content.partition(b"\r\n\r\n")
    kept, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == name.lower().encode()
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def header_values(content, name):
    return [v for n, v in split_message(content)[0] if n.lower() == name.lower()]


def starttls_client(port, ehlo="client.test"):
    """SmtpClient after greeting, EHLO, STARTTLS and EHLO again; returns
    (client, the second EHLO reply)."""
    c = SmtpClient(port)
    c.greeting()
    c.ehlo(ehlo)
    c.starttls()
    return c, c.ehlo(ehlo)


def deliver(port, msg=MSG, sender=SENDER, rcpts=(RCPT,), login=None):
    """smtplib over STARTTLS; returns sendmail's refused dict."""
    with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        s.starttls(context=insecure_context())
        s.ehlo()
        if login:
            s.login(*login)
        refused = s.sendmail(sender, list(rcpts), msg)
        s.quit()
    return refused


def transaction(c, msg=MSG, sender=SENDER, rcpts=(RCPT,), mail_args=""):
    """MAIL, RCPT..., DATA and the message on an open client; stops at the
    first reply that refuses. Returns [(step, Reply)] up to that reply."""
    steps = [("mail", "MAIL FROM:<%s>%s" % (sender, mail_args))]
    steps += [("rcpt", "RCPT TO:<%s>" % r) for r in rcpts]
    out = []
    for step, line in steps:
        r = c.cmd(line)
        out.append((step, r))
        if r.code != 250:
            return out
    r = c.cmd("DATA")
    out.append(("data", r))
    if r.code != 354:
        return out
    c.send(re.sub(rb"(?m)^\.", b"..", msg) + b".\r\n")
    out.append(("eom", c.read_reply()))
    return out


def first_refusal(steps):
    for step, r in steps:
        if r.code >= 400:
            return step, r
    return None, None


def stop_milter_process(proc):
    """SIGTERM, then SIGKILL after a second: libmilter notices SIGTERM only
    when its listener's poll times out (about 5 s), and neither milter here
    has anything left to write."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(1)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# ---- the test milter --------------------------------------------------------------------

class ScriptMilter:
    """milter_script.py running with the given rules; .socket is what
    tlsfront's configuration names ("inet:127.0.0.1:PORT" or
    "unix:/path")."""

    def __init__(self, directory, name, rules, kind="inet"):
        self.name = name
        self.rules_path = os.path.join(directory, name + ".rules.json")
        self.log_path = os.path.join(directory, name + ".events.jsonl")
        self.out_path = os.path.join(directory, name + ".out")
        with open(self.rules_path, "w") as f:
            json.dump(rules or {}, f)
        self.proc = None
        why = ""
        for _attempt in range(3):
            if kind == "unix":
                path = os.path.join(directory, name + ".sock")
                spec, self.socket = "unix:" + path, "unix:" + path
                ready = lambda: listening_unix(path)  # noqa: E731
            else:
                port = free_port()
                spec, self.socket = "inet:%d@%s" % (port, HOST), "inet:%s:%d" % (HOST, port)
                ready = lambda: listening_tcp(port)  # noqa: E731
            with open(self.out_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [PYTHON, MILTER_SCRIPT, "--socket", spec, "--rules", self.rules_path,
                     "--log", self.log_path, "--name", name],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            wait_until(lambda: self.proc.poll() is not None or ready(), START_TIMEOUT)
            if self.proc.poll() is None and ready():
                return
            why = self.output()
            self.stop()
        raise AssertionError("test milter %s did not listen within %ss:\n%s"
                             % (name, START_TIMEOUT, why))

    def output(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    def entries(self):
        """Every complete line of the event log, parsed."""
        try:
            with open(self.log_path) as f:
                lines = f.read().split("\n")
        except OSError:
            return []
        out = []
        for line in lines[:-1]:  # the last one is "" or still being written
            out.append(json.loads(line))
        return out

    def events(self, event):
        return [e for e in self.entries() if e.get("event") == event]

    def wait_event(self, event, n=1, timeout=10.0):
        found = wait_until(lambda: len(self.events(event)) >= n, timeout)
        assert found, "test milter %s: fewer than %d %s events within %ss:\n%s\n%s" % (
            self.name, n, event, timeout, "\n".join(json.dumps(e) for e in self.entries()),
            self.output())
        return self.events(event)

    def stop(self):
        stop_milter_process(self.proc)


@pytest.fixture
def milter_factory(tmp_path):
    """milter_factory(rules=None, name="test", kind="inet"|"unix"): a
    running ScriptMilter, stopped at teardown."""
    made = []

    def start(rules=None, name="test", kind="inet"):
        m = ScriptMilter(str(tmp_path), "%s%d" % (name, len(made)), rules, kind)
        made.append(m)
        return m

    yield start
    for m in made:
        m.stop()


# ---- tlsfront with milters ----------------------------------------------------------------

def milter_entry(socket, name="test", default_action="tempfail", timeout=30,
                 connect_timeout=30):
    return ('{ name = "%s"; socket = "%s"; default_action = "%s"; timeout = %d; '
            'connect_timeout = %d; }' % (name, socket, default_action, timeout, connect_timeout))


def milters_list(milters):
    """The libconfig list of milters: entries (milter_entry() text), or
    ScriptMilter/OpenDkim objects (default settings)."""
    entries = [m if isinstance(m, str) else milter_entry(m.socket, name=m.name) for m in milters]
    return "( %s )" % ", ".join(entries)


def inbound_config(backend_port, milters, message_size_limit=None, idle_timeout=30):
    limit = ("message_size_limit = %d;" % message_size_limit) if message_size_limit else ""
    return f"""# written by test_milters.py
server_name = "mx.test";
workers = 1;
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = 5; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:0" ]; starttls = true; }};
  milters = {milters_list(milters)}; }};
limits = {{ idle_timeout = {idle_timeout}; line_length = 2048; max_errors = 10; shutdown_timeout = 5; {limit} }};
log = {{ level = "debug"; }};
tls = {{ priority = "NORMAL"; handshake_timeout = 10; }};
"""


@pytest.fixture
def milter_front(tlsfront_factory, aiosmtpd_backend):
    """milter_front(milters, **inbound_config options): tlsfront in front of
    the aiosmtpd backend with these inbound milters."""
    def start(milters, **kw):
        return tlsfront_factory(config_text=inbound_config(aiosmtpd_backend.port, milters,
                                                           **kw))
    return start


def no_message(backend, tf, client_local):
    """After the session ended: the backend got no message."""
    tf.session_of(client_local)
    time.sleep(0.3)
    assert backend.messages == [], backend.messages


# ---- what the milters see --------------------------------------------------------------

def test_milter_sees_every_event_and_postfix_macros(milter_factory, milter_front,
                                                    aiosmtpd_backend):
    m = milter_factory()
    tf = milter_front([m])
    c, _ = starttls_client(tf.port)
    with c:
        steps = transaction(c)
        assert steps[-1][0] == "eom" and steps[-1][1].code == 250, steps
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)
    # Without modifications the backend gets the message as sent.
    got = aiosmtpd_backend.messages[0]
    assert got["content"] == MSG
    assert got["mail_from"] == SENDER and got["rcpt_tos"] == [RCPT]

    eom = m.wait_event("eom")[0]
    client_ip, client_port = c.local.split(":")
    connect = m.events("connect")[0]
    assert connect["args"][2:] == [client_ip, client_port], connect
    helos = [e["args"][0] for e in m.events("helo")]
    assert helos and helos[-1] == "client.test", helos
    mail = m.events("mail")[0]
    assert mail["args"][0] == "<%s>" % SENDER, mail
    assert [e["args"][0] for e in m.events("rcpt")] == ["<%s>" % RCPT]
    assert m.events("data") and m.events("eoh")
    headers, body = split_message(MSG)
    assert [[n, v] for n, v in headers] == eom["headers"]
    assert eom["body"] == body.decode("latin-1")
    assert eom["body_size"] == len(body)

    # The macros Postfix sends (milter_*_macros), as libmilter hands them
    # to the milter.
    cm = connect["macros"]
    assert cm.get("j") == "mx.test", cm
    assert client_ip in cm.get("_", ""), cm
    assert cm.get("{client_addr}") == client_ip, cm
    assert cm.get("{client_port}") == client_port, cm
    assert cm.get("{daemon_name}"), cm
    mm = mail["macros"]
    assert re.fullmatch(r"TLSv1\.[23]", mm.get("{tls_version}", "")), mm
    assert mm.get("{cipher}"), mm
    assert re.fullmatch(r"\d+", mm.get("{cipher_bits}", "")) and \
        int(mm["{cipher_bits}"]) >= 128, mm
    assert mm.get("{mail_addr}") == SENDER, mm
    assert m.events("rcpt")[0]["macros"].get("{rcpt_addr}") == RCPT
    assert eom["macros"].get("i"), eom["macros"]
    assert "{auth_authen}" not in mm, mm  # no AUTH in this session


def test_milter_sees_auth_macros(milter_factory, tlsfront_factory):
    accounts = {b"alice": b"s3cret"}

    def authenticate(server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        ok = isinstance(auth_data, LoginPassword) and \
            accounts.get(auth_data.login) == auth_data.password
        return AuthResult(success=ok, handled=False)

    backend = tfhelpers.AiosmtpdBackend(server_hostname="auth.backend",
                                        authenticator=authenticate, auth_require_tls=False)
    try:
        m = milter_factory()
        tf = tlsfront_factory(config_text=inbound_config(backend.port, [m]))
        assert deliver(tf.port, login=("alice", "s3cret")) == {}
        assert backend.wait_messages(1)
        mm = m.wait_event("mail")[0]["macros"]
        assert mm.get("{auth_authen}") == "alice", mm
        assert mm.get("{auth_type}", "").upper() in ("PLAIN", "LOGIN"), mm
    finally:
        backend.stop()


# ---- verdicts at MAIL and RCPT ----------------------------------------------------------------

@pytest.mark.parametrize("result,reply,expected", [
    ("reject", ["550", "5.7.1", "No such user here"], "550 5.7.1 No such user here"),
    ("reject", None, REJECT_LINE),
    ("tempfail", None, TEMPFAIL_LINE),
    ("tempfail", ["450", "4.2.0", "Greylisted, come back later"],
     "450 4.2.0 Greylisted, come back later"),
])
def test_verdict_at_rcpt(milter_factory, milter_front, aiosmtpd_backend, result, reply,
                         expected):
    rule = {"at": "rcpt", "match": "blocked@", "result": result}
    if reply:
        rule["reply"] = reply
    m = milter_factory({"actions": [rule]})
    tf = milter_front([m])
    c, _ = starttls_client(tf.port)
    with c:
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        r = c.cmd("RCPT TO:<blocked@example.net>")
        assert r.lines == [expected], r
        r = c.cmd("RCPT TO:<%s>" % RCPT)
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(MSG + b".\r\n")
        assert c.read_reply().code == 250
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)
    # The backend never saw the refused RCPT.
    assert aiosmtpd_backend.handler.rcpt_to == [RCPT]
    assert aiosmtpd_backend.messages[0]["rcpt_tos"] == [RCPT]
    assert m.events("verdict")[0]["result"] == result


@pytest.mark.parametrize("result,reply,expected", [
    ("reject", ["553", "5.7.1", "Sender address not welcome"],
     "553 5.7.1 Sender address not welcome"),
    ("tempfail", None, TEMPFAIL_LINE),
])
def test_verdict_at_mail(milter_factory, milter_front, aiosmtpd_backend, result, reply,
                         expected):
    rule = {"at": "mail", "match": "spammer@", "result": result}
    if reply:
        rule["reply"] = reply
    m = milter_factory({"actions": [rule]})
    tf = milter_front([m])
    c, _ = starttls_client(tf.port)
    with c:
        r = c.cmd("MAIL FROM:<spammer@example.org>")
        assert r.lines == [expected], r
        # The session goes on: another sender is welcome.
        steps = transaction(c)
        assert steps[-1][0] == "eom" and steps[-1][1].code == 250, steps
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.handler.mail_from == [SENDER]


# ---- verdicts at end of message -----------------------------------------------------------------

@pytest.mark.parametrize("result,reply,expected", [
    ("tempfail", None, TEMPFAIL_LINE),
    ("reject", None, REJECT_LINE),
    ("reject", ["554", "5.7.1", "Spam detected"], "554 5.7.1 Spam detected"),
])
def test_verdict_at_end_of_message(milter_factory, milter_front, aiosmtpd_backend, result,
                                   reply, expected):
    rule = {"at": "eom", "result": result}
    if reply:
        rule["reply"] = reply
    m = milter_factory({"actions": [rule]})
    tf = milter_front([m])
    c, _ = starttls_client(tf.port)
    with c:
        steps = transaction(c)
        step, r = first_refusal(steps)
        assert step == "eom" and r.lines == [expected], steps
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)
    assert m.events("eom")


def test_discard_at_end_of_message(milter_factory, milter_front, aiosmtpd_backend):
    m = milter_factory({"actions": [{"at": "eom", "result": "discard"}]})
    tf = milter_front([m])
    c, _ = starttls_client(tf.port)
    with c:
        steps = transaction(c)
        assert steps[-1][0] == "eom" and steps[-1][1].code == 250, steps
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)
    assert m.events("verdict")[0]["result"] == "discard"


# ---- modifications ------------------------------------------------------------------------------

def modified(milter_factory, milter_front, backend, edits, msg=MSG, rcpts=(RCPT,), kind="inet"):
    """Sends msg through a milter making these edits; returns the backend's
    record of the message."""
    m = milter_factory({"edits": edits}, kind=kind)
    tf = milter_front([m])
    assert deliver(tf.port, msg=msg, rcpts=rcpts) == {}
    assert backend.wait_messages(1)
    m.wait_event("eom_done")
    assert not m.events("edit_error"), m.events("edit_error")
    return backend.messages[0]


def test_add_header(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "addheader", "name": "X-Milter", "value": "added by test"}])
    headers, body = split_message(got["content"])
    original, original_body = split_message(MSG)
    # Appended at the end of the header section; nothing else changed.
    assert headers == original + [("X-Milter", "added by test")], headers
    assert body == original_body


def test_insert_header(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "insheader", "index": 0, "name": "X-First", "value": "on top"}])
    headers, body = split_message(got["content"])
    assert headers == [("X-First", "on top")] + split_message(MSG)[0], headers
    assert got["content"].startswith(b"X-First: on top\r\n")


def test_change_header(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "chgheader", "name": "Subject", "index": 1,
                     "value": "changed subject"}])
    assert header_values(got["content"], "Subject") == ["changed subject"]
    assert b"original subject" not in got["content"]
    assert split_message(got["content"])[1] == split_message(MSG)[1]


def test_delete_header(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "delheader", "name": "X-Remove", "index": 1}])
    assert header_values(got["content"], "X-Remove") == []
    assert b"remove me" not in got["content"]
    expected = [h for h in split_message(MSG)[0] if h[0] != "X-Remove"]
    assert split_message(got["content"])[0] == expected


def test_replace_body(milter_factory, milter_front, aiosmtpd_backend):
    # More than one SMFIR_REPLBODY piece (65535 bytes at most each).
    rng = random.Random(14)
    lines = ["line %05d %s" % (i, "".join(rng.choice("abcdefghij") for _ in range(60)))
             for i in range(2500)]
    new_body = "\r\n".join(lines) + "\r\n"
    assert len(new_body) > 2 * 65536
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "replacebody", "body": new_body}])
    headers, body = split_message(got["content"])
    assert headers == split_message(MSG)[0]
    assert body == new_body.encode()


def test_quarantine(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "quarantine", "reason": "suspicious attachment"}])
    assert header_values(got["content"], "X-Tlsfront-Quarantine") == ["suspicious attachment"]
    assert split_message(got["content"])[1] == split_message(MSG)[1]


def test_add_recipient(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "addrcpt", "addr": "<archive@example.net>"}])
    assert sorted(got["rcpt_tos"]) == sorted([RCPT, "archive@example.net"])
    assert got["content"] == MSG


def test_delete_recipient(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "delrcpt", "addr": "<%s>" % RCPT}],
                   rcpts=(RCPT, "carol@example.net"))
    assert got["rcpt_tos"] == ["carol@example.net"]
    assert got["content"] == MSG


def test_change_sender(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "chgfrom", "addr": "<bounces@example.org>"}])
    assert got["mail_from"] == "bounces@example.org"
    # The backend saw the client's MAIL when the milters let it through,
    # then tlsfront's RSET and the milter's sender before the one message.
    assert aiosmtpd_backend.handler.mail_from[-1] == "bounces@example.org"
    assert got["content"] == MSG


def test_every_modification_at_once(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend, [
        {"op": "addheader", "name": "X-Milter", "value": "yes"},
        {"op": "chgheader", "name": "Subject", "index": 1, "value": "new"},
        {"op": "delheader", "name": "X-Remove", "index": 1},
        {"op": "replacebody", "body": "replaced\r\n"},
        {"op": "chgfrom", "addr": "<new@example.org>"},
        {"op": "addrcpt", "addr": "<extra@example.net>"},
        {"op": "delrcpt", "addr": "<%s>" % RCPT},
        {"op": "quarantine", "reason": "held"},
    ], rcpts=(RCPT, "carol@example.net"))
    assert got["mail_from"] == "new@example.org"
    assert sorted(got["rcpt_tos"]) == ["carol@example.net", "extra@example.net"]
    headers, body = split_message(got["content"])
    names = [n for n, _ in headers]
    assert "X-Remove" not in names
    assert ("X-Milter", "yes") in headers and ("Subject", "new") in headers
    assert ("X-Tlsfront-Quarantine", "held") in headers
    assert body == b"replaced\r\n"


def test_unix_socket_milter(milter_factory, milter_front, aiosmtpd_backend):
    got = modified(milter_factory, milter_front, aiosmtpd_backend,
                   [{"op": "addheader", "name": "X-Via", "value": "unix socket"}], kind="unix")
    assert header_values(got["content"], "X-Via") == ["unix socket"]


def test_two_milters_in_order(milter_factory, milter_front, aiosmtpd_backend):
    """The second milter sees the message as the first one left it (as in
    Postfix), and both changes reach the backend."""
    first = milter_factory({"edits": [{"op": "addheader", "name": "X-First", "value": "1"}]},
                           name="first")
    second = milter_factory({"edits": [{"op": "addheader", "name": "X-Second", "value": "2"}]},
                            name="second")
    tf = milter_front([first, second])
    assert deliver(tf.port) == {}
    assert aiosmtpd_backend.wait_messages(1)
    content = aiosmtpd_backend.messages[0]["content"]
    assert header_values(content, "X-First") == ["1"]
    assert header_values(content, "X-Second") == ["2"]
    seen = second.wait_event("eom")[0]["headers"]
    assert ["X-First", "1"] in seen, seen


# ---- default_action -----------------------------------------------------------------------------

LATE = {"op": "addheader", "name": "X-Too-Late", "value": "added after the timeout"}


@pytest.mark.parametrize("stage", ["rcpt", "eom"])
def test_never_answering_milter_tempfail(milter_factory, milter_front, aiosmtpd_backend, stage):
    m = milter_factory({"actions": [{"at": stage, "sleep": 15}], "edits": [LATE]})
    tf = milter_front([milter_entry(m.socket, default_action="tempfail", timeout=2)])
    c, _ = starttls_client(tf.port)
    with c:
        started = time.monotonic()
        steps = transaction(c)
        elapsed = time.monotonic() - started
        step, r = first_refusal(steps)
        assert step == stage and r.lines == [TEMPFAIL_LINE], steps
        # The milter's timeout (2 s) decided, not the milter.
        assert 1.5 <= elapsed < 10, elapsed
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)
    assert tf.events("milter_error"), tf.log_text()[-3000:]


@pytest.mark.parametrize("stage", ["rcpt", "eom"])
def test_never_answering_milter_accept(milter_factory, milter_front, aiosmtpd_backend, stage):
    m = milter_factory({"actions": [{"at": stage, "sleep": 15}], "edits": [LATE]})
    tf = milter_front([milter_entry(m.socket, default_action="accept", timeout=2)])
    c, _ = starttls_client(tf.port)
    with c:
        started = time.monotonic()
        steps = transaction(c)
        elapsed = time.monotonic() - started
        assert steps[-1][0] == "eom" and steps[-1][1].code == 250, steps
        assert 1.5 <= elapsed < 10, elapsed
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)
    # Delivered unmodified: the milter's late edit never applied.
    assert aiosmtpd_backend.messages[0]["content"] == MSG
    assert aiosmtpd_backend.messages[0]["rcpt_tos"] == [RCPT]
    assert tf.events("milter_error"), tf.log_text()[-3000:]


def unreachable_socket(tmp_path, kind):
    if kind == "unix":
        return "unix:%s" % os.path.join(str(tmp_path), "nobody-listens.sock")
    return "inet:%s:%d" % (HOST, free_port())


@pytest.mark.parametrize("kind", ["inet", "unix"])
def test_unreachable_milter_tempfail(tmp_path, milter_front, aiosmtpd_backend, kind):
    tf = milter_front([milter_entry(unreachable_socket(tmp_path, kind), name="gone",
                                    default_action="tempfail", timeout=2, connect_timeout=2)])
    c = SmtpClient(tf.port)
    with c:
        c.greeting()
        # Where the refusal comes (Postfix: at MAIL) is tlsfront's choice;
        # it is 451 4.7.1 and no message reaches the backend.
        steps = [("ehlo", c.cmd("EHLO client.test"))]
        if steps[0][1].code == 250:
            c.starttls()
            steps.append(("ehlo", c.cmd("EHLO client.test")))
            if steps[-1][1].code == 250:
                steps += transaction(c)
        step, r = first_refusal(steps)
        assert r is not None and r.code == 451 and r.enhanced == "4.7.1", steps
        assert step != "eom" or r.lines == [TEMPFAIL_LINE], steps
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)
    assert tf.events("milter_error"), tf.log_text()[-3000:]


@pytest.mark.parametrize("kind", ["inet", "unix"])
def test_unreachable_milter_accept(tmp_path, milter_front, aiosmtpd_backend, kind):
    tf = milter_front([milter_entry(unreachable_socket(tmp_path, kind), name="gone",
                                    default_action="accept", timeout=2, connect_timeout=2)])
    assert deliver(tf.port) == {}
    assert aiosmtpd_backend.wait_messages(1)
    assert aiosmtpd_backend.messages[0]["content"] == MSG
    assert tf.events("milter_error"), tf.log_text()[-3000:]


def test_unreachable_milter_reject(tmp_path, milter_front, aiosmtpd_backend):
    tf = milter_front([milter_entry(unreachable_socket(tmp_path, "inet"), name="gone",
                                    default_action="reject", timeout=2, connect_timeout=2)])
    # As Postfix's milter_default_action = reject: every command of the
    # session is refused, from the first EHLO on.
    c = SmtpClient(tf.port)
    with c:
        c.greeting()
        r = c.cmd("EHLO client.test")
        assert r.code == 550, r
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        assert r.code // 100 == 5, r
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)


# ---- reload ---------------------------------------------------------------------------------

def reload_status(tf, timeout=10.0):
    """SIGHUP; the status of the next event=reload line ("ok", "error")."""
    def lines():
        return [l for l in tf.log_text().splitlines()
                if re.search(r"(^|\s)event=reload(\s|$)", l) and "status=" in l]
    before = len(lines())
    tf.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(lines()) > before, timeout), tf.log_text()
    return tfhelpers.parse_kv(lines()[before]), lines()[before]


def test_reload_applies_milters_to_new_sessions(milter_factory, milter_front,
                                                aiosmtpd_backend):
    """SIGHUP: a session open before it keeps its milters; a new one gets
    the new list (here: none); a list with an error is refused at
    FILE:LINE and the running one stays."""
    m = milter_factory({"actions": [{"at": "rcpt", "result": "reject"}]})
    tf = milter_front([m])
    before, _ = starttls_client(tf.port)
    with before:
        # A broken milter list: refused, the old configuration stays.
        with open(tf.config_path) as f:
            good = f.read()
        with open(tf.config_path, "w") as f:
            f.write(good.replace('default_action = "tempfail"', 'default_action = "maybe"'))
        kv, line = reload_status(tf)
        assert kv.get("status") == "failed", line
        assert re.search(r"\.conf:\d+: .*default_action", line), line
        step, r = first_refusal(transaction(before))
        assert (step, r.lines) == ("rcpt", [REJECT_LINE]), (step, r)
        before.cmd("RSET")

        with open(tf.config_path, "w") as f:
            f.write(re.sub(r"milters = \(.*?\); \}", "}", good, flags=re.S))
        kv, line = reload_status(tf)
        assert kv.get("status") == "ok", line
        # The session from before the reload keeps its generation.
        step, r = first_refusal(transaction(before))
        assert (step, r.lines) == ("rcpt", [REJECT_LINE]), (step, r)
        before.cmd("QUIT")
    assert deliver(tf.port) == {}
    assert aiosmtpd_backend.wait_messages(1)


# ---- size -----------------------------------------------------------------------------------------

def ehlo_size(reply):
    sizes = [l[4:].split(" ", 1) for l in reply.lines[1:] if l[4:].upper().startswith("SIZE")]
    assert len(sizes) == 1, reply
    return int(sizes[0][1]) if len(sizes[0]) > 1 else None


@pytest.mark.parametrize("backend_limit,limit,expected", [
    (5000000, None, 5000000),        # the backend's is smaller than the default 50 MiB
    (5000000, 100000, 100000),       # message_size_limit is smaller
    (5000000, 52428800, 5000000),
])
def test_size_advertised_with_milters(milter_factory, tlsfront_factory, backend_limit, limit,
                                      expected):
    backend = tfhelpers.AiosmtpdBackend(data_size_limit=backend_limit)
    try:
        m = milter_factory()
        tf = tlsfront_factory(config_text=inbound_config(backend.port, [m],
                                                         message_size_limit=limit))
        c, ehlo = starttls_client(tf.port)
        with c:
            assert ehlo_size(ehlo) == expected, ehlo
            c.cmd("QUIT")
    finally:
        backend.stop()


def sized_message(size, seed=5):
    rng = random.Random(seed)
    head = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: sized\r\n\r\n"
    lines = []
    total = len(head)
    for _ in range(size):  # bounded: each line adds at least 3 bytes
        if total >= size:
            break
        line = "".join(rng.choice("0123456789abcdef") for _ in range(76)).encode() + b"\r\n"
        lines.append(line)
        total += len(line)
    return head + b"".join(lines)


def test_message_above_message_size_limit_gets_552(milter_factory, milter_front,
                                                   aiosmtpd_backend):
    m = milter_factory()
    tf = milter_front([m], message_size_limit=100000)
    big = sized_message(200000)
    small = sized_message(5000, seed=6)
    c, ehlo = starttls_client(tf.port)
    with c:
        assert ehlo_size(ehlo) == 100000
        # No SIZE parameter: the content itself is too large.
        steps = transaction(c, msg=big)
        step, r = first_refusal(steps)
        assert step == "eom" and r.code == 552 and r.enhanced == "5.3.4", steps
        # The session goes on, and a message within the limit goes through.
        steps = transaction(c, msg=small)
        assert steps[-1][0] == "eom" and steps[-1][1].code == 250, steps
        c.cmd("QUIT")
    assert aiosmtpd_backend.wait_messages(1)
    time.sleep(0.3)
    assert [x["content"] for x in aiosmtpd_backend.messages] == [small]


def test_pipelined_mail_after_a_refused_big_message(milter_factory, milter_front,
                                                    aiosmtpd_backend):
    """The 552 for a message above message_size_limit is decided without
    the milters; a MAIL pipelined right behind the end of data is still
    answered (it goes to the milters at once)."""
    m = milter_factory()
    tf = milter_front([m], message_size_limit=100000)
    c, _ = starttls_client(tf.port)
    with c:
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd("DATA").code == 354
        c.send(sized_message(200000) + b".\r\nMAIL FROM:<%s>\r\n" % SENDER.encode())
        r = c.read_reply()
        assert r.code == 552, r
        r = c.read_reply()
        assert r.code == 250, r
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)


def test_declared_size_above_message_size_limit_gets_552(milter_factory, milter_front,
                                                         aiosmtpd_backend):
    m = milter_factory()
    tf = milter_front([m], message_size_limit=100000)
    big = sized_message(200000)
    c, _ = starttls_client(tf.port)
    with c:
        # MAIL with SIZE=200000: refused at MAIL (as Postfix does) or, at
        # the latest, at the end of the content; never delivered.
        steps = transaction(c, msg=big, mail_args=" SIZE=%d" % len(big))
        step, r = first_refusal(steps)
        assert step in ("mail", "eom") and r.code == 552 and r.enhanced == "5.3.4", steps
        c.cmd("QUIT")
    no_message(aiosmtpd_backend, tf, c.local)


def big_message(size, seed=20):
    """CRLF lines of random base64 text (at most 900 octets), some starting
    with a dot."""
    import base64
    rng = random.Random(seed)
    text = base64.b64encode(rng.randbytes(size * 3 // 4 + 1024))
    head = b"From: big@example.org\r\nTo: rcpt@example.net\r\nSubject: 20 MiB\r\n\r\n"
    parts = [head]
    total, pos, n = len(head), 0, 0
    while total < size:
        length = rng.randint(0, 900)
        line = text[pos:pos + length]
        pos = pos + length if pos + length < len(text) else 0
        if n % 7 == 0:
            line = b"." + line[1:]
        parts.append(line + b"\r\n")
        total += len(line) + 2
        n += 1
    return b"".join(parts)


# Growth of tlsfront's peak RSS (VmHWM) allowed while it holds a 20 MiB
# message for a milter: the message must go to memory only up to a bound,
# then to an unlinked temporary file.
RSS_GROWTH_BOUND_KIB = 12 * 1024


def test_twenty_mib_message_through_a_milter(milter_factory, milter_front, aiosmtpd_backend):
    m = milter_factory()
    tf = milter_front([m])
    msg = big_message(20 * 1024 * 1024)
    with smtplib.SMTP(HOST, tf.port, local_hostname="big.test", timeout=120) as s:
        s.ehlo()
        s.starttls(context=insecure_context())
        s.ehlo()
        before_kib = tf.vm_hwm_kib()
        assert s.sendmail("big@example.org", ["rcpt@example.net"], msg) == {}
        after_kib = tf.vm_hwm_kib()
        s.quit()
    assert aiosmtpd_backend.wait_messages(1, timeout=60)
    got = aiosmtpd_backend.messages[0]["content"]
    assert len(got) == len(msg)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(msg).hexdigest()
    # The milter got the whole body.
    eom = m.wait_event("eom")[0]
    body = msg.partition(b"\r\n\r\n")[2]
    assert eom["body_size"] == len(body)
    assert eom["body_sha256"] == hashlib.sha256(body).hexdigest()
    print("tlsfront VmHWM: %d KiB before, %d KiB after a 20 MiB message held for a milter"
          % (before_kib, after_kib))
    if os.environ.get("TLSFRONT_SANITIZED") == "1" or is_sanitized_build(tlsfront_bin()):
        return
    assert after_kib - before_kib < RSS_GROWTH_BOUND_KIB, \
        "holding the message grew the peak RSS by %d KiB" % (after_kib - before_kib)


# ---- OpenDKIM -----------------------------------------------------------------------------------

DKIM_DOMAIN = "example.test"
DKIM_SELECTOR = "sel"
DKIM_MSG = (b"From: Alice <alice@example.test>\r\n"
            b"To: Bob <bob@peer.test>\r\n"
            b"Subject: DKIM through tlsfront\r\n"
            b"Date: Sun, 06 Dec 2026 06:00:00 +0000\r\n"
            b"Message-ID: <dkim-1@example.test>\r\n"
            b"\r\n"
            b"Signed on the way out.\r\n")


def require_opendkim():
    for tool in (OPENDKIM, OPENDKIM_GENKEY):
        if not os.access(tool, os.X_OK):
            postfix_backend.require_or_skip("%s not installed" % tool)
    try:
        import dkim  # noqa: F401
    except ImportError:
        postfix_backend.require_or_skip("python3-dkim not installed")


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
    """A 2048-bit key for sel._domainkey.example.test from opendkim-genkey:
    dir, private (path), private_pem (bytes), record (the TXT record),
    keys_file (for OpenDKIM's TestPublicKeys), dnsfunc (for dkim.verify)."""
    require_opendkim()
    d = str(tmp_path_factory.mktemp("dkim"))
    subprocess.run([OPENDKIM_GENKEY, "-b", "2048", "-d", DKIM_DOMAIN, "-s", DKIM_SELECTOR,
                    "-D", d], check=True, timeout=60, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    with open(os.path.join(d, DKIM_SELECTOR + ".txt")) as f:
        txt = f.read()
    # sel.txt: sel._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." )
    joined = "".join(re.findall(r'"([^"]*)"', txt))
    p = re.search(r"\bp=([A-Za-z0-9+/=]+)", joined)
    assert p, txt
    record = "v=DKIM1; k=rsa; p=%s" % p.group(1)
    name = "%s._domainkey.%s" % (DKIM_SELECTOR, DKIM_DOMAIN)
    keys_file = os.path.join(d, "keys.txt")
    with open(keys_file, "w") as f:
        f.write("%s %s\n" % (name, record))
    private = os.path.join(d, DKIM_SELECTOR + ".private")
    with open(private, "rb") as f:
        private_pem = f.read()

    def dnsfunc(qname, timeout=5):
        q = qname.decode() if isinstance(qname, bytes) else qname
        if q.rstrip(".").lower() == name:
            return record.encode()
        return None

    return {"dir": d, "private": private, "private_pem": private_pem, "record": record,
            "keys_file": keys_file, "dnsfunc": dnsfunc}


class OpenDkim:
    """opendkim -f -x CONF on 127.0.0.1 (Mode s: signs mail of example.test
    from loopback clients; Mode v: verifies, keys from TestPublicKeys,
    authserv-id verify.test)."""

    def __init__(self, directory, key, mode, name):
        self.name = name
        self.out_path = os.path.join(directory, name + ".out")
        self.conf_path = os.path.join(directory, name + ".conf")
        self.proc = None
        why = ""
        for _attempt in range(3):
            self.port = free_port()
            self.socket = "inet:%s:%d" % (HOST, self.port)
            lines = [
                "Mode %s" % mode,
                "Socket inet:%d@%s" % (self.port, HOST),
                "Syslog no",
                "Background no",
                "PidFile %s" % os.path.join(directory, name + ".pid"),
                "UMask 007",
                "Canonicalization relaxed/simple",
                # The key lives under /tmp, which others may write.
                "RequireSafeKeys no",
                "AuthservID verify.test",
                "TestPublicKeys %s" % key["keys_file"],
                "AlwaysAddARHeader yes",
            ]
            if "s" in mode:
                lines += [
                    "Domain %s" % DKIM_DOMAIN,
                    "Selector %s" % DKIM_SELECTOR,
                    "KeyFile %s" % key["private"],
                    # Loopback clients are internal: their mail is signed.
                    "InternalHosts 127.0.0.1",
                    "ExternalIgnoreList 127.0.0.1",
                    "SignatureAlgorithm rsa-sha256",
                ]
            with open(self.conf_path, "w") as f:
                f.write("\n".join(lines) + "\n")
            with open(self.out_path, "ab") as out:
                self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", self.conf_path],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            wait_until(lambda: self.proc.poll() is not None or listening_tcp(self.port),
                       START_TIMEOUT)
            if self.proc.poll() is None and listening_tcp(self.port):
                return
            why = self.output()
            self.stop()
        raise AssertionError("opendkim (%s) did not listen within %ss:\n%s"
                             % (self.conf_path, START_TIMEOUT, why))

    def output(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    def stop(self):
        stop_milter_process(self.proc)


@pytest.fixture
def opendkim_factory(tmp_path, dkim_key):
    """opendkim_factory(mode="s"|"v"|"sv"): a running OpenDkim."""
    made = []

    def start(mode):
        o = OpenDkim(str(tmp_path), dkim_key, mode, "opendkim%d" % len(made))
        made.append(o)
        return o

    yield start
    for o in made:
        o.stop()


def dkim_sign(msg, key):
    import dkim
    sig = dkim.sign(msg, DKIM_SELECTOR.encode(), DKIM_DOMAIN.encode(), key["private_pem"],
                    canonicalize=(b"relaxed", b"simple"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def dkim_verify(msg, key):
    import dkim
    return dkim.verify(msg, dnsfunc=key["dnsfunc"])


def test_dkim_key_fixture(dkim_key):
    """The generated key signs and verifies with python3-dkim alone."""
    signed = dkim_sign(DKIM_MSG, dkim_key)
    assert dkim_verify(signed, dkim_key)
    assert not dkim_verify(signed.replace(b"Signed on", b"Forged on"), dkim_key)


def outbound_config(peer_port, milters):
    out_port = free_port()
    text = f"""# written by test_milters.py
server_name = "out.test";
workers = 1;
backend = {{ address = "127.0.0.1:{free_port()}"; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:0" ]; }}; }};
outbound = {{ enabled = true; listen = [ "127.0.0.1:{out_port}" ]; next_hop = "127.0.0.1:{peer_port}";
  tls = "none"; connect_timeout = 5; milters = {milters_list(milters)}; }};
limits = {{ idle_timeout = 30; }};
log = {{ level = "debug"; }};
tls = {{ priority = "NORMAL"; handshake_timeout = 5; }};
"""
    return text, out_port


def test_outbound_opendkim_signs(tlsfront_factory, opendkim_factory, dkim_key):
    """legacy server -> tlsfront's outbound listener -> the peer, OpenDKIM
    (signing) as outbound milter: the peer's message carries a
    DKIM-Signature of example.test that verifies."""
    import dkim
    signer = opendkim_factory("s")
    peer = tfhelpers.AiosmtpdBackend(server_hostname="peer.test")
    try:
        text, out_port = outbound_config(peer.port, [signer])
        tf = tlsfront_factory(config_text=text)
        tf.wait_event("started")
        with smtplib.SMTP(HOST, out_port, local_hostname="legacy.test", timeout=IO_TIMEOUT) as s:
            assert s.ehlo()[0] == 250
            assert s.sendmail("alice@example.test", ["bob@peer.test"], DKIM_MSG) == {}
            s.quit()
        assert peer.wait_messages(1)
        got = peer.messages[0]["content"]
        sigs = header_values(got, "DKIM-Signature")
        assert len(sigs) == 1, got[:2000]
        tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", sigs[0]).split(";") if t)
        assert tags["d"] == DKIM_DOMAIN and tags["s"] == DKIM_SELECTOR, tags
        assert dkim.verify(got, dnsfunc=dkim_key["dnsfunc"]), got[:2000]
        # Nothing else changed (wherever OpenDKIM put its field).
        assert without_field(got, "DKIM-Signature") == DKIM_MSG
    finally:
        peer.stop()


def test_inbound_opendkim_verifies(milter_front, opendkim_factory, dkim_key, aiosmtpd_backend):
    """Inbound, OpenDKIM (verifying) as milter: the backend's message carries
    OpenDKIM's Authentication-Results: dkim=pass for a good signature,
    dkim=fail for a message changed after signing."""
    verifier = opendkim_factory("v")
    tf = milter_front([verifier])
    good = dkim_sign(DKIM_MSG, dkim_key)
    bad = good.replace(b"Signed on the way out.", b"Changed on the way in.")
    assert deliver(tf.port, msg=good, sender="alice@example.test") == {}
    assert deliver(tf.port, msg=bad, sender="alice@example.test") == {}
    assert aiosmtpd_backend.wait_messages(2)
    results = []
    for m in aiosmtpd_backend.messages[:2]:
        ar = header_values(m["content"], "Authentication-Results")
        assert len(ar) == 1, m["content"][:2000]
        assert ar[0].startswith("verify.test;"), ar
        results.append(ar[0])
    assert re.search(r"\bdkim=pass\b", results[0]) and "header.d=example.test" in results[0], \
        results
    assert re.search(r"\bdkim=fail\b", results[1]), results
    # Nothing else changed (wherever OpenDKIM put its field).
    assert without_field(aiosmtpd_backend.messages[0]["content"],
                         "Authentication-Results") == good


# ---- the fixtures under a real Postfix (no tlsfront) ---------------------------------------------

HOLD = "smtpd_end_of_data_restrictions = check_client_access static:HOLD\n"


def postfix_with_milter(socket_spec, extra=""):
    """A private Postfix whose smtpd uses this milter (Postfix's form of the
    socket: inet:HOST:PORT or unix:/path) and keeps every message in its
    hold queue."""
    postfix_backend.require()
    return postfix_backend.PostfixBackend(extra_main=(
        "smtpd_milters = %s\nmilter_default_action = tempfail\nmilter_protocol = 6\n"
        "milter_connect_macros = j {daemon_name} v _ {client_addr} {client_port}\n%s%s"
        % (socket_spec, HOLD, extra)))


def held_messages(pf, n, timeout=15.0):
    """The contents (CRLF) of the n messages in Postfix's hold queue."""
    def queue():
        r = subprocess.run(["postqueue", "-c", pf.dir, "-j"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=30)
        return [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]
    def held():
        items = [q for q in queue() if q.get("queue_name") == "hold"]
        return items[:n] if len(items) >= n else None
    items = wait_until(held, timeout, step=0.2)
    assert items, "fewer than %d held messages:\n%s" % (n, pf.log_text()[-4000:])
    out = []
    for item in items:
        r = subprocess.run(["postcat", "-c", pf.dir, "-bh", "-q", item["queue_id"]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert r.returncode == 0, r.stderr
        env = subprocess.run(["postcat", "-c", pf.dir, "-e", "-q", item["queue_id"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        content = r.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append({"content": content, "envelope": env.stdout.decode("latin-1"),
                    "item": item})
    return out


def test_fixture_milter_script_under_postfix(milter_factory):
    """milter_script.py driven by a real MTA: its setreply at RCPT, its
    edits at end of message and its event and macro log work."""
    postfix_backend.require()
    m = milter_factory({
        "actions": [{"at": "rcpt", "match": "blocked@", "result": "reject",
                     "reply": ["550", "5.7.1", "No such user here"]}],
        "edits": [{"op": "addheader", "name": "X-Milter", "value": "added"},
                  {"op": "chgheader", "name": "Subject", "index": 1, "value": "changed"},
                  {"op": "delheader", "name": "X-Remove", "index": 1},
                  {"op": "replacebody", "body": "replaced\r\n"},
                  {"op": "chgfrom", "addr": "<bounces@example.org>"},
                  {"op": "addrcpt", "addr": "<extra@postfix.test>"}]})
    pf = postfix_with_milter(m.socket)
    try:
        with smtplib.SMTP(HOST, pf.port, local_hostname="client.test", timeout=IO_TIMEOUT) as s:
            s.ehlo()
            s.mail(SENDER)
            assert s.rcpt("blocked@postfix.test") == (550, b"5.7.1 No such user here")
            assert s.rcpt("bob@postfix.test")[0] == 250
            assert s.data(MSG)[0] == 250
            s.quit()
        held = held_messages(pf, 1)[0]
        headers, body = split_message(held["content"])
        assert ("X-Milter", "added") in headers and ("Subject", "changed") in headers, headers
        assert "X-Remove" not in [n for n, _ in headers]
        assert body == b"replaced\r\n"
        assert "sender: bounces@example.org" in held["envelope"]
        assert "recipient: extra@postfix.test" in held["envelope"]
    finally:
        pf.stop()
    eom = m.wait_event("eom")[0]
    assert eom["body"] == split_message(MSG)[1].decode()
    assert m.events("mail")[0]["macros"].get("{mail_addr}") == SENDER
    assert m.events("connect")[0]["macros"].get("{client_addr}") == HOST
    assert eom["macros"].get("i"), eom
    assert m.events("verdict")[0]["reply"] == ["550", "5.7.1", "No such user here"]


def test_fixture_opendkim_under_postfix(opendkim_factory, dkim_key):
    """OpenDKIM as configured here signs (Mode s) and verifies (Mode v)
    under a real MTA."""
    postfix_backend.require()
    signer = opendkim_factory("s")
    verifier = opendkim_factory("v")
    pf = postfix_with_milter(signer.socket)
    try:
        with smtplib.SMTP(HOST, pf.port, timeout=IO_TIMEOUT) as s:
            assert s.sendmail("alice@example.test", ["bob@postfix.test"], DKIM_MSG) == {}
        signed = held_messages(pf, 1)[0]["content"]
    finally:
        pf.stop()
    assert len(header_values(signed, "DKIM-Signature")) == 1, signed[:2000]
    assert dkim_verify(signed, dkim_key), signed[:2000]

    pf = postfix_with_milter(verifier.socket)
    try:
        with smtplib.SMTP(HOST, pf.port, timeout=IO_TIMEOUT) as s:
            good = dkim_sign(DKIM_MSG, dkim_key)
            s.sendmail("alice@example.test", ["bob@postfix.test"], good)
            s.sendmail("alice@example.test", ["bob@postfix.test"],
                       good.replace(b"Signed on the way out.", b"Changed on the way in."))
        held = [m["content"] for m in held_messages(pf, 2)]
    finally:
        pf.stop()
    results = sorted(header_values(m, "Authentication-Results")[0] for m in held)
    assert re.search(r"\bdkim=fail\b", results[0]), results
    assert re.search(r"\bdkim=pass\b", results[1]), results
