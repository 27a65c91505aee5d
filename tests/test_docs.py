"""The front door cannot rot: every relative link and image in README.md and the documentation
resolves (files, folders, and #anchors to headings), the README's quick start names exactly two
commands whose files exist and whose test command is the one CI runs, and the results-at-a-glance
table is the one the published models' manifests give."""
import pathlib
import re
import shlex
import unicodedata

REPO = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\]]|\][^(])*?\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*?(?:src|href)=["']([^"']+)["']""")


def markdown_files(root=REPO):
    """README.md, docs/**/*.md and the other folders' READMEs (not logs/, data copies or caches)."""
    files = [root / "README.md"] + sorted((root / "docs").rglob("*.md"))
    files += sorted(p for p in root.glob("*/README.md") if p.parent.name not in ("docs", "logs"))
    return [p for p in files if p.is_file()]


def _outside_code(text):
    """The text with fenced code blocks and inline code spans blanked (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to -."""
    text = re.sub(r"`", "", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path):
    """Every heading's anchor in a markdown file (a repeated heading gets -1, -2, ...)."""
    seen, out = {}, set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def broken_links(path, root=REPO):
    """['file: target (why)'] for every relative link or image of ``path`` that does not resolve."""
    text = _outside_code(path.read_text())
    bad = []
    for target in LINK.findall(text) + HTML_SRC.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}: {target}"
        if not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where} (no heading with that anchor in {dest.name})")
    return bad


def test_every_relative_link_and_image_resolves():
    files = markdown_files()
    assert REPO / "README.md" in files and REPO / "docs" / "README.md" in files
    bad = [b for f in files for b in broken_links(f)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_finds_what_is_broken(tmp_path):
    """The check itself: a hand-made page with one good and three broken links."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Section `two`, here\n")
    (tmp_path / "fig.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text("# Top\n\n[ok](docs/page.md#section-two-here) ![fig](fig.png) [self](#top)\n"
                      "[gone](docs/missing.md) ![gone](docs/fig.png) [anchor](docs/page.md#nowhere)\n"
                      "```\n[in code](not/checked.md)\n```\n`[inline](not/checked.md)` "
                      "[web](https://example.org/x.md)\n")
    bad = broken_links(readme, root=tmp_path)
    assert len(bad) == 3, bad
    assert any("docs/missing.md (no such file)" in b for b in bad)
    assert any("docs/fig.png (no such file)" in b for b in bad)
    assert any("#nowhere (no heading" in b for b in bad)


def test_slug_follows_github():
    assert slug("Sinusoid regression, full length (70,000 meta-iterations)") == \
        "sinusoid-regression-full-length-70000-meta-iterations"
    assert slug("The sinusoid K=5 curve, settled with the original") == \
        "the-sinusoid-k5-curve-settled-with-the-original"
    assert slug("`main.py` beside the step") == "mainpy-beside-the-step"


def _quick_start_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_names_two_commands_that_exist():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    run, tests = commands
    words = shlex.split(run)
    assert words[0] == "bash" and (REPO / words[1]).is_file(), run
    # The test command is what CI runs, and the extra it installs exists.
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci, f".ci/run does not run the README's test command: {tests}"
    extra = re.search(r"\.\[(\w+)\]", tests).group(1)
    assert re.search(rf"^{extra}\s*=", (REPO / "pyproject.toml").read_text(), re.M), extra
    # Every script the quick-start script runs is in the repository.
    for script in re.findall(r"python3? (\S+\.py)", (REPO / words[1]).read_text()):
        assert (REPO / script).is_file(), script


def test_readme_holds_the_results_table_the_manifests_give():
    from maml_tf.paper import glance
    table = glance.block_in((REPO / "README.md").read_text())
    assert table is not None, "README.md has no results-at-a-glance block"
    assert table == glance.markdown(glance.rows()), (
        "README's results at a glance are stale: python -m maml_tf.paper.figures --glance --out docs "
        "--readme README.md")


def test_main_help_names_the_docs():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "main.py"), "--help"], cwd=str(REPO),
                       capture_output=True, text=True, timeout=300)
    # absl's --help prints main.py's docstring and exits 1, as it did for the original
    assert r.returncode in (0, 1) and "Usage Instructions" in r.stdout, r.stderr[-2000:]
    assert "docs/README.md" in r.stdout, r.stdout[:2000]


def test_readme_is_short():
    """The README is the front door (at most about 250 lines); the rest lives in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
