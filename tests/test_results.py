"""Committed results re-check: each results/**/model.pth evaluates to the accuracy its result.json
records (on the real CIFAR-10 test images of ../shared), tools/export_run.py writes such a pair, and a
first phase it exports branches exactly like the run trained from scratch."""
import datetime
import json
import math
import re
import subprocess

import pytest

import MetaSAug_test
import trainer
from conftest import (CE, CIFAR10_ARCHIVE, LDAM, REPO_ROOT, assert_ok, assert_tensors_equal, load, run_together,
                      train_flags, untimed)
from data_utils import load_split
from metrics import top1_accuracy
from tools import export_run, figure2, meta_step_size, report, tensorboard_logs

GPU_TOLERANCE = 0.05  # percentage points: 5 of the 10,000 CIFAR test images
COMMITTED = sorted((REPO_ROOT / "results").rglob("model.pth"))
# Each session evaluates every committed model.pth on a sample of the test set, and FULL_EVALUATIONS of them (all
# with --all-weights) on all of it: a full evaluation costs about 10 s on a CPU thread, and results/ grows.
FULL_EVALUATIONS = 4
SAMPLE_EVERY = 10  # the sample: every 10th test image, 1,000 of CIFAR-10's 10,000


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
    assert list(out.glob("events.out.tfevents.*")) and not list(dest.glob("events.out.tfevents.*"))
    accuracy = printed_accuracy(["--checkpoint_path", dest / "model.pth", "--data_root", tree4, "--num_classes", 4,
                                 "--imb_factor", 0.1, "--num_meta", 2, "--device", "cpu", "--test-batch-size", 16],
                                capsys)
    assert f"{accuracy:.2f}" == f"{100 - result['final_top1_error']:.2f}"
    assert export_run.main([str(out), str(checkpoint), str(dest)]) == 2


def test_weights_of_cao_et_al_s_recipe_evaluate_to_the_run_s_accuracy(tree4, tmp_path, capsys):
    """--recipe cao2019 (the LDAM rows) trains a cosine classifier on Cao et al.'s normalisation: the evaluation
    rebuilds both from the checkpoint's config."""
    flags = [str(f) for f in train_flags(tree4, tmp_path, epochs=2)] + ["--recipe", "cao2019", "--method", "plain"]
    assert trainer.main(LDAM, "d", ("ldam",), flags) == 0
    dest = export_run.export(tmp_path / "out", tmp_path / "ckpt" / "tiny_ckpt.pth.tar", tmp_path / "exported")
    result = json.loads((dest / "result.json").read_text())
    command = next(line for line in (dest / "README.md").read_text().splitlines()
                   if line.startswith("python MetaSAug_test.py"))
    assert command.endswith(" --recipe cao2019")  # model.pth is a plain state_dict: the command says the recipe
    weights = ["--data_root", tree4, "--num_classes", 4, "--imb_factor", 0.1, "--num_meta", 2, "--device", "cpu",
               "--test-batch-size", 16]
    accuracy = printed_accuracy(["--checkpoint_path", dest / "model.pth", *weights, "--recipe", "cao2019"], capsys)
    assert f"{accuracy:.2f}" == f"{100 - result['final_top1_error']:.2f}"
    checkpoint = ["--checkpoint_path", tmp_path / "ckpt" / "tiny_ckpt.pth.tar", *weights]  # its config says it
    assert printed_accuracy(checkpoint, capsys) == accuracy
    assert MetaSAug_test.main([str(a) for a in checkpoint + ["--recipe", "released"]]) == 2
    assert "--recipe released contradicts the checkpoint" in capsys.readouterr().err
    assert MetaSAug_test.main([str(a) for a in ["--checkpoint_path", dest / "model.pth", *weights]]) == 2
    assert "holds the cosine classifier of --recipe cao2019, not --recipe released's: pass --recipe cao2019" in (
        capsys.readouterr().err)


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
    assert "--save_name cifar100_metasaug_ce_imb0.1_seed42 " in readme  # a row that branches from it (the default)
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


