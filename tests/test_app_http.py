"""HTTP hygiene: HEAD like GET, the Host check against DNS rebinding, caps checked before
heavy work, and a bounded wait for a request body that never comes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.cli import main
from app.live import LiveEncoder
from app.main import create_app
from app.settings import AppSettings

SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "referrer-policy")
GET_URLS = [
    "/",
    "/latents",
    "/latents/1",
    "/search?q=a",
    "/live",
    "/api/build",
    "/api/latents",
    "/api/latents/1",
    "/api/search?q=a",
    "/openapi.json",
    "/static/style.css",
    "/nope",
    "/api/latents/99999",
]


@pytest.mark.parametrize("url", GET_URLS)
def test_head_answers_like_get_without_a_body(app_client: Any, url: str) -> None:
    got = app_client.get(url)
    head = app_client.head(url)
    assert head.status_code == got.status_code, url
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers.get("content-length") == got.headers.get("content-length")
    for name in SECURITY_HEADERS:
        assert head.headers.get(name), name


# --- the Host check -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_client(app_index: Path) -> Iterator[TestClient]:
    """An app served as `atlas serve --host atlas.lan --allow-host example.org` would be."""
    settings = AppSettings(index=app_index, host="atlas.lan", allowed_hosts=("Example.org",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LOCALHOST.",
        "127.0.0.1",
        "127.0.0.1:8000",
        "[::1]",
        "[::1]:8000",
        "10.1.2.3:80",
        "[fe80::1]:8000",
        "atlas.lan:8000",
        "example.org",
        "EXAMPLE.ORG:443",
    ],
)
def test_hosts_served_and_ip_literals_are_accepted(served_client: TestClient, host: str) -> None:
    assert served_client.get("/api/build", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "localhost.evil.example", "example.org.evil"]
)
def test_other_hosts_are_refused(served_client: TestClient, host: str) -> None:
    api = served_client.get("/api/build", headers={"Host": host})
    assert api.status_code == 400
    name = host.split(":")[0]
    assert name in api.json()["detail"] and "--allow-host" in api.json()["detail"]
    page = served_client.get("/", headers={"Host": host})
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    assert "--allow-host" in page.text
    for name in SECURITY_HEADERS:
        assert page.headers.get(name), name


def test_allow_host_star_accepts_any_host(app_index: Path) -> None:
    settings = AppSettings(index=app_index, allowed_hosts=("*",))
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/build", headers={"Host": "anything.example"}).status_code == 200


def test_atlas_serve_takes_repeated_allow_host(
    app_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.append(app))
    argv = ["serve", "--index", str(app_index), "--allow-host", "a.lan", "--allow-host", "b.lan"]
    assert main(argv) == 0
    (app,) = served
    assert app.state.settings.allowed_hosts == ("a.lan", "b.lan")
    app.state.db.close()


@pytest.mark.parametrize("host", ["", "a b", "*.lan", "evil.example/x"])
def test_a_bad_allow_host_names_the_setting(app_index: Path, host: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        AppSettings(index=app_index, allowed_hosts=(host,))


# --- live text caps before the model ------------------------------------------------------


def test_the_token_cap_is_checked_before_the_model_is_loaded(
    app_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(self: LiveEncoder) -> Any:
        pytest.fail("the model was loaded for a text over the token cap")

    monkeypatch.setattr(LiveEncoder, "_load", no_model)
    settings = AppSettings(index=app_index, max_live_tokens=8, allowed_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        text = "The os module provides a portable way of using operating system functionality."
        api = client.post("/api/activations", json={"text": text})
        assert api.status_code == 413, api.text
        assert "tokens long" in api.json()["detail"] and "at most 8" in api.json()["detail"]
        page = client.post("/live", data={"text": text})
        assert page.status_code == 413 and "at most 8" in page.text


# --- a request body that never comes ------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(app_index: Path) -> Iterator[tuple[str, int]]:
    """The app under a real uvicorn on a free port of 127.0.0.1, with a 1 s body timeout."""
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections queue from now on: no waiting for uvicorn to start
    port = listener.getsockname()[1]
    app = create_app(AppSettings(index=app_index, port=port, body_timeout=1.0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=30)
    listener.close()
    assert not thread.is_alive()


def _send_short_body(address: tuple[str, int], path: str, content_type: str) -> tuple[bytes, float]:
    """Headers promising 1,000 bytes, then 10; what comes back until the server closes."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=8) as client:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{address[1]}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
        )
        client.sendall(head.encode() + b"0123456789")
        answer = b""
        try:
            while chunk := client.recv(65536):
                answer += chunk
        except TimeoutError:
            pytest.fail(f"no answer or close within 8 s; got {answer[:200]!r}")
    return answer, time.monotonic() - start


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/activations", "application/json"), ("/live", "application/x-www-form-urlencoded")],
)
def test_a_body_shorter_than_its_content_length_gets_408_and_a_close(
    real_server: tuple[str, int], path: str, content_type: str
) -> None:
    answer, elapsed = _send_short_body(real_server, path, content_type)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"content-security-policy" in answer.lower()
    assert elapsed < 6


def test_the_server_still_answers_after_a_body_timeout(real_server: tuple[str, int]) -> None:
    from urllib.request import urlopen

    _send_short_body(real_server, "/api/activations", "application/json")
    host, port = real_server
    with urlopen(f"http://{host}:{port}/api/build", timeout=10) as response:
        assert response.status == 200
