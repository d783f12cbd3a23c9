"""Committed results re-check: each results/**/model.pth evaluates to the accuracy its result.json
records (on the real CIFAR-10 test images of ../shared), tools/export_run.py writes such a pair, and a
first phase it exports branches exactly like the run trained from scratch."""
import json
import re
import subprocess

import pytest

import MetaSAug_test
import trainer
from conftest import (CE, CIFAR10_ARCHIVE, LDAM, REPO_ROOT, assert_ok, assert_tensors_equal, load, run_together,
                      train_flags, untimed)
from tools import export_run, figure2, meta_step_size, report

GPU_TOLERANCE = 0.05  # percentage points: 5 of the 10,000 CIFAR test images
COMMITTED = sorted((REPO_ROOT / "results").rglob("model.pth"))


def printed_accuracy(argv, capsys):
    assert MetaSAug_test.main([str(a) for a in argv]) == 0
    return float(re.search(r"Accuracy: ([\d.]+)", capsys.readouterr().out)[1])


@pytest.fixture(scope="module")
def tiny_run(tree4, tmp_path_factory):
    """A two-epoch run (one epoch per phase): its out_dir and final checkpoint (read only)."""
    base = tmp_path_factory.mktemp("tiny")
    assert trainer.main("MetaSAug_CE_train.py", "d", ("ce", "focal"),
                        [str(f) for f in train_flags(tree4, base, epochs=2)] + ["--lr", "0.02"]) == 0
    return base / "out", base / "ckpt" / "tiny_ckpt.pth.tar"


