"""The CIFAR ResNet-32 of the released MetaSAug code, as a plain ``nn.Module``.

Parameter and buffer names match the authors' released checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{0..4}.{conv1,bn1,conv2,bn2}``, ``linear``);
the only extra entries are BatchNorm's ``num_batches_tracked``, which
``checkpoint.load_model_state`` fills in when a released checkpoint lacks them.
"""
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init


def _kaiming_init(module):
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(module.weight)


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

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """ResNet-32 for 32x32 images; ``forward(x) -> (features [N, 64], logits [N, C])``.

    ``feature_dim`` is exposed because the ISDA estimator is sized by it.
    """

    feature_dim = 64

    def __init__(self, num_classes=10, num_blocks=(5, 5, 5)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_kaiming_init)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        features = F.avg_pool2d(out, out.shape[2:]).flatten(1)
        return features, self.linear(features)
