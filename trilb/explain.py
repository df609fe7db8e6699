"""``trilb route``: what the balancer would do with a request, without sending anything.

It runs the same code as the proxy on a request described on the command line: frontend by
scheme and port, the routes in order (with the reason each earlier one did not match), the
backend, the server the algorithm would pick first (stickiness included), and the header edits
the server would see. None of the peers has this; it answers "why did my request go there?".
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import BackendConfig, Config, FrontendConfig
from .core.balance import RequestKey, make_algorithm
from .core.headers import Forwarded, request_headers_for_server
from .core.redirect import https_location, redirect_status
from .core.rewrite import apply_header_rules, take_request_id, variables_for
from .core.routing import CompiledRoutes, Decision, RequestView, redirect_location
from .core.sticky import default_cookie_value, request_cookie
from .errors import TrilbError
from .rules import CompiledRules, compile_rules

__all__ = ["explain_request"]


def explain_request(
    config: Config, request_line: str, headers: Sequence[str], src: str = "192.0.2.1"
) -> list[str]:
    """The lines ``trilb route`` prints; TrilbError for a request it cannot make sense of."""
    parts = request_line.split()
    if len(parts) == 1 and parts[0].lower().startswith(_L4_SCHEMES):
        return _explain_connection(config, parts[0], src)
    if len(parts) not in (2, 3):
        raise TrilbError(
            f'the request must look like "GET https://host/path HTTP/1.1", got {request_line!r}'
        )
    method, url = parts[0].upper(), parts[1]
    fields = [_header(h) for h in headers]
    scheme, host, port, target = _split_url(url, fields)
    if host is not None and not any(n.lower() == b"host" for n, _ in fields):
        default_port = 443 if scheme == "https" else 80
        authority = host if port == default_port else f"{host}:{port}"
        fields.insert(0, (b"Host", authority.encode()))
    frontend = _frontend(config, scheme, port)
    lines = [f"frontend: {frontend.name} ({scheme}, port {port})"]
    view = RequestView(
        method=method.encode(),
        target=target.encode(),
        headers=fields,
        client_ip=src,
        sni=host if scheme == "https" else None,
    )
    if frontend.redirect_https is not None:
        hosts = view.header_map.get(b"host")
        port_to = frontend.redirect_https.port or 443
        location = https_location(hosts[0] if hosts else None, view.target, port_to, "localhost")
        status = redirect_status(view.method, frontend.redirect_https.code)
        return [*lines, f"answer: {status} redirect to {location.decode()} (redirect_https)"]
    rules = compile_rules(config)
    compiled = rules.frontends[frontend.name]
    backend_name = frontend.default_backend
    if compiled.routes is not None:
        decision = _routes(compiled.routes, view, lines)
        if decision.deny is not None:
            return [*lines, f"answer: {decision.deny} (deny)"]
        if decision.redirect is not None:
            location = redirect_location(decision.redirect, view, tls=scheme == "https")
            return [*lines, f"answer: {decision.redirect.code} redirect to {location.decode()}"]
        backend_name = decision.backend
    if backend_name is None:
        return [*lines, "answer: 503 (no route matched and no default_backend)"]
    backend = config.backend(backend_name)
    lines.append(f"backend: {backend.name} (balance {backend.balance})")
    lines.append(f"server: {_server(backend, view, fields)}")
    return lines + _header_edits(frontend, backend, view, fields, rules, scheme, port)


#: ``trilb route config tls://name:port`` (a TLS connection asking for ``name``, as TCP-mode
#: SNI routing sees it) or ``tcp://host:port`` (no server name)
_L4_SCHEMES = ("tcp://", "tls://")


def _explain_connection(config: Config, url: str, src: str) -> list[str]:
    """A TCP-mode frontend's choice for a connection: routes on sni and src only."""
    scheme, host, port, _ = _split_url(url, [])
    frontends = [f for f in config.frontends if f.mode == "tcp"]
    frontend = next((f for f in frontends if any(a.port == port for a in f.bind)), None)
    if frontend is None:
        raise TrilbError(f'no "tcp" frontend listens on port {port} in this configuration')
    # (passthrough: the ClientHello's server name; with tls here: the handshake's, the same)
    sni = host if scheme == "tls" else None
    lines = [f"frontend: {frontend.name} (tcp, port {port})"]
    view = RequestView(method=b"", target=b"", client_ip=src, sni=sni)
    backend_name = frontend.default_backend
    compiled = compile_rules(config).frontends[frontend.name]
    if compiled.routes is not None:
        backend_name = _routes(compiled.routes, view, lines).backend
    if backend_name is None:
        return [*lines, "answer: connection closed (no route matched and no default_backend)"]
    backend = config.backend(backend_name)
    lines.append(f"backend: {backend.name} (balance {backend.balance})")
    lines.append(f"server: {_server(backend, view, [])}")
    versions = sorted({s.send_proxy for s in backend.servers if s.send_proxy is not None})
    relay = "relayed byte for byte"
    if versions:
        relay += f", after a PROXY protocol {'/'.join(versions)} header"
    return [*lines, f"({relay})"]


