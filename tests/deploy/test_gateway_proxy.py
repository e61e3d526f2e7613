"""Both gateways, real nginx (the compose configuration rendered for 127.0.0.1) and the
``make run`` gateway (``python -m shared.gateway`` under gunicorn), routing real HTTP requests
to stand-in upstreams that answer which upstream they are and what they received.

Checked the same way for both: every path of the table goes where ``RouteTable.resolve`` says,
with the path the service expects; internal paths get the gateway's Chinese 404; a body over the
route's limit gets a Chinese 413 (a photo-sized one passes on the upload route); a dead upstream a
Chinese 502; ``X-Request-ID`` becomes the correlation id and comes back; the client's address is
forwarded; the event stream is not held back. nginx also: ``nginx -t`` on both checked-in files
(plain and TLS), gzip, and HTTPS with HTTP/2.
"""

from __future__ import annotations

import gzip
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from shared.gateway import RouteTable
from tests.deploy.conftest import (
    ROOT,
    free_port,
    nginx_config,
    nginx_test,
    require_tool,
    running_nginx,
    running_werkzeug_gateway,
)

PATHS = [
    "/api/v1/auth/login",
    "/api/v1/issues",
    f"/api/v1/issues/{uuid.uuid4()}",
    f"/api/v1/issues/{uuid.uuid4()}/assign",
    f"/api/v1/issues/{uuid.uuid4()}/rating",
    "/api/v1/villages",
    f"/api/v1/villages/{uuid.uuid4()}",
    f"/svc/dispatch/api/v1/issues/{uuid.uuid4()}",
    "/svc/dispatch/api/v1/villages",
    "/api/v1/queue",
    "/api/v1/public/figures",
    "/api/v1/leaderboard",
    "/api/v1/notifications/unread-count",
    "/api/v1/news/desk",
    "/api/v1/posts",
    "/open311/v2/discovery.json",
    "/api/v1/media",
]
INTERNAL = ["/metrics", "/docs", "/openapi.json", "/readyz", "/svc/intake/metrics", "/nothing"]
DEAD = "intake"


@pytest.fixture(scope="module", params=["nginx", "werkzeug"])
def gateway(request, table, upstreams, tmp_path_factory) -> Iterator[str]:
    """A running gateway of each kind in front of the stand-ins (``scoring`` has none)."""
    folder = tmp_path_factory.mktemp(f"gateway-{request.param}")
    addresses = {name: server.address for name, server in upstreams.items()}
    addresses["scoring"] = f"127.0.0.1:{free_port()}"  # nothing listens: the 502 case
    if request.param == "nginx":
        conf, port = nginx_config(folder, table, addresses)
        with running_nginx(conf, port) as url:
            yield url
    else:
        targets = {name: f"http://{address}" for name, address in addresses.items()}
        with running_werkzeug_gateway(targets, folder) as url:
            yield url


def test_every_path_goes_where_the_table_says(gateway, table: RouteTable):
    for path in PATHS:
        match = table.resolve(path)
        assert match is not None, path
        if match.upstream == "scoring":
            continue  # the dead one, below
        response = requests.get(gateway + path + "?q=1", timeout=10)
        assert response.status_code == 200, (path, response.text)
        seen = response.json()
        assert (seen["upstream"], seen["path"]) == (match.upstream, match.path + "?q=1"), path


def test_internal_and_unknown_paths_get_the_gateways_chinese_404(gateway):
    for path in INTERNAL:
        response = requests.get(gateway + path, timeout=10)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]["code"] == "not_found"
        assert response.json()["error"]["message"] == "未找到该内容。"


def test_a_body_over_the_routes_limit_is_refused_in_chinese_and_a_photo_passes(gateway):
    big = b"x" * (2 * 1024 * 1024)
    refused = requests.post(gateway + "/api/v1/auth/login", data=big, timeout=30)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "payload_too_large"
    assert refused.json()["error"]["message"] == "上传的内容太大。"
    photo = requests.post(gateway + "/api/v1/media", data=b"y" * (9 * 1024 * 1024), timeout=30)
    assert photo.status_code == 200, photo.text[:300]
    assert photo.json()["body_bytes"] == 9 * 1024 * 1024


