"""The deployment recipes agree with the image and with their configuration.

Without kubectl or a container engine: dist/compose.yaml and
dist/kubernetes/tlsfront-pod.yaml are parsed (python3-yaml), the tlsfront.conf
each one mounts is checked with `tlsfront -t`, and the test asserts that the
published ports, the container and Service ports, EXPOSE in the Containerfile
and the config's listen addresses are the same set (25, 465, 587), that the
config is mounted at /etc/tlsfront, that the init container's REDIRECT goes to
the outbound listener's port and spares exactly the uid tlsfront runs as (the
Containerfile's USER), and that the non-root tlsfront may bind ports below 1024
(net.ipv4.ip_unprivileged_port_start=0 where the recipe runs it).
"""
import os
import re
import shlex
import subprocess

import pytest

try:
    import yaml
except ImportError:  # never a silent pass: every test fails with this
    yaml = None

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIST = os.path.join(ROOT, "dist")
COMPOSE = os.path.join(DIST, "compose.yaml")
POD = os.path.join(DIST, "kubernetes", "tlsfront-pod.yaml")
CONTAINERFILE = os.path.join(ROOT, "Containerfile")
CONF_DIR = "/etc/tlsfront"
CONF_PATH = CONF_DIR + "/tlsfront.conf"
SMTP_PORTS = {25, 465, 587}


def load_yaml_docs(path):
    if yaml is None:
        pytest.fail("python3-yaml is not installed (scripts/install-deps.sh installs it)")
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- a small reader for the libconfig subset tlsfront.conf uses -------------

_TOKEN = re.compile(r'''
    (?P<ws>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>[-+]?(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)L?)
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<punct>[=:;,{}\[\]()])
''', re.VERBOSE | re.DOTALL)


