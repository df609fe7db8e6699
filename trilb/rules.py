"""Content switching and header rules, compiled once for a configuration.

The config loader keeps values as written; compiling (regular expressions, address ranges,
variables) happens here, when a balancer starts and in ``trilb check``, and every problem is
reported with its key path.
"""

from __future__ import annotations

import attrs

from .config import Config, HeaderRule
from .core.rewrite import CompiledHeaderRule, compile_header_rules
from .core.routing import CompiledRoutes, compile_routes
from .errors import ConfigError, ConfigProblem

__all__ = ["CompiledRules", "compile_rules"]


@attrs.frozen
class FrontendRules:
    routes: CompiledRoutes | None
    request: tuple[CompiledHeaderRule, ...]
    response: tuple[CompiledHeaderRule, ...]


@attrs.frozen
class BackendRules:
    request: tuple[CompiledHeaderRule, ...]
    response: tuple[CompiledHeaderRule, ...]


@attrs.frozen
class CompiledRules:
    frontends: dict[str, FrontendRules]
    backends: dict[str, BackendRules]


def compile_rules(config: Config) -> CompiledRules:
    """Compile every frontend's routes and every header rule; ConfigError lists all problems."""
    problems: list[ConfigProblem] = []

    def header_rules(
        rules: tuple[HeaderRule, ...], key_path: str
    ) -> tuple[CompiledHeaderRule, ...]:
        try:
            return compile_header_rules(rules, key_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return ()

    frontends: dict[str, FrontendRules] = {}
    for fe in config.frontends:
        path = f"frontends.{fe.name}"
        routes = None
        if fe.routes:
            try:
                routes = compile_routes(
                    fe.routes, f"{path}.routes", default_backend=fe.default_backend
                )
            except ConfigError as exc:
                problems.extend(exc.problems)
        frontends[fe.name] = FrontendRules(
            routes,
            header_rules(fe.request_headers, f"{path}.request_headers"),
            header_rules(fe.response_headers, f"{path}.response_headers"),
        )
    backends = {
        be.name: BackendRules(
            header_rules(be.request_headers, f"backends.{be.name}.request_headers"),
            header_rules(be.response_headers, f"backends.{be.name}.response_headers"),
        )
        for be in config.backends
    }
    if problems:
        # the loader reports some of the same things (one action per route...): once is enough
        unique: dict[str, ConfigProblem] = {}
        for problem in problems:
            unique.setdefault(problem.key_path, problem)
        raise ConfigError(unique.values())
    return CompiledRules(frontends, backends)
