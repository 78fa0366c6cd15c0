"""The inspect pages in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright's Python client, which uses that browser and downloads none. The pages are opened
from disk (file://), as a researcher on an offline machine would.

Checks: the pages render without console errors; the index sorts, searches and pages; a feature
page and a comparison pair show dashboards; a scripted rater rates every item of a blinded
study, downloads the ratings, and `gsae report --ratings` unblinds them to the statistics the
script implies. Screenshots go to tests/inspect/screenshots/ (not committed) for a human to look at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import gsae, tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the README's set-up installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on this machine: install Debian's `chromium` package "
        "(apt-get install chromium) to run the browser tests",
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="the playwright Python client is not installed (pip install -e '.[test]')"
    ),
]

# Flags for a headless browser on a machine without network or display.
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parent / "screenshots"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "outputs"
    small = ["inspect.top_k=6", "inspect.shard_features=16", "inspect.page_size=50"]
    gated = gsae("inspect", *tiny(out), *small, check=True).stdout.strip().splitlines()[-1]
    relu_sae = gsae("train", *tiny(out, "sae=relu"), check=True).stdout.strip().splitlines()[-1]
    compare = (
        gsae("inspect", "compare", *tiny(out), *small, f"inspect.against={relu_sae}", check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    study = (
        gsae(
            "inspect",
            "study",
            *tiny(out),
            *small,
            f"inspect.against={relu_sae}",
            "inspect.study_features=6",
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {"out": out, "browser": Path(gated), "compare": Path(compare), "study": Path(study)}


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    # Nothing may leave the machine: every request must be a file:// or blob: URL.
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.requests = requests
    yield pg
    assert all(u.startswith(("file://", "blob:", "data:")) for u in requests), requests
    assert errors == [], errors
    ctx.close()


def _ids(page) -> list[int]:
    return [
        int(x) for x in page.eval_on_selector_all("#features tr[data-feature]", "rs => rs.map(r => r.dataset.feature)")
    ]


def test_index_sorts_searches_and_pages(built, page):
    page.goto(built["browser"].as_uri())
    page.wait_for_selector("#features tr[data-feature]")
    index = json.loads((built["browser"].parent / "data" / "index.js").read_text()[len("GSAE.load(") : -3])
    freq = index["freq"]
    ids = _ids(page)
    assert len(ids) == 50  # page_size
    assert [freq[i] for i in ids] == sorted((freq[i] for i in ids), reverse=True)
    assert page.inner_text("#pageinfo").startswith("page 1 of 6")  # 256 features / 50
    page.screenshot(path=str(SHOTS / "index.png"))
    page.click("#next")
    page.wait_for_function("document.querySelector('#pageinfo').textContent.startsWith('page 2')")
    assert set(_ids(page)).isdisjoint(ids)
    page.select_option("#sort", "id")
    page.wait_for_function("(document.body.dataset.rendered || '').includes('sort=id')")
    page.click("#dir")
    page.wait_for_function("(document.body.dataset.rendered || '').includes('dir=asc')")
    assert _ids(page)[:3] == [0, 1, 2]
    page.fill("#search", "17")
    page.press("#search", "Enter")
    page.wait_for_function("(document.body.dataset.rendered || '').includes('q=17')")
    got = _ids(page)
    want = {
        i for i in range(len(freq)) if i == 17 or "17" in index["label"][i].lower() or "17" in index["up"][i].lower()
    }
    assert 17 in got and set(got) == want  # the id, or a match in its top token or promoted token


def test_feature_page_shows_a_dashboard(built, page):
    page.goto(built["browser"].as_uri() + "#f=20")
    page.wait_for_selector("#dashboard .dashboard")
    assert page.inner_text("#feature-title") == "Feature #20"
    assert page.locator("#dashboard .ex").count() >= 1
    assert page.locator("#dashboard table.logits tr").count() == 2 * 11  # header + 10 promoted, same suppressed
    page.screenshot(path=str(SHOTS / "feature.png"), full_page=True)
    page.goto(built["browser"].as_uri() + "#f=31")
    page.wait_for_selector("#dashboard .dashboard")
    page.click("#nextf")  # feature 32 lives in the next shard (shard_features=16): loaded on demand
    page.wait_for_function("document.querySelector('#feature-title').textContent === 'Feature #32'")
    page.wait_for_selector("#dashboard .dashboard")
    page.goto(built["browser"].as_uri() + "#f=40")
    page.wait_for_selector("#dashboard .dashboard")
    neighbour = page.locator("#dashboard a[href^='#f=']").first
    target = neighbour.get_attribute("href")
    neighbour.click()
    page.wait_for_function(f"document.body.dataset.rendered === '{target}'")
    page.wait_for_selector("#dashboard .dashboard")


def test_comparison_pairs_side_by_side(built, page):
    page.goto(built["compare"].as_uri())
    page.wait_for_selector("#pairs tr a")
    cos = page.eval_on_selector_all("#pairs tr td.num", "tds => tds.map(t => parseFloat(t.textContent))")
    assert cos == sorted(cos, reverse=True)
    page.screenshot(path=str(SHOTS / "compare.png"))
    page.locator("#pairs tr a").first.click()
    page.wait_for_selector("#side-a .dashboard")
    page.wait_for_selector("#side-b .dashboard")
    page.screenshot(path=str(SHOTS / "compare-pair.png"), full_page=True)


def test_scripted_rater_and_unblinded_statistics(built, page, tmp_path):
    study_dir = built["study"].parent.parent
    key = json.loads((study_dir / "key.json").read_text())
    items = json.loads((built["study"].parent / "data" / "items.js").read_text()[len("GSAE.load(") : -3])
    # blinded: no SAE names, no feature ids, no neighbours' ids reach the rater's folder
    assert all(set(it) == {"n", "dash"} and "i" not in it["dash"] and "nb" not in it["dash"] for it in items["items"])
    assert not (built["study"].parent / "key.json").exists()
    assert "relu" not in json.dumps(items) and "gated" not in json.dumps(items)
    n = len(key["items"])
    page.goto(built["study"].as_uri())
    page.wait_for_selector("#rating button")
    page.fill("#rater", "script")
    page.press("#rater", "Tab")
    # The rule: odd-numbered items Yes, items divisible by 4 No, the rest Maybe.
    rule = lambda k: "yes" if k % 2 else ("no" if k % 4 == 0 else "maybe")  # noqa: E731
    for k in range(1, n + 1):
        page.wait_for_function(f"document.querySelector('#item-title').textContent === 'Item {k} of {n}'")
        assert page.locator(".dashboard").count() == 1
        if k == 2:
            page.screenshot(path=str(SHOTS / "rate.png"), full_page=True)
        page.click(f"#rating button[data-label='{rule(k)}']")
    with page.expect_download() as dl:
        page.click("#download")
    ratings = tmp_path / "ratings.json"
    dl.value.save_as(ratings)
    got = json.loads(ratings.read_text())
    assert got["study"] == key["study"] and got["rater"] == "script" and len(got["ratings"]) == n

    proc = gsae("report", f"out_dir={built['out']}", "--ratings", str(ratings), "--report-dir", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "rep" / "study.json").read_text())
    assert len(rows) == 1
    score = {"no": 0, "maybe": 1, "yes": 2}
    a = {it["pair"]: score[rule(it["item"])] for it in key["items"] if it["sae"] == "a"}
    b = {it["pair"]: score[rule(it["item"])] for it in key["items"] if it["sae"] == "b"}
    diffs = [a[k] - b[k] for k in sorted(a)]
    assert rows[0]["n_pairs"] == len(diffs) == n // 2
    assert rows[0]["mean_difference"] == pytest.approx(sum(diffs) / len(diffs))
    assert rows[0]["mean_a"] == pytest.approx(sum(a.values()) / len(a))

    # An edited file is refused with one paragraph, exit 2
    got["ratings"][0]["label"] = "yes" if got["ratings"][0]["label"] != "yes" else "no"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(got))
    proc = gsae("report", f"out_dir={built['out']}", "--ratings", str(edited), "--report-dir", str(tmp_path / "rep2"))
    assert proc.returncode == 2 and "changed after it was downloaded" in proc.stderr
    assert "Traceback" not in proc.stderr
