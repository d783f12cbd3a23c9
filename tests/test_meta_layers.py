"""The MetaSAug step: fast JVP meta-gradient vs the double-backward reference, finite
differences, BatchNorm statistics, dtypes, the classifier-only lookahead, the carried covariance
variant and the meta-step monitor."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from loss import MetaSAugLoss
from meta_layers import MetaSAug, MetaStepMonitor
from resnet import ResNet32

COUNTS = [30, 12, 5, 2]


def tiny_setup(base="ce", diagonal=False, dtype=torch.float64, seed=0):
    """A ResNet-8 on 8x8 images, an estimator warmed up with a few batches, a train and a meta batch."""
    torch.manual_seed(seed)
    model = ResNet32(len(COUNTS), num_blocks=(1, 1, 1)).to(dtype)
    criterion = MetaSAugLoss(64, len(COUNTS), COUNTS, base=base, diagonal=diagonal, gamma=2.0)
    x = torch.randn(12, 3, 8, 8, dtype=dtype)
    y = torch.tensor([0, 1, 2, 3] * 3)
    with torch.no_grad():
        for _ in range(2):
            criterion.estimator.update(model(torch.randn(12, 3, 8, 8, dtype=dtype))[0], y)
    x_meta = torch.randn(8, 3, 8, 8, dtype=dtype)
    y_meta = torch.tensor([0, 1, 2, 3] * 2)
    return model, criterion, (x, y, x_meta, y_meta)


def run_step(model, criterion, batch, lookahead="all", meta_gradient="jvp", lr=0.5, ratio=0.7):
    meta = MetaSAug(model, criterion, meta_lr=10.0, lookahead=lookahead, meta_gradient=meta_gradient)
    loss, logits = meta.step(*batch, lr=lr, ratio=ratio)
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return meta.learned_covariance, loss.detach(), logits.detach(), grads


@pytest.mark.parametrize("lookahead", ["all", "classifier"])
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("base", ["ce", "ldam", "focal"])
@pytest.mark.parametrize("jvp_route", ["logits_jvp", "forward_ad"])
def test_fast_meta_gradient_equals_double_backward(monkeypatch, jvp_route, base, diagonal, lookahead):
    model, criterion, batch = tiny_setup(base, diagonal)
    start = criterion.estimator.covariance.clone()
    results = {}
    for path in ("double_backward", "jvp"):
        if path == "jvp" and jvp_route == "forward_ad":  # the route of a model without logits_jvp
            monkeypatch.delattr(ResNet32, "logits_jvp")
        m, c = copy.deepcopy(model), copy.deepcopy(criterion)
        results[path] = run_step(m, c, batch, lookahead, path) + (m.state_dict(), c.estimator.state_dict())
    fast, slow = results["jvp"], results["double_backward"]
    assert (fast[0] - start).abs().max() > 1e-6  # the covariance did move
    for a, b in zip(fast[:3], slow[:3]):  # learned covariance, loss, logits
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(fast[3:], slow[3:]):  # gradients, model state, estimator state
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lookahead", ["all", "classifier"])
def test_double_backward_meta_gradient_matches_finite_differences(lookahead):
    """dM/dSigma along a random direction, M(Sigma) = meta CE after one SGD lookahead step."""
    model, criterion, (x, y, x_meta, y_meta) = tiny_setup("ldam", diagonal=False)
    lr, ratio, meta_lr = 0.5, 0.7, 10.0
    covariance = criterion.estimator.covariance.clone()
    names = [n for n, _ in model.named_parameters() if lookahead == "all" or n.startswith("linear.")]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}

    def meta_objective(cov):
        probe = copy.deepcopy(model)
        p = {n: t.clone().requires_grad_() for n, t in params.items()}
        feats, logits = functional_call(probe, p, (x,))
        loss = criterion(logits, p["linear.weight"], y, cov, ratio)
        grads = torch.autograd.grad(loss, list(p.values()))
        stepped = {n: t - lr * g for (n, t), g in zip(p.items(), grads)}
        return F.cross_entropy(functional_call(probe, stepped, (x_meta,))[1], y_meta)

    direction = torch.randn_like(covariance)
    eps = 1e-5
    numeric = (meta_objective(covariance + eps * direction) - meta_objective(covariance - eps * direction)) / (2 * eps)
    learned, *_ = run_step(model, criterion, (x, y, x_meta, y_meta), lookahead, "double_backward", lr, ratio)
    analytic = ((covariance - learned) / meta_lr * direction).sum()
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("lookahead", ["all", "classifier"])
@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
def test_batchnorm_statistics_change_once_with_the_training_batch(meta_gradient, lookahead):
    model, criterion, batch = tiny_setup()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference(batch[0])
    run_step(model, criterion, batch, lookahead, meta_gradient)
    expected = reference.state_dict()
    for name, value in model.state_dict().items():
        if "running" in name or "num_batches_tracked" in name:
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_estimator_is_updated_with_the_training_batch():
    model, criterion, batch = tiny_setup()
    expected = copy.deepcopy(criterion.estimator)
    with torch.no_grad():
        expected.update(copy.deepcopy(model)(batch[0])[0], batch[1])
    run_step(model, criterion, batch)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(criterion.estimator.state_dict()[name], value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_in_each_dtype(dtype):
    model, criterion, batch = tiny_setup(dtype=dtype)
    learned, loss, logits, grads = run_step(model, criterion, batch)
    assert learned.dtype == loss.dtype == logits.dtype == dtype
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_bad_arguments():
    model, criterion, _ = tiny_setup()
    with pytest.raises(ValueError, match="lookahead must be one of"):
        MetaSAug(model, criterion, lookahead="last")
    with pytest.raises(ValueError, match="meta_gradient must be one of"):
        MetaSAug(model, criterion, meta_gradient="fd")


def test_a_forward_pass_under_autocast_is_not_reused(monkeypatch):
    """bf16 activations would make the JVP inexact: under autocast it goes through torch.func.jvp."""
    model, criterion, batch = tiny_setup(dtype=torch.float32)

    def refuse(*args):
        raise AssertionError("logits_jvp called on a forward pass run under autocast")

    monkeypatch.setattr(ResNet32, "logits_jvp", refuse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = MetaSAug(model, criterion, meta_lr=10.0).step(*batch, lr=0.5, ratio=0.7)
    assert torch.isfinite(loss)
    with pytest.raises(AssertionError, match="under autocast"):
        MetaSAug(model, criterion, meta_lr=10.0).step(*batch, lr=0.5, ratio=0.7)


@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
def test_carry_covariance_starts_the_estimator_from_the_learned_covariance(meta_gradient):
    model, criterion, batch = tiny_setup()
    x, y = batch[:2]
    features = copy.deepcopy(model)(x)[0].detach()  # the step's training forward pass, on a copy
    start = copy.deepcopy(criterion.estimator)
    released, carried = (MetaSAug(copy.deepcopy(model), copy.deepcopy(criterion), meta_lr=10.0,
                                  meta_gradient=meta_gradient, carry_covariance=carry) for carry in (False, True))
    for meta in (released, carried):
        meta.step(*batch, lr=0.5, ratio=0.7)
    torch.testing.assert_close(carried.learned_covariance, released.learned_covariance, rtol=0, atol=0)
    expected = copy.deepcopy(start)
    expected.update(features, y)  # released: the estimate moves by the batch alone
    torch.testing.assert_close(released.criterion.estimator.covariance, expected.covariance, rtol=1e-12, atol=0)
    expected = copy.deepcopy(start)
    expected.covariance = released.learned_covariance.clone()
    expected.update(features, y)  # carried: the same update, from the learned covariance
    torch.testing.assert_close(carried.criterion.estimator.covariance, expected.covariance, rtol=1e-12, atol=0)
    assert (carried.criterion.estimator.covariance - released.criterion.estimator.covariance).abs().max() > 1e-6


def monitored_step(meta_lr, targets=None):
    model, criterion, batch = tiny_setup()
    if targets is not None:
        batch = (batch[0], targets, *batch[2:])
    monitor = MetaStepMonitor()
    meta = MetaSAug(model, criterion, meta_lr=meta_lr, monitor=monitor)
    start = criterion.estimator.covariance.clone()
    loss, _ = meta.step(*batch, lr=0.5, ratio=0.7)
    return monitor, start, meta, loss, criterion


def test_monitor_measures_the_shift_of_each_class_present_in_the_batch():
    targets = torch.tensor([0, 1, 1, 0] * 3)  # classes 2 and 3 absent: their meta-gradient is zero
    monitor, start, meta, loss, criterion = monitored_step(10.0, targets)
    state = monitor.state()
    summary = monitor.summary()
    shift = (meta.learned_covariance - start).flatten(1).norm(dim=1) / start.flatten(1).norm(dim=1)
    assert shift[2:].abs().max() == 0 and shift[:2].min() > 0
    torch.testing.assert_close(torch.tensor(summary["meta_step_shift_per_class"][:2], dtype=torch.float64), shift[:2],
                               rtol=1e-9, atol=0)
    assert summary["meta_step_shift_per_class"][2:] == [None, None]
    assert summary["meta_step_shift_mean"] == pytest.approx(shift[:2].mean().item(), rel=1e-9)
    assert summary["meta_step_shift_max"] == pytest.approx(shift[:2].max().item(), rel=1e-9)
    update = (criterion.estimator.covariance - start).flatten(1).norm(dim=1)
    vs_update = summary["meta_step_shift_vs_estimator_per_class"]
    moved = (meta.learned_covariance - start).flatten(1).norm(dim=1)
    torch.testing.assert_close(torch.tensor(vs_update[:2], dtype=torch.float64), moved[:2] / update[:2], rtol=1e-9,
                               atol=0)
    assert summary["meta_step_steps"] == 1
    assert summary["meta_step_loss_change"] != 0 and summary["meta_step_relative_loss_change"] > 0
    assert monitor.summary() == {}  # summary resets
    monitor.load_state(state)  # what a checkpoint carries gives the same figures back
    assert monitor.summary() == summary


def test_monitor_shift_scales_with_the_meta_learning_rate():
    one, two = (monitored_step(meta_lr)[0].summary() for meta_lr in (1e-4, 2e-4))  # the loss: linear for small steps
    for a, b in zip(one["meta_step_shift_per_class"], two["meta_step_shift_per_class"]):
        assert b == pytest.approx(2 * a, rel=1e-9)
    assert two["meta_step_relative_loss_change"] == pytest.approx(2 * one["meta_step_relative_loss_change"], rel=1e-3)
