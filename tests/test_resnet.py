"""ResNet-32: its JVP from recorded activations against torch.func.jvp, which recomputes them."""
import pytest
import torch
from torch.func import functional_call, jvp

from meta_layers import frozen_batchnorm_statistics
from resnet import ResNet32


def network_and_tangents(dtype, seed=0):
    torch.manual_seed(seed)
    model = ResNet32(5, num_blocks=(2, 1, 1)).to(dtype)
    with torch.no_grad():  # BatchNorm affine parameters and running statistics away from their defaults
        for name, value in model.state_dict().items():
            if name.endswith(("bn1.weight", "bn2.weight", "bias", "running_mean", "running_var")):
                value.copy_(torch.rand_like(value) + 0.5)
    tangents = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    return model, torch.randn(6, 3, 8, 8, dtype=dtype), tangents


def logits_tangent_by_forward_ad(model, x, tangents):
    params = {name: p.detach() for name, p in model.named_parameters()}
    full = {name: tangents.get(name, torch.zeros_like(p)) for name, p in params.items()}
    with frozen_batchnorm_statistics(model):
        return jvp(lambda p: functional_call(model, p, (x,))[1], (params,), (full,))[1]


@pytest.mark.parametrize("training", [True, False], ids=["batch_statistics", "running_statistics"])
def test_logits_jvp_equals_forward_mode_autodiff(training):
    model, x, tangents = network_and_tangents(torch.float64)
    model.train(training)
    expected = logits_tangent_by_forward_ad(model, x, tangents)
    activations = {}
    model(x, activations)
    torch.testing.assert_close(model.logits_jvp(activations, tangents), expected, rtol=1e-12, atol=1e-12)


def test_logits_jvp_treats_absent_tangents_as_zero():
    model, x, tangents = network_and_tangents(torch.float64)
    some = {name: t for name, t in tangents.items() if "layer2" not in name and name != "linear.bias"}
    activations = {}
    model(x, activations)
    torch.testing.assert_close(model.logits_jvp(activations, some), logits_tangent_by_forward_ad(model, x, some),
                               rtol=1e-12, atol=1e-12)


def test_logits_jvp_in_float32_channels_last():
    model, x, tangents = network_and_tangents(torch.float32)
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    activations = {}
    model(x, activations)
    result = model.logits_jvp(activations, tangents)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, logits_tangent_by_forward_ad(model, x, tangents), rtol=1e-4, atol=1e-4)


def test_recording_changes_nothing_else():
    """The recorded forward pass returns the same outputs and updates BatchNorm once, as a plain one."""
    model, x, _ = network_and_tangents(torch.float64)
    recorded = ResNet32(5, num_blocks=(2, 1, 1)).to(torch.float64)
    recorded.load_state_dict(model.state_dict())
    plain_outputs = model(x)
    recorded_outputs = recorded(x, {})
    for a, b in zip(plain_outputs, recorded_outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, a), b in zip(model.state_dict().items(), recorded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
