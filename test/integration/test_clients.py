"""Real-world STARTTLS clients against tlsfront (SPEC §3.5, §5): swaks,
gnutls-cli and openssl s_client."""
import re
import subprocess
import threading

from tfhelpers import run_tool, wait_until


class Interactive:
    """A command-line client fed on stdin step by step; stdout and stderr are
    collected by threads (patterns are matched on stdout only). Every wait
    is bounded; leaving the with block kills the client if it still runs."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = {"stdout": b"", "stderr": b""}
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                        for name, stream in (("stdout", self.proc.stdout),
                                             ("stderr", self.proc.stderr))]
        for r in self.readers:
            r.start()

    def _read(self, name, stream):
        for _ in range(100000):
            chunk = stream.read1(65536)
            if not chunk:
                return
            with self.lock:
                self.out[name] += chunk

    def text(self, name="stdout"):
        with self.lock:
            return self.out[name].decode("latin-1")

    def expect(self, pattern, timeout=10.0):
        m = wait_until(lambda: re.search(pattern, self.text(), re.M), timeout)
        assert m, "no %r within %ss on stdout:\n%s\n---- stderr ----\n%s" % (
            pattern, timeout, self.text(), self.text("stderr"))
        return m

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout=10.0):
        """Closes stdin and waits for the client to end; returns its status."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("client did not end within %ss:\n%s" % (timeout, self.text()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for r in self.readers:
            r.join(5)


def test_s3_5_swaks_tls_delivers(front, aiosmtpd_backend):
    out = run_tool(["swaks", "--server", "127.0.0.1:%d" % front.port, "--tls",
                    "--from", "sender@example.org", "--to", "rcpt@example.net",
                    "--helo", "swaks.test", "--header", "Subject: swaks over tlsfront",
                    "--body", "hello from swaks"], timeout=30)
    text = out.stdout.decode("latin-1")
    assert out.returncode == 0, text + out.stderr.decode("latin-1")
    assert "TLS started" in text, text
    assert aiosmtpd_backend.wait_messages(1)
    [msg] = aiosmtpd_backend.messages
    assert msg["mail_from"] == "sender@example.org"
    assert msg["rcpt_tos"] == ["rcpt@example.net"]
    assert b"Subject: swaks over tlsfront\r\n" in msg["content"]
    assert b"hello from swaks" in msg["content"]
    [summary] = front.wait_event("session")
    assert summary["tls"] in ("TLS1.3", "TLS1.2")
    assert summary["messages"] == "1" and summary["reason"] == "quit"


def test_s3_5_gnutls_cli_starttls_ehlo_quit(front):
    with Interactive(["gnutls-cli", "--starttls-proto=smtp", "--insecure", "--crlf",
                      "-p", str(front.port), "127.0.0.1"]) as cli:
        cli.expect(r"Handshake was completed")
        cli.send(b"EHLO gnutls.test\n")
        ehlo = cli.expect(r"^250-[\s\S]*?^250 .*$").group(0)
        assert not re.search(r"^250[ -]STARTTLS", ehlo, re.M | re.I), ehlo
        cli.send(b"QUIT\n")
        cli.expect(r"^221 ")
        cli.finish()
    assert front.wait_event("tls")[0]["tls"] == "TLS1.3"
    assert front.wait_event("session")[0]["reason"] == "quit"


def test_s3_5_openssl_s_client_starttls_ehlo_quit(front):
    with Interactive(["openssl", "s_client", "-starttls", "smtp", "-quiet", "-crlf",
                      "-connect", "127.0.0.1:%d" % front.port]) as cli:
        # -quiet prints no handshake report; it is done once tlsfront logs it.
        front.wait_event("tls")
        cli.send(b"EHLO openssl.test\n")
        ehlo = cli.expect(r"^250-[\s\S]*?^250 .*$").group(0)
        assert not re.search(r"^250[ -]STARTTLS", ehlo, re.M | re.I), ehlo
        cli.send(b"QUIT\n")
        cli.expect(r"^221 ")
        cli.finish()
    assert front.wait_event("session")[0]["reason"] == "quit"
