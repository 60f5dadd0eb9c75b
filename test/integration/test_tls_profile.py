"""The default TLS profile and OCSP stapling (issue 15, point 1).

- The server's cipher order wins (%SERVER_PRECEDENCE), for the default
  profile and for an operator's own tls.priority.
- The default profile offers only AEAD suites with forward secrecy: a TLS 1.2
  client that offers only CBC suites fails the handshake; tls.priority =
  "NORMAL" brings CBC back (the README's recipe for old clients).
- tls.certificates[i].ocsp staples a DER OCSP response; a stale, mismatched
  or "revoked" response is refused at load with FILE:LINE (tlsfront -t, a
  start, a SIGHUP reload that then changes nothing), and a reload picks up a
  refreshed response.
- testssl.sh (Debian's testssl.sh, a tool nobody here wrote) rates nothing
  "NOT ok" or "VULNERABLE" on the STARTTLS port and the TLS port, except what
  the test CA itself causes (chain of trust, no CRL/OCSP URI).

Certificates and OCSP responses are made here with python3-cryptography.
Every wait is bounded; only 127.0.0.1 is used; ports come from the kernel.
"""
import datetime
import os
import re
import shutil
import signal
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tfhelpers import HOST, SmtpClient, free_port, insecure_context, run_tool, tlsfront_bin

NOW = datetime.datetime.utcnow()
DAY = datetime.timedelta(days=1)


# ---- a test CA, certificates and OCSP responses ----------------------------------------

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca):
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    def __init__(self, d):
        self.dir = d
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("tlsfront test CA", self.ca_key, "tlsfront test CA", self.ca_key, True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert("mx.test", self.key, "tlsfront test CA", self.ca_key, False)
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.other = _cert("other.test", other_key, "tlsfront test CA", self.ca_key, False)
        self.ca_path = self._write("ca.pem", self.ca.public_bytes(serialization.Encoding.PEM))
        self.cert_path = self._write(
            "mx.pem", self.cert.public_bytes(serialization.Encoding.PEM)
            + self.ca.public_bytes(serialization.Encoding.PEM))
        self.key_path = self._write("mx.key", self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def _write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def ocsp(self, name, *, cert=None, status=ocsp.OCSPCertStatus.GOOD, this_update=None,
             next_update=None):
        """A DER OCSP response signed by the CA; returns its path."""
        this_update = this_update or NOW - datetime.timedelta(hours=1)
        next_update = next_update or NOW + 3 * DAY
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=cert or self.cert, issuer=self.ca, algorithm=hashes.SHA1(),
            cert_status=status, this_update=this_update, next_update=next_update,
            revocation_time=this_update if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
        b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca)
        resp = b.sign(self.ca_key, hashes.SHA256())
        return self._write(name, resp.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(str(tmp_path_factory.mktemp("pki15")))


def _certs(pki, ocsp_path=None):
    extra = ' ocsp = "%s";' % ocsp_path if ocsp_path else ""
    return 'certificates = ( { cert = "%s"; key = "%s";%s } );' % (
        pki.cert_path, pki.key_path, extra)


def _tls(pki=None, ocsp_path=None, priority=None):
    """A tls group: the default profile unless priority is given."""
    parts = ["handshake_timeout = 10;"]
    if pki is not None:
        parts.append(_certs(pki, ocsp_path))
    if priority is not None:
        parts.append('priority = "%s";' % priority)
    return "tls = {\n  %s\n};" % "\n  ".join(parts)


def _staple(port):
    """What openssl s_client -status sees of the stapled OCSP response."""
    p = run_tool(["openssl", "s_client", "-connect", "%s:%d" % (HOST, port), "-starttls",
                  "smtp", "-servername", "mx.test", "-status", "-tls1_3"],
                 input_bytes=b"QUIT\r\n", timeout=30)
    return p.stdout.decode("utf-8", "replace")


def _handshake(port, ciphers, max_version=ssl.TLSVersion.TLSv1_2):
    """STARTTLS with an OpenSSL client limited to ciphers; returns the suite
    negotiated, or raises ssl.SSLError."""
    ctx = insecure_context(max_version=max_version)
    ctx.set_ciphers(ciphers)
    with SmtpClient(port) as c:
        c.greeting()
        c.ehlo()
        c.starttls(ctx)
        return c.sock.cipher()[0]


# ---- the profile ------------------------------------------------------------------------

def test_server_cipher_order_wins(tlsfront_factory, aiosmtpd_backend):
    """The client lists AES-128-GCM first; the server's order (AES-256-GCM
    first) decides."""
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls())
    got = _handshake(tf.port, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert got == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_server_cipher_order_wins_with_an_operator_priority(tlsfront_factory,
                                                             aiosmtpd_backend):
    """%SERVER_PRECEDENCE is appended to the operator's own string too: with
    NORMAL the server prefers AES-256-GCM over ChaCha20."""
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls(priority="NORMAL"))
    got = _handshake(tf.port, "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert got == "ECDHE-ECDSA-AES256-GCM-SHA384"


CBC_ONLY = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"


def test_default_profile_offers_no_cbc(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(tf.port, CBC_ONLY)
    # ... and nothing is lost: a client that offers AEAD suites is served.
    assert "GCM" in _handshake(tf.port, CBC_ONLY + ":ECDHE-ECDSA-AES128-GCM-SHA256")


def test_priority_normal_brings_cbc_back_for_old_clients(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls(priority="NORMAL"))
    assert _handshake(tf.port, CBC_ONLY) in CBC_ONLY.split(":")


def test_default_profile_negotiates_tls13(tlsfront_factory, aiosmtpd_backend):
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls())
    ctx = insecure_context()
    with SmtpClient(tf.port) as c:
        c.greeting()
        c.ehlo()
        c.starttls(ctx)
        assert c.sock.version() == "TLSv1.3"
        assert c.sock.cipher()[0] == "TLS_AES_256_GCM_SHA384"


# ---- OCSP stapling ----------------------------------------------------------------------

def test_ocsp_good_response_is_stapled(tlsfront_factory, aiosmtpd_backend, pki):
    good = pki.ocsp("good.der")
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls(pki, good))
    out = _staple(tf.port)
    assert "OCSP Response Status: successful" in out, out
    assert "Cert Status: good" in out, out


def test_no_ocsp_key_no_staple(tlsfront_factory, aiosmtpd_backend, pki):
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls(pki))
    out = _staple(tf.port)
    assert "OCSP response: no response sent" in out, out


