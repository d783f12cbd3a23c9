"""Baselines and ablations (--method), the per-run figures and the report."""
import csv
import io
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cifar_flags
import trainer
from conftest import CE, EPOCHS, make_tree, run_together, train_flags
from data_utils import CAO2019_MEAN, CAO2019_STD, build_dataset
from MetaSAug_CE_train import LOSSES
from resnet import NormedLinear
from tools import report

METHODS = ("plain", "cb", "drw", "isda", "metasaug_no_reweight", "metasaug")


@pytest.fixture(scope="module")
def runs(tree4, tmp_path_factory):
    """One tiny CE run per method (epoch 0 is the first phase, epochs 1-2 the second)."""
    root = tmp_path_factory.mktemp("methods")
    results = {}
    for method in METHODS:
        base = root / "runs" / method
        flags = [str(f) for f in train_flags(tree4, base, name=method)] + ["--method", method, "--loss", "ce",
                                                                               "--dataset", "cifar10"]
        assert trainer.main("MetaSAug_CE_train.py", "test", ("ce", "focal"), flags) == 0
        results[method] = (base, json.loads((base / "out" / "result.json").read_text()))
    return root, results


def first_epoch(results, method):
    return results[method][1]["history"][0]


def test_first_phase_is_plain_cross_entropy_except_for_class_balanced(runs):
    _, results = runs
    reference = first_epoch(results, "plain")
    for method in ("drw", "isda", "metasaug_no_reweight", "metasaug"):
        assert first_epoch(results, method)["train_loss"] == reference["train_loss"], method
    assert first_epoch(results, "cb")["train_loss"] != reference["train_loss"]


def test_second_phase_differs_by_method(runs):
    _, results = runs
    second = {m: results[m][1]["history"][1]["train_loss"] for m in METHODS}
    assert len(set(second.values())) == len(METHODS), second


def test_covariance_spectrum_and_figures(runs):
    _, results = runs
    for method in METHODS:
        base, result = results[method]
        spectrum = result["covariance_spectrum"]
        expected = {"metasaug": {"isda", "meta_learned"}, "metasaug_no_reweight": {"isda", "meta_learned"},
                    "isda": {"isda"}}.get(method, set())
        assert set(spectrum) == expected, method
        for values in spectrum.values():
            assert len(values) == 5 and values[0] == pytest.approx(1.0)
            assert all(a >= b for a, b in zip(values, values[1:]))
        assert len(result["confusion_matrix"]) == 4
        assert all(sum(row) == pytest.approx(100.0) for row in result["confusion_matrix"])
        with Image.open(base / "out" / "confusion_matrix.png") as image:
            assert image.size[0] > 100
        assert (base / "out" / "covariance_spectrum.png").exists() == bool(expected)


def test_report_prints_only_what_has_runs(runs, capsys):
    root, _ = runs
    assert report.main([str(root / "runs")]) == 0
    text = capsys.readouterr().out
    assert "6 runs under" in text
    assert "| Cross-entropy training |" in text and "paper 13.82" in text  # imbalance 10 (imb_factor 0.1)
    assert "missing" not in text and "Table 2" not in text and "imbalance 100" not in text
    table5 = text.split("Table 5")[1]
    assert "| MetaSAug w/o meta-learning |" in table5 and "| MetaSAug |" in table5
    assert "**" in table5 and "(best " in table5 and "n=1)" in table5
    metasaug_row = next(line for line in table5.splitlines() if line.startswith("| MetaSAug |"))
    assert "±" not in metasaug_row  # one run has no spread to show
    assert "test images 40" in text and "†" not in text  # the whole (tiny) test set
    assert "per seed" not in text  # one seed per cell: nothing to list


