"""Side-by-side benchmark of trilb, HAProxy and nginx (the spec is BENCHMARKS.md).

Ratios only mean something when every proxy is measured in the same run against the same backends
and the same load generator, so this one script starts all of them, runs wrk, and prints one table.
See bench/README.rst for how to run it and how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trustme

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PROXIES = ("trilb", "haproxy", "nginx")
TARGETS = ("direct", *PROXIES)
SMALL_BODY = b"hello world\n"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
ISSUED_PORTS: set[int] = set()


@dataclass(frozen=True)
class Scenario:
    """One load shape; a TLS variant differs only in the frontend port it is aimed at."""

    name: str
    path: str
    connections: int
    close: bool  # "Connection: close": one TCP (and TLS) handshake per request
    tls: bool
    bulk: bool  # judged by bytes/s rather than requests/s
    #: "tcp": through the proxies' TCP-mode (L4) frontends; "tcp-proxy": the same with a PROXY
    #: protocol v2 header sent to the backends (which accept it); "": HTTP mode
    layer4: str = ""


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("http-small", "/small", 64, False, False, False),
        Scenario("http-1m", "/1m", 64, False, False, True),
        Scenario("http-newconn", "/small", 16, True, False, False),
        Scenario("https-small", "/small", 64, False, True, False),
        Scenario("https-1m", "/1m", 64, False, True, True),
        Scenario("https-newconn", "/small", 16, True, True, False),
        Scenario("tcp-1m", "/1m", 64, False, False, True, layer4="tcp"),
        Scenario("tcp-1m-proxy", "/1m", 64, False, False, True, layer4="tcp-proxy"),
    ]
}


@dataclass
class Result:
    """What we keep from one wrk run; errors are counted so a broken proxy cannot look fast."""

    rps: float
    bytes_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors (connect/read/write/timeout) + non-2xx/3xx responses


@dataclass
class Target:
    """What wrk is aimed at: the bare backend ("direct") or a proxy in front of both backends."""

    name: str
    http: int = field(default_factory=lambda: free_port())
    tls: int | None = field(default_factory=lambda: free_port())
    #: the TCP-mode frontends (plain relay, and relay with send-proxy-v2); None: has none
    tcp: int | None = field(default_factory=lambda: free_port())
    tcp_proxy: int | None = field(default_factory=lambda: free_port())
    proc: subprocess.Popen[bytes] | None = None

    def port(self, sc: Scenario) -> int | None:
        """The port a scenario is aimed at on this target (None: not measured here)."""
        if sc.layer4 == "tcp":
            return self.tcp
        if sc.layer4 == "tcp-proxy":
            return self.tcp_proxy
        return self.tls if sc.tls else self.http


class StartError(Exception):
    """A server did not come up; a proxy is then skipped, missing backends end the run."""


def free_port() -> int:
    """Let the kernel pick a free port; the tiny race with other programs is acceptable here."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in ISSUED_PORTS:  # the kernel may offer it again until a server binds it
            ISSUED_PORTS.add(port)
            return port


