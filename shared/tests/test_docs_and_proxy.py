"""The docs page loads Swagger UI from the service itself (no third-party CDN), and the client's
address is taken from ``X-Forwarded-For`` only behind as many proxies as ``TRUSTED_PROXY_HOPS``
says."""

from __future__ import annotations

import re

import pytest

from shared.tests.tinyapp import TinySettings, build_app, make_keys


def _client(tmp_path, postgres_server, **settings):
    _private, public = make_keys(tmp_path)
    app = build_app(
        TinySettings(
            app_env="test",
            database_url=postgres_server.create_database("shared"),
            jwt_public_key_file=public,
            log_format="text",
            **settings,
        )
    )
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def client(tmp_path, postgres_server):
    return _client(tmp_path, postgres_server)


def test_the_docs_page_names_no_third_party_host(client):
    page = client.get("/docs").get_data(as_text=True)

    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources, page
    assert all(source.startswith("/") for source in sources), sources
    assert "http://" not in page and "https://" not in page


def test_every_file_the_docs_page_loads_is_served_by_the_service(client):
    page = client.get("/docs").get_data(as_text=True)

    for source in re.findall(r'(?:src|href)="([^"]+)"', page):
        response = client.get(source)
        assert response.status_code == 200, source
        assert len(response.data) > 1000, source


def test_redoc_from_a_cdn_is_gone(client):
    assert client.get("/redoc").status_code == 404


def test_without_trusted_proxies_a_forwarded_address_is_ignored(client):
    response = client.get(
        "/address",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )

    assert response.get_json() == {"remote_addr": "10.0.0.2", "scheme": "http"}


def test_behind_one_trusted_proxy_the_client_is_the_address_it_forwarded(tmp_path, postgres_server):
    client = _client(tmp_path, postgres_server, trusted_proxy_hops=1)

    response = client.get(
        "/address",
        # The client forged the first entry; the proxy appended the address it saw.
        headers={"X-Forwarded-For": "192.0.2.1, 203.0.113.9", "X-Forwarded-Proto": "https"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )

    assert response.get_json() == {"remote_addr": "203.0.113.9", "scheme": "https"}
