"""MetaSAug's meta step: learn the class-wise covariance by a one-step lookahead.

With ``L(theta, Sigma)`` the augmented training loss, ``theta' = theta - lr * grad_theta L`` and
``M(theta')`` the plain cross-entropy on a balanced meta batch, MetaSAug updates
``Sigma <- Sigma - meta_lr * dM/dSigma`` and trains the network with the new ``Sigma``.

Two exact ways to get ``dM/dSigma`` are offered:

- ``meta_gradient="jvp"`` (default). With ``v = grad M(theta')``,
  ``dM/dSigma = -lr * d/dSigma <grad_theta L(theta, Sigma), v>``, and by the symmetry of mixed
  partials this is ``-lr`` times the derivative of ``dL/dSigma`` along ``v``. ``dL/dSigma`` depends
  on ``theta`` only through the logits and the classifier weight, so one forward-mode
  Jacobian-vector product of the network (logits along ``v``) and a tiny double backward of the
  loss head replace the released double backward through the whole network. The training batch's
  forward pass is shared by the lookahead and the real update; a model that offers
  ``forward(x, activations)`` and ``logits_jvp(activations, tangents)`` (as ``resnet.ResNet32``
  does) also shares it with the JVP, which otherwise ``torch.func.jvp`` recomputes.
- ``meta_gradient="double_backward"``: the released algorithm literally (gradients with
  ``create_graph=True``, a second forward pass of the training batch); kept as the reference.

Functional weights go through ``torch.func.functional_call``; no network is rebuilt. The
lookahead's forward passes use batch statistics and leave BatchNorm's running statistics alone,
so these change once per iteration, with the training batch, exactly as in the released loop.
"""
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp
from torch.nn.modules.batchnorm import _BatchNorm

# PyTorch scripts its forward-AD decompositions on the first jvp and warns about its own use of
# torch.jit.script; the warning concerns PyTorch internals, not this code.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

LOOKAHEADS = ("all", "classifier")
META_GRADIENTS = ("jvp", "double_backward")


def augmentation_ratio(lam, epoch, epochs):
    """The released ISDA strength of 0-based ``epoch``: ``lam * epoch / epochs``, growing linearly
    (the paper writes a fixed lambda)."""
    return lam * epoch / epochs


