"""The search page at ``/`` in a real headless browser, and the thumbnail route behind it.

Browser tests drive Debian's chromium (``apt-get install chromium chromium-driver``)
through Selenium with the system chromedriver: no browser is downloaded. They are
skipped, with the reason, only when chromium or its driver is not installed.
The expected results come from the library itself: the first hit the page shows for
a text query is the first hit ``Retriever.search_text`` returns for the same bundle,
variant and index; an uploaded image finds itself first (cosine 1).

The thumbnail route is also tested without a browser, mounted in a bare Starlette app
over a real index, for what it must refuse: unknown keys, anything path-like, sizes
out of range, items without a file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers.serve_server import running_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "images"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
VARIANT = "cpu-fp32"
QUERY = "a red stop sign with the word STOP"
API_KEY = "page-test-key-0123456789"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photo_index(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example images and their captions, indexed with the tiny bundle (by the CLI, as a user would)."""
    out = tmp_path_factory.mktemp("page-index") / "photos.idx"
    images = out.parent / "images"
    shutil.copytree(EXAMPLES, images)
    cmd = [sys.executable, "-m", "crossmodal.cli", "index", "build", str(tiny_clip_bundle), "--out", str(out),
           "--images", str(images), "--captions", str(images / "captions.jsonl"), "--variant", VARIANT,
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def server(tiny_clip_bundle: Path, photo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(tiny_clip_bundle, "--index", str(photo_index), "--variant", VARIANT,
                        log_dir=tmp_path_factory.mktemp("page-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def expected(tiny_clip_bundle: Path, photo_index: Path) -> dict[str, Any]:
    """What the library answers for the page's queries (the reference the page must show)."""
    import crossmodal
    from crossmodal.index import Index
    from crossmodal.retriever import Retriever

    with Index.open(photo_index, read_only=True) as idx:
        r = Retriever(crossmodal.load(tiny_clip_bundle, variant=VARIANT), idx)
        text_hits = r.search_text(QUERY, k=12)
        image_hits = r.search_image(str(EXAMPLES / "red_circle.png"), k=12)
        return {"text": text_hits, "image": image_hits, "items": len(list(idx.items(tower="image")))}


def _driver(tmp_path: Path) -> Any:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        missing = "chromium is not installed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CROSSMODAL_REQUIRE_BROWSER"):  # CI installs it: a missing browser there is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, read by the test
    # An explicit driver path: Selenium Manager then never tries to download one.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log")),
                            options=opts)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = _driver(tmp_path)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, timeout: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _results(driver: Any) -> list[dict[str, str]]:
    """The cards on the page: key, caption, score text, and whether the thumbnail has loaded."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results .hit')).map((c) => {
          const img = c.querySelector('img');
          return {key: c.dataset.key, caption: c.querySelector('.hit-caption').textContent,
                  score: c.querySelector('.hit-score').textContent,
                  thumb: img ? img.naturalWidth + 'x' + img.naturalHeight : ''};
        });""")


def _all_thumbs_loaded(driver: Any) -> Any:
    rows = _results(driver)
    return rows if rows and all(r["thumb"] and not r["thumb"].startswith("0x") for r in rows) else False


def _search_text(driver: Any, text: str) -> list[dict[str, str]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    _wait(driver, lambda d: "results for" in d.find_element(By.ID, "status").text)
    return _wait(driver, _all_thumbs_loaded)


# ----------------------------------------------------------------------------- browser


def test_page_text_query_shows_the_librarys_first_hit_and_an_image_query_finds_itself(
        server: Any, browser: Any, expected: dict[str, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title == "crossmodal search"
    # The header names the served model and the index it searches.
    _wait(browser, lambda d: "images" in d.find_element(By.ID, "model").text)
    assert f"{expected['items']} images" in browser.find_element(By.ID, "model").text

    rows = _search_text(browser, QUERY)
    first = expected["text"][0]
    assert len(rows) == len(expected["text"]) == 12
    assert [r["key"] for r in rows] == [str(h.key) for h in expected["text"]]
    assert rows[0]["caption"] == first.caption
    assert rows[0]["score"] == f"#1score {first.score:.3f}"
    browser.save_screenshot(str(tmp_path / "text-query.png"))

    # Image query: upload a file through the file input (multipart POST /v1/search).
    browser.find_element(By.ID, "image").send_keys(str(EXAMPLES / "red_circle.png"))
    _wait(browser, lambda d: "results for red_circle.png" in d.find_element(By.ID, "status").text)
    rows = _wait(browser, _all_thumbs_loaded)
    assert rows[0]["key"] == str(expected["image"][0].key)
    assert rows[0]["caption"] == "a red circle"
    assert rows[0]["score"] == "#1score 1.000"
    assert browser.find_element(By.ID, "query-image").get_attribute("naturalWidth") != "0"
    shot = tmp_path / "image-query.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    browser_errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert browser_errors == []


def test_page_with_an_api_key_asks_for_it_and_sends_it(tiny_clip_bundle: Path, photo_index: Path, browser: Any,
                                                     expected: dict[str, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # A copy: the module's other server holds the index's writer lock.
    shutil.copytree(photo_index, tmp_path / "photos.idx")
    with running_server(tiny_clip_bundle, "--index", str(tmp_path / "photos.idx"), "--variant", VARIANT, "--api-key-env",
                        "PAGE_TEST_KEY", log_dir=tmp_path / "logs", env={"PAGE_TEST_KEY": API_KEY}) as srv:
        browser.get(srv.url + "/")  # the page itself is open: it holds no data
        from selenium.webdriver.common.keys import Keys

        browser.find_element(By.ID, "query").send_keys(QUERY, Keys.ENTER)
        _wait(browser, lambda d: d.find_element(By.ID, "status").text.startswith("401"))
        assert browser.find_element(By.ID, "key-box").get_attribute("open") == "true"
        browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.ENTER)
        assert browser.execute_script("return sessionStorage.getItem('crossmodal.apiKey')") == API_KEY
        rows = _search_text(browser, QUERY)  # thumbnails too are fetched with the key
        assert rows[0]["key"] == str(expected["text"][0].key)
        browser.save_screenshot(str(tmp_path / "with-key.png"))
        # The key never appears in a URL the page requested.
        urls = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert urls and not any(API_KEY in u for u in urls)


# ----------------------------------------------------------------------------- thumbnail route


@pytest.fixture
def thumb_app(tmp_path: Path) -> Any:
    """The thumbnail route over a real index: a photo, a PNG with alpha, a vector-only item, a vanished file."""
    import numpy as np
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from crossmodal.index import Index
    from crossmodal.serve.thumbnails import search_page, thumbnail_route

    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(tmp_path / "wide.jpg", quality=90)
    Image.new("RGBA", (100, 300), (0, 0, 255, 0)).save(tmp_path / "tall.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "gone.jpg")
    (tmp_path / "secret.txt").write_text("not an indexed file")
    idx = Index.create(tmp_path / "t.idx", bundle="thumb-test", dim=4)
    vecs = np.eye(4, dtype=np.float32)
    idx.add(vecs, [{"path": str(tmp_path / "wide.jpg")}, {"path": str(tmp_path / "tall.png")}, {},
                   {"path": str(tmp_path / "gone.jpg")}], keys=[1, 2, 3, 4])
    idx.add(vecs[:1], [{"path": str(tmp_path / "wide.jpg"), "caption": "red"}], keys=[10], tower="text")
    (tmp_path / "gone.jpg").unlink()
    endpoint = thumbnail_route(lambda: idx, cache_items=4)
    app = Starlette(routes=[Route("/", search_page()), Route("/v1/thumbnails/{key}", endpoint)])
    with TestClient(app) as client:
        yield client, endpoint
    idx.close()


def _jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return im.size


def test_thumbnails_are_resized_jpegs_of_indexed_files(thumb_app: Any) -> None:
    client, endpoint = thumb_app
    r = client.get("/v1/thumbnails/1?size=256")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert _jpeg_size(r.content) == (256, 192)  # 1600x1200, longer side 256
    assert _jpeg_size(client.get("/v1/thumbnails/1").content) == (256, 192)  # default size
    assert _jpeg_size(client.get("/v1/thumbnails/2?size=90").content) == (30, 90)
    from PIL import Image

    # Transparent pixels on white, not black.
    with Image.open(io.BytesIO(client.get("/v1/thumbnails/2?size=64").content)) as im:
        assert min(im.convert("RGB").getpixel((10, 10))) > 240
    assert _jpeg_size(client.get("/v1/thumbnails/10?tower=text&size=32").content) == (32, 24)
    hits = endpoint.cache.hits
    assert client.get("/v1/thumbnails/1?size=256").content == r.content
    assert endpoint.cache.hits == hits + 1


@pytest.mark.parametrize("url, status", [
    ("/v1/thumbnails/999", 404),                        # not indexed
    ("/v1/thumbnails/3", 404),                          # indexed without a file
    ("/v1/thumbnails/4", 404),                          # its file vanished
    ("/v1/thumbnails/10", 404),                         # a text-tower key asked in the image tower
    ("/v1/thumbnails/secret.txt", 404),                 # a file name is not a key
    ("/v1/thumbnails/..%2Fsecret.txt", 404),
    ("/v1/thumbnails/%2Fetc%2Fpasswd", 404),
    ("/v1/thumbnails/-1", 404),
    ("/v1/thumbnails/9223372036854775808", 404),        # 2**63: outside the key space
    ("/v1/thumbnails/1?size=8", 400),
    ("/v1/thumbnails/1?size=4096", 400),
    ("/v1/thumbnails/1?size=..%2F1", 400),
    ("/v1/thumbnails/1?tower=..%2F..", 400),
])
def test_thumbnails_refuse_anything_but_an_indexed_key(thumb_app: Any, url: str, status: int) -> None:
    client, _ = thumb_app
    r = client.get(url)
    assert r.status_code == status, r.text
    assert "not an indexed file" not in r.text and not r.headers["content-type"].startswith("image/")
    if "%2F" not in url.split("?")[0]:  # a decoded slash matches no route: the router's own 404
        assert r.json()["error"]["message"]


def test_search_page_is_served_with_a_csp_naming_its_inline_code(thumb_app: Any) -> None:
    import base64
    import hashlib
    import re

    client, _ = thumb_app
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    script = re.search(r"<script>(.*?)</script>", r.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