NGINX_MAIN = """{user}daemon off;
worker_processes {workers};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path {tmp}/{name}-body; proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fcgi; uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  ssl_protocols TLSv1.3; ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;
{body}}}
"""
BACKEND_SERVER = """  server {{
    listen 127.0.0.1:{port};{tls}
    listen 127.0.0.1:{pp} proxy_protocol;
    root {tmp}/www;
    location = /small {{ return 200 "hello world\\n"; }}
    location = /1m {{ }}
  }}
"""
NGINX_PROXY = """  upstream nginx {{
    server 127.0.0.1:{b1};
    server 127.0.0.1:{b2};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{http};
    listen 127.0.0.1:{tls} ssl;
    location / {{
      proxy_pass http://nginx;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_max_temp_file_size 0;  # relay 1 MiB bodies through memory, never via disk
    }}
  }}
"""
HAPROXY = """global
    nbthread {workers}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always
    option forwardfor
frontend bench
    bind 127.0.0.1:{http}
    bind 127.0.0.1:{tls} ssl crt {tmp}/combined.pem alpn http/1.1 ssl-min-ver TLSv1.3
    default_backend nginx
backend nginx
    balance roundrobin
    server b1 127.0.0.1:{b1}
    server b2 127.0.0.1:{b2}
listen tcp
    mode tcp
    bind 127.0.0.1:{tcp}
    balance roundrobin
    server b1 127.0.0.1:{b1}
    server b2 127.0.0.1:{b2}
listen tcp_proxy
    mode tcp
    bind 127.0.0.1:{tcp_proxy}
    balance roundrobin
    server b1 127.0.0.1:{p1} send-proxy-v2
    server b2 127.0.0.1:{p2} send-proxy-v2
"""
TRILB = """[global]
workers = {workers}

[log]
target = "none"

[frontends.bench]
bind = ["127.0.0.1:{http}"]
default_backend = "nginx"
forwarded_for = true
{tls}
[backends.nginx]
balance = "roundrobin"
servers = [
  {{ name = "b1", address = "127.0.0.1:{b1}" }},
  {{ name = "b2", address = "127.0.0.1:{b2}" }},
]

[frontends.bench_tcp]
bind = ["127.0.0.1:{tcp}"]
mode = "tcp"
default_backend = "nginx_tcp"

[backends.nginx_tcp]
mode = "tcp"
servers = [
  {{ name = "b1", address = "127.0.0.1:{b1}" }},
  {{ name = "b2", address = "127.0.0.1:{b2}" }},
]

[frontends.bench_tcp_proxy]
bind = ["127.0.0.1:{tcp_proxy}"]
mode = "tcp"
default_backend = "nginx_pp"

[backends.nginx_pp]
mode = "tcp"
servers = [
  {{ name = "b1", address = "127.0.0.1:{p1}", send_proxy = "v2" }},
  {{ name = "b2", address = "127.0.0.1:{p2}", send_proxy = "v2" }},
]
"""
TRILB_TLS = """
[frontends.bench_tls]
bind = ["127.0.0.1:{tls}"]
default_backend = "nginx"
forwarded_for = true
tls = {{ certificates = [{pem}], min_version = "1.3" }}
"""


class Children:
    """Every process we start, each in its own session, so one finally-block can stop them all."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], cpus: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Run ``argv`` on ``cpus`` (taskset's list: "1", "0,1")."""
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                ["taskset", "-c", cpus, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop them ourselves
                **kw,
            )
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        text = (self.logdir / f"{name}.log").read_text(errors="replace").strip()
        return "".join(f"\n    {line}" for line in text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left (e.g. nginx workers)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], port: int, ctx: ssl.SSLContext | None) -> None:
    """Poll until the server answers GET /small correctly: listening is not enough for a proxy."""
    deadline = time.monotonic() + START_TIMEOUT
    problem = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with code {proc.returncode}")
        conn = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=ctx)
            if ctx
            else http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        )
        try:
            conn.request("GET", "/small")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and body == SMALL_BODY:
                return
            problem = f"answered {resp.status} {body[:60]!r}"
        except (OSError, http.client.HTTPException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.05)
    raise StartError(f"no good answer on port {port} within {START_TIMEOUT:.0f}s ({problem})")


_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}  # wrk's units are binary


