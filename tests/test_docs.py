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
    outside = re.compile(r"\.\./shared|\.\./\.\.")  # a folder beside or above the repository
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "configs").rglob("*.yaml")]
    texts += [*(ROOT / "scripts").glob("*"), *(ROOT / "loragen").rglob("*.py")]
    found = [
        f"{p.relative_to(ROOT)}: {m.group(0)}" for p in texts if p.is_file() for m in outside.finditer(p.read_text())
    ]
    assert not found, found


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every ``loragen ...`` command of a fenced bash block in README and docs and of the scripts: (where, argv
    after ``loragen``), continuation lines joined, comments, ``VAR=value`` prefixes and redirections dropped."""
    import shlex

    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].split("|")[-1].strip()
                words = shlex.split(line, comments=True) if line else []
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                redirect = [i for i, w in enumerate(words) if re.fullmatch(r"\d?[<>]+", w)]
                words = words[: redirect[0]] if redirect else words
                if words[:1] == ["loragen"]:
                    found.append((f"{path.relative_to(ROOT)}: {line[:80]}", words[1:]))
    for path in sorted((ROOT / "scripts").glob("*.sh")):  # what the scripts run, their variables as placeholders
        for line in path.read_text().replace("\\\n", " ").splitlines():
            line = re.sub(r'"\$\{\w+\[@\]\}"|"\$@"', "", line.split(" #", 1)[0]).strip()
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: m.group(1).upper(), line)
            if line.startswith("loragen "):
                found.append((f"{path.relative_to(ROOT)}: {line[:80]}", shlex.split(line)[1:]))
    return found


def test_every_shown_command_names_a_subcommand_its_options_and_existing_files(capsys):
    """What a reader copies is a command loragen knows: a declared subcommand and config files that exist; when its
    files exist, it parses (``--print_config``: every option is one of the subcommand's, every value has its type).
    A LightningCLI command with a placeholder (``DATA``) is left at the first two checks."""
    import importlib

    from loragen.cli import COMMANDS, LIGHTNING, run

    names = {c.name: c for c in COMMANDS}
    shown = _shown_commands()
    assert len(shown) > 20
    parsed = set()
    for where, argv in shown:
        assert argv and argv[0] in names, f"{where}: unknown subcommand"
        configs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--config"]
        for config in configs:
            if config.startswith("configs/"):
                assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
        if not all((ROOT / c).is_file() for c in configs):
            continue
        command = names[argv[0]]
        if command.entry == LIGHTNING:
            if [w for w in argv if re.fullmatch(r"[A-Z]+", w)]:
                continue
            main = run
            args = [*argv, "--print_config"]
        else:
            module, function = command.entry.split(":")
            main = getattr(importlib.import_module(module), function)
            args = [*(argv if command.with_name else argv[1:]), "--print_config"]
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code in (0, None), f"{where}: does not parse: {capsys.readouterr().err[-500:]}"
        parsed.add(argv[0])
    capsys.readouterr()
    assert {"fit", "test", "generate", "serve", "sweep", "compare", "release"} <= parsed, sorted(parsed)
