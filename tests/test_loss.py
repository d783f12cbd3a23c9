"""Hand-computed cases, gradient checks and the ISDA bound for loss.py."""
import pytest
import torch

from loss import (BASES, EstimatorCV, MetaSAugLoss, class_balanced_weights, classification_loss,
                  isda_aug_logits, ldam_margins, log_prior)


def released_aug_logits(logits, weight, labels, covariance, ratio):
    """The released formula, differences first (N x C x A), as an independent reference."""
    diff = weight.unsqueeze(0) - weight[labels].unsqueeze(1)
    if covariance.dim() == 2:
        sigma2 = (diff * diff * covariance[labels].unsqueeze(1)).sum(-1)
    else:
        sigma2 = torch.einsum("nca,nab,ncb->nc", diff, covariance[labels], diff)
    return logits + 0.5 * ratio * sigma2


def random_case(n, c, a, dtype=torch.float64, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype)
    weight = torch.randn(c, a, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    if diagonal:
        covariance = torch.rand(c, a, generator=g, dtype=dtype)
    else:
        root = torch.randn(c, a, a, generator=g, dtype=dtype)
        covariance = root @ root.transpose(1, 2) / a
    return logits, weight, labels, covariance


def test_estimator_hand_computed():
    estimator = EstimatorCV(2, 2).double()
    estimator.update(torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64), torch.tensor([0, 0]))
    torch.testing.assert_close(estimator.mean[0], torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(estimator.covariance[0], torch.ones(2, 2, dtype=torch.float64))
    estimator.update(torch.tensor([[2.0, 4.0]], dtype=torch.float64), torch.tensor([0]))
    pooled = torch.tensor([[2.0, 2.0], [2.0, 8.0]], dtype=torch.float64) / 3
    torch.testing.assert_close(estimator.covariance[0], pooled)
    torch.testing.assert_close(estimator.mean[0], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert estimator.amount.tolist() == [3.0, 0.0]
    assert not estimator.covariance[1].any() and not estimator.mean[1].any()


@pytest.mark.parametrize("diagonal", [False, True])
def test_estimator_equals_pooled_statistics(diagonal):
    g = torch.Generator().manual_seed(1)
    estimator = EstimatorCV(5, 4, diagonal=diagonal)
    features, labels = [], []
    for size, top in ((7, 4), (12, 2), (9, 3)):  # some classes absent from some batches
        f = torch.randn(size, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, top, (size,), generator=g)
        estimator.update(f, y)
        features.append(f)
        labels.append(y)
    features, labels = torch.cat(features), torch.cat(labels)
    for c in range(4):
        mine = features[labels == c]
        cov = torch.cov(mine.t(), correction=0)
        expected = torch.diagonal(cov) if diagonal else cov
        torch.testing.assert_close(estimator.covariance[c], expected)
        torch.testing.assert_close(estimator.mean[c], mine.mean(0))
        assert estimator.amount[c] == len(mine)
    assert estimator.covariance.dtype == torch.float64  # follows the features' dtype


def test_class_balanced_weights_hand_computed():
    torch.testing.assert_close(class_balanced_weights([5, 5]), torch.ones(2, dtype=torch.float64))
    raw = torch.tensor([0.1 / (1 - 0.9 ** 10), 1.0], dtype=torch.float64)
    torch.testing.assert_close(class_balanced_weights([10, 1], beta=0.9), raw / raw.sum() * 2)


def test_ldam_margins_hand_computed():
    torch.testing.assert_close(ldam_margins([16, 1]), torch.tensor([0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(ldam_margins([16, 1], max_m=1.0), torch.tensor([0.5, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("diagonal", [False, True])
def test_aug_logits_hand_computed(diagonal):
    weight = torch.tensor([[1.0], [3.0]])
    covariance = torch.tensor([[2.0], [5.0]]) if diagonal else torch.tensor([[[2.0]], [[5.0]]])
    aug = isda_aug_logits(torch.zeros(2, 2), weight, torch.tensor([0, 1]), covariance, 0.5)
    torch.testing.assert_close(aug, torch.tensor([[0.0, 2.0], [5.0, 0.0]]))


@pytest.mark.parametrize("n,c", [(12, 5), (3, 7)])  # per-class and per-sample branches
def test_aug_logits_match_released_formula(n, c):
    logits, weight, labels, _ = random_case(n, c, 6)
    covariance = torch.randn(c, 6, 6, dtype=torch.float64)  # not even symmetric
    torch.testing.assert_close(isda_aug_logits(logits, weight, labels, covariance, 0.7),
                               released_aug_logits(logits, weight, labels, covariance, 0.7))
    diagonal = torch.rand(c, 6, dtype=torch.float64)
    torch.testing.assert_close(isda_aug_logits(logits, weight, labels, diagonal, 0.7),
                               released_aug_logits(logits, weight, labels, diagonal, 0.7))


@pytest.mark.parametrize("base", BASES)
def test_diagonal_and_full_covariance_give_the_same_loss(base):
    logits, weight, labels, variance = random_case(10, 4, 3, diagonal=True)
    criterion = MetaSAugLoss(3, 4, [40, 20, 8, 2], base=base, gamma=2.0)
    full = criterion(logits, weight, labels, torch.diag_embed(variance), 0.5)
    torch.testing.assert_close(criterion(logits, weight, labels, variance, 0.5), full)


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("base", BASES)
def test_gradcheck(base, diagonal):
    logits, weight, labels, covariance = random_case(6, 3, 2, diagonal=diagonal)
    criterion = MetaSAugLoss(2, 3, [30, 10, 3], base=base, gamma=1.5, diagonal=diagonal)
    inputs = tuple(t.clone().requires_grad_() for t in (logits, weight, covariance))
    assert torch.autograd.gradcheck(lambda z, w, s: criterion(z, w, labels, s, 0.8), inputs)


def test_isda_bound_upper_bounds_monte_carlo():
    """The augmented loss bounds E_delta CE(W (a + delta) + b, y), delta ~ N(0, ratio Sigma_y)."""
    g = torch.Generator().manual_seed(3)
    n, c, a, ratio, draws = 6, 4, 3, 0.8, 200_000
    features = torch.randn(n, a, generator=g, dtype=torch.float64)
    weight = torch.randn(c, a, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % c
    root = torch.randn(c, a, a, generator=g, dtype=torch.float64)
    covariance = root @ root.transpose(1, 2)
    aug = isda_aug_logits(features @ weight.t() + bias, weight, labels, covariance, ratio)
    bound = torch.nn.functional.cross_entropy(aug, labels, reduction="none")
    chol = torch.linalg.cholesky(ratio * covariance[labels])
    noise = torch.randn(draws, n, a, generator=g, dtype=torch.float64)
    shifted = features + torch.einsum("nab,dnb->dna", chol, noise)
    sampled = torch.nn.functional.cross_entropy((shifted @ weight.t() + bias).reshape(-1, c),
                                                labels.repeat(draws), reduction="none").view(draws, n)
    mc, stderr = sampled.mean(0), sampled.std(0) / draws ** 0.5
    assert (bound >= mc - 4 * stderr).all(), (bound, mc)
    plain = torch.nn.functional.cross_entropy(features @ weight.t() + bias, labels, reduction="none")
    assert (mc > plain).any()  # the augmentation does raise the loss: the check is not vacuous


def test_focal_reduces_to_ce_and_hand_value():
    logits, _, labels, _ = random_case(8, 3, 2)
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(classification_loss(logits, labels, "focal", weights, gamma=0.0),
                               classification_loss(logits, labels, "ce", weights))
    two = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # p_y = 1/2: (1/2)^2 * log 2
    value = classification_loss(two, torch.tensor([0]), "focal", gamma=2.0)
    torch.testing.assert_close(value, torch.tensor(0.25 * torch.log(torch.tensor(2.0)).item(), dtype=torch.float64))


def test_ldam_subtracts_margin_from_true_class_only():
    logits = torch.zeros(1, 2, dtype=torch.float64)
    margins = torch.tensor([0.25, 0.5], dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.0, -0.5]], dtype=torch.float64), torch.tensor([1]))
    torch.testing.assert_close(classification_loss(logits, torch.tensor([1]), "ldam", constant=margins), expected)


def test_logit_adjustment_adds_the_log_prior_to_every_logit():
    logits = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    prior = log_prior([6, 3, 1])
    torch.testing.assert_close(prior, torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)))
    expected = torch.nn.functional.cross_entropy(logits + prior, torch.tensor([2]))
    torch.testing.assert_close(classification_loss(logits, torch.tensor([2]), "la", constant=prior), expected)
    criterion = MetaSAugLoss(2, 3, [6, 3, 1], base="la", beta=None)
    torch.testing.assert_close(criterion.constant, prior)  # a buffer: it follows .to() and the checkpoint
    assert set(criterion.state_dict()) >= {"log_prior"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("diagonal", [False, True])
def test_dtypes_follow_the_inputs(dtype, diagonal):
    logits, weight, labels, covariance = random_case(5, 3, 4, dtype=dtype, diagonal=diagonal)
    criterion = MetaSAugLoss(4, 3, [9, 3, 1], base="ldam", diagonal=diagonal)
    criterion.estimator.update(torch.randn(5, 4, dtype=dtype), labels)
    assert criterion.estimator.covariance.dtype == dtype
    assert criterion(logits, weight, labels, covariance, 0.5).dtype == dtype


@pytest.mark.parametrize("bad,match", [
    (dict(labels=torch.tensor([0, 1, 3, 0, 1])), r"labels must lie in \[0, 3\)"),
    (dict(labels=torch.tensor([0, 1])), r"labels must have shape \[5\]"),
    (dict(weight=torch.zeros(4, 4, dtype=torch.float64)), r"fc_weight must have shape \[3, A\]"),
    (dict(covariance=torch.zeros(3, 4, 5, dtype=torch.float64)), r"covariance must have shape \[3, 4, 4\]"),
    (dict(logits=torch.zeros(5, dtype=torch.float64)), r"logits must have shape \[N, C\]"),
])
def test_bad_shapes_and_labels_raise(bad, match):
    logits, weight, labels, covariance = random_case(5, 3, 4)
    args = dict(logits=logits, weight=weight, labels=labels, covariance=covariance) | bad
    with pytest.raises(ValueError, match=match):
        isda_aug_logits(args["logits"], args["weight"], args["labels"], args["covariance"], 0.5)


def test_estimator_rejects_bad_input():
    estimator = EstimatorCV(4, 3)
    with pytest.raises(ValueError, match=r"features must have shape \[N, 4\]"):
        estimator.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        estimator.update(torch.zeros(2, 4), torch.tensor([0, 3]))


def test_loss_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="base must be one of"):
        MetaSAugLoss(4, 2, [3, 1], base="hinge")
    with pytest.raises(ValueError, match="cls_num_list has 3 entries but num_classes=2"):
        MetaSAugLoss(4, 2, [3, 2, 1])
    with pytest.raises(ValueError, match="positive counts"):
        class_balanced_weights([3, 0])
