"""The results grid (tools/report.py --format grid) and the summary figure drawn from the same cells
(tools/summary_figure.py), on a tiny tree of hand-made result.json files."""
import json

import pytest

from conftest import REPO_ROOT, assert_printable
from figures import PAGE_WIDTH
from tools import report, summary_figure

TEMPLATE = REPO_ROOT / "results" / "cifar10_jpeg" / "imb100" / "ce_seed1" / "result.json"
ROWS = ["CE", "CB-CE", "ISDA w/o meta-learning", "MetaSAug-CE", "MetaSAug w/o re-weighting", "Focal",
        "Class-balanced focal", "MetaSAug-focal", "LDAM", "LDAM-DRW", "MetaSAug-LDAM", "Logit-adjusted CE"]


def write_run(root, method, loss, imbalance, seed, final, **config):
    """A committed-style result.json of a full-schedule CIFAR-10 run (the template's, with these changed)."""
    result = json.loads(TEMPLATE.read_text())
    name = f"{method}_{loss}_imb{imbalance}_seed{seed}"
    result["config"].update(method=method, loss=loss, imb_factor=1 / imbalance, seed=seed, save_name=name, **config)
    result["history"] = [dict(h, test_top1=100 - final) for h in result["history"][-2:]]
    result.update(base_loss=loss, seed=seed, final_top1_error=final, best_top1_error=final,
                  train_index_sha256=f"{imbalance:064d}")
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps(result))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    for seed, final in ((1, 30.0), (2, 34.0)):
        write_run(root, "plain", "ce", 100, seed, final)
    write_run(root, "plain", "ce", 50, 1, 25.0)
    write_run(root, "metasaug", "ce", 100, 1, 20.0)
    write_run(root, "metasaug", "ce", 10, 1, 11.0)
    write_run(root, "plain", "la", 100, 1, 23.0)  # one imbalance only: in the grid, not in the figure
    (root / "data.txt").write_text("tiny test images\n")
    return root


def grid_lines(argv, capsys):
    assert report.main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_grid_has_every_row_and_imbalance_with_ours_beside_the_paper(tree, capsys):
    lines = grid_lines([str(tree), "--format", "grid"], capsys)
    assert lines[0] == "| method | imbalance 200 | imbalance 100 | imbalance 50 | imbalance 20 | imbalance 10 |"
    cells = {line.split(" | ")[0][2:]: line[2:-2].split(" | ")[1:] for line in lines[2:2 + len(ROWS)]}
    assert list(cells) == ROWS
    assert cells["CE"] == ["– · *34.13*", "32.00 ± 2.83 (n=2) · *29.86*", "25.00 (n=1) · *25.06*",
                           "– · *17.56*", "– · *13.82*"]
    assert cells["MetaSAug-CE"][1::3] == ["20.00 (n=1) · *19.46*", "11.00 (n=1) · *10.56*"]
    assert cells["ISDA w/o meta-learning"] == ["– · –", "– · *21.68*", "– · *17.43*", "– · *13.08*", "– · –"]
    assert cells["Logit-adjusted CE"][1] == "23.00 (n=1) · –"  # not in the paper
    legend = lines[-1]
    for words in ("final epoch", "seeds 1, 2", "tiny test images", "released schedule", "the paper's number",
                  "Table 1 and Table 5"):
        assert words in legend, words
    assert lines[2 + len(ROWS)] == "" and len(lines) == 4 + len(ROWS)  # the legend is one line
    only_100 = grid_lines([str(tree), "--format", "grid", "--imbalance", "0.01"], capsys)
    assert only_100[0] == "| method | imbalance 100 |"


