"""search.service: clipforge's native JSON API over a tiny index built by the pipeline (FastAPI's TestClient),
the path checks of /items/{id}/image on a hand-made index, and one real uvicorn server over loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from clipforge.search.index import build_index
from clipforge.search.searcher import Searcher
from clipforge.search.service import ServiceConfig, create_app
from support.indexdirs import make_index_dir
from support.searchservice import tiny_index
from support.tolerance import assert_close_rel


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_index(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(collection):
    app = create_app({"photos": collection["index"]}, ServiceConfig())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_get_search_matches_the_library(client, collection):
    reply = client.get("/search", params={"q": "photo number 4", "k": 5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["index"] == "photos" and body["k"] == 5 and body["modality"] == "image"
    expected = Searcher(collection["index"]).search("photo number 4", k=5)
    assert [r["id"] for r in body["results"]] == [r.id for r in expected]
    scores = torch.tensor([r["score"] for r in body["results"]])
    assert_close_rel(scores, torch.tensor([r.score for r in expected]), 1e-5)
    first = body["results"][0]
    assert first["metadata"]["image_path"] == expected[0].metadata["image_path"]
    assert first["image"] == f"/items/{first['id']}/image?index=photos"


def test_post_search_by_image_embedding_and_id_finds_the_item_first(client, collection):
    target = 5
    by_image = client.post("/search", json={"image": b64(collection["paths"][target]), "k": 3}).json()
    assert by_image["results"][0]["id"] == target
    vector = Searcher(collection["index"]).rows(np.array([target]))[0]
    by_vector = client.post("/search", json={"embedding": vector.tolist(), "k": 3}).json()
    assert by_vector["results"][0]["id"] == target
    by_id = client.post("/search", json={"id": target, "k": 3}).json()
    assert [r["id"] for r in by_id["results"]] == [r["id"] for r in by_vector["results"]]
    assert_close_rel(torch.tensor([by_id["results"][0]["score"]]), torch.tensor([1.0]), 1e-3)


def test_text_modality_filters_and_dedup(client, collection):
    texts = client.post("/search", json={"text": "photo number 2", "modality": "text", "k": 20}).json()["results"]
    assert texts[0]["id"] == 2 and texts[0]["metadata"]["caption"] == "photo number 2"
    path = str(collection["paths"][3])
    where = client.get("/search", params={"q": "a photo", "where": f"image_path={path}"}).json()["results"]
    assert [r["metadata"]["image_path"] for r in where] == [path]
    two = client.post(
        "/search", json={"query": "a photo", "filters": {"image_path": [path, str(collection["paths"][7])]}}
    ).json()["results"]
    assert sorted(r["id"] for r in two) == [3, 7]
    deduped = client.get("/search", params={"q": "id:0", "k": 12, "dedup": "true"}).json()["results"]
    plain = client.get("/search", params={"q": "id:0", "k": 12}).json()["results"]
    assert len(plain) == 12 and 1 <= len(deduped) <= 12
    assert deduped[0]["id"] == plain[0]["id"] == 0


def test_indices_items_and_health(client, collection):
    indices = client.get("/indices").json()["indices"]
    assert indices[0]["name"] == "photos" and indices[0]["rows"] == 12
    assert set(indices[0]["modalities"]) == {"image", "text"} and indices[0]["text_queries"] is True
    item = client.get("/items/3").json()
    assert item["id"] == 3 and item["metadata"]["image_path"] == str(collection["paths"][3])
    image = client.get("/items/3/image?index=photos")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == collection["paths"][3].read_bytes()
    assert client.get("/health").json() == {"status": "ok", "indices": ["photos"]}
    assert client.get("/items/12").status_code == 404
    assert client.get("/items/3?index=nope").status_code == 404


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "says"),
    [
        ("post", "/search", b"{not json", 400, "malformed JSON"),
        ("post", "/search", b"[1, 2]", 400, "JSON object"),
        ("post", "/search", b"", 400, "empty request body"),
        ("post", "/search", b'{"text": 3}', 400, "'text' must be a string"),
        ("post", "/search", b'{"text": "cat", "k": "ten"}', 400, "'k' must be an integer"),
        ("post", "/search", b'{"text": "cat", "k": 0}', 400, "'k' must be from 1"),
        ("post", "/search", b'{"text": "cat", "k": 100000}', 400, "'k' must be from 1"),
        ("post", "/search", b'{"text": "cat", "index": "nope"}', 404, "no index named"),
        ("post", "/search", b'{"text": "cat", "id": 3}', 400, "exactly one of"),
        ("post", "/search", b'{"k": 3}', 400, "exactly one of"),
        ("post", "/search", b'{"text": "cat", "colour": 1}', 400, "unknown field"),
        ("post", "/search", b'{"embedding": [1, 2, 3]}', 400, "32-d embeddings"),
        ("post", "/search", b'{"embedding": [NaN]}', 400, "NaN is not valid JSON"),
        ("post", "/search", b'{"image": "@@@not base64@@@"}', 400, "not base64"),
        ("post", "/search", json.dumps({"image": base64.b64encode(b"no image").decode()}).encode(), 400, "image"),
        ("post", "/search", b'{"id": 99}', 404, "no item 99"),
        ("post", "/search", b'{"text": "cat", "filters": {"colour": "red"}}', 400, "no metadata column"),
        ("post", "/search", b'{"text": "cat", "modality": "audio"}', 400, "'modality' must be"),
        ("post", "/search", b'{"query": "./secret.png"}', 400, "text and id:N terms only"),
        ("post", "/search", b'{"query": "emb:/etc/x.npy"}', 400, "text and id:N terms only"),
        ("post", "/search", b'{"query": "http://example.org/x.png"}', 400, "text and id:N terms only"),
        ("get", "/search", None, 400, "give a query"),
        ("get", "/search?q=cat&k=-1", None, 400, "'k' must be from 1"),
        ("get", "/search?q=cat&where=nocolumn", None, 400, "COLUMN=VALUE"),
        ("get", "/search?q=cat&bogus=1", None, 400, "unknown parameter"),
        ("get", "/search?q=cat+-+cat", None, 400, "cancel out"),
        ("get", "/items/abc", None, 400, "non-negative integer"),
        ("get", "/items/..%2F..%2Fetc%2Fpasswd/image", None, 404, "no endpoint"),
        ("get", "/items/-1/image", None, 400, "non-negative integer"),
        ("get", "/nowhere", None, 404, "no endpoint"),
        ("delete", "/search", None, 405, "not allowed"),
    ],
)
def test_bad_requests_are_4xx_json_errors(client, method, url, body, status, says):
    reply = client.request(method.upper(), url, content=body)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert says in reply.json()["error"]


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """An index without a model whose metadata points at files in and out of its image root."""
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "collection", base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "ok.png").write_bytes(b"\x89PNG fake")
    (outside / "secret.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "notes.txt").write_text("not an image")
    os.mkfifo(root / "pipe.png")
    paths = ["ok.png", "../outside/secret.png", str(outside / "secret.png"), "link.png", "pipe.png", "notes.txt",
             "sub/../ok.png", "missing.png"]  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(paths), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    layout = make_index_dir(base / "index", vectors, shards=1)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": paths, "caption": paths}), layout.metadata_path(0))
    layout.write_info({"source": {"kind": "csv", "location": str(root / "list.csv")}})
    build_index(layout.root, "image", kind="flat", recall_sample=4)
    return {"index": layout.root, "vectors": vectors}


def test_images_are_served_only_from_the_image_roots(handmade):
    app = create_app({"hand": handmade["index"]}, ServiceConfig())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/items/0/image").content == b"\x89PNG fake"
        expected = {1: 403, 2: 403, 3: 403, 4: 403, 5: 403, 6: 403, 7: 404}  # .., absolute, symlink, FIFO, .txt
        for item, status in expected.items():
            reply = client.get(f"/items/{item}/image")
            assert reply.status_code == status, (item, reply.text)
            assert "secret" not in reply.text or "secret.png" in reply.json()["error"]
        # without a recorded model, text queries say why; embedding queries work
        assert "no model is recorded" in client.get("/search?q=cat").json()["error"]
        found = client.post("/search", json={"embedding": handmade["vectors"][2].tolist(), "k": 1}).json()
        assert found["results"][0]["id"] == 2 and "image" in found["results"][0]


def test_extra_image_root_serves_files_under_it(handmade):
    outside = handmade["index"].parent / "outside"
    app = create_app({"hand": handmade["index"]}, ServiceConfig(image_roots=(str(outside),)))
    with TestClient(app) as client:
        assert client.get("/items/2/image").content == b"secret"  # an absolute path under the added root
        assert client.get("/items/3/image").content == b"secret"  # the symlink's target now lies under a root
        assert client.get("/items/1/image").status_code == 403  # '..' stays refused


def test_metrics_count_requests_by_route_template(client):
    client.get("/items/1")
    client.get("/items/2")
    client.get("/nowhere")
    text = client.get("/metrics").text
    lines = text.splitlines()
    assert "# TYPE clipforge_requests_total counter" in lines
    count = [line for line in lines if line.startswith('clipforge_requests_total{endpoint="/items/{item_id}"')]
    assert count and int(count[0].rsplit(" ", 1)[1]) >= 2
    unmatched = 'clipforge_requests_total{endpoint="unmatched",method="GET",status="404"}'
    assert any(line.startswith(unmatched) for line in lines)
    assert 'clipforge_index_rows{index="photos"} 12' in lines
    prefix = 'clipforge_request_duration_seconds_bucket{endpoint="/items/{item_id}",'
    buckets = [line for line in lines if line.startswith(prefix)]
    counts = [int(line.rsplit(" ", 1)[1]) for line in buckets]
    assert counts == sorted(counts) and buckets[-1].split("le=")[1].startswith('"+Inf"')
    for line in lines:  # every sample line is NAME{LABELS} VALUE or NAME VALUE
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_real_uvicorn_server_over_loopback(collection):
    import uvicorn

    app = create_app({"photos": collection["index"]}, ServiceConfig(token="s3cret-token"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        assert server.started
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=10) as reply:
            assert json.load(reply)["status"] == "ok"
        request = urllib.request.Request(
            f"{base}/search", data=json.dumps({"id": 2, "k": 2}).encode(), method="POST",
            headers={"Authorization": "Bearer s3cret-token"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.load(reply)["results"][0]["id"] == 2
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/search?q=id:2", timeout=10)
        assert refused.value.code == 401
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()