def test_report_study_table_pairs_each_arm_with_isda_by_branch_seed(runs, tree4, tmp_path, capsys):
    """Runs under a study/ folder are the meta-step study's arms: a table of their own, not paper rows."""
    root, _ = runs
    study = tmp_path / "results" / "study"
    arms = {"isda_b0": ["--method", "isda"], "isda_b1": ["--method", "isda", "--branch_seed", 1],
            "released_b0": [], "gamma100_b0": ["--meta_lr", 100], "gamma100_b1": ["--meta_lr", 100, "--branch_seed", 1]}
    procs = run_together([(CE, train_flags(tree4, tmp_path / name, name=name) + ["--out_dir", study / name, *extra])
                          for name, extra in arms.items()], tmp_path)
    assert all(proc.returncode == 0 for proc in procs), [proc.stderr for proc in procs]
    shutil.copytree(root / "runs", tmp_path / "results" / "table_runs")  # paper rows beside the study
    assert report.main([str(tmp_path / "results")]) == 0
    text = capsys.readouterr().out
    assert "6 runs and 5 runs of the meta-step study under" in text
    lines = text.split("Does the meta step matter?")[1].splitlines()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines
            if line.startswith("| ") and "---" not in line}
    assert list(rows)[1:] == ["isda", "released", "gamma100"]  # ordered by the logged step size
    finals = {name: json.loads((study / name / "result.json").read_text())["final_top1_error"] for name in arms}
    gamma = rows["gamma100"]
    assert gamma[1:4] == ["100", "released (lr)", "no"] and float(gamma[4]) > float(rows["released"][4]) > 0
    deltas = [finals["gamma100_b0"] - finals["isda_b0"], finals["gamma100_b1"] - finals["isda_b1"]]
    assert gamma[7].startswith(f"{sum(deltas) / 2:.2f} ± ") and gamma[7].endswith("(n=2)")
    assert rows["isda"][7] == "–" and rows["released"][6] == "–"  # no pair for itself; b1 not run
    curves = {name: {h["epoch"]: 100 - h["test_top1"] for h in json.loads((study / name / "result.json").read_text())[
        "history"] if h["epoch"] > 1 and h.get("test_top1") is not None} for name in arms}  # --meta_start 1
    leads = [[curves[f"gamma100_b{s}"][e] - curves[f"isda_b{s}"][e] for e in curves[f"isda_b{s}"]] for s in (0, 1)]
    assert all(len(lead) == EPOCHS - 1 for lead in leads)  # the second phase's epochs only
    ahead = sum(d < 0 for lead in leads for d in lead)
    mean_lead = report.fmt(report.summary([sum(lead) / len(lead) for lead in leads]))
    assert gamma[8] == f"{mean_lead} ({ahead}/{2 * (EPOCHS - 1)})"
    assert rows["isda"][8] == "–" and rows["released"][8].endswith(f"/{EPOCHS - 1})")
    assert report.main([str(tmp_path / "results"), "--table", "table1", "table5"]) == 0
    text = capsys.readouterr().out  # paper tables only: the study is asked for by name or by 'all'
    assert "Table 1" in text and "Table 5" in text and "Does the meta step matter?" not in text


def test_report_all_shows_the_paper_grid(runs, capsys):
    root, _ = runs
    assert report.main([str(root / "runs"), "--all"]) == 0
    text = capsys.readouterr().out
    assert "missing · paper 29.86" in text and "Table 2" in text and "imbalance 200" in text


