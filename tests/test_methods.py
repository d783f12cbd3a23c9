"""Baselines and ablations (--method), the per-run figures and the report."""
import csv
import io
import json

import pytest
from PIL import Image

import trainer
from conftest import make_tree, train_flags
from tools import report

METHODS = ("plain", "cb", "drw", "isda", "metasaug_no_reweight", "metasaug")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny CE run per method (epoch 0 is the first phase, epochs 1-2 the second)."""
    root = tmp_path_factory.mktemp("methods")
    data = make_tree(root / "data", 4, train=40, test=10)
    results = {}
    for method in METHODS:
        base = root / "runs" / method
        flags = [str(f) for f in train_flags(data, base, name=method)] + ["--method", method, "--loss", "ce",
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
    assert "test images 40" in text and "†" not in text  # the whole (tiny) test set


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