@pytest.mark.parametrize("method, base_loss, recipe, rows", [
    ("plain", "ce", "released", ["ce", "metasaug_ce", "metasaug_no_reweight", "isda"]),
    ("metasaug", "ldam", "released", ["metasaug_ldam"]),
    ("plain", "ldam", "cao2019", ["ldam", "ldam_drw"]),  # DRW re-weights only from --meta_start
    ("cb", "focal", "released", ["cb_focal"]),
])
def test_a_first_phase_names_the_rows_that_branch_from_it(method, base_loss, recipe, rows):
    config = dict(method=method, recipe=recipe, beta=0.9999, max_m=0.5, gamma=1.0)
    loss = export_run.first_phase_loss(method, base_loss, 0.9999, 0.5, 1.0)
    assert [row.stem for row in export_run.rows_branching_from(config, base_loss, loss)] == rows


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
def cifar10_test_set(tmp_path_factory):
    """The 10,000 CIFAR-10 test images and labels, decoded once for every committed model as MetaSAug_test.py
    decodes them."""
    if not CIFAR10_ARCHIVE.exists():
        pytest.skip(f"the CIFAR-10 images are not at {CIFAR10_ARCHIVE}")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run(["tar", "-xzf", str(CIFAR10_ARCHIVE), "-C", str(root), "test/"], check=True)
    images, labels, _ = load_split(root, "test", "cifar10", workers=4)
    return images, labels


def run_id(weights):
    return str(weights.parent.relative_to(REPO_ROOT))


def fully_evaluated(config):
    """The committed weights this session evaluates on the whole test set: all of them with --all-weights, else
    a rotating FULL_EVALUATIONS (another slice each day: each one every len(COMMITTED) / FULL_EVALUATIONS days)."""
    if config.getoption("--all-weights"):
        return COMMITTED
    slices = max(1, math.ceil(len(COMMITTED) / FULL_EVALUATIONS))
    return COMMITTED[datetime.date.today().toordinal() % slices::slices]


def pytest_generate_tests(metafunc):
    if "fully_evaluated_weights" in metafunc.fixturenames:
        chosen = fully_evaluated(metafunc.config)
        metafunc.parametrize("fully_evaluated_weights", chosen, ids=list(map(run_id, chosen)))


def committed_accuracy(weights, images, labels):
    """The accuracy MetaSAug_test.py gives ``weights`` on ``images`` (on the CPU, with the flags of the run's
    README), and the run's result.json."""
    result = json.loads((weights.parent / "result.json").read_text())
    config = result["config"]
    args = MetaSAug_test.build_parser().parse_args(["--checkpoint_path", str(weights), "--dataset", config["dataset"],
                                                    "--imb_factor", str(config["imb_factor"]), "--device", "cpu",
                                                    *export_run.recipe_flag(config)])
    model, _, _ = MetaSAug_test.load_model(args)
    return top1_accuracy(MetaSAug_test.predict_images(model, images, args), labels), result


def test_committed_weights_evaluate_to_their_result(fully_evaluated_weights, cifar10_test_set):
    """On the whole test set, exactly (GPU runs: within GPU_TOLERANCE)."""
    accuracy, result = committed_accuracy(fully_evaluated_weights, *cifar10_test_set)
    if result["device"].startswith("cuda"):  # cuDNN (TF32) and the CPU round differently: a few images may flip
        assert abs(accuracy - (100 - result["final_top1_error"])) <= GPU_TOLERANCE
    else:
        assert f"{accuracy:.2f}" == f"{100 - result['final_top1_error']:.2f}"


