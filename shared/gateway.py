"""The gateway: one address for the mini-program in front of every service (DESIGN.md, issue 12).

One route table, ``deploy/gateway/routes.yaml``, drives both gateways:

- ``make run``: this module, ``python -m shared.gateway`` (port ``GATEWAY_PORT``, 8000), werkzeug's
  ``ProxyMiddleware`` under gunicorn (one ``gthread`` worker, ``GATEWAY_THREADS`` threads: an open
  event stream holds a thread, not a process);
- compose: nginx, with the configuration :func:`render_nginx` writes
  (``python deploy/gateway/render.py``; checked in as ``deploy/gateway/nginx.conf``).

Both resolve a path the same way (nginx's order: exact, then the first pattern, then the longest
prefix; anything else is a 404 from the gateway), refuse a body over the route's limit with 413,
pass ``X-Request-ID`` on as the services' correlation id (``X-Correlation-ID``; a missing or
malformed one is replaced by a new UUID, echoed back as ``X-Request-ID``) and append the client's
address to ``X-Forwarded-For`` (the services take it with ``TRUSTED_PROXY_HOPS=1``). Errors of
the gateway itself are the services' JSON error body with a Chinese message.

Example::

    table = RouteTable.load()
    table.resolve("/api/v1/queue")            # Match(upstream="dispatch", path="/api/v1/queue")
    table.resolve("/svc/dispatch/api/v1/villages").path   # "/api/v1/villages"
    table.resolve("/metrics")                 # None: internal
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROUTES_FILE = ROOT / "deploy" / "gateway" / "routes.yaml"
DEFAULT_PORT = 8000
DEFAULT_THREADS = 32
# Client-supplied request ids the services accept as their correlation id (``uuid.UUID`` syntax).
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$"

ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found", "未找到该内容。"),
    413: ("payload_too_large", "上传的内容太大。"),
    502: ("bad_gateway", "服务暂时不可用，请稍后再试。"),
    504: ("gateway_timeout", "服务响应超时，请稍后再试。"),
}
REASONS = {200: "OK", 404: "Not Found", 413: "Payload Too Large", 502: "Bad Gateway"}


def parse_size(text: str | int) -> int:
    """``"11m"`` → bytes, with nginx's suffixes (k, m, g), so both gateways read one value."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(text))
    if not match:
        raise ValueError(f"routes.yaml: not a size: {text!r}")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * factor


