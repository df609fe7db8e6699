"""The http-to-https redirect (sans-IO): where to send the client, with which status."""

from __future__ import annotations

__all__ = ["https_location", "redirect_status"]


def https_location(host: bytes | None, target: bytes, port: int, fallback_host: str) -> bytes:
    """``https://host[:port]/path?query`` for a request that came in over plain HTTP.

    The Host header's own port (the plain one) is dropped; ``port`` is left out when it is 443.
    An absolute-form target (``http://host/path``) keeps only its path and query. Without a Host
    header (HTTP/1.0) the address the client connected to stands in.
    """
    name = _host_without_port(host.decode("ascii", "replace")) if host else fallback_host
    if target.startswith((b"http://", b"https://")):
        _, _, rest = target.partition(b"//")
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    elif not target.startswith(b"/"):
        target = b"/"  # asterisk-form (OPTIONS *) and the like: send them to the root
    authority = name if port == 443 else f"{name}:{port}"
    return b"https://" + authority.encode("ascii", "replace") + target


def _host_without_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def redirect_status(method: bytes, code: int | None) -> int:
    """The configured code, else 301 for GET and HEAD (what browsers and caches know best) and
    308 for the other methods, which must not be turned into GETs."""
    if code is not None:
        return code
    return 301 if method in (b"GET", b"HEAD") else 308
