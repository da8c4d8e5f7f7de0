"""The search page: served by the app with a strict CSP (TestClient), and used in a real headless Chromium against
a real uvicorn server (selenium + Debian's chromium/chromedriver): text query, "more like this", upload, drop,
index switcher, API errors, and the bearer-token flow."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from clipforge.search.service import ServiceConfig, create_app
from clipforge.search.service.web import CONTENT_SECURITY_POLICY, FILES
from support.searchservice import tiny_index
from support.tolerance import assert_close_rel

WEB = Path(__file__).resolve().parents[2] / "src" / "clipforge" / "search" / "service" / "web"
TOKEN = "page-test-token"
SCREENSHOT = Path("/tmp/clipforge_search_page.png")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return tiny_index(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(collection):
    app = create_app({"photos": collection["index"]}, ServiceConfig())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# ------------------------------------------------------------------------------------------ served files


def test_page_and_its_files_are_served_with_a_strict_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert '<script src="/static/app.js"' in html and 'href="/static/style.css"' in html
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        reply = client.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind)
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert reply.content == (WEB / FILES[path][0]).read_bytes()


def test_page_needs_no_loose_csp_and_inserts_no_html(client):
    html = client.get("/").text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in tag for tag in scripts), "an inline <script> would need 'unsafe-inline'"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handlers would need 'unsafe-inline'"
    assert not re.search(r"\sstyle\s*=", html, re.I), "inline styles would need style-src 'unsafe-inline'"
    linked = re.findall(r"""(?:src|href)=["']([^"']*)""", html)
    assert linked and all(url.startswith("/static/") for url in linked), f"everything from this server: {linked}"
    script = client.get("/static/app.js").text
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "document.write"):
        assert unsafe not in script, f"app.js uses {unsafe}: server text must go through textContent"


def test_other_static_paths_are_json_404s(client):
    for path in ("/static/", "/static/../app.py", "/static/app.py", "/static/%2e%2e/__init__.py", "/index.html"):
        reply = client.get(path)
        assert reply.status_code == 404, path
        assert "error" in reply.json()


def test_page_is_open_while_the_api_needs_the_token(collection):
    app = create_app({"photos": collection["index"]}, ServiceConfig(token=TOKEN, preload_model=False))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        for path in FILES:
            assert test_client.get(path).status_code == 200, path
        assert test_client.get("/indices").status_code == 401
        authed = test_client.get("/indices", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authed.status_code == 200


def test_a_wheel_carries_every_page_file():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["clipforge.search.service.web"]
    for name, _ in FILES.values():
        assert (WEB / name).is_file(), name
        assert any(fnmatch.fnmatch(name, pattern) for pattern in globs), f"{name} is not package data"


# ------------------------------------------------------------------------------------------ headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextmanager
def serving(app):
    """`app` under a real uvicorn server on a free loopback port (a thread); yields its base URL."""
    import uvicorn

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
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900", "--disable-dev-shm-usage")
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def api_search(base: str, q: str, k: int, index: str = "photos", token: str | None = None) -> dict:
    url = f"{base}/search?" + urllib.parse.urlencode({"q": q, "k": k, "index": index})
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def wait(driver, condition, what: str, timeout: float = 15):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        status = driver.find_element("id", "status").text
        error = driver.find_element("id", "error").text
        raise AssertionError(f"timed out waiting for {what}; status {status!r}, error {error!r}") from None


def grid(driver) -> list[dict]:
    """The result cards as the page shows them."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll('#results li.card')).map(li => ({
            id: Number(li.dataset.id), score: Number(li.dataset.score),
            caption: li.querySelector('.caption').textContent,
            img: li.querySelector('img') ? li.querySelector('img').getAttribute('src') : null,
            loaded: li.querySelector('img') ? li.querySelector('img').naturalWidth : 0}));"""
    )


def caption_of(result: dict) -> str:
    meta = result["metadata"]
    return meta.get("caption") or Path(meta["image_path"]).name