def test_a_dead_upstream_is_a_chinese_502(gateway):
    response = requests.get(gateway + "/api/v1/leaderboard", timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"
    assert "稍后再试" in response.json()["error"]["message"]
    assert response.headers.get("X-Request-ID")


def test_the_request_id_is_the_correlation_id_and_comes_back(gateway):
    mine = str(uuid.uuid4())
    response = requests.get(gateway + "/api/v1/queue", headers={"X-Request-ID": mine}, timeout=10)
    seen = response.json()["headers"]
    assert seen["x-correlation-id"] == mine
    assert seen["x-request-id"] == mine
    assert response.headers["X-Request-ID"] == mine
    # None (or one the services would not accept): a new UUID, the same on both sides.
    for sent in ({}, {"X-Request-ID": "not-a-uuid; DROP TABLE"}):
        response = requests.get(gateway + "/api/v1/queue", headers=sent, timeout=10)
        made = response.headers["X-Request-ID"]
        assert str(uuid.UUID(made)) == made
        assert made != sent.get("X-Request-ID")
        assert response.json()["headers"]["x-correlation-id"] == made


def test_the_clients_address_is_forwarded(gateway):
    response = requests.get(
        gateway + "/api/v1/queue", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10
    )
    seen = response.json()["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_the_event_stream_is_passed_on_as_it_comes(gateway):
    """The stand-in sends one event, waits 1.5 s, sends another: the first must arrive before
    the second is even written."""
    started = time.monotonic()
    with requests.get(gateway + "/api/v1/notifications/stream", stream=True, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = r.iter_lines(chunk_size=1)
        first = next(line for line in lines if line)
        first_at = time.monotonic() - started
        second = next(line for line in lines if line)
    assert (first, second) == (b"data: first", b"data: second")
    assert first_at < 1.2, f"the first event waited {first_at:.2f}s: buffered"


def test_nginx_gzips_json_answers(table, upstreams, tmp_path):
    addresses = {name: server.address for name, server in upstreams.items()}
    conf, port = nginx_config(tmp_path, table, addresses)
    with running_nginx(conf, port) as url:
        response = requests.get(
            url + "/api/v1/queue?big=1",
            headers={"Accept-Encoding": "gzip"},
            stream=True,
            timeout=10,
        )
        assert response.headers["Content-Encoding"] == "gzip"
        assert "网格" in gzip.decompress(response.raw.read()).decode("utf-8")


def test_nginx_accepts_both_checked_in_configurations(tmp_path):
    """``nginx -t`` on deploy/gateway/nginx.conf and nginx-tls.conf as compose mounts them,
    with the compose host names pointed at 127.0.0.1 and a throwaway certificate."""
    cert, key = _self_signed(tmp_path)
    for name in ("nginx.conf", "nginx-tls.conf"):
        text = (ROOT / "deploy" / "gateway" / name).read_text(encoding="utf-8")
        for upstream in RouteTable.load().upstreams.values():
            text = text.replace(f"server {upstream.compose};", f"server 127.0.0.1:{free_port()};")
        text = text.replace("/etc/nginx/tls/tls.crt", str(cert))
        text = text.replace("/etc/nginx/tls/tls.key", str(key))
        text = text.replace("/tmp/nginx.pid", str(tmp_path / "nginx.pid"))
        conf = tmp_path / name
        conf.write_text(text, encoding="utf-8")
        result = nginx_test(conf)
        assert result.returncode == 0, f"nginx -t {name}:\n{result.stderr}"
        assert "test is successful" in result.stderr


def test_nginx_speaks_https_with_http2(table, upstreams, tmp_path):
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    addresses = {name: server.address for name, server in upstreams.items()}
    conf, port = nginx_config(
        tmp_path, table, addresses,
        tls_listen=tls_port, tls_certificate=str(cert), tls_certificate_key=str(key),
    )  # fmt: skip
    with running_nginx(conf, port):
        result = subprocess.run(
            [require_tool("curl"), "-sk", "--http2", "-o", "/dev/null",
             "-w", "%{http_version} %{http_code}", f"https://127.0.0.1:{tls_port}/api/v1/queue"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    assert result.stdout == "2 200", result.stderr


def _self_signed(folder):
    """A throwaway certificate for localhost (the cryptography package, no openssl CLI)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