def parse_seconds(text: str | int) -> int:
    """``"65s"`` / ``"1h"`` → seconds (nginx's time suffixes s, m, h)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"routes.yaml: not a duration: {text!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass(frozen=True)
class Upstream:
    """A process the gateway forwards to: its compose address and its port under ``make run``."""

    name: str
    compose: str
    port: int
    port_env: str | None = None
    stream: bool = False
    read_timeout: str = "65s"


@dataclass(frozen=True)
class Route:
    """One row of the table: ``kind`` is ``exact``, ``pattern`` or ``prefix``."""

    kind: str
    path: str
    upstream: str
    body_limit: str
    regex: re.Pattern[str] | None = None

    @property
    def max_bytes(self) -> int:
        return parse_size(self.body_limit)


@dataclass(frozen=True)
class Match:
    """Where a request goes: the upstream and the path it is forwarded with."""

    upstream: str
    path: str
    route: Route


@dataclass
class RouteTable:
    """The route table, resolved the way nginx resolves its locations."""

    upstreams: dict[str, Upstream]
    routes: list[Route]
    body_limit: str = "1m"
    read_timeout: str = "65s"
    alias_prefix: str = "/svc/"
    _exact: dict[str, Route] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for route in self.routes:
            if route.upstream not in self.upstreams:
                raise ValueError(f"routes.yaml: {route.path} goes to unknown {route.upstream!r}")
            if route.kind == "exact":
                self._exact[route.path] = route

    @classmethod
    def load(cls, path: Path | str | None = None) -> RouteTable:
        """Read ``routes.yaml`` (``GATEWAY_ROUTES`` or the repository's)."""
        source = Path(path or os.environ.get("GATEWAY_ROUTES") or ROUTES_FILE)
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        default_limit = str(data.get("body_limit", "1m"))
        read_timeout = str(data.get("read_timeout", "65s"))
        upstreams = {
            name: Upstream(
                name=name,
                compose=str(spec["compose"]),
                port=int(spec["port"]),
                port_env=spec.get("port_env"),
                stream=bool(spec.get("stream", False)),
                read_timeout=str(spec.get("read_timeout", read_timeout)),
            )
            for name, spec in data["upstreams"].items()
        }
        routes = []
        for row in data["routes"]:
            kinds = [k for k in ("exact", "pattern", "prefix") if k in row]
            if len(kinds) != 1:
                raise ValueError(f"routes.yaml: a route needs one of exact/pattern/prefix: {row}")
            kind = kinds[0]
            text = str(row[kind])
            routes.append(
                Route(
                    kind=kind,
                    path=text,
                    upstream=str(row["to"]),
                    body_limit=str(row.get("body_limit", default_limit)),
                    regex=re.compile(text) if kind == "pattern" else None,
                )
            )
        return cls(
            upstreams=upstreams,
            routes=routes,
            body_limit=default_limit,
            read_timeout=read_timeout,
            alias_prefix=str(data.get("alias_prefix", "/svc/")),
        )

    # --- resolution ------------------------------------------------------------------------------

    def web_services(self) -> list[str]:
        """Upstreams that are a service's web process (aliases exist for these)."""
        return [name for name, up in self.upstreams.items() if not up.stream]

    def alias_limit(self, service: str) -> str:
        """An alias takes the largest body any of the service's routes takes."""
        limits = [r.body_limit for r in self.routes if r.upstream == service]
        return max(limits or [self.body_limit], key=parse_size)

    def resolve(self, path: str) -> Match | None:
        """The route of ``path``, or None (the gateway answers 404).

        A path with ``.``/``..`` segments or ``//`` is refused: nginx would normalise it first,
        and forwarding it as sent could reach what the table keeps internal."""
        if not path.startswith("/") or "//" in path or "\x00" in path:
            return None
        if any(part in (".", "..") for part in path.split("/")):
            return None
        exact = self._exact.get(path)
        if exact is not None:
            return Match(exact.upstream, path, exact)
        for route in self.routes:
            if route.regex is not None and route.regex.search(path):
                return Match(route.upstream, path, route)
        best: Route | None = None
        for route in self.routes:
            if route.kind != "prefix":
                continue
            below = path == route.path or path.startswith(route.path + "/")
            if below and (best is None or len(route.path) > len(best.path)):
                best = route
        alias = self._alias(path)
        if alias is not None and (best is None or len(alias[0]) > len(best.path)):
            prefix, service = alias
            route = Route("prefix", prefix, service, self.alias_limit(service))
            return Match(service, path[len(prefix) - len("/api/") :], route)
        if best is not None:
            return Match(best.upstream, path, best)
        return None

    def _alias(self, path: str) -> tuple[str, str] | None:
        """``/svc/dispatch/api/...`` → (``/svc/dispatch/api/``, ``dispatch``)."""
        for service in self.web_services():
            prefix = f"{self.alias_prefix}{service}/api/"
            if path.startswith(prefix):
                return prefix, service
        return None


# --- the make-run gateway (WSGI) ------------------------------------------------------------------


def error_body(status: int, details: Any = None) -> bytes:
    """The services' error body (``shared.errors``) for the gateway's own answers."""
    code, message = ERRORS[status]
    body = {"error": {"code": code, "message": message, "details": details}}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def request_id(environ: Mapping[str, Any]) -> str:
    """The correlation id: the client's ``X-Request-ID`` (or ``X-Correlation-ID``) when it is a
    UUID the services accept, else a new one."""
    for key in ("HTTP_X_REQUEST_ID", "HTTP_X_CORRELATION_ID"):
        value = str(environ.get(key, "")).strip()
        if value and re.match(UUID_PATTERN, value):
            return str(uuid.UUID(value))
    return str(uuid.uuid4())


StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Gateway:
    """WSGI app: resolve, check the body size, set the forwarding headers, proxy.

    ``targets``: upstream name → base URL (``http://127.0.0.1:8001``). The proxying itself is
    werkzeug's ``ProxyMiddleware``, one per upstream. It reads the answer in fixed-size chunks
    and each read waits until the chunk is full, so a stream upstream gets ``chunk_size=1``:
    server-sent events then pass at once (a byte per write: fine for development, and
    compose's nginx streams with ``proxy_buffering off``)."""

    def __init__(self, table: RouteTable, targets: Mapping[str, str]) -> None:
        from werkzeug.middleware.http_proxy import ProxyMiddleware

        self.table = table
        self.proxies: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name, upstream in table.upstreams.items():
            middleware = ProxyMiddleware(
                _unrouted,
                {"/": {"target": targets[name], "host": None}},
                chunk_size=1 if upstream.stream else 64 * 1024,
                timeout=parse_seconds(upstream.read_timeout),
            )
            # The table has already chosen the upstream: its one target's options, used with
            # ProxyMiddleware.proxy_to for any path (its own prefix matching is not needed).
            (options,) = middleware.targets.values()
            self.proxies[name] = (middleware, options)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        rid = request_id(environ)
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            return _answer(start_response, 200, b'{"status": "ok"}', rid)
        match = self.table.resolve(path)
        if match is None:
            return _answer(start_response, 404, error_body(404), rid)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > match.route.max_bytes:
            details = {"max_bytes": match.route.max_bytes}
            return _answer(start_response, 413, error_body(413, details), rid)
        forwarded = dict(environ)
        forwarded["PATH_INFO"] = match.path
        forwarded["HTTP_X_REQUEST_ID"] = rid
        forwarded["HTTP_X_CORRELATION_ID"] = rid
        client = environ.get("REMOTE_ADDR", "")
        earlier = environ.get("HTTP_X_FORWARDED_FOR", "")
        forwarded["HTTP_X_FORWARDED_FOR"] = f"{earlier}, {client}" if earlier else client
        forwarded["HTTP_X_REAL_IP"] = client
        forwarded["HTTP_X_FORWARDED_PROTO"] = environ.get("wsgi.url_scheme", "http")
        if "HTTP_HOST" in environ:
            forwarded["HTTP_X_FORWARDED_HOST"] = environ["HTTP_HOST"]
        return self._proxy(match.upstream, forwarded, start_response, rid)

    def _proxy(
        self, upstream: str, environ: dict[str, Any], start_response: StartResponse, rid: str
    ) -> Iterable[bytes]:
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured[:] = [status, headers]
            return lambda _data: None  # ProxyMiddleware never calls write()

        middleware, options = self.proxies[upstream]
        body = middleware.proxy_to(options, environ["PATH_INFO"], "/")(environ, capture)
        status, headers = captured
        content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if status.startswith("502") and content_type.startswith("text/html"):
            # werkzeug's own BadGateway page: the upstream did not answer (a service's own 502
            # would be JSON and passes through).
            if hasattr(body, "close"):
                body.close()
            return _answer(start_response, 502, error_body(502, {"service": upstream}), rid)
        start_response(status, [*headers, ("X-Request-ID", rid)])
        return body


def _answer(start_response: StartResponse, status: int, body: bytes, rid: str) -> list[bytes]:
    start_response(
        f"{status} {REASONS.get(status, '')}".strip(),
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-Request-ID", rid),
        ],
    )
    return [body]


