"""Slow-client load: a normal client's latency alone, then beside 2,000 slow clients at once.

The slow clients are slowloris (a request head trickled one byte a second), slow POST (a 1 MB body
announced, then one byte a second) and slow readers (``GET /1m``, then nothing read). A client
that the proxy cuts reconnects at once, so 2,000 stay open: with the default timeouts
(``timeout_http_request`` 10s, ``timeout_client`` 30s) the slowloris ones are cut and come back
every 10 s, as a real attack would. wrk (``-t1 -c8 /small``) measures the normal client. Set-up
as in ``run.py`` (whose helpers this imports): nginx backends and wrk on one CPU, each proxy on
the other, everything on 127.0.0.1. See bench/README.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: run.py is found through sys.path
from run import (
    REPO,
    RESULTS,
    Children,
    Result,
    Scenario,
    StartError,
    free_port,
    make_files,
    pick_cpus,
    run_wrk,
    wait_ready,
    write_nginx,
)

PROXIES = ("trilb", "haproxy")
#: the normal client: wrk -t1 -c8 on /small
NORMAL = Scenario("normal", "/small", 8, close=False, tls=False, bulk=False)
#: the slow clients' share of each kind, by default
KINDS = {"slowloris": 700, "post": 700, "reader": 600}
#: how long the slow clients are left alone before wrk starts: the readers' first bytes (up to
#: 1 MiB each, into the socket buffers) are relayed in the first seconds; the proxy's CPU use is
#: then sampled over the last IDLE_SAMPLE seconds
SETTLE = 5.0
IDLE_SAMPLE = 3.0
#: every fd a slow client costs a proxy: its own socket and, for POST and readers, the server's
FDS_NEEDED = 2 * sum(KINDS.values()) + 1000

BACKEND = """  server {{
    listen 127.0.0.1:{port};
    root {tmp}/www;
    client_max_body_size 10m;
    location = /small {{ return 200 "hello world\\n"; }}
    location = /1m {{ }}
    # proxy_pass reads the whole request body before it forwards anything: like an application
    # that takes an upload, this backend waits for a slow POST's body (nginx's `return` would
    # answer at once)
    location = /upload {{ proxy_pass http://127.0.0.1:{port}/small; }}
  }}
"""
TRILB = """[log]
target = "none"

[defaults]
timeout_http_request = "10s"
timeout_client = "30s"

[frontends.bench]
bind = ["127.0.0.1:{http}"]
default_backend = "nginx"
forwarded_for = true

[backends.nginx]
balance = "roundrobin"
servers = [
  {{ name = "b1", address = "127.0.0.1:{b1}" }},
  {{ name = "b2", address = "127.0.0.1:{b2}" }},
]
"""
HAPROXY = """global
    nbthread 1
    maxconn 8000
defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout http-request 10s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always
    option forwardfor
frontend bench
    bind 127.0.0.1:{http}
    default_backend nginx
backend nginx
    balance roundrobin
    server b1 127.0.0.1:{b1}
    server b2 127.0.0.1:{b2}
"""


# -- the slow clients (run as a child process: python slow_clients.py --load PORT ...) -----------


@dataclass
class Slow:
    """One slow client connection and what it trickles next."""

    kind: str
    sock: socket.socket
    trickle: bytes  # the endless pattern it sends one byte of per tick ("" for readers)
    sent: int = 0


HEADS = {
    "slowloris": b"GET /small HTTP/1.1\r\nHost: x\r\n",
    "post": b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
    "reader": b"GET /1m HTTP/1.1\r\nHost: x\r\n\r\n",
}
TRICKLES = {"slowloris": b"X-a: b\r\n", "post": b"x", "reader": b""}
#: a slow reader's receive buffer (a tiny window, as slow-read attacks advertise) and MSS. Linux
#: sizes a connection's send buffer from the peer's MSS: with loopback's 64 KiB one the proxy's
#: send buffer starts at the 4 MiB maximum and takes all of /1m at once, so the proxy is done
#: with the response at once and the "slow reader" is merely an idle keep-alive connection. With
#: an Ethernet MSS it starts near 100 KiB, as it would for a client on a real network.
READER_RCVBUF = 4096
READER_MSS = 1460


def slow_load(port: int, counts: dict[str, int], stats_path: Path, interval: float) -> None:
    """Keep ``counts`` slow connections of each kind open, each sending one byte per ``interval``
    (readers: reading nothing); a connection the proxy closes is replaced at once. Writes its
    counters to ``stats_path`` every second. Runs until killed."""
    ep = select.epoll()
    conns: dict[int, Slow] = {}
    cuts = dict.fromkeys(counts, 0)
    answers: dict[str, int] = {}  # first line of what the proxy said before closing -> count
    errors = {"connect": 0}
    wanted = [kind for kind, n in counts.items() for _ in range(n)]

    def open_one(kind: str) -> None:
        sock = socket.socket()
        if kind == "reader":  # a tiny window and a real network's MSS (set before connecting)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, READER_MSS)
        sock.settimeout(10)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(HEADS[kind])
        except OSError:
            errors["connect"] += 1
            sock.close()
            wanted.append(kind)
            return
        sock.setblocking(False)
        # Readers are never read, and the proxy's FIN waits behind the data our closed window
        # holds back: a reader cut by the proxy shows up only once the proxy's kernel gives up
        # and resets it (EPOLLERR), long after the measurement.
        events = select.EPOLLRDHUP | (0 if kind == "reader" else select.EPOLLIN)
        ep.register(sock.fileno(), events)
        conns[sock.fileno()] = Slow(kind, sock, TRICKLES[kind])

    def cut(fd: int, said: bytes) -> None:
        slow = conns.pop(fd)
        ep.unregister(fd)
        slow.sock.close()
        cuts[slow.kind] += 1
        first = said.split(b"\r\n", 1)[0].decode("latin-1")[:40] or "(closed)"
        answers[first] = answers.get(first, 0) + 1
        wanted.append(slow.kind)

    def write_stats() -> None:
        opened = dict.fromkeys(counts, 0)
        for slow in conns.values():
            opened[slow.kind] += 1
        data = {"open": opened, "cuts": cuts, "answers": answers, "errors": errors}
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(stats_path)

    slices = 10  # each tick of interval/10 sends to a tenth of the connections
    next_slice = next_stats = time.monotonic()
    turn = 0
    while True:
        # (Re)connect in batches of 100, so the proxy's listen backlog never overflows.
        for _ in range(min(100, len(wanted))):
            open_one(wanted.pop(0))
        now = time.monotonic()
        if now >= next_slice:
            next_slice += interval / slices
            for fd, slow in list(conns.items()):
                if slow.trickle and fd % slices == turn:
                    byte = slow.trickle[slow.sent % len(slow.trickle) :][:1]
                    try:
                        slow.sock.send(byte)
                        slow.sent += 1
                    except OSError:
                        cut(fd, b"")
            turn = (turn + 1) % slices
        if now >= next_stats:
            next_stats += 1.0
            write_stats()
        for fd, _ in ep.poll(max(0.0, min(next_slice, next_stats) - time.monotonic())):
            if fd not in conns:
                continue
            try:
                said = b"" if conns[fd].kind == "reader" else conns[fd].sock.recv(65536)
            except OSError:
                said = b""
            cut(fd, said)  # anything the proxy says to a slow client is its last word


# -- the measurement ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One wrk run and the state of the proxy around it."""

    wrk: Result | None
    rss_kib: int
    #: ESTABLISHED sockets on the proxy's port (its side), sampled once a second during wrk
    established: list[int] = field(default_factory=list)
    #: the proxy's open file descriptors at the end of wrk (clients, servers, listeners...)
    fds: int = 0
    #: the proxy's CPU use (share of one CPU) with only the slow clients, just before wrk
    idle_cpu: float = 0.0
    slow: dict[str, Any] = field(default_factory=dict)


def established(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    return len(out.stdout.splitlines())


def rss_kib(pid: int) -> int:
    """Current resident memory (VmRSS) of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def measure(port: int, pid: int, duration: int, cpu: int) -> Phase:
    """wrk against the proxy, sampling its established connections meanwhile."""
    result: list[Result | None] = [None]

    def wrk() -> None:
        url = f"http://127.0.0.1:{port}{NORMAL.path}"
        try:
            result[0] = run_wrk(url, NORMAL, duration, cpu)
        except (ValueError, subprocess.TimeoutExpired) as exc:
            print(f"  wrk failed: {exc}", file=sys.stderr)

    thread = threading.Thread(target=wrk)
    thread.start()
    samples = []
    time.sleep(0.5)
    while thread.is_alive():
        samples.append(established(port))
        thread.join(1.0)
    return Phase(result[0], rss_kib(pid), samples, fds=len(os.listdir(f"/proc/{pid}/fd")))


def read_stats(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {}


def run_proxy(
    name: str, port: int, proc: subprocess.Popen[bytes], kids: Children, args: argparse.Namespace
) -> dict[str, Phase]:
    """Alone, with the slow clients, alone again."""
    cpus = args.cpus
    limit = fd_limit(proc.pid)
    if limit < FDS_NEEDED:
        print(f"warning: {name} may open {limit} files only (ulimit -n); needs ~{FDS_NEEDED}")
    phases = {}
    print(f"{name}: alone", file=sys.stderr, flush=True)
    phases["alone"] = measure(port, proc.pid, args.duration, cpus[0])
    stats = kids.logdir / f"slow-{name}.json"
    argv = [sys.executable, __file__, "--load", str(port), "--stats", str(stats)]
    argv += [f"--{kind}={n}" for kind, n in args.counts.items()]
    load = kids.start(f"slow-{name}", argv, str(cpus[0]))
    try:
        total = sum(args.counts.values())
        print(f"{name}: opening {total} slow connections", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 60
        while sum(read_stats(stats).get("open", {}).values()) < total or established(port) < total:
            if time.monotonic() > deadline or load.poll() is not None:
                raise StartError(f"slow clients not all connected: {read_stats(stats)}")
            time.sleep(0.2)
        time.sleep(SETTLE - IDLE_SAMPLE)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(IDLE_SAMPLE)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        print(f"{name}: with {total} slow clients", file=sys.stderr, flush=True)
        phases["slow"] = measure(port, proc.pid, args.duration, cpus[0])
        phases["slow"].idle_cpu = idle_cpu
        phases["slow"].slow = read_stats(stats)
    finally:
        kids.stop(load)
    deadline = time.monotonic() + 30  # the proxy notices the closed slow clients
    while established(port) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(SETTLE)  # and has cleaned up after them
    print(f"{name}: alone again", file=sys.stderr, flush=True)
    phases["after"] = measure(port, proc.pid, args.duration, cpus[0])
    return phases


@dataclass(frozen=True)
class Target:
    """A proxy to measure: its row label, which proxy, and (trilb) the command that runs it."""

    label: str
    kind: str  # "trilb" or "haproxy"
    command: str = ""

    @property
    def file_name(self) -> str:  # for its log and config files
        return "".join(c if c.isalnum() else "-" for c in self.label)


def targets(args: argparse.Namespace) -> list[Target]:
    """--proxies, then each --variant (another trilb command, measured in the same run)."""
    chosen = [Target(p, p, args.trilb_cmd if p == "trilb" else "") for p in args.proxies]
    return chosen + [Target(f"trilb {label}", "trilb", cmd) for label, cmd in args.variant]


def start(
    target: Target, tmp: Path, kids: Children, backends: tuple[int, int], cpu: int
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a proxy in front of both backends; returns its port and process."""
    port = free_port()
    ports = {"http": port, "b1": backends[0], "b2": backends[1]}
    name, trilb_cmd = target.file_name, target.command
    if target.kind == "haproxy":
        if not shutil.which("haproxy"):
            raise StartError("not installed")
        (tmp / "haproxy.cfg").write_text(HAPROXY.format(**ports))
        argv, kw = ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], {}
    else:
        conf = tmp / f"{name}.toml"
        conf.write_text(TRILB.format(**ports))
        argv = [sys.executable, "-m", "trilb", "serve", str(conf)]
        if trilb_cmd:  # as in run.py: the config path goes at {config}, else at the end
            cmd = shlex.split(trilb_cmd)
            placed = [a.replace("{config}", str(conf)) for a in cmd]
            argv = placed if "{config}" in trilb_cmd else [*cmd, str(conf)]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        kw = {"cwd": REPO, "env": {**os.environ, "PYTHONPATH": path}}
    proc = kids.start(name, argv, str(cpu), **kw)
    try:
        wait_ready(proc, port, None)
    except StartError as exc:
        kids.stop(proc)
        raise StartError(f"{exc}{kids.log_tail(name)}") from None
    return port, proc


def raise_fd_limit() -> None:
    """Children inherit it: the proxies, nginx and the slow-client process need ~2 fds a client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < FDS_NEEDED:
        print(f"warning: open-file limit {soft} < {FDS_NEEDED}: raise `ulimit -Hn` (as root)")


def print_table(results: dict[str, dict[str, Phase]], args: argparse.Namespace) -> None:
    total = sum(args.counts.values())
    kinds = ", ".join(f"{n} {kind}" for kind, n in args.counts.items())
    print(
        f"\nwrk -t1 -c{NORMAL.connections} -d{args.duration}s {NORMAL.path}; slow clients: {kinds}"
    )
    print(f"proxy on CPU {args.cpus[1]}; wrk, backends and slow clients on CPU {args.cpus[0]}")
    head = ["proxy", "phase", "p50", "p99", "req/s", "errors", "established", "fds", "RSS"]
    head += ["CPU w/o wrk"]
    rows = [head]
    labels = {"alone": "alone", "slow": f"+{total} slow", "after": "alone again"}
    for name, phases in results.items():
        for phase, p in phases.items():
            r = p.wrk
            conns = f"{min(p.established)}-{max(p.established)}" if p.established else "-"
            rows.append(
                [
                    name,
                    labels[phase],
                    f"{r.p50_ms:.2f} ms" if r else "FAIL",
                    f"{r.p99_ms:.2f} ms" if r else "FAIL",
                    f"{r.rps:,.0f}" if r else "FAIL",
                    str(r.errors) if r else "-",
                    conns,
                    str(p.fds),
                    f"{p.rss_kib / 1024:.1f} MiB",
                    f"{p.idle_cpu:.0%}" if phase == "slow" else "",
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    rows.insert(1, ["-" * w for w in widths])
    for row in rows:
        print(
            *(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        "established: the proxy's ESTABLISHED sockets on its port during wrk (min-max of 1 s "
        "samples: slow clients + wrk's 8); fds: the proxy's open files at the end of wrk; "
        "CPU w/o wrk: the proxy's CPU use with only the slow clients connected"
    )
    for name, phases in results.items():
        slow = phases["slow"].slow if "slow" in phases else {}
        if slow:
            print(
                f"{name}: slow clients cut and reconnected: {slow['cuts']}; said: {slow['answers']}"
            )
        alone, loaded = phases.get("alone"), phases.get("slow")
        if alone and loaded and alone.wrk and loaded.wrk:
            ratio = loaded.wrk.p99_ms / alone.wrk.p99_ms
            per = (loaded.rss_kib - alone.rss_kib) / total
            print(
                f"{name}: p99 x{ratio:.2f}, req/s x{loaded.wrk.rps / alone.wrk.rps:.2f} with the "
                f"slow clients; RSS +{per:.1f} KiB per slow client"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma list (default: all)")
    for kind, n in KINDS.items():
        ap.add_argument(f"--{kind}", type=int, default=n, help=f"slow {kind} clients ({n})")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between a client's bytes")
    ap.add_argument(
        "--trilb-cmd", default="", help="trilb command (as in run.py); config appended or {config}"
    )
    ap.add_argument(
        "--variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("LABEL", "COMMAND"),
        help='one more trilb to measure in the same run, as "trilb LABEL" (a --trilb-cmd '
        "command); repeatable",
    )
    # internal: run the slow clients themselves (a child process of the benchmark)
    ap.add_argument("--load", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.counts = {kind: getattr(args, kind) for kind in KINDS}
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if unknown := set(args.proxies) - set(PROXIES):
        ap.error(f"--proxies: unknown {', '.join(sorted(unknown))} (known: {', '.join(PROXIES)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        slow_load(args.load, args.counts, args.stats, args.interval)
        return 0
    if missing := [t for t in ("wrk", "nginx", "taskset", "ss") if not shutil.which(t)]:
        print(f"missing required tools: {', '.join(missing)}; this script installs nothing")
        return 2
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.cpus = pick_cpus()
    started = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict[str, Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="trilb-slow-") as tmpdir:
        tmp = Path(tmpdir)
        kids = Children(tmp)
        try:
            make_files(tmp)
            b1, b2 = free_port(), free_port()
            servers = BACKEND.format(port=b1, tmp=tmp) + BACKEND.format(port=b2, tmp=tmp)
            backends = kids.start(
                "backends", write_nginx(tmp, "backends", servers), str(args.cpus[0])
            )
            try:
                for port in (b1, b2):
                    wait_ready(backends, port, None)
            except StartError as exc:
                raise SystemExit(f"backends failed: {exc}{kids.log_tail('backends')}") from None
            ports = {}
            for target in targets(args):
                try:
                    ports[target.label] = start(target, tmp, kids, (b1, b2), args.cpus[1])
                except StartError as exc:
                    print(f"skipping {target.label}: {exc}", file=sys.stderr)
            for name, (port, proc) in ports.items():
                try:
                    results[name] = run_proxy(name, port, proc, kids, args)
                except StartError as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping children", file=sys.stderr)
            return 130
        finally:
            kids.stop_all()
    print_table(results, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"slow-clients-{started}.json"
    report = {
        "started": started,
        "args": {k: v for k, v in vars(args).items() if k not in ("load", "stats")},
        "results": {
            name: {ph: asdict(p) for ph, p in phases.items()} for name, phases in results.items()
        },
    }
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {path.relative_to(REPO)}")
    return 0 if any(name.startswith("trilb") for name in results) else 1


if __name__ == "__main__":
    sys.exit(main())