def test_exported_weights_evaluate_to_the_run_s_accuracy(tiny_run, tree4, tmp_path, capsys):
    out, checkpoint = tiny_run
    capsys.readouterr()
    dest = export_run.export(out, checkpoint, tmp_path / "exported")
    result = json.loads((dest / "result.json").read_text())
    readme = (dest / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python MetaSAug_CE_train.py"))
    for flags in ("--batch-size 8", "--num_meta 2", "--imb_factor 0.1", "--epochs 2", "--lr 0.02", "--meta_start 1",
                  "--data_root data/cifar10"):
        assert f" {flags}" in command, command
    assert str(tmp_path) not in command  # machine-specific paths stay out
    assert (dest / "model.pth").stat().st_size < 2 * 1024 * 1024
    assert list(out.glob("*.png")) and not list(dest.glob("*.png"))  # figures: numbers in result.json, not images
    accuracy = printed_accuracy(["--checkpoint_path", dest / "model.pth", "--data_root", tree4, "--num_classes", 4,
                                 "--imb_factor", 0.1, "--num_meta", 2, "--device", "cpu", "--test-batch-size", 16],
                                capsys)
    assert f"{accuracy:.2f}" == f"{100 - result['final_top1_error']:.2f}"
    assert export_run.main([str(out), str(checkpoint), str(dest)]) == 2


@pytest.mark.parametrize("base_loss, words", [("ce", [CE]), ("focal", [CE, "--loss", "focal"]),
                                               ("la", [CE, "--loss", "la"]), ("ldam", [LDAM])])
def test_the_exported_command_runs_the_script_that_offers_the_base_loss(base_loss, words):
    config = dict(dataset="cifar10", imb_factor=0.01, seed=1, loss=base_loss, meta_lr=0.1)
    said = ["--dataset", "cifar10", "--imb_factor", "0.01", "--seed", "1"]  # said even at their defaults
    assert export_run.training_command(config, base_loss) == [words[0], *said, *words[1:]]


def test_an_exported_first_phase_branches_like_the_run_from_scratch(tree4, tmp_path):
    def flags(name, *extra):
        return (train_flags(tree4, tmp_path, name=name) + ["--epochs", 3, "--meta_start", 2, "--lr_milestones", 2,
                                                          "--out_dir", tmp_path / "out" / name, *extra])

    for proc in run_together([(CE, flags("first_phase_seed42", "--method", "plain", "--first_phase_only")),
                              (CE, flags("scratch"))], tmp_path):
        assert_ok(proc)
    first_phase = export_run.export(tmp_path / "out" / "first_phase_seed42",
                                    tmp_path / "ckpt" / "first_phase_seed42_ckpt.pth.tar",
                                    tmp_path / "results" / "first_phase_seed42")
    phase1 = load(first_phase / "phase1.pth")
    assert set(phase1) == set(export_run.FIRST_PHASE_KEYS)  # no loss module, nothing twice
    readme = (first_phase / "README.md").read_text()
    assert "--first_phase_only" in readme and f"--init_from {first_phase / 'phase1.pth'}" in readme
    (branch,) = run_together([(CE, flags("branch", "--init_from", first_phase / "phase1.pth"))], tmp_path)
    assert_ok(branch)
    a, b = (load(tmp_path / "ckpt" / f"{name}_ckpt.pth.tar") for name in ("scratch", "branch"))
    for key in ("state_dict", "optimizer", "criterion", "epoch_sums"):
        assert_tensors_equal(a[key], b[key], key)
    results = [json.loads((tmp_path / "out" / name / "result.json").read_text()) for name in ("scratch", "branch")]
    assert untimed(results[0]["history"]) == untimed(results[1]["history"])

    exported = export_run.export(tmp_path / "out" / "branch", tmp_path / "ckpt" / "branch_ckpt.pth.tar",
                                 tmp_path / "results" / "study" / "branch", first_phase=first_phase)
    readme = (exported / "README.md").read_text()  # the link is relative to the run's folder, however deep
    assert "from the committed first phase [first_phase_seed42](../../first_phase_seed42)" in readme
    assert f"--init_from {first_phase / 'phase1.pth'}" in readme
    # A run that did not branch from it is not said to have.
    assert export_run.main([str(tmp_path / "out" / "scratch"), str(tmp_path / "ckpt" / "scratch_ckpt.pth.tar"),
                            str(tmp_path / "results" / "scratch"), "--first_phase", str(first_phase)]) == 2
    assert not (tmp_path / "results" / "scratch").exists()


def test_meta_step_size_scales_with_the_lookahead_step(tiny_run, tree4, tmp_path, capsys):
    out, checkpoint = tiny_run
    data = tree4
    capsys.readouterr()
    assert meta_step_size.main([str(checkpoint), "--data_root", str(data), "--batches", "2",
                                "--lookahead_lr", "1e-5", "1e-4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lookahead lr")]
    shifts = [[float(v) for v in line.split("covariance ")[1].split(" |")[0].split()] for line in lines]
    assert len(shifts) == 2 and len(shifts[0]) == 4
    # The meta-gradient is -lr * (a mixed partial at the lookahead weights, which barely move for a small step):
    # ten times the step, ten times the shift.
    for small, large in zip(*shifts):
        assert 0 < small and large / small == pytest.approx(10, rel=0.1)
    # An exported results folder (model.pth, criterion.pth, result.json) gives the same figures as the checkpoint.
    exported = export_run.export(out, checkpoint, tmp_path / "exported")
    assert meta_step_size.main([str(exported), "--data_root", str(data), "--batches", "2",
                                "--lookahead_lr", "1e-5", "1e-4"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("lookahead lr")] == lines
    (exported / "criterion.pth").unlink()
    assert meta_step_size.main([str(exported), "--data_root", str(data)]) == 2
    assert meta_step_size.main([str(next((data / "train").rglob("*.png"))), "--data_root", str(data)]) == 2


@pytest.fixture(scope="module")
def cifar10_test_split(tmp_path_factory):
    if not CIFAR10_ARCHIVE.exists():
        pytest.skip(f"the CIFAR-10 images are not at {CIFAR10_ARCHIVE}")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run(["tar", "-xzf", str(CIFAR10_ARCHIVE), "-C", str(root), "test/"], check=True)
    return root


@pytest.mark.skipif(not COMMITTED, reason="no committed results under results/")
@pytest.mark.parametrize("weights", COMMITTED, ids=[str(p.parent.relative_to(REPO_ROOT)) for p in COMMITTED])
def test_committed_weights_evaluate_to_their_result(weights, cifar10_test_split, capsys):
    result = json.loads((weights.parent / "result.json").read_text())
    config = result["config"]
    accuracy = printed_accuracy(["--checkpoint_path", weights, "--dataset", config["dataset"], "--imb_factor",
                                 config["imb_factor"], "--data_root", cifar10_test_split, "--device", "cpu"], capsys)
    if result["device"].startswith("cuda"):  # cuDNN (TF32) and the CPU round differently: a few images may flip
        assert abs(accuracy - (100 - result["final_top1_error"])) <= GPU_TOLERANCE
    else:
        assert f"{accuracy:.2f}" == f"{100 - result['final_top1_error']:.2f}"
    assert weights.stat().st_size < 2 * 1024 * 1024
    assert (weights.parent / "README.md").is_file() and (weights.parent / "criterion.pth").is_file()
    assert list(weights.parent.glob("events.out.tfevents.*"))


def test_figure2_from_an_exported_first_phase(tiny_run, tree4, tmp_path):
    out, checkpoint = tiny_run
    first_phase = export_run.export(out, out.parent / "ckpt" / "tiny_phase1.pth.tar", tmp_path / "first_phase_seed42")
    second_phase = export_run.export(out, checkpoint, tmp_path / "metasaug")
    assert figure2.main([str(first_phase / "phase1.pth"), "--data_root", str(tree4), "--out", str(tmp_path / "fig"),
                         "--batches", "2", "--meta_lr", "0.1", "1000", "--runs", str(second_phase)]) == 0
    record = json.loads((tmp_path / "fig" / "figure2.json").read_text())
    assert record["rarest_class"] == "class03" and record["network_epoch"] == 1
    assert list(record["panel_b"])[-2:] == ["metasaug: estimated", "metasaug: learned, meta_lr 0.1"]
    for series in (*record["panel_a"].values(), *record["panel_b"].values()):
        assert len(series) == 5 and series[0] == pytest.approx(1.0)
    shifts = record["relative_shift"]  # exactly proportional to meta_lr: one step from the same estimate
    assert shifts["learned, meta_lr 1000"] == pytest.approx(1e4 * shifts["learned, meta_lr 0.1"], rel=1e-6)
    assert shifts["metasaug: learned, meta_lr 0.1"] > 0
    result = json.loads((second_phase / "result.json").read_text())
    result["config"]["imb_factor"] = 0.5  # a run of another long-tailed subset is refused
    (second_phase / "result.json").write_text(json.dumps(result))
    assert figure2.main([str(first_phase / "phase1.pth"), "--data_root", str(tree4), "--out", str(tmp_path / "x"),
                         "--batches", "1", "--runs", str(second_phase)]) == 2
    assert (tmp_path / "fig" / "figure2.png").stat().st_size > 0


def test_figure2_study_spectra_feed_the_report_s_study_table(tiny_run, tree4, tmp_path, capsys):
    """--study: each arm's rarest-class spectrum, estimated and learned by the arm's own meta step, in
    spectra.json beside the arms; the report's study table shows the learned one."""
    out, checkpoint = tiny_run
    study = tmp_path / "results" / "study"
    export_run.export(out, checkpoint, study / "released_b0")
    assert figure2.main(["--study", str(study), "--data_root", str(tree4), "--batches", "2"]) == 0
    record = json.loads((study / "spectra.json").read_text())
    entry = record["runs"]["released_b0"]
    assert record["rarest_class"] == "class03" and entry["epoch"] == 2 and entry["relative_shift"] > 0
    for series in (entry["estimated"], entry["learned"]):
        assert len(series) == 5 and series[0] == pytest.approx(1.0)
    smallest, largest = entry["smallest_eigenvalue"], entry["largest_eigenvalue"]
    assert len(smallest) == len(largest) == 4  # every class; the estimator keeps Σ positive semi-definite
    assert all(-1e-6 * top <= low <= top and top > 0 for low, top in zip(smallest, largest)), (smallest, largest)
    capsys.readouterr()
    assert report.main([str(tmp_path / "results"), "--table", "study"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| released |"))
    assert row.split(" | ")[-1] == " ".join(f"{v:.2f}" for v in entry["learned"][1:]) + " |"
    assert report.main([str(tmp_path / "results"), "--table", "study", "--imbalance", "50"]) == 0
    assert "| released |" not in capsys.readouterr().out  # the study is filtered by imbalance like the tables
    with pytest.raises(SystemExit) as refused:
        figure2.main(["--data_root", str(tree4)])  # neither a network nor --study
    assert refused.value.code == 2
    assert figure2.main(["--study", str(tmp_path), "--data_root", str(tree4)]) == 2  # no run under it
