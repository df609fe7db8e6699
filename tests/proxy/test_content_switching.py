"""Content switching, header rules, request ids and error pages through a running balancer."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from conftest import Backend, StartBackend, StartProxy

import trilb


def config(
    app: Backend, admin: Backend, *, frontend: dict[str, object], admin_backend: dict[str, object]
) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend",
                bind=["127.0.0.1:0"],
                default_backend="app",
                **frontend,  # type: ignore[arg-type]
            )
        ],
        backends=[
            trilb.BackendConfig(
                name="app", servers=[trilb.ServerConfig(name="app", address=app.address)]
            ),
            trilb.BackendConfig(
                name="admin",
                servers=[trilb.ServerConfig(name="admin", address=admin.address)],
                **admin_backend,  # type: ignore[arg-type]
            ),
        ],
        log=trilb.LogConfig(target="none"),
    )


WORDPRESS_ROUTES = [
    trilb.Route(
        name="admin",
        backend="admin",
        match=trilb.Match(path_prefix=["/wp-admin", "/wp-login.php"]),
    ),
    trilb.Route(
        name="www",
        match=trilb.Match(host=["example.com"]),
        redirect=trilb.RedirectRule(prefix="https://www.example.com", code=301),
    ),
    trilb.Route(name="no-trace", match=trilb.Match(method=["TRACE"]), deny=405),
    trilb.Route(
        name="internal",
        backend="admin",
        match=trilb.Match(host=["*.internal.test"], not_=trilb.Match(src=["10.0.0.0/8"])),
    ),
]


async def test_routes_by_path_host_method_with_deny_and_redirect(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    app, admin = await start_backend(name="app"), await start_backend(name="admin")
    proxy = await start_proxy(
        config=config(app, admin, frontend={"routes": WORDPRESS_ROUTES}, admin_backend={})
    )
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        assert (await http.get("/wp-admin/edit.php")).json()["server"] == "admin"
        assert (await http.get("/wp-login.php?x=1")).json()["server"] == "admin"
        assert (await http.get("/blog/")).json()["server"] == "app"
        moved = await http.get("/a?b=c", headers={"Host": "Example.COM"})
        assert moved.status_code == 301
        assert moved.headers["location"] == "https://www.example.com/a?b=c"
        denied = await http.request("TRACE", "/")
        assert denied.status_code == 405
        assert "405 Method Not Allowed" in denied.text
        internal = await http.get("/", headers={"Host": "db.internal.test:8080"})
        assert internal.json()["server"] == "admin"  # 127.0.0.1 is not in 10/8
    assert len(admin.requests) == 3


async def test_header_rules_request_id_and_error_pages(
    start_backend: StartBackend, start_proxy: StartProxy, tmp_path: Path
) -> None:
    page = tmp_path / "503.html"
    page.write_text("<h1>We'll be right back</h1>")
    app, admin = await start_backend(name="app"), await start_backend(name="admin")
    frontend = {
        "routes": [
            trilb.Route(name="admin", backend="admin", match=trilb.Match(path_prefix="/admin"))
        ],
        "request_headers": [
            trilb.HeaderRule(action="set", name="X-Client", value="%[src] tls=%[ssl_fc]"),
            trilb.HeaderRule(action="delete", name="X-Debug"),
        ],
        "response_headers": [
            trilb.HeaderRule(
                action="replace", name="X-Powered-By", regex="PHP/.*", replacement="PHP"
            ),
            trilb.HeaderRule(action="add", name="X-Frame-Options", value="SAMEORIGIN"),
        ],
        "unique_id": True,
        "error_pages": {503: str(page)},
    }
    admin_backend: dict[str, object] = {
        "request_headers": [trilb.HeaderRule(action="add", name="X-Admin", value="%[req.host]")]
    }
    proxy = await start_proxy(
        config=config(app, admin, frontend=frontend, admin_backend=admin_backend)
    )
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        response = await http.get("/admin/x", headers={"X-Debug": "1", "X-Request-ID": "forged"})
        seen = {name.lower(): value for name, value in response.json()["headers"]}
        assert seen["x-client"] == "127.0.0.1 tls=0"
        assert "x-debug" not in seen
        assert seen["x-admin"] == "127.0.0.1" or seen["x-admin"].startswith("127.0.0.1:")
        assert seen["x-request-id"] != "forged"  # not trusted by default
        assert len(seen["x-request-id"]) == 32
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        proxy.lb.set_server_state("app", "app", "maint")
        unavailable = await http.get("/")
        assert unavailable.status_code == 503
        assert unavailable.text == "<h1>We'll be right back</h1>"
        assert unavailable.headers["content-type"].startswith("text/html")
    await trio.lowlevel.checkpoint()
