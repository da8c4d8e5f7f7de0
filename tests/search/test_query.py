"""search.query: rclip's syntax parsed into terms; terms combined into one unit query vector."""

from __future__ import annotations

import http.server
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.search.query import QueryError, Term, embed_terms, fetch_url, parse_query
from support.tolerance import assert_close_rel

D = 4
VECTORS = {  # hand-built text embeddings, deliberately not unit length: terms are normalised before the sum
    "cat": np.array([2.0, 0.0, 0.0, 0.0]),
    "dog": np.array([0.0, 3.0, 0.0, 0.0]),
    "fruit": np.array([0.0, 0.0, 0.5, 0.0]),
    "golden retriever": np.array([1.0, 1.0, 0.0, 0.0]),
}
RED = np.array([0.0, 0.0, 0.0, 1.0])  # what the fake encoder returns for a red image


class FakeEncoder:
    """A dict text -> vector; any image -> RED (red) or -RED (other colours). Counts calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode_texts(self, texts):
        self.calls.append("texts")
        return np.stack([VECTORS[t] for t in texts]).astype(np.float32)

    def encode_images(self, images):
        self.calls.append("images")
        return np.stack([RED if img.getpixel((0, 0)) == (255, 0, 0) else -RED for img in images]).astype(np.float32)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def close(actual, expected, what="query"):
    assert_close_rel(torch.from_numpy(np.asarray(actual, np.float64)), torch.from_numpy(expected), 1e-5, what)


def test_parse_rclip_syntax_string_and_words():
    expected = [Term("text", "golden retriever", 2.0), Term("image", "./pool.jpg"), Term("text", "fruit", 1.0, -1)]
    assert parse_query("2:golden retriever + ./pool.jpg - fruit") == expected
    assert parse_query(["2:golden retriever", "+", "./pool.jpg", "-", "fruit"]) == expected
    assert parse_query(["golden", "retriever"]) == [Term("text", "golden retriever")]


def test_parse_kinds_hyphens_quotes_and_weights():
    hyphens = [Term("text", "t-shirt"), Term("text", "black-and-white", sign=-1)]
    assert parse_query("t-shirt - black-and-white") == hyphens
    assert parse_query('"rock + roll" - .5:guitar') == [Term("text", "rock + roll"), Term("text", "guitar", 0.5, -1)]
    assert parse_query("https://x.org/a.png")[0].kind == "url"
    assert parse_query("file:///tmp/a.png") == [Term("image", "/tmp/a.png")]
    assert parse_query("0.5:../a.png")[0] == Term("image", "../a.png", 0.5)
    assert parse_query("id:12 + 3:emb:q.npy#2") == [Term("id", 12), Term("embedding", "q.npy", 3.0, 1, 2)]
    assert parse_query("+ cat") == [Term("text", "cat")]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty query"),
        ("   ", "empty query"),
        ("- cat", "cannot start with '-'"),
        ("cat + + dog", "two operators"),
        ("cat -", "ends with '-'"),
        ("-2:cat", "weight '-2' is not"),
        ("1e3:cat", "weight '1e3' is not"),
        ("2..5:cat", "weight '2..5' is not"),
        ("id:x", "id:N takes a row number"),
        ("emb:", "emb: takes a .npy file"),
        ("emb:a.npy#x", "row after #"),
        ('"open', "unclosed double quote"),
        ("x" * 10_001, "over the limit"),
    ],
)
def test_parse_errors_are_clear(query, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(".", r"\.").replace("+", r"\+")):
        parse_query(query)


def test_arithmetic_on_hand_built_embeddings():
    encoder = FakeEncoder()
    got = embed_terms(parse_query("2:cat + dog - fruit"), encoder)
    close(got, unit(2 * unit(VECTORS["cat"]) + unit(VECTORS["dog"]) - unit(VECTORS["fruit"])))
    assert got.dtype == np.float32 and abs(np.linalg.norm(got) - 1) < 1e-6
    assert encoder.calls == ["texts"]  # one batch for all texts, no image call


def test_image_id_and_emb_terms(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    stored = np.eye(D, dtype=np.float32) * 5  # rows of a fake index (not unit: normalised by the combination)
    np.save(tmp_path / "one.npy", np.array([0.0, 0.0, 7.0, 0.0], dtype=np.float32))
    np.save(tmp_path / "many.npy", np.eye(D, dtype=np.float32)[::-1])  # row 0 = e3, row 3 = e0
    query = f"{tmp_path}/red.png + 0.5:id:1 - emb:{tmp_path}/one.npy + emb:{tmp_path}/many.npy#3"
    got = embed_terms(parse_query(query), FakeEncoder(), rows=lambda ids: stored[ids], dim=D)
    close(got, unit(RED + 0.5 * np.eye(D)[1] - np.eye(D)[2] + np.eye(D)[0]))


def test_model_is_needed_only_for_text_and_images():
    def no_model():
        raise AssertionError("the model must not load for id: terms")

    got = embed_terms(parse_query("id:2"), no_model, rows=lambda ids: np.eye(D, dtype=np.float32)[ids])
    close(got, np.eye(D)[2])
    loaded = []
    embed_terms(parse_query("cat"), lambda: loaded.append(1) or FakeEncoder())
    assert loaded == [1]


def test_embedding_errors(tmp_path):
    np.save(tmp_path / "many.npy", np.ones((3, D), dtype=np.float32))
    np.save(tmp_path / "wide.npy", np.ones(D + 1, dtype=np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(QueryError, match="holds 3 rows; pick one"):
        embed_terms(parse_query(f"emb:{tmp_path}/many.npy"), None, dim=D)
    with pytest.raises(QueryError, match="rows 0..2"):
        embed_terms(parse_query(f"emb:{tmp_path}/many.npy#3"), None, dim=D)
    with pytest.raises(QueryError, match="5 dimensions, the index holds 4"):
        embed_terms(parse_query(f"emb:{tmp_path}/wide.npy"), None, dim=D)
    with pytest.raises(QueryError, match="not a numpy"):  # never unpickled
        embed_terms(parse_query(f"emb:{tmp_path}/objects.npy"), None, dim=D)
    with pytest.raises(FileNotFoundError):
        embed_terms(parse_query(f"emb:{tmp_path}/missing.npy"), None, dim=D)


def test_cancelling_terms_and_missing_image_are_clear(tmp_path):
    with pytest.raises(QueryError, match="cancel out"):
        embed_terms(parse_query("cat - 2:cat + cat"), FakeEncoder())
    with pytest.raises(QueryError, match=r"image ./nope\.jpg: no such file"):
        embed_terms(parse_query("./nope.jpg"), FakeEncoder())
    with pytest.raises(QueryError, match="need a model"):
        embed_terms(parse_query("cat"), None)


class _PngHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path != "/red.png":
            self.send_error(404, "Not Found")
            return
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buffer.getvalue())))
        self.end_headers()
        self.wfile.write(buffer.getvalue())

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PngHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_term_fetches_over_http(loopback_server):
    got = embed_terms(parse_query(f"{loopback_server}/red.png - 0.5:cat"), FakeEncoder())
    close(got, unit(RED - 0.5 * unit(VECTORS["cat"])))
    with pytest.raises(QueryError, match="HTTP 404"):
        fetch_url(f"{loopback_server}/missing.png")
    with pytest.raises(QueryError, match="over the limit"):
        fetch_url(f"{loopback_server}/red.png", max_bytes=10)


def test_url_without_network_is_a_clear_error():
    import socket

    with socket.socket() as sock:  # a port nothing listens on: what an offline machine answers
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(QueryError, match=r"could not fetch .*no network\?.*give its path"):
        fetch_url(f"http://127.0.0.1:{port}/a.png", timeout=5)
