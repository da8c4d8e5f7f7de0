"""search.service limits: upload, pixel, body and query-length caps, the bearer token, bounded concurrency
(503 with Retry-After), ServiceConfig checks, and `clipforge serve`'s command line."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.cli import serve as serve_cli
from clipforge.search.service import ApiError, ServiceConfig, create_app
from clipforge.search.service import limits as limits_module
from clipforge.search.service.limits import ConcurrencyLimiter
from support.searchservice import tiny_index


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_index(tmp_path_factory.getbasetemp())


def png_b64(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_upload_pixel_body_and_query_caps(collection):
    config = ServiceConfig(max_upload_bytes=2000, max_pixels=10_000, max_json_bytes=4000, max_query_chars=20, max_k=5)
    app = create_app({"photos": collection["index"]}, config)
    with TestClient(app) as client:
        assert client.post("/search", json={"image": png_b64(64, 64), "k": 1}).status_code == 200
        big = base64.b64encode(bytes(2100)).decode()  # within the body cap, over the upload cap
        reply = client.post("/search", json={"image": big})
        assert reply.status_code == 413 and "limit is 2,000" in reply.json()["error"]
        bomb = client.post("/search", json={"image": png_b64(200, 200)})  # a small file of 40,000 pixels
        assert bomb.status_code == 413 and "pixels" in bomb.json()["error"]
        body = client.post("/search", content=b'{"text": "' + b"a" * 10_000 + b'"}')
        assert body.status_code == 413 and "request body" in body.json()["error"]
        lying = client.post("/search", content=b"{}", headers={"Content-Length": "99999999"})
        assert lying.status_code in (400, 413)
        text = client.get("/search", params={"q": "x" * 21})
        assert text.status_code == 413 and "at most 20" in text.json()["error"]
        assert client.get("/search", params={"q": "cat", "k": 6}).status_code == 400
        clip = {"text": "y" * 21, "modality": "image", "num_images": 2}
        assert client.post("/knn-service", content=json.dumps(clip)).status_code == 413
        clip = {"text": "cat", "modality": "image", "num_images": 6}
        assert client.post("/knn-service", content=json.dumps(clip)).status_code == 400


def test_bearer_token(collection, monkeypatch):
    calls = []
    real = limits_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(limits_module.hmac, "compare_digest", spy)
    app = create_app({"photos": collection["index"]}, ServiceConfig(token="correct-horse", preload_model=False))
    with TestClient(app) as client:
        none = client.get("/indices")
        assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Bearer")
        assert "no token" in none.json()["error"]
        wrong = client.get("/indices", headers={"Authorization": "Bearer correct-horsf"})
        assert wrong.status_code == 401 and "wrong token" in wrong.json()["error"]
        assert client.get("/indices", headers={"Authorization": "Bearer correct-horse"}).status_code == 200
        assert client.post("/knn-service", content=b"{}").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/health").status_code == 200  # open for load balancers
    assert (b"Bearer correct-horsf", b"Bearer correct-horse") in calls  # compared in constant time


def test_cors_only_for_configured_origins(collection):
    origin = "http://front.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    closed = create_app({"photos": collection["index"]}, ServiceConfig(preload_model=False))
    with TestClient(closed) as client:
        assert "access-control-allow-origin" not in client.get("/indices-list", headers={"Origin": origin}).headers
    config = ServiceConfig(preload_model=False, cors_origins=(origin,), token="a-long-token")
    with TestClient(create_app({"photos": collection["index"]}, config)) as client:
        answer = client.options("/knn-service", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
        reply = client.get("/indices-list", headers={"Origin": origin, "Authorization": "Bearer a-long-token"})
        assert reply.headers["access-control-allow-origin"] == origin
        assert "X-Clipforge-Ignored" in reply.headers["access-control-expose-headers"]
        other = client.get("/indices-list", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers and other.status_code == 401


def test_unexpected_errors_are_500_json_without_traceback(collection):
    app = create_app({"photos": collection["index"]}, ServiceConfig(preload_model=False))
    served = app.state.search.indices["photos"]

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    served.searcher.search = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/search?q=id:1")
    assert reply.status_code == 500 and reply.json() == {"error": "internal error; the server's log has the details"}


def test_full_server_answers_503_with_retry_after(collection):
    config = ServiceConfig(max_concurrency=1, max_queue=0, queue_timeout_s=1.0)
    app = create_app({"photos": collection["index"]}, config)
    served = app.state.search.indices["photos"]
    started, release = threading.Event(), threading.Event()
    original = served.searcher.search

    def slow_search(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return original(*args, **kwargs)

    served.searcher.search = slow_search
    with TestClient(app) as client:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(reply=client.get("/search?q=id:1")))
        thread.start()
        try:
            assert started.wait(10)
            busy = client.get("/search?q=id:2")
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert "busy" in busy.json()["error"]
            assert "clipforge_busy_rejected_total 1" in client.get("/metrics").text
        finally:
            release.set()
            thread.join(10)
        assert first["reply"].status_code == 200
        assert client.get("/search?q=id:2").status_code == 200


def test_limiter_queues_then_times_out():
    async def scenario():
        limiter = ConcurrencyLimiter(limit=1, queue=1, timeout_s=0.2)
        gate = threading.Event()
        first = asyncio.ensure_future(limiter.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(limiter.run(lambda: "second"))
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as full:  # one running, one waiting: the queue is full
            await limiter.run(lambda: "third")
        assert full.value.status == 503 and "1 waiting" in full.value.message
        with pytest.raises(ApiError) as late:  # the waiting one's slot never frees within 0.2 s
            await second
        assert late.value.status == 503 and "within 0.2 s" in late.value.message
        gate.set()
        assert await first is True
        assert await limiter.run(lambda: "after") == "after"
        assert (limiter.active, limiter.waiting, limiter.rejected) == (0, 0, 2)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"max_k": 0}, "max_k"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_queue": -1}, "max_queue"),
        ({"queue_timeout_s": 0}, "queue_timeout_s"),
        ({"token": "short"}, "at least 8"),
        ({"image_roots": "/data"}, "tuple of strings"),
        ({"cors_origins": "*"}, "tuple of strings"),
    ],
)
def test_service_config_refuses_bad_settings(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ServiceConfig(**kwargs)


def test_serve_command_line(collection, monkeypatch, capsys):
    with pytest.raises(SystemExit) as shown:
        serve_cli.main(["--help"])
    assert shown.value.code == 0 and "/knn-service" in capsys.readouterr().out
    started = []
    monkeypatch.setattr(serve_cli, "run_server", lambda app, host, port, verbosity: started.append((app, host, port)))
    monkeypatch.delenv(serve_cli.TOKEN_ENV, raising=False)
    index = str(collection["index"])
    assert serve_cli.main([index, "--lazy-model"]) == 0
    app, host, port = started[-1]
    assert (host, port) == ("127.0.0.1", 1234) and list(app.state.search.indices) == ["index"]
    assert app.state.search.config.token is None
    assert "http://127.0.0.1:1234/" in capsys.readouterr().out
    assert serve_cli.main([f"a={index}", f"b={index}", "--host", "0.0.0.0", "--lazy-model"]) == 0
    assert "without a token" in capsys.readouterr().err
    assert list(started[-1][0].state.search.indices) == ["a", "b"]
    monkeypatch.setenv(serve_cli.TOKEN_ENV, "from-the-environment")
    assert serve_cli.main([index, "--host", "0.0.0.0", "--lazy-model", "--allow-image-url", "--cors-origin", "*"]) == 0
    assert "without a token" not in capsys.readouterr().err
    config = started[-1][0].state.search.config
    assert config.token == "from-the-environment" and config.allow_image_url is True and config.cors_origins == ("*",)
    assert serve_cli.main([str(collection["images"] / "missing")]) == 3
    assert serve_cli.main([index, "--token", "short"]) == 2
    assert serve_cli.main([f"x={index}", f"x={index}"]) == 2
    assert serve_cli.main([str(collection["images"])]) == 2  # a folder that is not an INDEX_DIR
    assert "not an INDEX_DIR" in capsys.readouterr().err
    assert len(started) == 3