def test_report_csv_and_latex(runs, capsys):
    root, _ = runs
    assert report.main([str(root / "runs"), "--table", "table1", "--format", "csv"]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {line["row"] for line in lines} == {"Cross-entropy training", "Class-balanced cross-entropy loss",
                                              "MetaSAug with cross-entropy loss", "CE-DRW"}
    ce = next(line for line in lines if line["row"] == "Cross-entropy training")
    assert ce["imbalance"] == "10" and ce["n"] == "1" and ce["paper"] == "13.82" and ce["partial_test_set"] == "0"
    assert float(ce["delta_final_minus_paper"]) == pytest.approx(float(ce["final_mean"]) - 13.82, abs=1e-3)
    assert report.main([str(root / "runs"), "--table", "table5", "--format", "csv"]) == 0
    rows = {line["row"] for line in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert "CE-DRW" not in rows  # a row of no paper table is printed once, under Table 1
    assert report.main([str(root / "runs"), "--table", "table5", "--format", "latex"]) == 0
    text = capsys.readouterr().out
    assert "\\begin{tabular}{lc}" in text and "MetaSAug w/o meta-learning &" in text


def test_report_marks_partial_test_sets_and_refuses_mixed_subsets(runs, tmp_path, capsys):
    root, results = runs
    base = json.loads((results["plain"][0] / "out" / "result.json").read_text())
    partial = dict(base, test_images=16)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text(json.dumps(partial))
    assert report.main([str(tmp_path), "--table", "table1"]) == 0
    text = capsys.readouterr().out
    assert "test images 16 of 40 †" in text and "n=1) †" in text
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "result.json").write_text(json.dumps(dict(partial, seed=7, train_index_sha256="0" * 64)))
    assert report.main([str(tmp_path), "--table", "table1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different long-tail subsets" in err


def test_report_averages_seeds_with_their_sample_std(runs, tmp_path, capsys):
    _, results = runs
    base = json.loads((results["plain"][0] / "out" / "result.json").read_text())
    for seed, final in ((1, 40.0), (2, 44.0), (3, 45.0)):
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "result.json").write_text(json.dumps(dict(base, seed=seed, final_top1_error=final)))
    assert report.main([str(tmp_path), "--table", "table1"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| Cross-entropy training"))
    assert "**43.00 ± 2.65** (best" in row and "n=3)" in row
    per_seed = text.split("per seed, imbalance 10:")[1]
    assert "| method | seed 1 | seed 2 | seed 3 |" in per_seed
    assert "| Cross-entropy training | 40.00 | 44.00 | 45.00 |" in per_seed
    assert report.main([str(tmp_path), "--table", "table1", "--format", "csv"]) == 0
    ce = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert (ce["n"], ce["final_mean"], ce["final_std"]) == ("3", "43.0000", "2.6458")


def test_report_rejects_a_missing_folder(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothing")]) == 2


def test_amp_runs_both_phases_in_bfloat16(tmp_path):
    """--amp trains both phases under bf16 autocast: it finishes, and its numbers are not float32's."""
    data = make_tree(tmp_path / "data", 4, train=40, test=10)
    losses = {}
    for amp in (False, True):
        base = tmp_path / f"amp{amp}"
        flags = [str(f) for f in train_flags(data, base, name="amp")] + ["--max_train_batches", "3"] + ["--amp"] * amp
        assert trainer.main("MetaSAug_CE_train.py", "test", ("ce", "focal"), flags) == 0
        result = json.loads((base / "out" / "result.json").read_text())
        assert "meta_learned" in result["covariance_spectrum"]  # the MetaSAug phase ran
        losses[amp] = [entry["train_loss"] for entry in result["history"]]
    assert all(a != b for a, b in zip(losses[True], losses[False]))


# ---------------------------------------------------------------------------------------------
# Recipes: Cao et al.'s LDAM-DRW recipe on the LDAM script
# ---------------------------------------------------------------------------------------------

LDAM_SCRIPT = "MetaSAug_LDAM_train.py"


def cao_run(data, tmp_path, *extra):
    args = cifar_flags.parse_args(LDAM_SCRIPT, "d", ("ldam",), [str(f) for f in train_flags(data, tmp_path)] +
                                  ["--recipe", "cao2019", "--method", "drw", *map(str, extra)])
    cifar_flags.validate_args(args)
    built = build_dataset(args.data_root, num_meta=args.num_meta, imb_factor=args.imb_factor,
                          num_classes=args.num_classes, subset=args.subset)
    return trainer.Run(args, built)


def test_cao2019_recipe_reaches_optimizer_network_loss_and_data(tmp_path):
    data = make_tree(tmp_path / "data", 4, train=40, test=10)
    run = cao_run(data, tmp_path)
    args = run.args
    assert (args.weight_decay, args.nesterov, args.subset) == (2e-4, False, "cao2019")
    defaults = cifar_flags.parse_args(LDAM_SCRIPT, "d", ("ldam",), ["--recipe", "cao2019"])
    assert (defaults.batch_size, defaults.lr_milestones, defaults.meta_start, defaults.beta) == (128, [160, 180], 160,
                                                                                                0.9999)
    group = run.optimizer.param_groups[0]
    assert (group["weight_decay"], group["nesterov"], group["momentum"]) == (2e-4, False, 0.9)
    assert isinstance(run.model.linear, NormedLinear) and run.meta is None
    assert run.data.cls_num_list == [40, 18, 8, 4]  # Cao's subset: no meta images taken out first
    # 5-epoch warm-up, then x0.01 at 0-based epoch 2 (train_flags' --lr_milestones 2, no off-by-one)
    assert [run.schedule(e)[0] for e in range(4)] == pytest.approx([0.02, 0.04, 0.0006, 0.0008])
    # s = 30 on the normalised logits, margins subtracted first
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logits = run._loss(x, y, epoch=0, lookahead_lr=0.1, ratio=0.0, meta_batch=run.meta_batch(0, 0))
    shifted = logits - F.one_hot(y, 4) * run.criterion.margins[y].unsqueeze(1)
    assert loss.item() == pytest.approx(F.cross_entropy(30 * shifted, y).item(), rel=1e-6)
    assert logits.abs().max() <= 1 + 1e-6  # cosine logits
    # zero-padded crops: a white image gains black (0) borders, normalised with Cao's mean and std
    white = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    batch, _ = run.augmented_batch(white, torch.zeros(64, dtype=torch.long), torch.arange(64), run.args.seed,
                                   "augment", 0, 0)
    black = (0 - torch.tensor(CAO2019_MEAN)) / torch.tensor(CAO2019_STD)
    assert torch.isclose(batch.amin(dim=(0, 2, 3)), black, atol=1e-5).all()


def test_cao2019_recipe_flags_given_still_win_and_bad_combinations_are_refused(tmp_path, capsys):
    data = make_tree(tmp_path / "data", 4, train=40, test=10)
    run = cao_run(data, tmp_path, "--batch-size", 16, "--subset", "released")
    assert (run.args.batch_size, run.args.subset, run.args.weight_decay) == (16, "released", 2e-4)
    for extra, message in ((["--method", "metasaug"], "no ISDA augmentation; use --recipe released"),
                           (["--method", "isda"], "no ISDA augmentation"),
                           (["--recipe", "released", "--subset", "cao2019", "--method", "metasaug"],
                            "no meta set can be held out")):
        flags = [str(f) for f in train_flags(data, tmp_path / "bad")] + ["--recipe", "cao2019", *extra]
        assert trainer.main(LDAM_SCRIPT, "d", ("ldam",), flags) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):  # the CE script has no --recipe
        cifar_flags.parse_args("MetaSAug_CE_train.py", "d", ("ce", "focal"), ["--recipe", "cao2019"])
    args = cifar_flags.parse_args(LDAM_SCRIPT, "d", ("ldam",), ["--split", "7"])  # the released, unused flag
    assert (args.split, args.subset) == (7, "released")


def test_cao2019_tiny_run_end_to_end(tmp_path):
    data = make_tree(tmp_path / "data", 4, train=40, test=10)
    flags = [str(f) for f in train_flags(data, tmp_path)] + ["--recipe", "cao2019", "--method", "drw"]
    assert trainer.main(LDAM_SCRIPT, "d", ("ldam",), flags) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["config"]["recipe"] == "cao2019" and result["cls_num_list"] == [40, 18, 8, 4]
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.02, 0.04, 0.0006])
    assert report.row_name("drw", "ldam", "cao2019") == "LDAM-DRW"
    assert report.row_name("drw", "ldam", "released") == "LDAM-DRW (MetaSAug's recipe)"


def test_isda_ablation_is_metasaug_without_its_meta_step(tmp_path):
    """With --meta_lr 0 the meta step leaves the covariance as estimated: MetaSAug's loss is then the
    isda ablation's, iteration after iteration (same estimate before each batch, same update after)."""
    data = make_tree(tmp_path / "data", 4, train=40, test=10)
    runs = {}
    for method in ("isda", "metasaug"):
        args = cifar_flags.parse_args("MetaSAug_CE_train.py", "d", ("ce", "focal"),
                                      [str(f) for f in train_flags(data, tmp_path / method)] +
                                      ["--method", method, "--meta_lr", "0", "--channels_last", "false"])
        cifar_flags.validate_args(args)
        runs[method] = trainer.Run(args, build_dataset(args.data_root, num_meta=2, imb_factor=0.1, num_classes=4))
    generator = torch.Generator().manual_seed(0)
    for iteration in range(3):
        x, y = torch.rand(8, 3, 8, 8, generator=generator), torch.randint(0, 4, (8,), generator=generator)
        losses = [run._loss(x, y, epoch=1, lookahead_lr=0.1, ratio=0.5, meta_batch=run.meta_batch(1, iteration))[0]
                  for run in runs.values()]
        assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5), iteration
        for run in runs.values():
            run.optimizer.zero_grad()
    estimators = [run.criterion.estimator.covariance for run in runs.values()]
    assert estimators[0].abs().sum() > 0 and torch.allclose(*estimators, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_logit_adjusted_base_loss_with_every_method(method, tree4, tmp_path):
    flags = [str(f) for f in train_flags(tree4, tmp_path)] + ["--method", method, "--loss", "la",
                                                             "--max_train_batches", "2"]
    assert trainer.main("MetaSAug_CE_train.py", "test", LOSSES, flags) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["base_loss"] == "la" and len(result["history"]) == 3
    assert all(h["train_loss"] == h["train_loss"] for h in result["history"])  # finite, not nan


def test_every_training_flag_is_declared_free_or_must_match():
    """A new flag must say whether a resumed or branched run may change it (cifar_flags.MUST_MATCH)."""
    names = {action.dest for losses in (("ce", "focal"), ("ldam",))
             for action in cifar_flags.build_parser("prog", "d", losses)._actions}
    declared = set(cifar_flags.MUST_MATCH) | set(cifar_flags.FREE)
    assert names == declared, names ^ declared
    assert not set(cifar_flags.MUST_MATCH) & set(cifar_flags.FREE)