def _ocsp_line(conf_path):
    with open(conf_path) as f:
        for n, line in enumerate(f, 1):
            if "ocsp =" in line:
                return n
    raise AssertionError("no ocsp line in " + conf_path)


@pytest.mark.parametrize("kind,why", [
    ("stale", "stale: its nextUpdate has passed"),
    ("mismatched", "does not answer for"),
    ("revoked", "status is revoked, not good"),
    ("garbage", "not a DER OCSP response"),
])
def test_bad_ocsp_response_refused_at_load_with_file_and_line(tmp_path, aiosmtpd_backend, pki,
                                                              kind, why):
    if kind == "stale":
        path = pki.ocsp("stale.der", this_update=NOW - 3 * DAY, next_update=NOW - DAY)
    elif kind == "mismatched":
        path = pki.ocsp("other.der", cert=pki.other)
    elif kind == "revoked":
        path = pki.ocsp("revoked.der", status=ocsp.OCSPCertStatus.REVOKED)
    else:
        path = str(tmp_path / "garbage.der")
        with open(path, "wb") as f:
            f.write(b"\x30\x03\x0a\x01\x00 not an OCSP response")
    conf = str(tmp_path / "t.conf")
    with open(conf, "w") as f:
        f.write('backend = { address = "127.0.0.1:%d"; };\n'
                'inbound = { tcp = { listen = [ "127.0.0.1:0" ]; }; };\n'
                "tls = {\n  certificates = (\n    { cert = \"%s\"; key = \"%s\";\n"
                "      ocsp = \"%s\"; }\n  );\n};\n"
                % (aiosmtpd_backend.port, pki.cert_path, pki.key_path, path))
    where = "%s:%d: tls.certificates[0].ocsp: " % (conf, _ocsp_line(conf))
    for args in (["-t", "-c", conf], ["-c", conf]):
        p = run_tool([tlsfront_bin()] + args, timeout=20)
        err = p.stderr.decode()
        assert p.returncode == 1, err
        assert where in err, err
        assert why in err, err


