"""The CIFAR ResNet-32 of the released MetaSAug code, as a plain ``nn.Module``.

Parameter and buffer names match the authors' released checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{0..4}.{conv1,bn1,conv2,bn2}``, ``linear``);
the only extra entries are BatchNorm's ``num_batches_tracked``, which
``checkpoint.load_model_state`` fills in when a released checkpoint lacks them.

The network also supplies its exact Jacobian-vector product with respect to its parameters
(``logits_jvp``), computed from the activations of a recorded forward pass. MetaSAug's
meta-gradient needs that product at the training batch, whose forward pass it has already run;
``torch.func.jvp`` would run it again.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init


def _kaiming_init(module):
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(module.weight)


def _conv_jvp(conv, x, x_dot, weight_dot):
    """Tangent of a bias-free convolution, bilinear in input and weight (``x_dot=None``: constant input)."""
    tangent = conv._conv_forward(x, weight_dot, None)
    if x_dot is not None:
        tangent = tangent + conv._conv_forward(x_dot, conv.weight, None)
    return tangent


def _batch_norm_jvp(norm, x, x_dot, weight_dot, bias_dot):
    """Tangent of a BatchNorm layer, with the statistics it uses in its current mode.

    With batch statistics, ``x_hat = (x - mean) / std`` moves too:
    ``y_dot = g/std (x_dot - mean(x_dot) - x_hat mean(x_dot x_hat)) + g_dot x_hat + b_dot``.
    """
    dims = [0] + list(range(2, x.dim()))
    per_channel = (1, -1) + (1,) * (x.dim() - 2)
    batch_statistics = norm.training or norm.running_mean is None  # as F.batch_norm decides
    if batch_statistics:  # two passes, centred (torch.var_mean is several times slower on the CPU)
        centred = x - x.mean(dims, keepdim=True)
        var = (centred * centred).mean(dims, keepdim=True)
    else:
        centred, var = x - norm.running_mean.view(per_channel), norm.running_var.view(per_channel)
    inverse_std = torch.rsqrt(var + norm.eps)
    x_hat = centred * inverse_std
    scale = norm.weight.view(per_channel) * inverse_std
    x_hat_coefficient = weight_dot.view(per_channel)
    offset = bias_dot.view(per_channel)
    if batch_statistics:
        x_hat_coefficient = x_hat_coefficient - scale * (x_dot * x_hat).mean(dims, keepdim=True)
        offset = offset - scale * x_dot.mean(dims, keepdim=True)
    return torch.addcmul(offset, x_hat, x_hat_coefficient).addcmul_(x_dot, scale)


def _relu_jvp(output, output_dot):
    """Tangent of ``output = relu(.)``: autograd's own ReLU derivative kernel (zero where output <= 0)."""
    return torch.ops.aten.threshold_backward(output_dot, output, 0)


class _OptionAShortcut(nn.Module):
    """Parameter-free shortcut (He et al. 2016, option A): subsample, zero-pad channels."""

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = _OptionAShortcut(planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x, activations=None):
        conv1 = self.conv1(x)
        hidden = F.relu(self.bn1(conv1))
        conv2 = self.conv2(hidden)
        out = F.relu(self.bn2(conv2) + self.shortcut(x))
        if activations is not None:
            activations[self] = (x, conv1, hidden, conv2, out)
        return out

    def jvp(self, activations, x_dot, dot):
        """Tangent of the block's output; ``dot(parameter)`` gives each parameter's tangent."""
        x, conv1, hidden, conv2, out = activations[self]
        tangent = _conv_jvp(self.conv1, x, x_dot, dot(self.conv1.weight))
        tangent = _relu_jvp(hidden, _batch_norm_jvp(self.bn1, conv1, tangent, dot(self.bn1.weight),
                                                    dot(self.bn1.bias)))
        tangent = _conv_jvp(self.conv2, hidden, tangent, dot(self.conv2.weight))
        tangent = _batch_norm_jvp(self.bn2, conv2, tangent, dot(self.bn2.weight), dot(self.bn2.bias))
        return _relu_jvp(out, tangent + self.shortcut(x_dot))


class NormedLinear(nn.Module):
    """Cao et al.'s (2019) cosine classifier: logits = normalize(features) @ normalize(weight), weight
    ``[in_features, out_features]`` (their layout and initialisation); scale the logits in the loss."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class ResNet32(nn.Module):
    """ResNet-32 for 32x32 images; ``forward(x) -> (features [N, 64], logits [N, C])``.

    ``feature_dim`` is exposed because the ISDA estimator is sized by it. ``normed=True`` replaces the
    linear classifier with Cao et al.'s ``NormedLinear`` (their LDAM baselines); MetaSAug needs the
    linear one.
    """

    feature_dim = 64

    def __init__(self, num_classes=10, num_blocks=(5, 5, 5), normed=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = NormedLinear(64, num_classes) if normed else nn.Linear(64, num_classes)
        self.apply(_kaiming_init)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def _blocks(self):
        return [block for layer in (self.layer1, self.layer2, self.layer3) for block in layer]

    def forward(self, x, activations=None):
        """``activations``, a dict, receives what ``logits_jvp`` needs (references, no copies)."""
        conv1 = self.conv1(x)
        out = stem = F.relu(self.bn1(conv1))
        for block in self._blocks():
            out = block(out, activations)
        features = F.avg_pool2d(out, out.shape[2:]).flatten(1)
        if activations is not None:
            activations[self] = (x, conv1, stem, features)
        return features, self.linear(features)

    @torch.no_grad()
    def logits_jvp(self, activations, tangents):
        """Tangent of the logits along parameter tangents ``{name: tensor}`` (absent names: zero).

        Exact at the point of the forward pass that filled ``activations`` (BatchNorm in the same
        mode); it costs two convolutions per layer and no forward pass.
        """
        by_parameter = {id(p): tangents[name] for name, p in self.named_parameters() if name in tangents}

        def dot(parameter):
            tangent = by_parameter.get(id(parameter))
            return torch.zeros_like(parameter) if tangent is None else tangent

        x, conv1, stem, features = activations[self]
        tangent = _conv_jvp(self.conv1, x, None, dot(self.conv1.weight))
        tangent = _relu_jvp(stem, _batch_norm_jvp(self.bn1, conv1, tangent, dot(self.bn1.weight),
                                                  dot(self.bn1.bias)))
        for block in self._blocks():
            tangent = block.jvp(activations, tangent, dot)
        features_dot = tangent.mean((2, 3))
        return (features_dot @ self.linear.weight.t() + features @ dot(self.linear.weight).t()
                + dot(self.linear.bias))
