"""The small U-Net: size budget, any input size, positive depth, batch independence in eval."""

from __future__ import annotations

import math

import pytest
import torch

from metricdepth.models.small import SmallUNet, build_small_unet, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def net(one_thread) -> SmallUNet:
    torch.manual_seed(0)
    return build_small_unet().eval()


def test_default_is_within_the_parameter_budget(net):
    n = count_parameters(net)
    assert 1_000_000 < n <= 5_000_000
    assert net.size_multiple == 32


@pytest.mark.parametrize("hw", [(96, 128), (37, 53), (1, 1), (130, 64)])
def test_any_input_size_gives_positive_depth_of_that_size(net, hw):
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = net(x)
    assert out["depth_c"].shape == (2, 1, *hw)
    assert out["log_depth_c"].shape == (2, 1, *hw)
    assert torch.isfinite(out["depth_c"]).all() and (out["depth_c"] > 0).all()
    torch.testing.assert_close(out["depth_c"], torch.exp(out["log_depth_c"]))


def test_untrained_output_starts_at_init_log_depth():
    torch.manual_seed(1)
    model = SmallUNet(widths=(8, 16, 32), init_log_depth=math.log(7.0)).eval()
    with torch.no_grad():
        log_depth = model(torch.randn(1, 3, 40, 56))["log_depth_c"]
    assert abs(float(log_depth.mean()) - math.log(7.0)) < 0.05
    assert float(log_depth.std()) < 0.05


def test_eval_output_does_not_depend_on_the_rest_of_the_batch(net):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        together = net(x)["log_depth_c"]
        alone = net(x[1:2])["log_depth_c"]
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)


def test_internal_padding_matches_explicit_zero_padding():
    torch.manual_seed(3)
    model = SmallUNet(widths=(8, 16, 32)).eval()  # size_multiple 8
    x = torch.randn(1, 3, 20, 30)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 4))  # 24 x 32: what the model pads to
    with torch.no_grad():
        a = model(x)["log_depth_c"]
        b = model(padded)["log_depth_c"]
    assert a.shape == (1, 1, 20, 30) and b.shape == (1, 1, 24, 32)
    assert torch.equal(a, b[..., :20, :30])  # the same 24 x 32 input to every layer: same bits


def test_a_few_steps_fit_a_constant_depth():
    torch.manual_seed(4)
    model = SmallUNet(widths=(8, 16, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 3, 32, 32)
    target = torch.full((4, 1, 32, 32), math.log(2.0))
    losses = []
    for _ in range(30):
        loss = (model(x)["log_depth_c"] - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # starts at log 5 - log 2 ~ 0.92
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("kwargs", [{"widths": (8,)}, {"widths": (8, 0)}, {"decoder_blocks": 0}])
def test_invalid_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError, match="small_unet"):
        SmallUNet(**kwargs)


def test_wrong_input_shape_is_a_value_error(net):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 4, 32, 32))
