"""The front page's and docs' promises: the set-up lines, the own-training-loop example runs as written,
every link and repository path they name exists, every generated block is current, no stale wording."""
import re
import subprocess
import unicodedata

import pytest

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PAGE_IDS = [str(page.relative_to(REPO_ROOT)) for page in PAGES]
FRONT_PAGE_LINES = 200
STALE = ("in progress", "so far", "still training", "waits for", "yet to", "to be committed")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.S)


def python_block_after(text, heading):
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def github_anchor(heading):
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_code_blocks(page):
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


def anchors(page):
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", outside_code_blocks(page), re.M)}


def relative_links(page):
    """(target path, fragment) of every link that is not a web address."""
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        yield (page.parent / path).resolve() if path else page, fragment


def tracked_top_level():
    names = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    return {name.split("/")[0] for name in names}


def named_paths(text, top_level):
    """Words of the page's code spans and blocks that name a path in the repository: they start with one of
    its tracked top-level entries; placeholders (<F>, *, DIR) are not paths."""
    for block, span in CODE.findall(text):
        for word in re.split(r"[\s=,;()'\"]+", block or span):
            word = word.rstrip(".:")
            if word.split("/")[0] in top_level and not re.search(r"[<>*{}$]", word):
                yield word


def ignored(paths):
    """The paths git would ignore: outputs a run writes (checkpoints/, runs/, data/), not repository files."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO_ROOT, input="\n".join(paths),
                            capture_output=True, text=True)
    return set(result.stdout.split())


def test_first_lines_give_install_main_job_and_tests():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 3
    assert "pip install -r requirements.txt" in first_block[0]
    assert "MetaSAug_CE_train.py" in first_block[1]
    assert first_block[2].startswith("python -m pytest -q tests")
    assert "python -m pytest -q tests" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_front_page_is_short_with_the_grid_and_figure_on_its_first_screen():
    lines = README.splitlines()
    assert len(lines) <= FRONT_PAGE_LINES
    first_screen = "\n".join(lines[:60])
    assert "--format grid" in first_screen and "![" in first_screen


def test_own_training_loop_example_runs(capsys):
    namespace = {}
    usage = (REPO_ROOT / "docs" / "usage.md").read_text()
    exec(compile(python_block_after(usage, "## Use MetaSAug in your own training loop"), "usage.md", "exec"),
         namespace)
    assert namespace["meta"].learned_covariance.shape == (5, 64, 64)
    assert "learned covariance (5, 64, 64)" in capsys.readouterr().out


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_and_anchor_exists(page):
    for target, fragment in relative_links(page):
        assert target.exists(), f"{page.name} links to {target}, which does not exist"
        if fragment and target.suffix == ".md":
            assert fragment in anchors(target), f"{page.name} links to #{fragment}, no heading of {target.name}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_repository_path_named_exists(page):
    paths = set(named_paths(page.read_text(), tracked_top_level()))
    missing = sorted(p for p in paths - ignored(paths) if not (REPO_ROOT / p).exists())
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_the_path_check_sees_paths_in_spans_and_blocks_and_leaves_outputs_alone():
    text = ("Run `python tools/report.py results/nowhere --all`, then\n```bash\nbash scripts/missing.sh\n```\n"
            "and `checkpoints/quick_ckpt.pth.tar`, `results/.../<F>/x`, `tools/report.py`.")
    paths = set(named_paths(text, tracked_top_level()))
    assert paths == {"tools/report.py", "results/nowhere", "scripts/missing.sh", "checkpoints/quick_ckpt.pth.tar"}
    assert ignored(paths) == {"checkpoints/quick_ckpt.pth.tar"}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_stale_wording(page):
    text = page.read_text().lower()
    assert not [word for word in STALE if word in text], f"{page.name}: a page says what is committed"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_section_is_there_twice(page):
    """A splice that pastes a page into itself leaves every heading twice (generated #### tables repeat)."""
    headings = re.findall(r"^#{1,3} (.+)$", outside_code_blocks(page), re.M)
    twice = sorted({heading for heading in headings if headings.count(heading) > 1})
    assert not twice, f"{page.name}: headings twice: {twice}"


def test_every_report_block_is_the_report_of_the_committed_results(monkeypatch):
    from tools import readme_reports
    monkeypatch.chdir(REPO_ROOT)
    assert readme_reports.BLOCK.findall(README), "the front page's grid comes from a tools/report.py block"
    for page in PAGES:
        text = page.read_text()
        assert readme_reports.regenerate(text) == text, f"{page.name}: run python tools/readme_reports.py"


def test_an_empty_report_block_is_filled_without_swallowing_what_follows(monkeypatch, tmp_path):
    from tools import readme_reports
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    opening = "<!-- python tools/report.py results --table table1; tests/test_readme.py keeps it current -->\n"
    text = f"{opening}<!-- end of report -->\n\n## Next section\n\n{opening}old table\n<!-- end of report -->\n"
    report = readme_reports.regenerate(text).split("## Next section")
    assert len(report) == 2 and "old table" not in report[1]
    assert report[0].count("No run belongs to the tables asked for") == report[1].count("No run belongs") == 1
    assert readme_reports.regenerate(readme_reports.regenerate(text)) == readme_reports.regenerate(text)


def test_github_anchors():
    assert github_anchor("Baselines and ablations: `--method`") == "baselines-and-ablations---method"
    assert github_anchor("Figure 2: the rarest class's covariance spectrum") == \
        "figure-2-the-rarest-classs-covariance-spectrum"