def parse_wrk(text: str) -> Result:
    """Read wrk's human output (wrk has no machine-readable mode without a Lua script)."""

    def find(pattern: str) -> re.Match[str]:
        if m := re.search(pattern, text, re.MULTILINE):
            return m
        raise ValueError(f"wrk output lacks {pattern!r}:\n{text}")

    def latency(pct: str) -> float:
        m = find(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$")
        return float(m[1]) * _TIME_MS[m[2]]

    transfer = find(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)")
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Result(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        bytes_per_s=float(transfer[1]) * _SIZE[transfer[2]],
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(find(r"^\s*(\d+) requests in")[1]),
        errors=sum(map(int, sock.groups() if sock else ())) + int(non2xx[1] if non2xx else 0),
    )


def run_wrk(url: str, sc: Scenario, duration: int, cpu: int) -> Result:
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{sc.connections}", f"-d{duration}s"]
    argv += ["--latency", *(["-H", "Connection: close"] if sc.close else []), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    if out.returncode != 0:
        raise ValueError(f"wrk exited {out.returncode}: {out.stderr.strip()}")
    return parse_wrk(out.stdout)


def peak_rss_kib(pid: int) -> int:
    """Sum VmHWM over pid and its descendants: nginx (and multi-worker trilb) live in children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError):
            m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
            total += int(m[1]) if m else 0
    return total


def write_nginx(tmp: Path, name: str, body: str, workers: int = 1) -> list[str]:
    """Every path nginx writes stays in tmp (no /etc, no /var); `user root` only when root."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers are nobody: no tmp access
    conf = tmp / f"{name}.conf"
    text = NGINX_MAIN.format(user=user, tmp=tmp, name=name, body=body, workers=workers)
    conf.write_text(text)
    return ["nginx", "-p", str(tmp), "-e", f"{tmp}/{name}.error.log", "-c", str(conf)]


def make_files(tmp: Path) -> ssl.SSLContext:
    """The 1 MiB body and an ECDSA P-256 cert from a throwaway CA; returns a trusting client ctx."""
    (tmp / "www").mkdir()
    (tmp / "www" / "1m").write_bytes(os.urandom(1 << 20))
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp / "combined.pem"))
    leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
    (tmp / "cert.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def proxy_command(
    t: Target, tmp: Path, b: tuple[int, int, int, int], args: argparse.Namespace
) -> list[str]:
    """Write the proxy's config (round-robin over both backends) and return its command line.
    ``b``: the backends' HTTP ports, then their PROXY-protocol ports."""
    ports = {
        "http": t.http,
        "tls": t.tls,
        "tcp": t.tcp,
        "tcp_proxy": t.tcp_proxy,
        "b1": b[0],
        "b2": b[1],
        "p1": b[2],
        "p2": b[3],
        "tmp": tmp,
        "workers": args.workers,
    }
    if t.name == "haproxy":
        (tmp / "haproxy.cfg").write_text(HAPROXY.format(**ports))
        return ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")]
    if t.name == "nginx":
        return write_nginx(tmp, "nginx-proxy", NGINX_PROXY.format(**ports), args.workers)
    tls = "" if t.tls is None else TRILB_TLS.format(**ports, pem=json.dumps(f"{tmp}/combined.pem"))
    conf = tmp / "trilb.toml"
    conf.write_text(TRILB.format(**{**ports, "tls": tls}))
    if not args.trilb_cmd:
        return [sys.executable, "-m", "trilb", "serve", str(conf)]
    cmd = shlex.split(args.trilb_cmd)
    if "{config}" in args.trilb_cmd:
        return [a.replace("{config}", str(conf)) for a in cmd]
    return [*cmd, str(conf)]


