"""The documentation site builds with no broken link or missing page (``mkdocs build --strict``), the README stays
a front door (at most 250 lines) and every docs page is in the site's navigation, and no document sends a reader
to a path outside the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    exe = shutil.which("mkdocs") or shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' (scripts/setup.sh does)")
    run = subprocess.run(
        [exe, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "site" / "method" / "index.html").is_file()


def test_the_readme_is_a_front_door_and_every_page_is_reachable():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {next(iter(entry.values())) for entry in nav}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == listed, f"pages not in mkdocs.yml's nav: {pages - listed}; missing pages: {listed - pages}"
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert pages <= linked, f"pages the README's map does not link: {pages - linked}"


def test_no_document_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|/work/|\.\./\.\.")
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "configs").rglob("*.yaml")]
    texts += [*(ROOT / "scripts").glob("*"), *(ROOT / "loragen").rglob("*.py")]
    found = [
        f"{p.relative_to(ROOT)}: {m.group(0)}" for p in texts if p.is_file() for m in outside.finditer(p.read_text())
    ]
    assert not found, found
