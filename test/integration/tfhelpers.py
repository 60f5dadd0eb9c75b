"""Helpers of tlsfront's integration tests: a scriptable SMTP client, the
raw (lenient) backend, the aiosmtpd backend, and the tlsfront process.

Every socket operation has a timeout, every loop is bounded, only loopback
addresses are used and every port is chosen by the kernel (port 0).
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0  # seconds, for every socket operation of a test client
MAX_READ = 64 * 1024 * 1024  # no test reads more than this from one socket

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error")


def tlsfront_bin():
    return os.environ.get("TLSFRONT_BIN") or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build",
                     "tlsfront"))


def free_port():
    """A port nothing listens on right now (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=5.0, step=0.02):
    """Polls predicate until it returns a true value or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def insecure_context(max_version=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


# ---- log lines ------------------------------------------------------------

_KV = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(line):
    """'a=1 b="x y"' -> {'a': '1', 'b': 'x y'}."""
    out = {}
    for key, value in _KV.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key] = value
    return out


# ---- an SMTP client that sends exactly the bytes it is given ---------------

class Reply:
    def __init__(self, lines):
        self.lines = lines  # decoded lines without line ends
        self.code = int(lines[-1][:3])
        self.raw = "".join(l + "\r\n" for l in lines).encode("latin-1")

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        """'5.5.1' of '502 5.5.1 ...' (first line), or ''."""
        m = re.match(r"\d{3}[ -](\d\.\d{1,3}\.\d{1,3})", self.lines[0])
        return m.group(1) if m else ""

    def keywords(self):
        """EHLO keywords (upper case) of a multi-line 250 reply, first line excluded."""
        return [l[4:].split(" ")[0].split("=")[0].upper() for l in self.lines[1:]]

    def __repr__(self):
        return "Reply(%r)" % self.lines


class Closed(Exception):
    """The server closed the connection while a reply was expected."""


class SmtpClient:
    """Plain socket SMTP client; counts the application bytes it sends and
    receives (for the bytes_in/bytes_out of the session summary)."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.sent = 0
        self.received = 0
        self.local = "%s:%d" % self.sock.getsockname()[:2]

    # raw I/O
    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def _recv_more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed("connection closed; unread: %r" % self.buf)
        self.received += len(chunk)
        self.buf += chunk
        if self.received > MAX_READ:
            raise AssertionError("server sent more than %d bytes" % MAX_READ)

    def read_line(self):
        for _ in range(100000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            self._recv_more()
        raise AssertionError("no line end in %d reads" % 100000)

    def read_reply(self):
        lines = []
        for _ in range(1000):
            raw = self.read_line()
            assert raw.endswith(b"\r\n"), "reply line not ending in CRLF: %r" % raw
            line = raw[:-2].decode("latin-1")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return Reply(lines)
        raise AssertionError("reply of more than 1000 lines")

    def read_replies(self, n):
        return [self.read_reply() for _ in range(n)]

    def greeting(self):
        r = self.read_reply()
        assert r.code == 220, r
        return r

    def cmd(self, line):
        if isinstance(line, str):
            line = line.encode("latin-1")
        self.send(line + b"\r\n")
        return self.read_reply()

    def ehlo(self, name="client.test"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def starttls(self, ctx=None, server_hostname=None):
        r = self.cmd("STARTTLS")
        assert r.code == 220 and r.enhanced == "2.0.0", r
        assert self.buf == b"", "bytes after the STARTTLS 220: %r" % self.buf
        self.sock = (ctx or insecure_context()).wrap_socket(self.sock,
                                                           server_hostname=server_hostname)
        return r

    def read_until_closed(self, timeout=IO_TIMEOUT):
        """Reads until EOF; returns what came (after what was buffered)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                data, self.buf = self.buf, b""
                return data
            self.received += len(chunk)
            self.buf += chunk
            if time.monotonic() > deadline or len(self.buf) > MAX_READ:
                break
        raise AssertionError("connection not closed within %ss: %r" % (timeout, self.buf[-200:]))

    def is_closed(self, timeout=IO_TIMEOUT):
        try:
            self.read_until_closed(timeout)
            return True
        except (AssertionError, socket.timeout):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def send_message(c, mail_from, rcpt, content):
    """MAIL, RCPT, DATA and the content bytes as given (already dot-stuffed,
    including the end of data). Returns the reply to the end of data."""
    r = c.cmd("MAIL FROM:<%s>" % mail_from)
    assert r.code == 250, r
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r
    c.send(content)
    return c.read_reply()


# ---- the raw scriptable backend ------------------------------------------

# A broken legacy server's idea of the end of data: a "." alone on a line,
# where any of CRLF, bare LF or bare CR ends a line.
_LENIENT_END = re.compile(rb"(?:^|\r\n|\n|\r)\.(?:\r\n|\n|\r)")
_LENIENT_END_MID = re.compile(rb"(?:\r\n|\n|\r)\.(?:\r\n|\n|\r)")  # not at the start


class RawBackend:
    """A threaded SMTP server on 127.0.0.1 port 0 that records every command
    line and every message it "accepts".

    Always lenient: takes LF.LF, CR.CR, LF.CRLF, CRLF.LF... as end of data (as a
    broken legacy server would) and goes on reading commands after it.
    close_on=VERB: closes the connection, without a reply, when that verb comes.
    reply_delay: seconds to wait before each reply (to test reply order).
    greeting: the greeting line(s), without the final CRLF.
    read_delay: seconds to sleep after each read (a slow backend).
    keep_messages=False: record only the size of each message (in
    message_sizes) and not what it received (raw), to spare memory.
    """

    MAX_CONNECTIONS = 200

    def __init__(self, close_on=None, reply_delay=0.0, ehlo_extra=(),
                 greeting="220 raw.backend ESMTP legacy", read_delay=0.0, keep_messages=True):
        self.greeting = greeting
        self.read_delay = read_delay
        self.keep_messages = keep_messages
        self.message_sizes = []
        self.close_on = close_on.upper() if close_on else None
        self.reply_delay = reply_delay
        self.ehlo_extra = list(ehlo_extra)
        self.commands = []  # every command line, without its line end
        self.messages = []  # every accepted message's content (bytes)
        self.raw = []  # everything each connection received (bytearray)
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((HOST, 0))
        self.srv.listen(64)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.threads = []
        self.conns = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                if self.connections > self.MAX_CONNECTIONS:
                    conn.close()
                    continue
                raw = bytearray()
                self.raw.append(raw)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, raw), daemon=True)
            t.start()
            self.threads.append(t)

    def _reply(self, conn, text):
        if self.reply_delay:
            time.sleep(self.reply_delay)
        conn.sendall(text.encode("latin-1") + b"\r\n")

    def _serve(self, conn, raw):
        conn.settimeout(30)
        buf = b""
        in_data = False
        scanned = 0  # in DATA: buf[:scanned] holds no end of data
        dropped = 0  # in DATA, keep_messages=False: content octets let go
        try:
            conn.sendall(self.greeting.encode("latin-1") + b"\r\n")
            for _ in range(1000000):
                if self.stopping:
                    return
                if in_data:
                    # "^" matches only at the real start of buf, never at pos;
                    # once content was let go, buf does not start the content.
                    end_re = _LENIENT_END_MID if dropped else _LENIENT_END
                    m = end_re.search(buf, max(0, scanned - 4))
                    if m and m.group(0).endswith(b"\r") and m.end() == len(buf):
                        m = None  # maybe a CRLF cut in two: wait for more
                    if m:
                        sep = m.group(0)
                        if sep.startswith(b"."):
                            content = b""
                        else:  # the line end before the dot ends the last line
                            eol = b"\r\n" if sep.startswith(b"\r\n") else sep[:1]
                            content = buf[:m.start()] + eol
                        buf = buf[m.end():]
                        with self.lock:
                            self.message_sizes.append(dropped + len(content))
                            if self.keep_messages:
                                self.messages.append(content)
                            n = len(self.message_sizes)
                        in_data = False
                        dropped = 0
                        self._reply(conn, "250 2.0.0 Ok: queued as %d" % n)
                        continue
                    scanned = len(buf)
                    if not self.keep_messages and len(buf) > 65536:
                        dropped += len(buf) - 8
                        buf = buf[-8:]
                        scanned = 8
                else:
                    i = buf.find(b"\n")
                    if i >= 0:
                        line, buf = buf[:i], buf[i + 1:]
                        if line.endswith(b"\r"):
                            line = line[:-1]
                        with self.lock:
                            self.commands.append(line)
                        if self._command(conn, line):
                            return
                        if line[:4].upper() == b"DATA":
                            in_data = True
                            scanned = 0
                        continue
                chunk = conn.recv(65536)
                if not chunk:
                    return
                if self.keep_messages:
                    raw += chunk
                buf += chunk
                if self.read_delay:
                    time.sleep(self.read_delay)
        except OSError:
            return
        finally:
            conn.close()

    def _command(self, conn, line):
        """Answers one command line; True when the connection is to end."""
        text = line.decode("latin-1")
        verb = text.split(" ", 1)[0].upper()
        if self.close_on and verb == self.close_on:
            conn.shutdown(socket.SHUT_RDWR)
            return True
        if verb == "EHLO":
            kws = ["raw.backend", "PIPELINING", "SIZE 10240000", "8BITMIME"] + self.ehlo_extra
            for kw in kws[:-1]:
                self._reply(conn, "250-" + kw)
            self._reply(conn, "250 " + kws[-1])
        elif verb == "HELO":
            self._reply(conn, "250 raw.backend")
        elif verb == "MAIL":
            self._reply(conn, "250 2.1.0 Ok mail " + text[5:])
        elif verb == "RCPT":
            self._reply(conn, "250 2.1.5 Ok rcpt " + text[5:])
        elif verb == "DATA":
            self._reply(conn, "354 End data with <CR><LF>.<CR><LF>")
        elif verb in ("RSET", "NOOP"):
            self._reply(conn, "250 2.0.0 Ok " + verb.lower())
        elif verb == "QUIT":
            self._reply(conn, "221 2.0.0 Bye")
            return True
        else:
            self._reply(conn, "500 5.5.2 Error: command not recognized")
        return False

    def command_texts(self):
        with self.lock:
            return [c.decode("latin-1") for c in self.commands]

    def saw_command(self, prefix):
        p = prefix.upper()
        return any(c.upper().startswith(p) for c in self.command_texts())

    def stop(self):
        self.stopping = True
        try:
            self.srv.close()
        except OSError:
            pass
        self.thread.join(5)
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(2)


class Makes:
    """A fixture's factory: make(**kw) builds cls(**kw); stop_all() stops
    every one made, at teardown."""

    def __init__(self, cls):
        self.cls = cls
        self.made = []

    def __call__(self, **kw):
        obj = self.cls(**kw)
        self.made.append(obj)
        return obj

    def stop_all(self):
        for obj in self.made:
            obj.stop()


# ---- the aiosmtpd backend --------------------------------------------------

class RecordingHandler:
    """Records every message's envelope and exact content bytes, and every
    MAIL FROM address and RCPT TO address it was given. Refuses (550) the
    recipients whose address starts with "unknown"."""

    def __init__(self):
        self.messages = []
        self.mail_from = []
        self.rcpt_to = []
        self.lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.mail_from.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_to.append(address)
        if address.startswith("unknown"):
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": bytes(envelope.original_content),
            })
        return "250 2.0.0 OK queued"


class AiosmtpdBackend:
    """A real, strict aiosmtpd backend recording every message; extra
    Controller options (an authenticator, ...) go through controller_kw."""

    def __init__(self, server_hostname="aiosmtpd.backend", **controller_kw):
        from aiosmtpd.controller import Controller
        self.handler = RecordingHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname=HOST, port=self.port,
                                     ready_timeout=10.0, server_hostname=server_hostname,
                                     **controller_kw)
        self.controller.start()

    @property
    def messages(self):
        return self.handler.messages

    def wait_messages(self, n, timeout=10.0):
        return wait_until(lambda: len(self.handler.messages) >= n, timeout)

    def stop(self):
        self.controller.stop()


# ---- the tlsfront process ---------------------------------------------------

def make_config(backend_port, *, listen_port=0, server_name="mx.test", workers=1, starttls=True,
                connect_timeout=5, idle_timeout=30, line_length=2048, max_errors=10,
                shutdown_timeout=5, bare_newlines="sanitize", log_level="debug",
                tls=None, extra=""):
    tls = tls if tls is not None else 'tls = { priority = "NORMAL"; handshake_timeout = 10; };'
    return f"""# written by tlsfront's integration tests
server_name = "{server_name}";
workers = {workers};
backend = {{ address = "127.0.0.1:{backend_port}"; connect_timeout = {connect_timeout}; }};
inbound = {{ tcp = {{ listen = [ "127.0.0.1:{listen_port}" ]; starttls = {"true" if starttls else "false"}; }}; }};
limits = {{ idle_timeout = {idle_timeout}; line_length = {line_length}; max_errors = {max_errors}; shutdown_timeout = {shutdown_timeout}; }};
bare_newlines = "{bare_newlines}";
log = {{ level = "{log_level}"; }};
{tls}
{extra}
"""


class StartError(AssertionError):
    def __init__(self, message, tf):
        super().__init__(message)
        self.tf = tf


class TlsFront:
    """A running tlsfront; stderr goes to a file."""

    START_TIMEOUT = 10.0

    def __init__(self, directory, config_text, name="tlsfront"):
        self.config_path = os.path.join(directory, name + ".conf")
        self.log_path = os.path.join(directory, name + ".log")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        self.proc = subprocess.Popen([tlsfront_bin(), "-c", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=self.log_file, env=env)
        self.pid = self.proc.pid
        self.port = None
        wait_until(lambda: self.proc.poll() is not None or self._listening(),
                   self.START_TIMEOUT)
        m = self._listening()
        if self.proc.poll() is not None or not m:
            self.kill()
            if self.proc.returncode is not None:
                raise StartError("tlsfront exited with %s:\n%s"
                                 % (self.proc.returncode, self.log_text()), self)
            raise StartError("tlsfront did not log event=listening within %ss:\n%s"
                             % (self.START_TIMEOUT, self.log_text()), self)
        self.port = int(m.group(1))

    def _listening(self):
        return re.search(r"event=listening listener=tcp address=127\.0\.0\.1:(\d+)",
                         self.log_text())

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def events(self, event):
        return [parse_kv(l) for l in self.log_text().splitlines()
                if re.search(r"(^|\s)event=%s(\s|$)" % re.escape(event), l)]

    def wait_event(self, event, n=1, timeout=10.0):
        found = wait_until(lambda: len(self.events(event)) >= n, timeout)
        assert found, "fewer than %d event=%s lines within %ss:\n%s" % (
            n, event, timeout, self.log_text())
        return self.events(event)

    def session_of(self, client, timeout=10.0):
        """The summary line of the session whose client address is client."""
        def find():
            return [s for s in self.events("session") if s.get("client") == client]
        found = wait_until(find, timeout)
        assert found, "no event=session for client=%s within %ss:\n%s" % (
            client, timeout, self.log_text())
        assert len(found) == 1, found
        return found[0]

    def connect(self, **kw):
        return SmtpClient(self.port, **kw)

    def running(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0, sig=signal.SIGTERM):
        """Sends SIGTERM, waits (bounded); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("tlsfront did not exit within %ss after signal %s"
                                 % (timeout, sig))

    def wait_exit(self, timeout=10.0):
        """Waits (bounded) for tlsfront to exit by itself; returns the exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("tlsfront still running %ss later:\n%s"
                                 % (timeout, self.log_text()[-5000:]))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.log_file.close()

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines()
                if any(m in l for m in SANITIZER_MARKERS)]

    def vm_hwm_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/%d/status" % self.pid)


def run_tool(args, input_bytes=None, timeout=30, env=None):
    return subprocess.run(args, input=input_bytes, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, env=env)


def is_sanitized_build(path):
    flag = os.environ.get("TLSFRONT_SANITIZED")
    if flag in ("0", "1"):
        return flag == "1"
    for args in (["nm", "-D", path], ["nm", path]):
        try:
            out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if b"__asan_init" in out or b"__ubsan_handle" in out:
            return True
    return False