def pick_cpus() -> tuple[int, int]:
    """(load CPU, proxy CPU): wrk and backends share one, the proxy under test gets the other."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print(f"warning: only CPU {cpus[0]} usable; proxy and load share it", file=sys.stderr)
    return cpus[0], cpus[-1]


def cell(sc: Scenario, row: dict[str, Result | None], target: str) -> str:
    """'-' = not run, FAIL = wrk could not measure, '!' = errors during the run."""
    if target not in row:
        return "-"
    if (r := row[target]) is None:
        return "FAIL"
    text = f"{r.bytes_per_s / 1024**3:.2f} GB/s" if sc.bulk else f"{r.rps:,.0f} r/s"
    return text + ("!" if r.errors else "")


def metric(sc: Scenario, r: Result) -> float:
    return r.bytes_per_s if sc.bulk else r.rps


def print_table(out: dict[str, Any], scenarios: list[Scenario]) -> None:
    results: dict[str, dict[str, Result | None]] = out["results"]
    rows = [["scenario", *TARGETS, "trilb/haproxy", "trilb p50", "trilb p99", "trilb errors"]]
    for sc in scenarios:
        row = results.get(sc.name, {})
        tr, ha = row.get("trilb"), row.get("haproxy")
        ratio = f"{metric(sc, tr) / metric(sc, ha):.2f}" if tr and ha and metric(sc, ha) else "-"
        lat = [f"{tr.p50_ms:.2f} ms", f"{tr.p99_ms:.2f} ms", str(tr.errors)] if tr else ["-"] * 3
        rows.append([sc.name, *(cell(sc, row, t) for t in TARGETS), ratio, *lat])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rows.insert(1, ["-" * w for w in widths])
    for r in rows:
        cells = enumerate(zip(r, widths, strict=True))
        print(*(c.rjust(w) if i else c.ljust(w) for i, (c, w) in cells), sep="  ")
    errors = {f"{t} {s}": r.errors for s, row in results.items() for t, r in row.items() if r}
    if bad := [f"{where}: {n}" for where, n in errors.items() if n]:
        print("! = had errors (socket errors + non-2xx/3xx), do not trust: " + ", ".join(bad))
    rss = {n: f"{kib / 1024:.1f} MiB" for n, kib in out["peak_rss_kib"].items()}
    others = ", ".join(f"{n} {v}" for n, v in rss.items() if n != "trilb")
    print(f"peak RSS (VmHWM): trilb {rss.get('trilb', '-')}" + (f"  ({others})" if others else ""))
    for name, why in out["skipped"].items():
        print(f"skipped {name}: {why.splitlines()[0]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--quick", action="store_true", help="3 s per run, for smoke tests")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list (default: all)")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma list (default: all)")
    ap.add_argument(
        "--trilb-cmd", default="", help="trilb command; config path appended or {config}"
    )
    ap.add_argument("--with-tls", action="store_true", help="also give trilb a TLS frontend")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes/threads per proxy (trilb workers, HAProxy nbthread, nginx "
        "worker_processes), which then run on every CPU, the load generator's too "
        "(default 1: the proxy alone on its CPU)",
    )
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    args.duration = 3 if args.quick else args.duration
    for opt, known in (("scenarios", SCENARIOS), ("proxies", PROXIES)):
        names = [n.strip() for n in getattr(args, opt).split(",") if n.strip()]
        if unknown := [n for n in names if n not in known]:
            ap.error(f"--{opt}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        setattr(args, opt, names)
    return args


@dataclass
class Bench:
    """What every step of one run shares."""

    args: argparse.Namespace
    tmp: Path
    kids: Children
    load_cpu: int = 0
    proxy_cpu: int = 0
    ctx: ssl.SSLContext | None = None
    backends: tuple[int, int] = (0, 0)
    #: the backends' PROXY-protocol ports
    proxy_backends: tuple[int, int] = (0, 0)

    def start_backends(self) -> Target:
        """Two nginx servers on the load CPU; the first one also speaks TLS (https 'direct')."""
        direct, b2 = Target("direct", tcp_proxy=None), free_port()
        direct.tcp = direct.http  # (a TCP relay's physical limit: the backend itself)
        p1, p2 = free_port(), free_port()
        tls = f"\n    listen 127.0.0.1:{direct.tls} ssl;"
        servers = BACKEND_SERVER.format(port=direct.http, tls=tls, tmp=self.tmp, pp=p1)
        servers += BACKEND_SERVER.format(port=b2, tls="", tmp=self.tmp, pp=p2)
        argv = write_nginx(self.tmp, "backends", servers)
        direct.proc = self.kids.start("backends", argv, str(self.load_cpu))
        try:
            self.wait_target(direct, b2)
        except StartError as exc:
            raise SystemExit(f"backends failed: {exc}{self.kids.log_tail('backends')}") from None
        self.backends = (direct.http, b2)
        self.proxy_backends = (p1, p2)
        return direct

    def proxy_cpus(self) -> str:
        """The proxy's CPU; with --workers, every CPU (shared with wrk and the backends)."""
        if self.args.workers > 1:
            return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
        return str(self.proxy_cpu)

    def wait_target(self, t: Target, *extra_http: int) -> None:
        assert t.proc is not None
        for port in (t.http, *extra_http):
            wait_ready(t.proc, port, None)
        if t.tls is not None:
            wait_ready(t.proc, t.tls, self.ctx)

    def start_proxy(self, name: str) -> Target:
        """Start one proxy on the proxy CPU; one that is missing or broken is skipped, loudly."""
        t = Target(name)
        if name == "trilb" and not self.args.with_tls:
            t.tls = None
        if name == "nginx":  # (its TCP proxy is the stream module, not configured here)
            t.tcp = t.tcp_proxy = None
        if name != "trilb" and not shutil.which(name):
            raise StartError("not installed")
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        kw = {"cwd": REPO, "env": {**os.environ, "PYTHONPATH": path}} if name == "trilb" else {}
        argv = proxy_command(t, self.tmp, (*self.backends, *self.proxy_backends), self.args)
        t.proc = self.kids.start(name, argv, self.proxy_cpus(), **kw)
        try:
            self.wait_target(t)
        except StartError as exc:
            self.kids.stop(t.proc)
            raise StartError(f"{exc}{self.kids.log_tail(name)}") from None
        return t

    def run(self) -> dict[str, Any]:
        """Run scenario by scenario with all proxies up, so compared figures are close in time."""
        self.load_cpu, self.proxy_cpu = pick_cpus()
        self.ctx = make_files(self.tmp)
        targets, skipped = [self.start_backends()], {}
        for name in self.args.proxies:
            try:
                targets.append(self.start_proxy(name))
            except StartError as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", file=sys.stderr)
        results: dict[str, dict[str, Result | None]] = {}
        rss: dict[str, int] = {}
        for sc in (SCENARIOS[n] for n in self.args.scenarios):
            for t in targets:
                if (port := t.port(sc)) is None:
                    continue
                url = f"{'https' if sc.tls else 'http'}://127.0.0.1:{port}{sc.path}"
                print(f"{sc.name:>14}  {t.name:<8} {url}", file=sys.stderr, flush=True)
                row = results.setdefault(sc.name, {})
                try:
                    row[t.name] = run_wrk(url, sc, self.args.duration, self.load_cpu)
                except (ValueError, subprocess.TimeoutExpired) as exc:
                    row[t.name] = None
                    print(f"  wrk failed: {exc}", file=sys.stderr)
                if t.proc and t.proc.poll() is not None:
                    print(f"  {t.name} died (code {t.proc.returncode})", file=sys.stderr)
                elif t.proc and t.name != "direct":  # read after each run: survives a late crash
                    rss[t.name] = max(rss.get(t.name, 0), peak_rss_kib(t.proc.pid))
        cpus = [self.load_cpu, self.proxy_cpu]
        return {"results": results, "peak_rss_kib": rss, "skipped": skipped, "cpus": cpus}


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    return "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := [t for t in ("wrk", "nginx", "taskset") if not shutil.which(t)]:
        print(f"missing required tools: {', '.join(missing)}; this script installs nothing")
        return 2
    if not shutil.which("h2load"):
        print("note: h2load not found (needed only for future HTTP/2 scenarios)", file=sys.stderr)
    # SIGTERM becomes SystemExit so the finally-block below still stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="trilb-bench-") as tmp:
        kids = Children(Path(tmp))
        try:
            out = Bench(args, Path(tmp), kids).run()
        except KeyboardInterrupt:
            print("\ninterrupted; stopping children", file=sys.stderr)
            return 130
        finally:
            kids.stop_all()
    scenarios = [SCENARIOS[n] for n in args.scenarios]
    cpus = out["cpus"]
    if args.workers > 1:
        where = f"{args.workers} workers/threads per proxy on every CPU"
    else:
        where = f"proxy on CPU {cpus[1]}"
    print(f"\nwrk -t1, {args.duration}s/run; {where}, wrk+backends on CPU {cpus[0]}")
    print_table(out, scenarios)
    report = {
        "started": started,
        "args": vars(args),
        "git": tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "versions": {t: tool_version([t, "-v"]) for t in ("haproxy", "nginx", "wrk")},
        "scenarios": {sc.name: asdict(sc) for sc in scenarios},
        **out,
        "results": {
            s: {t: r and asdict(r) for t, r in row.items()} for s, row in out["results"].items()
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path.relative_to(REPO)}")
    return 1 if "trilb" in out["skipped"] else 0  # the subject of the benchmark must not vanish


if __name__ == "__main__":
    sys.exit(main())