def test_grid_keeps_protocols_apart_and_refuses_table_choices(tree, capsys):
    write_run(tree, "plain", "ce", 100, 3, 50.0, epochs=20, meta_start=16, lr_milestones=[16, 18])
    lines = grid_lines([str(tree), "--format", "grid"], capsys)
    tables = [line for line in lines if line.startswith("| CE |")]
    assert sorted(t.split(" | ")[2] for t in tables) == ["32.00 ± 2.83 (n=2) · *29.86*", "50.00 (n=1) · *29.86*"]
    assert sum("epochs 20" in line for line in lines if line.startswith("Top-1 error")) == 1
    assert report.main([str(tree), "--format", "grid", "--table", "table1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "drop --table" in error


def test_rows_of_another_recipe_share_the_grid_and_their_recipe_is_said(tree, capsys):
    """The paper ran its LDAM rows with Cao et al.'s code: runs of --recipe cao2019 (batch 128 there by default)
    are cells of the same grid as the released recipe's, and the legend names their rows and schedule."""
    cao = dict(recipe="cao2019", batch_size=128, weight_decay=2e-4, nesterov=False, subset="cao2019")
    write_run(tree, "plain", "ldam", 100, 1, 27.0, **cao)
    write_run(tree, "drw", "ldam", 100, 1, 23.0, **cao)
    write_run(tree, "drw", "ldam", 50, 1, 20.0, **dict(cao, batch_size=100))  # changed the recipe's batch
    lines = grid_lines([str(tree), "--format", "grid"], capsys)
    legends = [line for line in lines if line.startswith("Top-1 error")]
    assert len(legends) == 2
    main = next(legend for legend in legends if "batch_size" not in legend)
    assert ("released schedule (200 epochs, second phase from 161, lr x0.01 at 160 and 180, batch 100, lam 0.25), "
            "test images 10000; LDAM loss and LDAM-DRW: Cao et al.'s recipe (--recipe cao2019: ") in main
    end = lines.index(main) - 1  # the grid's rows end with a blank line above its legend
    cells = {line.split(" | ")[0][2:]: line[2:-2].split(" | ")[1:] for line in lines[end - len(ROWS):end]}
    assert cells["LDAM"][1] == "27.00 (n=1) · *26.45*" and cells["LDAM-DRW"][1] == "23.00 (n=1) · *21.88*"
    assert cells["CE"][1] == "32.00 ± 2.83 (n=2) · *29.86*"
    other = next(legend for legend in legends if legend is not main)
    assert "Cao et al.'s recipe (--recipe cao2019: " in other and "batch_size 100, test images 10000" in other
    assert "released schedule" not in other  # no run of it there


def test_each_recipe_s_schedule_in_words_is_the_one_it_trains():
    from cifar_flags import RECIPES, parse_args
    for name, recipe in RECIPES.items():
        args = parse_args("t", "", ("ce",), ["--recipe", name])
        first, second = args.lr_milestones
        assert (f"{args.epochs} epochs" in recipe.schedule and f"batch {args.batch_size}" in recipe.schedule
                and f"lr x0.01 at {first} and {second}" in recipe.schedule), name


def test_summary_figure_draws_the_grid_s_cells(tree, tmp_path, capsys):
    paper = json.loads(report.PAPER.read_text())
    (grid,) = report.results_grid(report.load_runs([tree]), paper)
    figure = summary_figure.summary_figure(grid, "tiny test images")
    assert_printable(figure, PAGE_WIDTH)
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:4] == ["CE", "CB-CE", "ISDA w/o meta-learning", "MetaSAug-CE"]  # the core rows, even without runs
    assert "Logit-adjusted CE" not in labels and "tiny test images" in labels[-2]
    axes = figure.axes[0]
    solid = {tuple(line.get_ydata()) for line in axes.lines if line.get_linestyle() == "-"}
    dashed = {tuple(line.get_ydata()) for line in axes.lines if line.get_linestyle() == "--"}
    assert (32.0, 25.0) in solid and (20.0, 11.0) in solid  # ours: CE at 100 and 50, MetaSAug-CE at 100 and 10
    assert (34.13, 29.86, 25.06, 17.56, 13.82) in dashed  # the paper's CE
    assert axes.get_xscale() == "log"
    out = tmp_path / "figure" / "summary"
    assert summary_figure.main([str(tree), "--out", str(out)]) == 0
    assert out.with_suffix(".png").is_file() and out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_summary_figure_refuses_what_it_cannot_draw(tree, tmp_path, capsys):
    write_run(tree, "plain", "ce", 100, 3, 50.0, epochs=20, meta_start=16, lr_milestones=[16, 18])
    for folder in (tree, tmp_path / "absent"):
        assert summary_figure.main([str(folder), "--out", str(tmp_path / "out" / "summary")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and ("2 protocols" in error or "not a folder" in error), error
    assert not (tmp_path / "out").exists()  # nothing written
