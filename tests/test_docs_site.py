"""The manual as a site: `mkdocs build --strict` (a broken link, a page left out of the nav or a
docstring mkdocstrings cannot render fails it), then the built site served on a loopback port and
every internal link of every page followed in Debian's Chromium (Playwright): each must answer
200, and each `#anchor` must name an element of the page it points at.

The build is a module fixture, so the crawl reuses it on the same worker; both carry the browser
tests' xdist group. Without Chromium the crawl skips, except where STATEKIT_REQUIRE_BROWSER is set (CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest
from tools import chromium

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", ROOT / "mkdocs.yml", "--site-dir", out],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


@pytest.mark.slow  # mkdocs build --strict of the whole manual
def test_the_manual_builds_with_strict_and_holds_every_page(site):
    for md in (ROOT / "docs").rglob("*.md"):
        page = md.relative_to(ROOT / "docs").with_suffix("")
        built = site / ("index.html" if page.name == "index" else page / "index.html")
        assert built.is_file(), f"docs/{md.relative_to(ROOT / 'docs')} was not built"
    store = (site / "api" / "store" / "index.html").read_text()
    assert "SessionStore" in store and "append_turn" in store and "round trip" in store, "the docstrings are missing"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: ANN002 - the test reports what failed, not every request
        pass


@pytest.fixture
def served(site):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


#: The page's element ids (and named anchors), and every URL it links to or loads, in one round trip.
FIND = """() => ({
  ids: [...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.name),
  targets: [...document.querySelectorAll("a[href], img[src], link[rel=stylesheet][href], script[src]")]
    .map(e => e.href || e.src),
})"""


def _is_page(url: str) -> bool:
    return url.endswith("/") or url.endswith(".html")


@pytest.mark.browser
def test_every_internal_link_of_the_manual_resolves_in_chromium(served, capsys):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    base = served
    status: dict[str, int] = {}
    ids: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []  # (the page it is on, where it points)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()
        page.route(lambda url: not url.startswith(base), lambda route: route.abort())  # this manual only
        queue = [base]
        while queue:
            url = queue.pop()
            if url in status:
                continue
            if not _is_page(url):  # an image, objects.inv, sitemap.xml: fetched, not rendered
                status[url] = page.request.get(url).status
                continue
            response = page.goto(url, wait_until="domcontentloaded")
            status[url] = response.status if response else 0
            if status[url] != 200:
                continue
            found = page.evaluate(FIND)
            ids[url] = set(found["ids"])
            targets = found["targets"]
            for target in targets:
                if not target.startswith(base):
                    continue  # another site: not this manual's to check
                links.append((url, target))
                queue.append(urldefrag(target).url)
        browser.close()

    broken = [
        f"{page_url} -> {target} ({status[urldefrag(target).url]})"
        for page_url, target in links
        if status[urldefrag(target).url] != 200
    ]
    missing = []
    for page_url, target in links:
        where, anchor = urldefrag(target)
        if anchor and _is_page(where) and unquote(anchor) not in ids.get(where, set()):
            missing.append(f"{page_url} -> {target}: no element #{anchor}")
    pages = len(ids)
    with capsys.disabled():
        print(f"\nthe manual in Chromium: {pages} pages, {len(links)} internal links, {len(status)} URLs fetched")
    assert pages >= len(list((ROOT / "docs").rglob("*.md"))), f"only {pages} pages reached from the home page"
    assert not broken, "broken links:\n" + "\n".join(broken[:50])
    assert not missing, "anchors that name no element:\n" + "\n".join(missing[:50])
