"""A real Postfix as tlsfront's backend, run entirely from its own directory.

PostfixBackend() writes main.cf and master.cf into a fresh directory under
/tmp (never /etc/postfix), creates the queue and data directories there, and
starts the instance with `postfix -c DIR start`; stop() runs
`postfix -c DIR stop` (and kills what is left), then removes the directory.
Nothing is written outside that directory: the integrity check of
`postfix start` (post-install create-missing, which walks the shared
postfix-files list) is skipped with the documented $queue_directory/quick-start
file, as the queue directories are made here with the modes postfix-files
gives them.

Postfix's log goes to DIR/maillog (maillog_file, served by postlogd), which
the tests read. Mail never leaves: every transport is discard:.

Needs root (master starts as root and drops to mail_owner = postfix) and
the Debian postfix package (user postfix, group postdrop). Tests call
require() (or require_or_skip() for HAProxy): they skip where these are
missing, and fail in the CI run (CI=true).

Manual run:  python3 postfix_backend.py  (starts an instance, prints its
port and directory, waits for Enter, stops it).
"""
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

HOST = "127.0.0.1"
POSTFIX = "/usr/sbin/postfix"
START_TIMEOUT = 30.0  # seconds: `postfix start` and the smtpd port listening
STOP_TIMEOUT = 20.0

MAIN_CF = """\
# main.cf of a throw-away Postfix behind tlsfront (written by postfix_backend.py)
compatibility_level = 3.6
config_directory = {dir}
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
syslog_name = postfix-tftest

myhostname = postfix.backend.test
mydomain = backend.test
myorigin = $myhostname
mydestination = $myhostname, {domain}
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# tlsfront is the only SMTP client and may say who the real client is.
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP Postfix (tlsfront test backend)

# Accept any recipient of the test domain and throw every message away.
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard:local
default_transport = discard:default
relay_transport = discard:relay
virtual_transport = discard:virtual
biff = no
append_dot_mydomain = no
smtputf8_enable = no
{extra}"""

