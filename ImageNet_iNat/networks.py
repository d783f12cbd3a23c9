"""The ResNet feature extractor + linear classifier, and the checkpoint layouts they read and write.

``FeatureClassifier(x) -> (features, logits)``; ``.fc`` is the linear layer (``MetaSAug``'s
``classifier='fc'``). With ``frozen=True`` (stage 2) the backbone stays in eval mode, its
parameters do not require grad and it runs under ``torch.no_grad`` (optionally under bf16
autocast on CUDA); the features are returned in float32. A 2-d input is taken as precomputed
features and goes to the classifier directly (used for the cached ImageNet-LT meta features).

Layouts read (``split_state``):

- cRT stage 1 (``resnet50_uniform_e90.pth``): ``state_dict_best`` -> ``feat_model`` and
  ``classifier`` (``fc.weight``/``fc.bias``), keys prefixed ``module.``;
- MetaSAug released / ours (stage 2): ``state_dict`` -> ``feature`` and ``classifier``
  (``fc.weight``/``fc.bias``);
- a plain torchvision ResNet state_dict (``fc.*`` the classifier), bare or under ``state_dict``.
"""
import contextlib

import torch
import torch.nn as nn
import torchvision

from checkpoint import CheckpointError, load_model_state, strip_module_prefix

ARCHS = ("resnet50", "resnet101", "resnet152", "resnet18")  # resnet18: tests and smoke runs only


def build_backbone(arch):
    """A torchvision ResNet without its fc layer (random init); returns (module, feature_dim)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    net = getattr(torchvision.models, arch)(weights=None)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


class FeatureClassifier(nn.Module):
    def __init__(self, arch, num_classes, frozen=True, amp=False):
        super().__init__()
        self.backbone, self.feature_dim = build_backbone(arch)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.frozen, self.amp = frozen, amp
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def _autocast(self, device):
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def features(self, x):
        if x.dim() == 2:
            return x
        grad = contextlib.nullcontext() if not self.frozen else torch.no_grad()
        with grad, self._autocast(x.device):
            features = self.backbone(x)
        return features.float()

    def forward(self, x):
        features = self.features(x)
        return features, self.fc(features)


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts
# ---------------------------------------------------------------------------------------------

def _tensor_dict(value):
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


LAYOUT_HELP = ("expected a cRT stage-1 checkpoint (state_dict_best -> feat_model, classifier), a MetaSAug "
               "checkpoint (state_dict -> feature, classifier) or a torchvision ResNet state_dict")


def split_state(checkpoint, path):
    """(feature state, classifier state with keys weight/bias, layout name) of any accepted layout."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} has an unknown layout ({type(checkpoint).__name__}); {LAYOUT_HELP}")
    best = checkpoint.get("state_dict_best")
    nested = checkpoint.get("state_dict")
    if isinstance(best, dict) and _tensor_dict(best.get("feat_model")) and _tensor_dict(best.get("classifier")):
        feature, classifier, layout = best["feat_model"], best["classifier"], "cRT stage 1"
    elif isinstance(nested, dict) and _tensor_dict(nested.get("feature")) and _tensor_dict(nested.get("classifier")):
        feature, classifier, layout = nested["feature"], nested["classifier"], "MetaSAug stage 2"
    else:
        plain = nested if _tensor_dict(nested) else checkpoint if _tensor_dict(checkpoint) else None
        if plain is None:
            keys = ", ".join(sorted(map(str, checkpoint))[:5])
            raise CheckpointError(f"{path} has an unknown layout (top-level keys: {keys}); {LAYOUT_HELP}")
        plain = strip_module_prefix(plain)
        feature = {k: v for k, v in plain.items() if not k.startswith("fc.")}
        classifier = {k: v for k, v in plain.items() if k.startswith("fc.")}
        layout = "torchvision ResNet"
    classifier = strip_module_prefix(classifier)
    if set(classifier) != {"fc.weight", "fc.bias"}:
        raise CheckpointError(f"{path} ({layout}): the classifier must be one linear layer fc.weight/fc.bias, "
                              f"got {sorted(classifier)[:4]}; {LAYOUT_HELP}")
    return strip_module_prefix(feature), {"weight": classifier["fc.weight"], "bias": classifier["fc.bias"]}, layout


def load_weights(model, checkpoint, path, num_classes):
    """Load any accepted layout into ``model`` (a ``FeatureClassifier``); returns the layout name."""
    feature, classifier, layout = split_state(checkpoint, path)
    weight = classifier["weight"]
    if weight.dim() != 2 or classifier["bias"].shape != weight.shape[:1]:
        raise CheckpointError(f"{path} ({layout}): classifier weight/bias shapes {list(weight.shape)}/"
                              f"{list(classifier['bias'].shape)} are not those of a linear layer")
    if weight.shape[0] != num_classes:
        raise CheckpointError(f"{path} ({layout}) has a {weight.shape[0]}-class classifier but --num_classes "
                              f"is {num_classes}; check --num_classes / --dataset")
    if weight.shape[1] != model.feature_dim:
        raise CheckpointError(f"{path} ({layout}) has {weight.shape[1]}-d features but --arch gives "
                              f"{model.feature_dim}; check --arch")
    _load_feature_extractor(model, feature, path, layout)
    model.fc.load_state_dict(classifier)
    return layout


def _load_feature_extractor(model, feature, path, layout):
    try:
        load_model_state(model.backbone, feature)
    except CheckpointError as error:
        raise CheckpointError(f"{path} ({layout}) feature extractor: {error}; check --arch") from None


def load_backbone(model, checkpoint, path):
    """Load only the feature extractor of any accepted layout into ``model`` (a ``FeatureClassifier``),
    e.g. an ImageNet-pretrained torchvision ResNet; its classifier, for other classes, is not used."""
    feature, _, layout = split_state(checkpoint, path)
    _load_feature_extractor(model, feature, path, layout)
    return layout


def released_state(model):
    """``{'feature', 'classifier'}`` as in the released MetaSAug checkpoints (classifier keys fc.*)."""
    return {"feature": model.backbone.state_dict(),
            "classifier": {f"fc.{k}": v for k, v in model.fc.state_dict().items()}}


def crt_state(model):
    """``{'feat_model', 'classifier'}`` with ``module.`` prefixes, the cRT stage-1 layout."""
    return {"feat_model": {f"module.{k}": v for k, v in model.backbone.state_dict().items()},
            "classifier": {f"module.fc.{k}": v for k, v in model.fc.state_dict().items()}}