def _this_update(out):
    m = re.search(r"This Update: (.+)", out)
    assert m, out
    return m.group(1).strip()


def test_ocsp_reload_picks_up_a_refreshed_response_and_refuses_a_stale_one(
        tlsfront_factory, aiosmtpd_backend, pki, tmp_path):
    live = str(tmp_path / "live.der")
    shutil.copy(pki.ocsp("first.der", this_update=NOW - datetime.timedelta(hours=5)), live)
    tf = tlsfront_factory(aiosmtpd_backend.port, tls=_tls(pki, live))
    first = _this_update(_staple(tf.port))

    # The cron job of the README's recipe: a new response, then SIGHUP.
    shutil.copy(pki.ocsp("second.der", this_update=NOW - datetime.timedelta(hours=1)), live)
    tf.send_signal(signal.SIGHUP)
    ok = tf.wait_event("reload", 1)
    assert ok[-1].get("status") == "ok", ok
    second = _this_update(_staple(tf.port))
    assert second != first

    # A stale response fails the reload, at its FILE:LINE; the last good
    # one is still stapled.
    shutil.copy(pki.ocsp("stale2.der", this_update=NOW - 3 * DAY, next_update=NOW - DAY), live)
    tf.send_signal(signal.SIGHUP)
    events = tf.wait_event("reload", 2)
    assert events[-1].get("status") == "failed", events
    assert "%s:%d: tls.certificates[0].ocsp" % (tf.config_path, _ocsp_line(tf.config_path)) \
        in events[-1].get("error", ""), events[-1]
    assert _this_update(_staple(tf.port)) == second


# ---- testssl.sh -------------------------------------------------------------------------

# What the test CA itself causes, not the profile: testssl does not trust it,
# and test certificates carry no CRL or OCSP URI.
CA_CAUSED = ("Chain of trust", "neither CRL nor OCSP URI provided")


def _testssl(args, timeout=900):
    if os.environ.get("TLSFRONT_SANITIZED") == "1":
        pytest.skip("the TLS profile does not depend on the sanitizers: testssl runs "
                    "once, against the plain build")
    exe = shutil.which("testssl")
    assert exe, "testssl (Debian's testssl.sh) is not installed: run scripts/install-deps.sh"
    p = subprocess.run([exe, "--quiet", "--color", "0", "--warnings", "batch"]
                       + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    bad = [l for l in out.splitlines()
           if re.search(r"NOT ok|VULNERABLE", l) and not any(c in l for c in CA_CAUSED)]
    return out, bad


def _profile_front(tlsfront_factory, aiosmtpd_backend, pki, tls_port):
    extra = ('inbound = { tcp = { listen = [ "127.0.0.1:0" ]; }; '
             'tls = { enabled = true; listen = [ "127.0.0.1:%d" ]; }; };' % tls_port)
    return tlsfront_factory(config_text=(
        'server_name = "mx.test";\nworkers = 1;\n'
        'backend = { address = "127.0.0.1:%d"; };\n%s\n%s\n'
        % (aiosmtpd_backend.port, extra, _tls(pki, pki.ocsp("ts.der")))))


def test_testssl_finds_nothing_on_the_starttls_port(tlsfront_factory, aiosmtpd_backend, pki):
    tf = _profile_front(tlsfront_factory, aiosmtpd_backend, pki, free_port())
    out, bad = _testssl(["-t", "smtp", "%s:%d" % (HOST, tf.port)])
    assert "Has server cipher order?     yes" in out, out
    assert re.search(r"OCSP stapling\s+offered", out), out
    assert not bad, "\n".join(bad) + "\n---- testssl ----\n" + out


def test_testssl_finds_nothing_on_the_tls_port(tlsfront_factory, aiosmtpd_backend, pki):
    tls_port = free_port()
    _profile_front(tlsfront_factory, aiosmtpd_backend, pki, tls_port)
    out, bad = _testssl(["%s:%d" % (HOST, tls_port)])
    assert "Has server cipher order?     yes" in out, out
    assert not bad, "\n".join(bad) + "\n---- testssl ----\n" + out
