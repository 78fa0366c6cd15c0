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


def _readme_commands() -> list[str]:
    """The commands the README shows: its indented code lines, comments stripped."""
    lines = (REPO / "README.md").read_text().splitlines()
    return [ln.split("  #")[0].strip() for ln in lines if ln.startswith("    ") and ln.strip()[:1] in "./g"]


def test_every_readme_command_is_run_by_ci_or_composes():
    """Set-up and test commands are the ones .ci/run runs; every `gsae` example composes a valid
    config (each member of a -m sweep), so a renamed key or group cannot linger in the README."""
    from gsae_cli.config import compose_config
    from gsae_cli.sweep import expand_sweep

    ci = (REPO / ".ci" / "run").read_text()
    commands = _readme_commands()
    assert "./setup.sh" in commands and ".venv/bin/python -m pytest -q -n 2" in commands
    gsae = [c.split() for c in commands if c.split()[0] in ("gsae", ".venv/bin/gsae")]
    assert len(gsae) >= 5, commands
    for c in commands:
        if c.split()[0] not in ("gsae", ".venv/bin/gsae"):
            base = c.replace(' -m "not slow"', "")  # the fast subset is the CI command with a marker
            assert base in ci, f"README command not run by .ci/run: {c}"
    for words in gsae:
        stage, args = words[1], [w for w in words[2:] if w != "-m"]
        assert stage in ("harvest", "train", "eval", "report", "ls", "inspect", "export"), words
        for member in expand_sweep(args) if "-m" in words else [args]:
            compose_config(member)  # raises ConfigError on an unknown key, group option or value
