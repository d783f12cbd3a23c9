"""The meta-step study's opt-in knobs (--lookahead_lr, --carry_cv, --branch_seed) and the per-epoch meta-step
figures: the defaults train as before the knobs existed, and each knob reaches the computation."""
import json

import pytest
import torch

from conftest import CE, ITERATIONS, assert_ok, assert_tensors_equal, load, run_together, train_flags, untimed

# Epoch 1 cross-entropy, epochs 2-3 MetaSAug at the released lookahead step 0.1 x 0.01 = 0.001.
SCHEDULE = ["--epochs", 3, "--meta_start", 1, "--lr_milestones", 1]
VARIANTS = {
    "default": [],
    "explicit": ["--branch_seed", 0, "--lookahead_lr", 0.001],  # the defaults' values, spelt out
    "lookahead": ["--lookahead_lr", 0.5],
    "carry": ["--carry_cv"],
    "branch": ["--branch_seed", 1],
}


@pytest.fixture(scope="module")
def runs(tree4, tmp_path_factory):
    base = tmp_path_factory.mktemp("knobs")

    def flags(name, extra):
        return train_flags(tree4, base, name=name) + SCHEDULE + ["--out_dir", base / "out" / name] + extra

    for proc in run_together([(CE, flags(name, extra)) for name, extra in VARIANTS.items()], base):
        assert_ok(proc)
    phase1 = base / "ckpt" / "default_phase1.pth.tar"
    branched, isda = run_together([(CE, flags("branched", ["--branch_seed", 1, "--init_from", phase1])),
                                   (CE, flags("isda", ["--method", "isda", "--branch_seed", 1]))], base)
    assert_ok(branched)
    assert_ok(isda)
    names = [*VARIANTS, "branched", "isda"]
    return {name: (load(base / "ckpt" / f"{name}_ckpt.pth.tar"),
                   json.loads((base / "out" / name / "result.json").read_text())) for name in names}, base


def test_defaults_spelt_out_train_the_same_run(runs):
    (a, result_a), (b, result_b) = runs[0]["default"], runs[0]["explicit"]
    for key in ("state_dict", "optimizer", "criterion", "epoch_sums", "meta_step_sums"):
        assert_tensors_equal(a[key], b[key], key)
    assert untimed(result_a["history"]) == untimed(result_b["history"])


@pytest.mark.parametrize("variant", ["lookahead", "carry", "branch"])
def test_each_knob_changes_the_second_phase_only(runs, variant):
    by_name, base = runs
    default, changed = by_name["default"][0], by_name[variant][0]
    assert any(not torch.equal(changed["state_dict"][k], v) for k, v in default["state_dict"].items())
    first_phases = [load(base / "ckpt" / f"{name}_phase1.pth.tar") for name in ("default", variant)]
    assert_tensors_equal(first_phases[0]["state_dict"], first_phases[1]["state_dict"], "first phase")


def test_a_larger_lookahead_step_moves_the_covariance_further(runs):
    by_name = runs[0]
    for default, larger in zip(*(by_name[name][1]["history"][1:] for name in ("default", "lookahead"))):
        assert larger["meta_step_shift_mean"] > 50 * default["meta_step_shift_mean"] > 0


def test_carried_covariance_is_labelled(runs):
    by_name, base = runs
    assert "MetaSAug (covariance carried over)" in (base / "out" / "carry" / "train.log").read_text()
    assert "covariance carried over" not in (base / "out" / "default" / "train.log").read_text()
    assert by_name["carry"][1]["config"]["carry_cv"] is True


def test_a_branch_seed_gives_the_same_second_phase_from_a_first_phase_or_from_scratch(runs):
    by_name = runs[0]
    (scratch, result_a), (branched, result_b) = by_name["branch"], by_name["branched"]
    for key in ("state_dict", "optimizer", "criterion", "epoch_sums", "meta_step_sums"):
        assert_tensors_equal(scratch[key], branched[key], key)
    assert untimed(result_a["history"]) == untimed(result_b["history"])
    assert result_a["config"]["branch_seed"] == result_b["config"]["branch_seed"] == 1


def test_meta_step_figures_per_epoch_of_a_meta_stepping_method_only(runs):
    by_name = runs[0]
    history = by_name["default"][1]["history"]
    assert "meta_step_shift_mean" not in history[0]  # the cross-entropy epoch
    for entry in history[1:]:
        assert entry["meta_step_steps"] == ITERATIONS
        assert len(entry["meta_step_shift_per_class"]) == 4
        assert 0 < entry["meta_step_shift_mean"] <= entry["meta_step_shift_max"]
        assert entry["meta_step_shift_vs_estimator_mean"] > 0 and entry["meta_step_relative_loss_change"] > 0
    assert not any(key.startswith("meta_step") for entry in by_name["isda"][1]["history"] for key in entry)
