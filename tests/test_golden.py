"""Agreement with the authors' released code: golden float64 values in ../shared/reference/golden."""
import pytest
import torch

from loss import EstimatorCV, MetaSAugLoss, class_balanced_weights, ldam_margins
from meta_layers import MetaSAug
from resnet import ResNet32

TOL = dict(rtol=1e-10, atol=1e-12)


def test_class_weights_and_margins(golden):
    torch.testing.assert_close(class_balanced_weights(golden["counts"]), golden["class_balanced_weights"], **TOL)
    torch.testing.assert_close(ldam_margins(golden["counts"]), golden["ldam_margins"], **TOL)


@pytest.mark.parametrize("kind,diagonal", [("estimator_full", False), ("estimator_diagonal", True)])
def test_estimator_states(golden, kind, diagonal):
    data = golden[kind]
    estimator = EstimatorCV(64, 10, diagonal=diagonal)
    for features, labels, state in zip(data["features"], data["labels"], data["states"]):
        estimator.update(features, labels)
        for name in ("covariance", "mean", "amount"):
            torch.testing.assert_close(getattr(estimator, name), state[name], **TOL)


@pytest.mark.parametrize("base", ["ce", "ldam"])
def test_loss_value_and_covariance_gradient(golden, base):
    case = golden["loss"]
    criterion = MetaSAugLoss(64, 10, golden["counts"], base=base).double()
    covariance = case["covariance"].clone().requires_grad_()
    value = criterion(case["logits"], case["fc_weight"], case["labels"], covariance, case["ratio"])
    grad, = torch.autograd.grad(value, covariance)
    torch.testing.assert_close(value, case[base]["value"], **TOL)
    torch.testing.assert_close(grad, case[base]["grad_covariance"], **TOL)


@pytest.mark.parametrize("meta_gradient", ["jvp", "jvp_by_forward_ad", "double_backward"])
@pytest.mark.parametrize("base", ["ce", "ldam"])
def test_three_metasaug_iterations(golden, float64, monkeypatch, base, meta_gradient):
    if meta_gradient == "jvp_by_forward_ad":  # the route of a model without its own logits_jvp
        monkeypatch.delattr(ResNet32, "logits_jvp")
        meta_gradient = "jvp"
    it, hyper = golden["iterations"], golden["iterations"]["hyper"]
    model = ResNet32(10)
    model.load_state_dict(it["init_state_dict"], strict=False)
    criterion = MetaSAugLoss(64, 10, golden["counts"], base=base)
    optimizer = torch.optim.SGD(model.parameters(), lr=hyper["lr"], momentum=hyper["momentum"],
                                nesterov=hyper["nesterov"], weight_decay=hyper["weight_decay"])
    meta = MetaSAug(model, criterion, meta_lr=hyper["meta_lr"], meta_gradient=meta_gradient)
    for k, batch in enumerate(it["batches"]):
        loss, _ = meta.step(batch["x"], batch["y"], batch["x_meta"], batch["y_meta"],
                            hyper["lookahead_lr"], hyper["ratios"][k])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected = it[base]["per_iteration"][k]
        torch.testing.assert_close(loss.detach(), expected["loss"], **TOL)
        torch.testing.assert_close(meta.learned_covariance, expected["learned_covariance"], **TOL)
    state = model.state_dict()
    for name, value in it[base]["final_state_dict"].items():
        torch.testing.assert_close(state[name], value, **TOL)
    for name, value in it[base]["final_estimator"].items():
        torch.testing.assert_close(getattr(criterion.estimator, name), value, **TOL)
