"""A scripted rater for a `gsae inspect study`: a demonstration of the study's mechanics, not a
judgement of interpretability.

    .venv/bin/python sweeps/scripted_rater.py outputs/study/<hash>/rater/rate.html ratings.json

It opens the rating page in headless Chromium (Debian's `chromium`, driven by Playwright), and
for each item reads the tokens at which the dashboard's top activations fire. Its rule: if one
token string accounts for at least half of them, "yes"; at least a quarter, "maybe"; else "no"
(a token-identity detector is the crudest kind of explanation). It types that as the
explanation, answers, and finally downloads the ratings file as a rater would.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

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

TOP_TOKENS = """() => {
  const out = [];
  for (const node of document.querySelector('.dashboard .cols3 > div').children) {
    if (node.tagName === 'H3' && out.length) break;  // the next heading ends the top examples
    const here = node.querySelector && node.querySelector('.tok.here');
    if (here) out.push(here.textContent.trim().toLowerCase());
  }
  return out;
}"""


def rule(tokens: list[str]) -> tuple[str, str]:
    if not tokens:
        return "no", "no examples"
    token, n = Counter(tokens).most_common(1)[0]
    share = n / len(tokens)
    label = "yes" if share >= 0.5 else "maybe" if share >= 0.25 else "no"
    return label, f"fires on {token!r} in {n} of {len(tokens)} top examples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path, help="the study's rater/rate.html")
    ap.add_argument("out", type=Path, help="where to save the downloaded ratings file")
    ap.add_argument("--rater", default="scripted-rater")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(accept_downloads=True)
        page.goto(args.page.resolve().as_uri())
        page.wait_for_selector("#rating button")
        n = int(page.inner_text("#item-title").split(" of ")[1])
        page.fill("#rater", args.rater)
        page.press("#rater", "Tab")
        counts: Counter = Counter()
        for k in range(1, n + 1):
            page.wait_for_function(f"document.querySelector('#item-title').textContent === 'Item {k} of {n}'")
            label, why = rule(page.evaluate(TOP_TOKENS))
            counts[label] += 1
            page.fill("#explanation", why)
            page.click(f"#rating button[data-label='{label}']")
        with page.expect_download() as dl:
            page.click("#download")
        dl.value.save_as(args.out)
        browser.close()
    print(f"{n} items rated ({dict(counts)}); ratings saved to {args.out}")


if __name__ == "__main__":
    main()
