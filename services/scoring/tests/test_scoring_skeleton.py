"""The service answers like every Service365 web process."""


def test_health_and_openapi_answer(client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