@contextmanager
def frozen_batchnorm_statistics(model):
    """Forward passes inside use batch statistics (in train mode) without updating running ones."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


class MetaSAug:
    """One MetaSAug iteration for ``model`` (``forward(x) -> (features, logits)``).

    ``criterion`` is a ``loss.MetaSAugLoss``; ``classifier`` names the model's last linear layer.
    ``lookahead="classifier"`` restricts the lookahead to that layer (the ImageNet/iNat recipe).

    ``carry_covariance=True`` is a variant, not the released method: the learned covariance replaces the
    estimator's before its update, so the meta steps accumulate across iterations (the released code and
    the paper's eq. 4 start every step from the estimate). A ``MetaStepMonitor`` passed as ``monitor``
    measures every step.

    Usage::

        loss, logits = meta.step(x, y, x_meta, y_meta, lr=lookahead_lr, ratio=ratio)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    def __init__(self, model, criterion, meta_lr=0.1, classifier="linear", lookahead="all",
                 meta_gradient="jvp", carry_covariance=False, monitor=None):
        if lookahead not in LOOKAHEADS:
            raise ValueError(f"lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient must be one of {META_GRADIENTS}, got {meta_gradient!r}")
        self.model, self.criterion, self.meta_lr = model, criterion, meta_lr
        self.lookahead, self.meta_gradient = lookahead, meta_gradient
        self.carry_covariance, self.monitor = carry_covariance, monitor
        self.classifier = model.get_submodule(classifier)
        num_classes = criterion.estimator.covariance.shape[0]
        weight = getattr(self.classifier, "weight", None)
        if weight is None or weight.dim() != 2 or weight.shape[0] != num_classes:
            raise ValueError(f"model.{classifier} must be a linear layer with a [C, A] weight, C = {num_classes} "
                             f"classes (a normalised classifier such as resnet.NormedLinear is not one)")
        prefix = classifier + "."
        self._names = [name for name, p in model.named_parameters() if p.requires_grad
                       and (lookahead == "all" or name.startswith(prefix))]
        self._weight_key = prefix + "weight"
        if lookahead == "classifier":
            self._names = [name[len(prefix):] for name in self._names]
            self._weight_key = "weight"
        self.learned_covariance = None

    def _lookahead_params(self):
        module = self.model if self.lookahead == "all" else self.classifier
        return {name: module.get_parameter(name) for name in self._names}

    def _logits(self, params, inputs=None, features=None):
        """Logits under replaced parameters: the whole network, or the classifier on ``features``."""
        if self.lookahead == "all":
            return functional_call(self.model, params, (inputs,))[1]
        return functional_call(self.classifier, params, (features,))

    def _meta_features(self, meta_inputs):
        if self.lookahead == "all":
            return None
        with torch.no_grad(), frozen_batchnorm_statistics(self.model):
            return self.model(meta_inputs)[0]

    def step(self, inputs, targets, meta_inputs, meta_targets, lr, ratio):
        """Learn the covariance, update the estimator, return ``(training loss, logits)``.

        ``lr`` is the lookahead's SGD step size (the released code uses the current learning rate).
        The loss carries its graph to the model's parameters; the caller backpropagates it.
        """
        estimator = self.criterion.estimator
        covariance = estimator.covariance.detach()
        if self.meta_gradient == "jvp":
            features, logits, meta_grad = self._meta_grad_by_jvp(inputs, targets, meta_inputs, meta_targets,
                                                                 lr, ratio, covariance)
        else:
            meta_grad = self._meta_grad_by_double_backward(inputs, targets, meta_inputs, meta_targets,
                                                           lr, ratio, covariance)
            features, logits = self.model(inputs)
        shift = self.meta_lr * meta_grad
        learned = (covariance - shift).detach()
        self.learned_covariance = learned
        if self.carry_covariance:  # later steps start from the learned covariance, not the estimate
            estimator.covariance = learned
        before_update = estimator.covariance
        estimator.update(features.detach(), targets)
        loss = self.criterion(logits, self.classifier.weight, targets, learned, ratio)
        if self.monitor is not None:
            self.monitor.observe(self.criterion, logits.detach(), self.classifier.weight.detach(), targets, ratio,
                                 covariance, shift.detach(), estimator.covariance - before_update)
        return loss, logits

    def _meta_loss_grad(self, lookahead_params, meta_inputs, meta_targets):
        """``grad M(theta')``: plain cross-entropy of the lookahead network on the meta batch."""
        meta_features = self._meta_features(meta_inputs)
        with frozen_batchnorm_statistics(self.model):
            meta_logits = self._logits(lookahead_params, meta_inputs, meta_features)
        meta_loss = F.cross_entropy(meta_logits, meta_targets)
        return torch.autograd.grad(meta_loss, list(lookahead_params.values()))

    def _meta_grad_by_jvp(self, inputs, targets, meta_inputs, meta_targets, lr, ratio, covariance):
        params = self._lookahead_params()
        weight = self.classifier.weight
        if self.lookahead == "all" and hasattr(self.model, "logits_jvp"):
            activations = {}
            features, logits = self.model(inputs, activations)
        else:
            activations = None
            features, logits = self.model(inputs)
        train_loss = self.criterion(logits, weight, targets, covariance, ratio)
        grads = torch.autograd.grad(train_loss, list(params.values()), retain_graph=True)
        lookahead = {name: (p - lr * g).detach().requires_grad_()
                     for (name, p), g in zip(params.items(), grads)}
        direction = self._meta_loss_grad(lookahead, meta_inputs, meta_targets)
        tangents = dict(zip(params, direction))
        # A forward pass run in lower precision (autocast) is not reused: the JVP stays exact.
        if activations is not None and logits.dtype == weight.dtype:
            logits_tangent = self.model.logits_jvp(activations, tangents)
        else:
            logits_tangent = self._logits_jvp_by_forward_ad(params, tangents, inputs, features.detach())
        weight_tangent = tangents.get(self._weight_key)
        meta_grad = -lr * self._mixed_partial(logits.detach(), weight.detach(), targets, covariance,
                                              ratio, logits_tangent, weight_tangent)
        return features, logits, meta_grad

    def _logits_jvp_by_forward_ad(self, params, tangents, inputs, features):
        """The logits' tangent by ``torch.func.jvp``, which repeats the forward pass."""
        primals = {name: p.detach() for name, p in params.items()}
        # Forward-mode AD does not mix with autocast's casts; the JVP runs in the parameters' dtype.
        with frozen_batchnorm_statistics(self.model), torch.autocast(inputs.device.type, enabled=False):
            return jvp(lambda p: self._logits(p, inputs, features), (primals,), (tangents,))[1]

    def _mixed_partial(self, logits, weight, targets, covariance, ratio, logits_tangent, weight_tangent):
        """``d/dSigma [<dL/dz, z_dot> + <dL/dW, W_dot>]`` at fixed logits ``z`` and weight ``W``."""
        logits = logits.requires_grad_()
        weight = weight.requires_grad_()
        covariance = covariance.clone().requires_grad_()
        loss = self.criterion(logits, weight, targets, covariance, ratio)
        grad_logits, grad_weight = torch.autograd.grad(loss, (logits, weight), create_graph=True)
        directional = (grad_logits * logits_tangent).sum()
        if weight_tangent is not None:
            directional = directional + (grad_weight * weight_tangent).sum()
        return torch.autograd.grad(directional, covariance)[0]

    def _meta_grad_by_double_backward(self, inputs, targets, meta_inputs, meta_targets, lr, ratio, covariance):
        covariance = covariance.clone().requires_grad_()
        params = self._lookahead_params()
        with frozen_batchnorm_statistics(self.model):
            _, logits = self.model(inputs)
        train_loss = self.criterion(logits, self.classifier.weight, targets, covariance, ratio)
        grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
        lookahead = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
        meta_features = self._meta_features(meta_inputs)
        with frozen_batchnorm_statistics(self.model):
            meta_logits = self._logits(lookahead, meta_inputs, meta_features)
        meta_loss = F.cross_entropy(meta_logits, meta_targets)
        return torch.autograd.grad(meta_loss, covariance)[0]