def thumbnails_loaded(driver) -> bool:
    cards = grid(driver)
    return bool(cards) and all(card["loaded"] > 0 for card in cards)


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_page_in_headless_chromium(browser, collection):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = browser
    app = create_app({"photos": collection["index"], "again": collection["index"]}, ServiceConfig())
    with serving(app) as base:
        driver.get(base + "/")
        wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
        assert [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "index")).options] == [
            "photos",
            "again",
        ]
        assert not driver.find_element(By.ID, "token-box").is_displayed()
        # keyboard: the query box has focus; the image upload is the next stop after the search button
        assert driver.switch_to.active_element.get_attribute("id") == "q"
        driver.find_element(By.ID, "search-button").send_keys(Keys.TAB)
        assert driver.switch_to.active_element.get_attribute("id") == "file"

        # a text query: the grid shows the native API's answer, in its order, with its captions and scores
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("6")
        driver.find_element(By.ID, "q").send_keys("photo number 4", Keys.ENTER)
        wait(driver, lambda d: len(grid(d)) == 6, "six result cards")
        expected = api_search(base, "photo number 4", 6)["results"]
        cards = grid(driver)
        assert [c["id"] for c in cards] == [r["id"] for r in expected]
        assert [c["caption"] for c in cards] == [caption_of(r) for r in expected]
        assert_close_rel(torch.tensor([c["score"] for c in cards]), torch.tensor([r["score"] for r in expected]), 1e-6)
        assert "6 results for \u201cphoto number 4\u201d in photos" in driver.find_element(By.ID, "status").text
        wait(driver, thumbnails_loaded, "the thumbnails")
        assert all(c["img"] == f"/items/{c['id']}/image?index=photos" for c in cards)
        assert "q=photo+number+4" in driver.current_url  # a shareable URL
        driver.save_screenshot(str(SCREENSHOT))

        # "more like this" on the third card: an id: query whose first result is that item
        third = cards[2]["id"]
        driver.find_elements(By.CSS_SELECTOR, "#results button.more")[2].click()
        wait(driver, lambda d: grid(d) and grid(d)[0]["id"] == third, f"item {third} first")
        assert driver.find_element(By.ID, "q").get_attribute("value") == f"id:{third}"
        assert [c["id"] for c in grid(driver)] == [r["id"] for r in api_search(base, f"id:{third}", 6)["results"]]
        assert [c["id"] for c in grid(driver)] != [c["id"] for c in cards]
        assert driver.switch_to.active_element.get_attribute("data-id") == str(grid(driver)[0]["id"])

        # upload an image file: it is its own nearest neighbour
        driver.find_element(By.ID, "file").send_keys(str(collection["paths"][7]))
        wait(driver, lambda d: grid(d) and grid(d)[0]["id"] == 7, "item 7 first after the upload")
        assert "image img07.png" in driver.find_element(By.ID, "status").text
        assert driver.find_element(By.ID, "query-image").is_displayed()

        # drop an image file on the page
        data = base64.b64encode(collection["paths"][9].read_bytes()).decode()
        driver.execute_script(
            """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.getElementById('results').dispatchEvent(
                new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
            data,
        )
        wait(driver, lambda d: "image dropped.png" in d.find_element(By.ID, "status").text, "the dropped image")
        assert grid(driver)[0]["id"] == 9

        # the index switcher re-runs the last search on the other index
        Select(driver.find_element(By.ID, "index")).select_by_value("again")
        wait(driver, lambda d: " in again" in d.find_element(By.ID, "status").text, "results from 'again'")
        wait(driver, thumbnails_loaded, "the other index's thumbnails")
        assert all(c["img"].endswith("index=again") for c in grid(driver))

        # the API's error message, shown as it is
        box = driver.find_element(By.ID, "q")
        box.clear()
        box.send_keys("id:9999", Keys.ENTER)
        error = wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"),
                     "the error message")
        assert "has no item 9999" in error.text and error.get_attribute("role") == "alert"
        assert csp_violations(driver) == []


def test_page_asks_for_the_token_and_sends_it(browser, collection):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    app = create_app({"photos": collection["index"]}, ServiceConfig(token=TOKEN))
    with serving(app) as base:
        driver.get(base + "/?q=photo+number+2")
        wait(driver, lambda d: d.find_element(By.ID, "token-box").is_displayed(), "the token field")
        assert "needs a bearer token" in driver.find_element(By.ID, "error").text
        field = driver.find_element(By.ID, "token")
        field.send_keys("wrong-token-value", Keys.ENTER)
        wait(driver, lambda d: "wrong token" in d.find_element(By.ID, "error").text, "the wrong token refused")
        field.clear()
        field.send_keys(TOKEN, Keys.ENTER)
        wait(driver, lambda d: not d.find_element(By.ID, "token-box").is_displayed(), "the token accepted")
        wait(driver, lambda d: len(grid(d)) > 0, "the URL's query run with the token")
        assert driver.find_element(By.ID, "q").get_attribute("value") == "photo number 2"
        expected = api_search(base, "photo number 2", 24, token=TOKEN)["results"]
        assert [c["id"] for c in grid(driver)] == [r["id"] for r in expected]
        wait(driver, thumbnails_loaded, "thumbnails fetched with the token")
        assert all(c["img"].startswith("blob:") for c in grid(driver))
        assert driver.execute_script("return sessionStorage.getItem('clipforge.token')") == TOKEN
        assert csp_violations(driver) == []
