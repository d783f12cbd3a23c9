"""The README's promises: its own-training-loop example runs as written, its commands exist."""
import re

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def python_block_after(heading):
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_training_loop_example_runs(capsys):
    namespace = {}
    exec(compile(python_block_after("## Use MetaSAug in your own training loop"), "README", "exec"), namespace)
    assert namespace["meta"].learned_covariance.shape == (5, 64, 64)
    assert "learned covariance (5, 64, 64)" in capsys.readouterr().out


def test_first_lines_give_install_main_job_and_tests():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 3
    assert "pip install -r requirements.txt" in first_block[0]
    assert "MetaSAug_CE_train.py" in first_block[1]
    assert first_block[2].startswith("python -m pytest -q tests")
    assert "python -m pytest -q tests" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_report_table_is_the_report_of_the_committed_results(monkeypatch):
    from tools import readme_reports
    assert readme_reports.BLOCK.findall(README), "the README's results come from tools/report.py blocks"
    monkeypatch.chdir(REPO_ROOT)
    assert readme_reports.regenerate(README) == README, "regenerate them: python tools/readme_reports.py"


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