def parse_libconfig(text):
    """libconfig text to nested dicts and lists (strings joined, ints, bools)."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError("cannot read libconfig at %r" % text[pos:pos + 30])
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    tokens.append(("end", None))
    i = 0

    def peek():
        return tokens[i]

    def take(kind=None, value=None):
        nonlocal i
        tok = tokens[i]
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            raise ValueError("libconfig: expected %s, got %r" % (value or kind, tok[1]))
        i += 1
        return tok

    def settings(closer):
        out = {}
        while peek()[1] != closer and peek()[0] != "end":
            name = take("name")[1]
            if peek()[1] in ("=", ":"):
                take()
            out[name] = value()
            if peek()[1] in (";", ","):
                take()
        return out

    def value():
        kind, tok = peek()
        if tok == "{":
            take()
            v = settings("}")
            take(value="}")
            return v
        if tok in ("[", "("):
            take()
            closer = "]" if tok == "[" else ")"
            items = []
            while peek()[1] != closer:
                items.append(value())
                if peek()[1] == ",":
                    take()
            take(value=closer)
            return items
        if kind == "str":
            parts = []
            while peek()[0] == "str":  # adjacent strings are joined
                parts.append(take()[1][1:-1])
            return "".join(parts)
        if kind == "num":
            take()
            t = tok.rstrip("L")
            return int(t, 0) if re.fullmatch(r"[-+]?(0x[0-9a-fA-F]+|\d+)", t) else float(t)
        if kind == "name" and tok.lower() in ("true", "false"):
            take()
            return tok.lower() == "true"
        raise ValueError("libconfig: unexpected %r" % tok)

    result = settings(None)
    take("end")
    return result


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def inbound_ports(conf):
    """The ports tlsfront listens on for clients: inbound.tcp and inbound.tls."""
    ports = set()
    inbound = conf.get("inbound", {})
    for name in ("tcp", "tls"):
        listener = inbound.get(name)
        if listener is None or not listener.get("enabled", name == "tcp"):
            continue
        ports |= {port_of(a) for a in listener.get("listen", [])}
    return ports


def check_config(tlsfront_bin, path):
    """`tlsfront -t -c path` passes; returns the parsed configuration."""
    r = subprocess.run([tlsfront_bin, "-t", "-c", path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, "tlsfront -t -c %s: %s%s" % (path, r.stdout, r.stderr)
    assert "configuration OK" in r.stdout + r.stderr
    with open(path) as f:
        return parse_libconfig(f.read())


def containerfile():
    """The run stage (the last one) of the Containerfile: USER, EXPOSE, CMD."""
    with open(CONTAINERFILE) as f:
        lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    last = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    stage = {"expose": set(), "user": None, "cmd": None}
    for l in lines[last:]:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "EXPOSE":
            stage["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
        elif word == "USER":
            stage["user"] = rest.strip()
        elif word == "CMD":
            stage["cmd"] = yaml.safe_load(rest) if yaml else None
    return stage


def image_uid():
    user = containerfile()["user"]
    assert user and re.fullmatch(r"\d+(:\d+)?", user), \
        "the Containerfile's USER %r is not a numeric uid[:gid]" % user
    return int(user.split(":")[0])


def test_containerfile_run_stage():
    stage = containerfile()
    assert stage["expose"] == SMTP_PORTS
    assert image_uid() != 0
    assert stage["cmd"] == ["-c", CONF_PATH]


def test_example_config_listens_on_the_exposed_ports(tlsfront_bin):
    conf = check_config(tlsfront_bin, os.path.join(DIST, "tlsfront.conf"))
    assert inbound_ports(conf) == containerfile()["expose"]


# --- compose -----------------------------------------------------------------

def compose_services():
    docs = load_yaml_docs(COMPOSE)
    assert len(docs) == 1
    return docs[0]["services"]


def compose_tlsfront():
    services = compose_services()
    names = [n for n, s in services.items()
             if (s.get("build") or {}).get("dockerfile") == "Containerfile"]
    assert len(names) == 1, "one service is built from the Containerfile"
    return names[0], services[names[0]]


def compose_config_dir():
    """The host folder mounted at /etc/tlsfront in the tlsfront service."""
    _, svc = compose_tlsfront()
    mounts = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        mounts.append((source, target))
    dirs = [s for s, t in mounts if t.rstrip("/") == CONF_DIR]
    assert dirs, "the tlsfront service mounts nothing at %s: %r" % (CONF_DIR, mounts)
    return os.path.normpath(os.path.join(DIST, dirs[0]))


def test_compose_config_checks(tlsfront_bin):
    conf_dir = compose_config_dir()
    conf = check_config(tlsfront_bin, os.path.join(conf_dir, "tlsfront.conf"))
    _, svc = compose_tlsfront()
    # The image's CMD reads /etc/tlsfront/tlsfront.conf unless told otherwise.
    command = svc.get("command")
    if command is not None:
        command = shlex.split(command) if isinstance(command, str) else command
        assert command[command.index("-c") + 1] == CONF_PATH
    # The build context holds the Containerfile.
    assert os.path.samefile(os.path.join(DIST, svc["build"]["context"], "Containerfile"),
                            CONTAINERFILE)
    assert inbound_ports(conf) == SMTP_PORTS


def test_compose_ports_agree_with_config(tlsfront_bin):
    services = compose_services()
    name, svc = compose_tlsfront()
    conf = check_config(tlsfront_bin, os.path.join(compose_config_dir(), "tlsfront.conf"))
    # A sidecar: tlsfront joins the legacy service's network namespace, so
    # the ports are published there and the backend is on loopback.
    mode = svc.get("network_mode", "")
    assert mode.startswith("service:"), "tlsfront is not a sidecar: network_mode %r" % mode
    owner = services[mode.split(":", 1)[1]]
    assert "ports" not in svc, "ports are published on the namespace's owner, not on tlsfront"
    published = set()
    for p in owner.get("ports", []):
        if isinstance(p, dict):
            host, target = int(p["published"]), int(p["target"])
        else:
            parts = str(p).split("/")[0].split(":")
            host, target = int(parts[-2]), int(parts[-1])
        assert host == target, "port %s is published as %s" % (target, host)
        published.add(target)
    assert published == inbound_ports(conf) == containerfile()["expose"]
    backend = conf["backend"]["address"]
    assert backend.startswith("127.0.0.1:") or backend.startswith("[::1]:")
    # The backend listens in the shared namespace, on the port tlsfront uses.
    assert port_of(backend) not in published


def test_compose_runs_tlsfront_as_the_image_user_without_capabilities():
    services = compose_services()
    _, svc = compose_tlsfront()
    if "user" in svc:
        assert int(str(svc["user"]).split(":")[0]) == image_uid()
    assert "ALL" in svc.get("cap_drop", [])
    assert not svc.get("cap_add")
    owner = services[svc["network_mode"].split(":", 1)[1]]
    sysctls = owner.get("sysctls", {})
    if isinstance(sysctls, list):
        sysctls = dict(s.split("=", 1) for s in sysctls)
    assert str(sysctls.get("net.ipv4.ip_unprivileged_port_start")) == "0", \
        "a non-root tlsfront without capabilities cannot bind 25, 465, 587"


# --- Kubernetes ------------------------------------------------------------------

def pod_docs():
    docs = load_yaml_docs(POD)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert set(by_kind) >= {"ConfigMap", "Pod", "Service"}, set(by_kind)
    return by_kind


def pod_tlsfront(pod):
    containers = [c for c in pod["spec"]["containers"] if c["name"] == "tlsfront"]
    assert len(containers) == 1
    return containers[0]


def pod_config(tlsfront_bin, tmp_path):
    """The tlsfront.conf the Pod mounts at /etc/tlsfront, checked by tlsfront -t."""
    by_kind = pod_docs()
    pod = by_kind["Pod"][0]
    c = pod_tlsfront(pod)
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == CONF_DIR]
    assert len(mounts) == 1, "tlsfront mounts nothing at %s" % CONF_DIR
    volume = [v for v in pod["spec"]["volumes"] if v["name"] == mounts[0]["name"]][0]
    if "configMap" in volume:
        maps = [volume["configMap"]["name"]]
    else:
        maps = [s["configMap"]["name"] for s in volume["projected"]["sources"] if "configMap" in s]
    configmaps = {m["metadata"]["name"]: m for m in by_kind["ConfigMap"]}
    texts = [configmaps[m]["data"]["tlsfront.conf"] for m in maps
             if "tlsfront.conf" in configmaps[m]["data"]]
    assert len(texts) == 1, "the %s volume holds no tlsfront.conf" % CONF_DIR
    path = tmp_path / "tlsfront.conf"
    path.write_text(texts[0])
    # The container reads that file: the image's CMD, or args naming it.
    args = c.get("args", containerfile()["cmd"])
    assert args[args.index("-c") + 1] == CONF_PATH
    assert "command" not in c, "the image's ENTRYPOINT (tlsfront) is kept"
    return check_config(tlsfront_bin, str(path))


def test_pod_config_checks(tlsfront_bin, tmp_path):
    conf = pod_config(tlsfront_bin, tmp_path)
    assert conf["backend"]["address"] == "127.0.0.1:2525"
    assert conf["outbound"]["enabled"] is True
    assert conf["outbound"]["next_hop"] == "original-destination"


def test_pod_and_service_ports_agree_with_config(tlsfront_bin, tmp_path):
    conf = pod_config(tlsfront_bin, tmp_path)
    by_kind = pod_docs()
    pod = by_kind["Pod"][0]
    c = pod_tlsfront(pod)
    container_ports = {p["containerPort"] for p in c["ports"]}
    assert container_ports == inbound_ports(conf) == containerfile()["expose"] == SMTP_PORTS
    named = {p["name"]: p["containerPort"] for p in c["ports"] if "name" in p}
    (service,) = by_kind["Service"]
    selector = service["spec"]["selector"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()), \
        "the Service does not select the Pod"
    targets = set()
    for p in service["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        target = named[target] if isinstance(target, str) else target
        assert target == p["port"], "Service port %s goes to %s" % (p["port"], target)
        targets.add(target)
    assert targets == container_ports
    # The outbound listener is for the Pod's own processes only.
    for a in conf["outbound"]["listen"]:
        assert a.startswith("127.0.0.1:") or a.startswith("[::1]:"), a
    assert not {port_of(a) for a in conf["outbound"]["listen"]} & container_ports


def redirect_rules(pod):
    """(dport, excluded uid, to-port) of every REDIRECT in the init containers."""
    rules = []
    for init in pod["spec"].get("initContainers", []):
        script = " ".join(init.get("command", []) + init.get("args", []))
        # Expand the one level of shell variables the script may use.
        for var, val in re.findall(r'(\w+)="([^"]*)"', script):
            script = script.replace("$" + var, val)
        for line in script.splitlines():
            if "REDIRECT" not in line or " -A " not in line:
                continue
            dport = re.search(r"--dport (\d+)", line)
            uid = re.search(r"! --uid-owner (\S+)", line)
            to = re.search(r"--to-ports (\d+)", line)
            assert dport and uid and to, "cannot read the rule %r" % line
            rules.append((int(dport.group(1)), uid.group(1), int(to.group(1)), init))
    return rules


def test_pod_redirect_rule_matches_outbound_listener_and_uid(tlsfront_bin, tmp_path):
    conf = pod_config(tlsfront_bin, tmp_path)
    pod = pod_docs()["Pod"][0]
    c = pod_tlsfront(pod)
    rules = redirect_rules(pod)
    assert rules, "no init container installs a REDIRECT rule"
    outbound_ports = {port_of(a) for a in conf["outbound"]["listen"]}
    assert len(outbound_ports) == 1
    uid = c["securityContext"]["runAsUser"]
    assert uid == image_uid(), "tlsfront runs as %s, the image's USER is %s" % (uid, image_uid())
    assert c["securityContext"].get("runAsNonRoot") is True
    for dport, excluded, to, init in rules:
        assert dport == 25
        assert to in outbound_ports, "REDIRECT to %s, outbound listens on %s" % (to, outbound_ports)
        # A number: the init container's /etc/passwd does not know tlsfront.
        assert excluded == str(uid), "the rule spares uid %s, tlsfront runs as %s" % (excluded, uid)
        caps = init["securityContext"]["capabilities"]["add"]
        assert "NET_ADMIN" in caps
    # The other containers must not run as that uid: their mail would skip tlsfront.
    for other in pod["spec"]["containers"]:
        if other is not c:
            assert (other.get("securityContext") or {}).get("runAsUser") != uid


def test_pod_lets_nonroot_tlsfront_bind_low_ports():
    pod = pod_docs()["Pod"][0]
    c = pod_tlsfront(pod)
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not c["securityContext"]["capabilities"].get("add")
    sysctls = {s["name"]: s["value"] for s in pod["spec"]["securityContext"].get("sysctls", [])}
    assert sysctls.get("net.ipv4.ip_unprivileged_port_start") == "0"
