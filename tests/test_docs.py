"""The documentation's relative links resolve (README, CHANGELOG, docs/)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_docs_resolves():
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_committed_docs_carry_no_machine_paths():
    """Reports and evidence name files relative to the repository or the report, never by a
    path of the machine that made them."""
    machine = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/")
    found = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*"))]
        if p.is_file() and p.suffix in (".md", ".csv", ".json")
        for m in [machine.search(p.read_text(errors="replace"))]
        if m
    ]
    assert not found, "machine paths:\n" + "\n".join(found)