def _routes(routes: CompiledRoutes, view: RequestView, lines: list[str]) -> Decision:
    """The routes in order, each with why it did (not) match, added to ``lines``; the decision."""
    for step in routes.explain(view):
        verdict = "matches" if step.matched else f"no: {step.reason}"
        lines.append(f"route {step.route.name}: {verdict}")
    decision = routes.select(view)
    if decision.route is None:
        lines.append("no route matched: default_backend")
    return decision


def _header(text: str) -> tuple[bytes, bytes]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise TrilbError(f'a header must look like "Name: value", got {text!r}')
    return name.strip().encode(), value.strip().encode()


def _split_url(url: str, fields: list[tuple[bytes, bytes]]) -> tuple[str, str | None, int, str]:
    if "://" in url:
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        host, port_text = authority, ""
        if authority.count(":") == 1:
            host, _, port_text = authority.partition(":")
        port = int(port_text) if port_text.isdigit() else (443 if scheme == "https" else 80)
        return scheme.lower(), host, port, "/" + path if slash else "/"
    host_header = next((v.decode() for n, v in fields if n.lower() == b"host"), None)
    return "http", host_header, 80, url


def _frontend(config: Config, scheme: str, port: int) -> FrontendConfig:
    candidates = [f for f in config.frontends if (f.tls is not None) == (scheme == "https")]
    for frontend in candidates:
        if any(a.port == port for a in frontend.bind):
            return frontend
    if candidates:
        return candidates[0]
    raise TrilbError(f"no {scheme} frontend in this configuration")


def _server(backend: BackendConfig, view: RequestView, fields: list[tuple[bytes, bytes]]) -> str:
    servers = backend.servers
    if backend.cookie is not None:
        ids = {
            (s.cookie_value or default_cookie_value(backend.name, s.name)).encode(): i
            for i, s in enumerate(servers)
        }
        sticky, _ = request_cookie(backend.cookie, fields, ids)
        if sticky is not None:
            return f"{servers[sticky].name} (its {backend.cookie.name} cookie)"
    regular = [not s.backup for s in servers]
    algorithm = make_algorithm(
        backend.balance,
        [s.weight for s in servers],
        loads=[0] * len(servers),
        limits=[s.max_connections for s in servers],
        hash_type=backend.hash_type,
        uri_whole=backend.uri_whole,
    )
    key = RequestKey(
        client_ip=view.client_ip, path=view.path, query=view.query or b"", headers=fields
    )
    index = algorithm.pick(lambda i: regular[i], key)
    if index is None:
        return "none usable (503)"
    return (
        f"{servers[index].name} ({servers[index].address}; the first pick, all servers UP and idle)"
    )


def _header_edits(
    frontend: FrontendConfig,
    backend: BackendConfig,
    view: RequestView,
    fields: list[tuple[bytes, bytes]],
    rules: CompiledRules,
    scheme: str,
    port: int,
) -> list[str]:
    forwarded = Forwarded(view.client_ip, scheme, port) if frontend.forwarded_for else None
    forward = fields
    if backend.cookie is not None:  # insert mode hides trilb's cookie, prefix strips its prefix
        ids = {
            (s.cookie_value or default_cookie_value(backend.name, s.name)).encode(): i
            for i, s in enumerate(backend.servers)
        }
        _, forward = request_cookie(backend.cookie, fields, ids)
    out = request_headers_for_server(forward, chunked=False, forwarded=forwarded)
    request_id = b""
    if frontend.unique_id:
        name = frontend.unique_id_header.encode()
        request_id, out = take_request_id(out, name=name, trust=frontend.trust_request_id)
    variables = variables_for(view, tls=scheme == "https", unique_id=request_id)
    out = apply_header_rules(rules.frontends[frontend.name].request, out, variables)
    out = apply_header_rules(rules.backends[backend.name].request, out, variables)
    before = {(n.lower(), v) for n, v in fields}
    after = {(n.lower(), v) for n, v in out}
    lines = ["headers the server would see:"]
    lines += [
        f"  + {n.decode()}: {v.decode('latin-1')}" for n, v in out if (n.lower(), v) not in before
    ]
    lines += [
        f"  - {n.decode()}: {v.decode('latin-1')}" for n, v in fields if (n.lower(), v) not in after
    ]
    if len(lines) == 1:
        lines.append("  (as sent)")
    return lines