# Every service without chroot, so nothing has to be copied into the queue
# directory. The smtpd service listens on 127.0.0.1:{port} only.
MASTER_CF = """\
# master.cf of a throw-away Postfix behind tlsfront (written by postfix_backend.py)
# service type  private unpriv  chroot  wakeup  maxproc command + args
{host}:{port} inet n    -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Queue subdirectories as /etc/postfix/postfix-files makes them:
# (name, owner, group, mode).
QUEUE_DIRS = [
    ("active", "postfix", "root", 0o700),
    ("bounce", "postfix", "root", 0o700),
    ("corrupt", "postfix", "root", 0o700),
    ("defer", "postfix", "root", 0o700),
    ("deferred", "postfix", "root", 0o700),
    ("flush", "postfix", "root", 0o700),
    ("hold", "postfix", "root", 0o700),
    ("incoming", "postfix", "root", 0o700),
    ("private", "postfix", "root", 0o700),
    ("saved", "postfix", "root", 0o700),
    ("trace", "postfix", "root", 0o700),
    ("maildrop", "postfix", "postdrop", 0o1730),
    ("public", "postfix", "postdrop", 0o2710),
    ("pid", "root", "root", 0o755),
]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_listening(port, host=HOST):
    """True when a TCP socket listens on host:port (read from /proc/net/tcp,
    so no probe connection shows up in anyone's log)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def available():
    """'' when a private Postfix can run here, else why not."""
    if os.geteuid() != 0:
        return "Postfix's master must start as root"
    if not os.access(POSTFIX, os.X_OK):
        return "%s not installed" % POSTFIX
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "user postfix or group postdrop missing"
    return ""


def in_ci():
    """The CI run: environment CI=true (also 1 or yes, as test_outbound.py's
    _ci() reads it), as root after scripts/install-deps.sh."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_or_skip(reason):
    """Skips the calling test for reason; in the CI run (in_ci()) fails it
    instead, so a broken install cannot hide the tests against a real
    Postfix or HAProxy behind a skip. The one place that decides it: every
    such test comes here."""
    import pytest  # here, so the manual run below needs no pytest
    if in_ci():
        pytest.fail("CI=true, but %s (scripts/install-deps.sh should have provided it)"
                    % reason, pytrace=False)
    pytest.skip(reason)


def require():
    """For a test that needs a private Postfix: returns when one can run
    here, else require_or_skip() with the reason."""
    why = available()
    if why:
        require_or_skip("no private Postfix here: " + why)


class PostfixError(AssertionError):
    pass


class PostfixBackend:
    """A running private Postfix; .port is its smtpd port on 127.0.0.1."""

    DOMAIN = "postfix.test"  # recipients @postfix.test are accepted and discarded

    def __init__(self, extra_main="", keep_log_to=None):
        why = available()
        if why:
            raise PostfixError(why)
        self.keep_log_to = keep_log_to
        self.dir = tempfile.mkdtemp(prefix="tf-postfix-", dir="/tmp")
        # Postfix's daemons (user postfix) must reach the queue directory.
        os.chmod(self.dir, 0o755)
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = None
        self.started = False
        self._make_dirs()
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            self._write_config(extra_main)
            try:
                self._start()
                return
            except PostfixError as e:
                last = str(e)
                self.stop(remove=False)
                if "in use" not in last and "bind" not in last:
                    break
        self.stop()
        raise PostfixError(last)

    # ---- setup ------------------------------------------------------------

    def _make_dirs(self):
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        ids = {"postfix": postfix_uid, "root": 0,
               "postdrop": grp.getgrnam("postdrop").gr_gid}
        queue = os.path.join(self.dir, "queue")
        os.mkdir(queue, 0o755)
        os.chown(queue, 0, 0)
        for name, owner, group, mode in QUEUE_DIRS:
            path = os.path.join(queue, name)
            os.mkdir(path)
            os.chown(path, ids[owner], ids[group])
            os.chmod(path, mode)
        data = os.path.join(self.dir, "data")
        os.mkdir(data)
        os.chown(data, postfix_uid, 0)
        os.chmod(data, 0o700)

    def _write_config(self, extra_main):
        with open(os.path.join(self.dir, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(dir=self.dir, domain=self.DOMAIN, extra=extra_main))
        with open(os.path.join(self.dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(host=HOST, port=self.port))
        # Skip post-install create-missing (it walks the shared
        # postfix-files list); the directories above are complete.
        open(os.path.join(self.dir, "queue", "quick-start"), "w").close()

    def _postfix(self, *args, timeout=START_TIMEOUT):
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        try:
            return subprocess.run([POSTFIX, "-c", self.dir] + list(args),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise PostfixError("postfix %s: no exit within %ss: %r"
                               % (" ".join(args), timeout, e.output))

    def _start(self):
        r = self._postfix("start")
        self.started = True
        if r.returncode != 0:
            raise PostfixError("postfix start exited %d:\n%s\n%s"
                               % (r.returncode, r.stdout.decode("utf-8", "replace"),
                                  self.log_text()[-4000:]))
        if not wait_until(lambda: is_listening(self.port), START_TIMEOUT):
            raise PostfixError("Postfix's smtpd not listening on %s:%d within %ss:\n%s"
                               % (HOST, self.port, START_TIMEOUT, self.log_text()[-4000:]))

    # ---- the log ------------------------------------------------------------

    def log_text(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        """The first match of the regular expression in the maillog (waits)."""
        rx = re.compile(pattern)
        m = wait_until(lambda: rx.search(self.log_text()), timeout)
        assert m, "no %r in Postfix's maillog within %ss:\n%s" % (
            pattern, timeout, self.log_text()[-6000:])
        return m

    def smtpd_lines(self):
        return [l for l in self.log_text().splitlines() if "/smtpd[" in l]

    # ---- teardown -------------------------------------------------------------

    def master_pid(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie is not alive.
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self, remove=True):
        """Stops the instance (bounded), then removes its directory."""
        try:
            if self.started:
                pid = self.master_pid()
                try:
                    self._postfix("stop", timeout=STOP_TIMEOUT)
                except PostfixError:
                    pass
                if pid and not wait_until(lambda: not self._alive(pid), 5.0):
                    try:  # master is a session leader: its group is Postfix
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                    wait_until(lambda: not self._alive(pid), 5.0)
                self.started = False
        finally:
            if remove and self.dir:
                if self.keep_log_to:
                    try:
                        shutil.copyfile(self.maillog, self.keep_log_to)
                    except OSError:
                        pass
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None


def smtp_check(port):
    """A short SMTP dialogue with the instance (for the manual run)."""
    import smtplib
    with smtplib.SMTP(HOST, port, timeout=10) as s:
        code, _ = s.ehlo("check.test")
        s.sendmail("a@check.test", ["b@%s" % PostfixBackend.DOMAIN], b"Subject: x\r\n\r\nx\r\n")
        return code


if __name__ == "__main__":
    pf = PostfixBackend()
    try:
        print("Postfix on %s:%d, directory %s" % (HOST, pf.port, pf.dir))
        print("EHLO:", smtp_check(pf.port))
        try:
            input("Enter stops it ")
        except EOFError:
            pass
        print(pf.log_text())
    finally:
        pf.stop()