def _unrouted(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    return _answer(start_response, 404, error_body(404), request_id(environ))


def dev_targets(table: RouteTable, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Upstream URLs under ``make run``: ``GATEWAY_UPSTREAM_<NAME>`` (a URL) if set, else
    127.0.0.1 and the port from the upstream's ``port_env`` (``INTAKE_PORT``...) or the table."""
    env = os.environ if env is None else env
    targets = {}
    for name, upstream in table.upstreams.items():
        key = "GATEWAY_UPSTREAM_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
        if env.get(key):
            targets[name] = env[key].rstrip("/")
            continue
        port = env.get(upstream.port_env or "", "") or str(upstream.port)
        targets[name] = f"http://127.0.0.1:{int(port)}"
    return targets


def create_app() -> Gateway:
    """The gunicorn entry point (``shared.gateway:create_app()``)."""
    table = RouteTable.load()
    return Gateway(table, dev_targets(table))


def gunicorn_argv(env: Mapping[str, str] | None = None) -> list[str]:
    """The gateway's gunicorn command line: one gthread worker, so a stream holds a thread."""
    env = os.environ if env is None else env
    port = int(env.get("GATEWAY_PORT") or DEFAULT_PORT)
    threads = int(env.get("GATEWAY_THREADS") or DEFAULT_THREADS)
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{env.get('GATEWAY_HOST') or '0.0.0.0'}:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--name",
        "gateway",
        "--no-control-socket",
        "--graceful-timeout",
        "5",
        "--error-logfile",
        "-",
        "shared.gateway:create_app()",
    ]


# --- the compose gateway (nginx) ----------------------------------------------------------------


@dataclass(frozen=True)
class NginxSettings:
    """What differs between compose and a test: addresses, port, files, TLS."""

    listen: int = 8080
    upstreams: Mapping[str, str] | None = None  # name → host:port; None: the compose addresses
    tls_listen: int | None = None  # e.g. 8443: HTTPS with HTTP/2 on this port
    tls_certificate: str = "/etc/nginx/tls/tls.crt"
    tls_certificate_key: str = "/etc/nginx/tls/tls.key"
    access_log: str = "/dev/stdout"
    error_log: str = "/dev/stderr"
    pid: str = "/tmp/nginx.pid"
    temp_dir: str | None = None  # client body / proxy temp files (a test's own folder)
    user: str | None = None
    worker_processes: str = "auto"
    header: str = ""


def _json_return(status: int, details: Any = None) -> str:
    body = error_body(status, details).decode("utf-8").replace("'", "\\'")
    return f"return {status} '{body}';"


def render_nginx(table: RouteTable, settings: NginxSettings | None = None) -> str:
    """The nginx configuration of ``table`` (the whole ``nginx.conf``)."""
    s = settings or NginxSettings()
    addresses = dict(s.upstreams or {n: u.compose for n, u in table.upstreams.items()})
    out: list[str] = []
    w = out.append
    if s.header:
        w(s.header.rstrip("\n"))
    if s.user:
        w(f"user {s.user};")
    w(f"worker_processes {s.worker_processes};")
    w(f"pid {s.pid};")
    w(f"error_log {s.error_log} warn;")
    w("")
    w("events {\n    worker_connections 4096;\n}")
    w("")
    w("http {")
    i = "    "
    w(f"{i}default_type application/octet-stream;")
    w(f"{i}charset utf-8;")
    w(f"{i}charset_types application/json text/plain text/csv text/event-stream application/xml;")
    w(f"{i}server_tokens off;")
    w(f"{i}sendfile on;")
    w(f"{i}tcp_nopush on;")
    w(f"{i}keepalive_timeout 65s;")
    w(f"{i}client_body_buffer_size 128k;")
    w(f"{i}client_max_body_size {table.body_limit};")
    if s.temp_dir:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            w(f"{i}{kind}_temp_path {s.temp_dir}/{kind};")
    w("")
    w(f"{i}# gzip for JSON, CSV and XML (never the event stream: it must not be held back).")
    w(f"{i}gzip on;")
    w(f"{i}gzip_comp_level 5;")
    w(f"{i}gzip_min_length 1024;")
    w(f"{i}gzip_proxied any;")
    w(f"{i}gzip_vary on;")
    w(f"{i}gzip_types application/json text/plain text/csv application/xml text/xml;")
    w("")
    w(f"{i}# The correlation id: the client's X-Request-ID (else X-Correlation-ID) when it is a")
    w(f"{i}# UUID the services accept, else nginx's own $request_id written as a UUID.")
    w(f"{i}map $request_id $gateway_request_uuid {{")
    w(
        f'{i}{i}"~^(?<p1>[0-9a-f]{{8}})(?<p2>[0-9a-f]{{4}})(?<p3>[0-9a-f]{{4}})'
        f'(?<p4>[0-9a-f]{{4}})(?<p5>[0-9a-f]{{12}})$" "$p1-$p2-$p3-$p4-$p5";'
    )
    w(f"{i}{i}default $request_id;")
    w(f"{i}}}")
    w(f"{i}map $http_x_correlation_id $gateway_correlation_in {{")
    w(f'{i}{i}"~{UUID_PATTERN}" $http_x_correlation_id;')
    w(f"{i}{i}default $gateway_request_uuid;")
    w(f"{i}}}")
    w(f"{i}map $http_x_request_id $correlation_id {{")
    w(f'{i}{i}"~{UUID_PATTERN}" $http_x_request_id;')
    w(f"{i}{i}default $gateway_correlation_in;")
    w(f"{i}}}")
    w("")
    w(f"{i}log_format gateway_json escape=json")
    w(
        f'{i}{i}\'{{"time":"$time_iso8601","remote":"$remote_addr",'
        f'"method":"$request_method","path":"$uri","status":$status,'
        f'"bytes":$body_bytes_sent,"duration_s":$request_time,'
        f'"upstream":"$upstream_addr","correlation_id":"$correlation_id"}}\';'
    )
    w(f"{i}access_log {s.access_log} gateway_json;")
    w("")
    for name in table.upstreams:
        w(f"{i}upstream {_upstream_id(name)} {{")
        w(f"{i}{i}server {addresses[name]};")
        w(f"{i}{i}keepalive 16;")
        w(f"{i}}}")
    w("")
    listens = [f"listen {s.listen};"]
    if s.tls_listen:
        listens.append(f"listen {s.tls_listen} ssl http2;")
    w(f"{i}server {{")
    for line in listens:
        w(f"{i}{i}{line}")
    if s.tls_listen:
        w(f"{i}{i}ssl_certificate {s.tls_certificate};")
        w(f"{i}{i}ssl_certificate_key {s.tls_certificate_key};")
        w(f"{i}{i}ssl_protocols TLSv1.2 TLSv1.3;")
        w(f"{i}{i}ssl_session_cache shared:gateway_tls:10m;")
    w(f"{i}{i}server_name _;")
    w("")
    w(f"{i}{i}# The gateway's own errors, in the services' JSON with a Chinese message.")
    for status in (404, 413, 502, 504):
        w(f"{i}{i}error_page {status} @error_{status};")
        w(f"{i}{i}location @error_{status} {{")
        w(f"{i}{i}{i}default_type application/json;")
        w(f"{i}{i}{i}add_header X-Request-ID $correlation_id always;")
        w(f"{i}{i}{i}{_json_return(status)}")
        w(f"{i}{i}}}")
    w("")
    w(f"{i}{i}location = /healthz {{")
    w(f"{i}{i}{i}access_log off;")
    w(f"{i}{i}{i}default_type application/json;")
    w(f'{i}{i}{i}return 200 \'{{"status": "ok"}}\';')
    w(f"{i}{i}}}")
    w(f"{i}{i}# Anything the table does not name (/metrics, /docs, /openapi.json, /readyz...).")
    w(f"{i}{i}location / {{")
    w(f"{i}{i}{i}default_type application/json;")
    w(f"{i}{i}{i}add_header X-Request-ID $correlation_id always;")
    w(f"{i}{i}{i}{_json_return(404)}")
    w(f"{i}{i}}}")
    exact_paths = {r.path for r in table.routes if r.kind == "exact"}
    for route in table.routes:
        up = table.upstreams[route.upstream]
        w("")
        if route.kind == "exact":
            _location(w, f"= {route.path}", route, up, table)
        elif route.kind == "pattern":
            _location(w, f"~ {route.path}", route, up, table)
        else:
            if route.path not in exact_paths:
                _location(w, f"= {route.path}", route, up, table)
            _location(w, f"{route.path}/", route, up, table)
    for service in table.web_services():
        w("")
        up = table.upstreams[service]
        alias = Route("prefix", f"{table.alias_prefix}{service}/api/", service, "")
        alias = Route("prefix", alias.path, service, table.alias_limit(service))
        _location(w, alias.path, alias, up, table, strip_to="/api/")
    w(f"{i}}}")
    w("}")
    return "\n".join(out) + "\n"


def _upstream_id(name: str) -> str:
    return "up_" + re.sub(r"[^a-z0-9]", "_", name.lower())


def _location(
    w: Callable[[str], None],
    selector: str,
    route: Route,
    up: Upstream,
    table: RouteTable,
    strip_to: str | None = None,
) -> None:
    i = "        "
    quoted = f'"{selector[2:]}"' if selector.startswith("~ ") else None
    w(f"{i}location {'~ ' + quoted if quoted else selector} {{")
    j = i + "    "
    w(f"{j}client_max_body_size {route.body_limit};")
    w(f"{j}proxy_http_version 1.1;")
    w(f'{j}proxy_set_header Connection "";')
    w(f"{j}proxy_set_header Host $http_host;")
    w(f"{j}proxy_set_header X-Request-ID $correlation_id;")
    w(f"{j}proxy_set_header X-Correlation-ID $correlation_id;")
    w(f"{j}proxy_set_header X-Real-IP $remote_addr;")
    w(f"{j}proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
    w(f"{j}proxy_set_header X-Forwarded-Proto $scheme;")
    w(f"{j}proxy_set_header X-Forwarded-Host $host;")
    w(f"{j}proxy_connect_timeout 5s;")
    w(f"{j}proxy_read_timeout {up.read_timeout};")
    w(f"{j}proxy_send_timeout {table.read_timeout};")
    if up.stream:
        w(f"{j}# Server-sent events: every event at once, the connection kept open.")
        w(f"{j}proxy_buffering off;")
        w(f"{j}proxy_cache off;")
        w(f"{j}gzip off;")
    w(f"{j}add_header X-Request-ID $correlation_id always;")
    target = f"http://{_upstream_id(up.name)}"
    w(f"{j}proxy_pass {target}{strip_to or ''};")
    w(f"{i}}}")


def main() -> None:
    """``python -m shared.gateway``: exec gunicorn with the gateway (``make run``'s port 8000)."""
    RouteTable.load()  # a broken table stops here with its reason, before gunicorn starts
    argv = gunicorn_argv()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
