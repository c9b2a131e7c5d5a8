"""The feedback network against the supplementary's Table 1 and Figure 2."""

import pytest
import torch

import ouroboros3d  # noqa: F401  (makes diffusers importable on CPU-only torch)
from ouroboros3d.models.feedback import FeedbackNetwork, ResidualBlock

TABLE_1 = [(320, 64, 64), (640, 32, 32), (1280, 16, 16), (1280, 8, 8)]


def test_table_1_shapes_on_meta():
    with torch.device("meta"):
        net = FeedbackNetwork()  # the paper's defaults
        maps = torch.empty(2, 3, 512, 512)
        unshuffled = net.unshuffle(maps)
        features = net(maps)
    assert unshuffled.shape == (2, 192, 64, 64)
    assert [tuple(f.shape[1:]) for f in features] == TABLE_1
    assert all(f.shape[0] == 2 for f in features)
    # 4 scales x 3 residual blocks, as Table 1.
    assert [len(s.blocks) for s in net.scales] == [3, 3, 3, 3]
    assert sum(p.numel() for p in net.parameters()) == 209_987_840


def test_residual_block_is_figure_2_and_starts_as_identity():
    block = ResidualBlock(8)
    assert block.conv1.kernel_size == (3, 3) and block.conv2.kernel_size == (3, 3)
    assert isinstance(block.act, torch.nn.ReLU)
    assert not block.conv2.weight.any() and not block.conv2.bias.any()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)


def test_untrained_network_outputs_exact_zeros():
    net = FeedbackNetwork(unshuffle=2, channels=(8, 16, 16), blocks_per_scale=2)
    features = net(torch.rand(3, 3, 32, 32))
    assert [tuple(f.shape) for f in features] == [(3, 8, 16, 16), (3, 16, 8, 8), (3, 16, 4, 4)]
    assert all(not f.any() for f in features)


@pytest.mark.parametrize(("unshuffle", "size"), [(1, 16), (2, 16), (4, 32), (3, 24), (1, 12)])
def test_any_unshuffle_factor(unshuffle, size):
    net = FeedbackNetwork(unshuffle=unshuffle, channels=(8, 8, 16, 16), blocks_per_scale=1)
    features = net(torch.rand(1, 3, size, size))
    side = size // unshuffle
    expected = []
    for _ in range(4):
        expected.append(side)
        side = -(-side // 2)  # rounded up, as the UNet's stride-2 downsamplers do
    assert [f.shape[-1] for f in features] == expected
    assert [f.shape[1] for f in features] == [8, 8, 16, 16]


def test_indivisible_map_size_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        FeedbackNetwork(unshuffle=8, channels=(8,))(torch.rand(1, 3, 20, 20))


def test_gradients_reach_every_layer_once_zero_convs_are_trained():
    torch.manual_seed(0)
    net = FeedbackNetwork(unshuffle=2, channels=(8, 16), blocks_per_scale=2)
    maps = torch.rand(2, 3, 16, 16)
    # At initialisation only the zero convs receive gradient (ControlNet's property).
    sum(f.square().sum() + f.sum() for f in net(maps)).backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in net.zero_convs)
    assert not net.conv_in.weight.grad.any()
    # After the zero convs (and residual branches) move, gradient reaches every layer.
    net.zero_grad()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    sum(f.square().sum() for f in net(maps)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
