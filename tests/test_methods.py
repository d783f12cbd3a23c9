"""Baselines and ablations (--method), the per-run figures and the report."""
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


def test_report_lists_runs_beside_the_paper_and_marks_missing(runs, capsys):
    root, _ = runs
    assert report.main([str(root / "runs"), "--table", "all"]) == 0
    text = capsys.readouterr().out
    assert "6 runs under" in text
    assert "| Cross-entropy training |" in text and "paper 29.86" in text
    assert "missing" in text
    table5 = text.split("Table 5")[1]
    assert "| MetaSAug w/o meta-learning |" in table5 and "| MetaSAug |" in table5
    assert "final " in table5 and "best " in table5 and "(n=1)" in table5


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