@pytest.mark.skipif(not COMMITTED, reason="no committed results under results/")
@pytest.mark.parametrize("weights", COMMITTED, ids=list(map(run_id, COMMITTED)))
def test_committed_weights_score_their_result_on_a_sample(weights, cifar10_test_set):
    """Every committed model.pth, cheaply: on every SAMPLE_EVERY-th test image (the same share of each class) its
    accuracy is its result.json's within 5 standard deviations of such a sample (drawn without replacement):
    weights that are broken, of another dataset or wrongly preprocessed fail; the exact check is the full one."""
    images, labels = cifar10_test_set
    accuracy, result = committed_accuracy(weights, images[::SAMPLE_EVERY], labels[::SAMPLE_EVERY])
    expected, sampled, whole = 100 - result["final_top1_error"], len(labels[::SAMPLE_EVERY]), len(labels)
    spread = math.sqrt(expected * (100 - expected) / sampled * (whole - sampled) / (whole - 1))
    assert abs(accuracy - expected) <= 5 * spread + GPU_TOLERANCE, (accuracy, expected)
    assert weights.stat().st_size < 2 * 1024 * 1024
    assert (weights.parent / "README.md").is_file() and (weights.parent / "criterion.pth").is_file()


def scalars_and_images(logdir):
    """Every scalar (tag -> {step: value}) and the steps of every image of the TensorBoard events in ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    return ({tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags["scalars"]},
            {tag: [e.step for e in events.Images(tag)] for tag in tags["images"]})


def test_tensorboard_logs_from_result_json_are_the_training_s_own(tiny_run, tmp_path, capsys):
    """What tools/tensorboard_logs.py writes from an exported run's result.json is what the training logged:
    every scalar at every epoch, and the last evaluation's confusion matrix."""
    out, checkpoint = tiny_run
    tree = tmp_path / "results" / "imb10"
    export_run.export(out, checkpoint, tree / "metasaug_seed1")
    assert tensorboard_logs.main([str(tmp_path / "results"), "--out", str(tmp_path / "tb")]) == 0
    logged, logged_images = scalars_and_images(out)
    written, written_images = scalars_and_images(tmp_path / "tb" / "results" / "imb10" / "metasaug_seed1")
    assert written == logged and len(logged) > 10 and "covariance_rarest_class/meta_learned_s2" in logged
    assert written_images == {"figures/confusion_matrix": [2]} and 2 in logged_images["figures/confusion_matrix"]
    capsys.readouterr()
    for argv in ([str(tmp_path / "results")], [str(tmp_path / "absent")], [str(tmp_path / "tb")]):  # written; none
        assert tensorboard_logs.main([*argv, "--out", str(tmp_path / "tb")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "error:" in error
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1  # nothing more written


def test_results_hold_no_tensorboard_events():
    """A clone stays light: tools/tensorboard_logs.py writes the logs of committed runs from their result.json."""
    assert not list((REPO_ROOT / "results").rglob("events.out.tfevents.*"))


def test_figure2_from_an_exported_first_phase(tiny_run, tree4, tmp_path):
    out, checkpoint = tiny_run
    first_phase = export_run.export(out, out.parent / "ckpt" / "tiny_phase1.pth.tar", tmp_path / "first_phase_seed42")
    second_phase = export_run.export(out, checkpoint, tmp_path / "metasaug")
    assert figure2.main([str(first_phase / "phase1.pth"), "--data_root", str(tree4), "--out", str(tmp_path / "fig"),
                         "--batches", "2", "--meta_lr", "0.1", "1000", "--runs", str(second_phase)]) == 0
    record = json.loads((tmp_path / "fig" / "figure2.json").read_text())
    assert record["rarest_class"] == "class03" and record["network_epoch"] == 1
    assert list(record["panel_b"])[-2:] == ["metasaug: estimated", "metasaug: learned, meta_lr 0.1"]
    assert [figure2.legend(record["series"][key]) for key in list(record["panel_b"])[::3]] == [
        "first phase, epoch 1: long-tailed estimate (3 images)",
        "MetaSAug-CE, epoch 2: estimated"]  # which network, which epoch, which covariance
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
    for name in ("figure2.png", "figure2.pdf"):  # --plot draws the same figure from the JSON alone
        drawn = (tmp_path / "fig" / name).read_bytes()
        (tmp_path / "fig" / name).unlink()
        assert figure2.main(["--plot", str(tmp_path / "fig" / "figure2.json")]) == 0
        assert len((tmp_path / "fig" / name).read_bytes()) == pytest.approx(len(drawn), rel=0.05)


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