class MetaStepMonitor:
    """How far MetaSAug's meta step moves each class's covariance, and the training loss, accumulated over steps.

    Per step and class: ``||Sigma_learned - Sigma_est|| / ||Sigma_est||`` (Frobenius), and the same shift over
    the estimator's own update of that step ``||Sigma_est,after - Sigma_est,before||``. A class counts only in
    the steps where it is in the training batch (its meta-gradient is zero otherwise: averaging those zeros in
    would understate the tail classes' shift) and its estimate is not still zero. The shift is taken from the
    meta-gradient itself, and the losses with the learned and the estimated covariance are evaluated in
    float64, so that shifts far below float32's resolution of the covariance are measured, not rounded away.
    Sums stay on the tensors' device; ``summary`` reads them once (an epoch's figures in the trainer).
    """

    def __init__(self):
        self._sums = None

    def observe(self, criterion, logits, weight, labels, ratio, estimated, shift, estimator_update):
        """One step: ``estimated`` the covariance it started from, ``shift`` = estimated - learned,
        ``estimator_update`` the estimator's change by this step's batch."""
        def norms(tensor):
            return tensor.detach().flatten(1).double().norm(dim=1)
        base, moved, update = norms(estimated), norms(shift), norms(estimator_update)
        present = torch.bincount(labels, minlength=estimated.shape[0]) > 0
        counted, counted_update = present & (base > 0), present & (update > 0)
        with torch.no_grad():
            logits, weight, estimated = logits.double(), weight.double(), estimated.double()
            isda_loss = criterion(logits, weight, labels, estimated, ratio)
            learned_loss = criterion(logits, weight, labels, estimated - shift.double(), ratio)
        per_class = torch.stack([torch.where(counted, moved / base, 0.0), counted.double(),
                                 torch.where(counted_update, moved / update, 0.0), counted_update.double()])
        per_step = torch.stack([learned_loss - isda_loss, (learned_loss - isda_loss).abs() / isda_loss,
                                torch.ones_like(isda_loss)])
        if self._sums is None:
            self._sums = [torch.zeros_like(per_class), torch.zeros_like(per_step)]
        self._sums = [self._sums[0].to(per_class) + per_class, self._sums[1].to(per_step) + per_step]

    def state(self):
        """The sums so far (nested lists of floats; None before the first step), for a checkpoint: a run
        resumed mid-epoch then reports the whole epoch."""
        return None if self._sums is None else [total.tolist() for total in self._sums]

    def load_state(self, state):
        self._sums = None if state is None else [torch.tensor(total, dtype=torch.float64) for total in state]

    def summary(self):
        """The steps observed since the last call, as ``meta_step_*`` floats (per-class lists with None for a
        class never counted), and a reset; {} when no step was observed."""
        if self._sums is None:
            return {}
        (shift, counted, vs_update, counted_update), (loss_change, relative_loss_change, steps) = (
            total.cpu().tolist() for total in self._sums)
        self._sums = None

        def means(sums, counts):
            return [value / count if count else None for value, count in zip(sums, counts)]
        result = dict(meta_step_steps=int(steps), meta_step_loss_change=loss_change / steps,
                      meta_step_relative_loss_change=relative_loss_change / steps)
        for key, per_class in (("shift", means(shift, counted)),
                               ("shift_vs_estimator", means(vs_update, counted_update))):
            seen = [value for value in per_class if value is not None]
            result.update({f"meta_step_{key}_mean": sum(seen) / len(seen) if seen else None,
                           f"meta_step_{key}_max": max(seen) if seen else None,
                           f"meta_step_{key}_per_class": per_class})
        return result
