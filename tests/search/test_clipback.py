"""search.service.clipback: clip-retrieval's clip-back API, queried exactly as its ClipClient queries it."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.search.searcher import Searcher
from clipforge.search.service import ServiceConfig, create_app
from clipforge.search.service.clipback import IGNORED_HEADER
from support.searchservice import tiny_index


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_index(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(collection):
    app = create_app({"photos": collection["index"]}, ServiceConfig())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


class ClipClientRequests:
    """The requests of clip-retrieval's ClipClient, copied from clip_retrieval/clip_client.py (rom1504/clip-retrieval
    2.45.0: `ClipClient.__init__` defaults and `__search_knn_api__`), sent through `http` instead of `requests`:
    `requests.post(url, data=json.dumps(body))` sends the JSON with no Content-Type header, and so does this."""

    def __init__(
        self,
        http,
        url: str,
        indice_name: str,
        use_mclip: bool = False,
        aesthetic_score: int = 9,
        aesthetic_weight: float = 0.5,
        modality: str = "image",
        num_images: int = 40,
        deduplicate: bool = True,
        use_safety_model: bool = True,
        use_violence_detector: bool = True,
    ):
        self.http = http
        self.url = url
        self.indice_name = indice_name
        self.use_mclip = use_mclip
        self.aesthetic_score = aesthetic_score
        self.aesthetic_weight = aesthetic_weight
        self.modality = modality
        self.num_images = num_images
        self.deduplicate = deduplicate
        self.use_safety_model = use_safety_model
        self.use_violence_detector = use_violence_detector
        self.last_response = None

    def query(self, text=None, image=None, embedding_input=None):
        if text and image:
            raise ValueError("Only one of text or image can be provided.")
        if text:
            return self._search_knn_api(text=text)
        elif image:
            if image.startswith("http"):
                return self._search_knn_api(image_url=image)
            return self._search_knn_api(image=image)
        elif embedding_input:
            return self._search_knn_api(embedding_input=embedding_input)
        raise ValueError("Either text or image must be provided.")

    def _search_knn_api(self, text=None, image=None, image_url=None, embedding_input=None):
        if image:
            with open(image, "rb") as image_file:
                encoded_string = base64.b64encode(image_file.read())
                image = str(encoded_string.decode("utf-8"))
        self.last_response = self.http.post(
            self.url,
            content=json.dumps(
                {
                    "text": text,
                    "image": image,
                    "image_url": image_url,
                    "embedding_input": embedding_input,
                    "deduplicate": self.deduplicate,
                    "use_safety_model": self.use_safety_model,
                    "use_violence_detector": self.use_violence_detector,
                    "indice_name": self.indice_name,
                    "use_mclip": self.use_mclip,
                    "aesthetic_score": self.aesthetic_score,
                    "aesthetic_weight": self.aesthetic_weight,
                    "modality": self.modality,
                    "num_images": self.num_images,
                    # num_results_ids is hardcoded to the num_images parameter.
                    "num_result_ids": self.num_images,
                }
            ),
        )
        return self.last_response.json()


def check_shape(results, collection):
    assert isinstance(results, list) and results
    for row in results:
        assert isinstance(row["id"], int) and isinstance(row["similarity"], float)
        assert {"image_path", "caption"} <= set(row)
        image = Image.open(io.BytesIO(base64.b64decode(row["image"])))
        assert image.format == "JPEG" and image.size == (32, 32)
    assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)


def test_clip_client_text_image_and_embedding_queries(client, collection):
    clip = ClipClientRequests(client, "/knn-service", "photos", num_images=5, deduplicate=False)
    assert "content-type" not in {k.lower() for k in clip.http.build_request("POST", "/", content="{}").headers}
    by_text = clip.query(text="photo number 6")
    check_shape(by_text, collection)
    expected = Searcher(collection["index"]).search("photo number 6", k=5)
    assert [r["id"] for r in by_text] == [r.id for r in expected]
    by_image = clip.query(image=str(collection["paths"][7]))
    check_shape(by_image, collection)
    assert by_image[0]["id"] == 7 and by_image[0]["image_path"] == str(collection["paths"][7])
    vector = Searcher(collection["index"]).rows([7])[0].tolist()
    by_embedding = clip.query(embedding_input=vector)
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_image]


def test_unsupported_filters_are_ignored_and_reported_or_refused_when_strict(client, collection):
    clip = ClipClientRequests(client, "/knn-service", "photos", num_images=3)  # ClipClient's defaults
    results = clip.query(text="photo")
    assert clip.last_response.status_code == 200 and len(results) == 3
    ignored = clip.last_response.headers[IGNORED_HEADER].split(", ")
    assert ignored == ["use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight"]
    plain = ClipClientRequests(client, "/knn-service", "photos", num_images=3, use_safety_model=False,
                               use_violence_detector=False, aesthetic_score=None)  # fmt: skip
    plain.query(text="photo")
    assert IGNORED_HEADER not in plain.last_response.headers
    app = create_app({"photos": collection["index"]}, ServiceConfig(strict_clipback=True, preload_model=False))
    with TestClient(app) as strict_client:
        strict = ClipClientRequests(strict_client, "/knn-service", "photos", num_images=3, use_mclip=True)
        answer = strict.query(text="photo")
        assert strict.last_response.status_code == 422
        assert "use_safety_model, use_violence_detector, use_mclip, aesthetic_score" in answer["error"]
        plain.http = strict_client
        assert len(plain.query(text="photo")) == 3


def test_num_images_below_num_result_ids_and_text_modality(client):
    body = {"text": "photo number 4", "modality": "text", "num_images": 2, "num_result_ids": 4,
            "indice_name": None}  # fmt: skip
    results = client.post("/knn-service", content=json.dumps(body)).json()
    assert len(results) == 4 and results[0]["id"] == 4 and results[0]["caption"] == "photo number 4"
    assert "caption" in results[1] and set(results[2]) == {"id", "similarity"}  # as clip-back: ids past num_images


def test_indices_list_and_metadata(client, collection):
    assert client.get("/indices-list").json() == ["photos"]
    rows = client.post("/metadata", content=json.dumps({"indice_name": "photos", "ids": [3, 0]})).json()
    assert [r["id"] for r in rows] == [3, 0]
    assert rows[0]["metadata"]["image_path"] == str(collection["paths"][3])
    assert base64.b64decode(rows[0]["metadata"]["image"])[:2] == b"\xff\xd8"  # a JPEG
    assert client.post("/metadata", content=json.dumps({"indice_name": "photos", "ids": []})).json() == []


@pytest.mark.parametrize(
    ("url", "body", "status", "says"),
    [
        ("/knn-service", {"text": "cat", "num_images": 3, "indice_name": "photos"}, 400, "'modality' is required"),
        ("/knn-service", {"text": "cat", "modality": "image", "indice_name": "photos"}, 400, "'num_images'"),
        ("/knn-service", {"text": "cat", "modality": "image", "num_images": 3, "indice_name": "x"}, 404, "no index"),
        ("/knn-service", {"modality": "image", "num_images": 3, "indice_name": "photos"}, 400, "must fill one of"),
        ("/knn-service", {"text": "cat", "modality": "image", "num_images": 0}, 400, "'num_images' must be"),
        ("/knn-service", {"image": "***", "modality": "image", "num_images": 3}, 400, "not base64"),
        ("/knn-service", {"embedding_input": [0.1], "modality": "image", "num_images": 3}, 400, "32-d"),
        ("/knn-service", {"image_url": "http://127.0.0.1:9/x.png", "modality": "image", "num_images": 3}, 403,
         "--allow-image-url"),
        ("/metadata", {"indice_name": "photos", "ids": "3"}, 400, "'ids' must be an array"),
        ("/metadata", {"indice_name": "photos", "ids": [99]}, 404, "no item 99"),
        ("/metadata", {"indice_name": "photos", "ids": ["x"]}, 400, "must be an integer"),
        ("/metadata", {"indice_name": "photos", "ids": list(range(1001))}, 413, "at most 1,000"),
    ],
)
def test_bad_clipback_requests_are_4xx_json(client, url, body, status, says):
    reply = client.post(url, content=json.dumps(body))
    assert reply.status_code == status, reply.text
    assert says in reply.json()["error"]


def test_image_url_is_fetched_from_loopback_when_allowed(collection):
    folder = collection["images"]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/img09.png"
        app = create_app({"photos": collection["index"]}, ServiceConfig(allow_image_url=True))
        with TestClient(app) as allowed:
            clip = ClipClientRequests(allowed, "/knn-service", "photos", num_images=2)
            results = clip.query(image=url)
            assert clip.last_response.status_code == 200 and results[0]["id"] == 9
            missing = clip.query(image=url.replace("img09", "nothing"))
            assert clip.last_response.status_code == 400 and "HTTP 404" in missing["error"]
    finally:
        server.shutdown()
        server.server_close()

