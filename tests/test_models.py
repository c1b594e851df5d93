import pytest
import torch
from torch import nn

from cinevox.models import Decoder, Encoder, EncoderDecoder, TemporalCombinations
from cinevox.models.encdec import ModelConfig, build_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_counts():
    assert n_params(Encoder(4609)) == 63_766_593
    assert n_params(Decoder(4609)) == 43_547_715
    assert n_params(Decoder(4609, final_batchnorm=True)) == 43_547_721


def test_paper_size_shapes_and_finite():
    model = EncoderDecoder(4609).eval()
    clip = torch.rand(1, 3, 112, 112, 32)
    with torch.no_grad():
        v, f = model(clip)
    assert v.shape == (1, 4609) and f.shape == (1, 3, 112, 112)
    assert torch.isfinite(v).all() and torch.isfinite(f).all()
    assert 0 <= f.min() and f.max() <= 1


@pytest.mark.parametrize("size,frames,voxels", [(32, 8, 37), (16, 4, 5), (24, 6, 11)])
def test_tiny_shapes(size, frames, voxels):
    model = EncoderDecoder(voxels, n_frames=frames, frame_size=size)
    v, f = model(torch.rand(3, 3, size, size, frames))
    assert v.shape == (3, voxels) and f.shape == (3, 3, size, size)
    assert torch.isfinite(v).all() and torch.isfinite(f).all()


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_frames"):
        Encoder(10, n_frames=7)
    with pytest.raises(ValueError, match="frame_size"):
        Decoder(10, frame_size=30)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model(ModelConfig(kind="vae"))


def test_grouped_temporal_conv_equals_separate_convs():
    torch.manual_seed(1)
    c_in, c_out, n = 12, 5, 16
    tc = TemporalCombinations(c_in, c_out, n).train()
    separate = [nn.Conv2d(c_in, c_out, 3, padding=1) for _ in range(n)]
    bns = [nn.BatchNorm2d(c_out) for _ in range(n)]
    with torch.no_grad():
        for t in range(n):
            separate[t].weight.copy_(tc.conv.weight[t * c_out : (t + 1) * c_out])
            separate[t].bias.copy_(tc.conv.bias[t * c_out : (t + 1) * c_out])
    x = torch.randn(4, c_in, 9, 7, n)  # unequal H, W
    expected = torch.cat([bns[t](torch.relu(separate[t](x[..., t]))) for t in range(n)], dim=1)
    got = tc(x)
    assert got.shape == (4, n * c_out, 9, 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and in eval mode (running statistics), after the same one training step
    tc.eval()
    for b in bns:
        b.eval()
    expected = torch.cat([bns[t](torch.relu(separate[t](x[..., t]))) for t in range(n)], dim=1)
    torch.testing.assert_close(tc(x), expected, rtol=1e-5, atol=1e-5)


def test_paper_temporal_combination_sizes():
    enc = Encoder(4609)
    assert enc.temporal.conv.groups == 16
    assert enc.temporal.conv.weight.shape == (16 * 128, 256, 3, 3)


@pytest.mark.parametrize("contiguous", [True, False])
def test_fast_layout_computes_the_authors_function(contiguous):
    """Weights copied into a re-implementation of the authors' layout (3D convs and pools, 16 separate Conv2d):
    the same outputs and the same gradients, in training mode (batch statistics) with dropout off."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from authors_layout import AuthorsEncoder, copy_weights

    torch.manual_seed(0)
    fast = Encoder(13, n_frames=8, frame_size=24, dropout=0.0)
    ref = AuthorsEncoder(13, n_frames=8, frame_size=24, dropout=0.0)
    copy_weights(fast, ref)
    raw = torch.rand(3, 8, 24, 24, 3)  # (B, T, S, S, 3): the loader's memory
    clip = raw.permute(0, 4, 2, 3, 1)  # (B, 3, S, S, T), a view
    if contiguous:
        clip = clip.contiguous()
    out_f, out_r = fast(clip), ref(clip.contiguous())
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out_f)
    out_f.backward(g)
    out_r.backward(g)
    torch.testing.assert_close(fast.conv1.weight.grad, ref.conv1.weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.conv2.weight.grad, ref.conv2.weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.temporal.conv.weight.grad[:128], ref.slices[0][0].weight.grad, rtol=1e-3,
                               atol=1e-4)
    torch.testing.assert_close(fast.temporal.conv.weight.grad[128:256], ref.slices[1][0].weight.grad, rtol=1e-3,
                               atol=1e-4)
    torch.testing.assert_close(fast.fc.weight.grad, ref.fc.weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast(clip), fast.forward_3d(clip.contiguous()), rtol=1e-4, atol=1e-5)


def test_state_dict_keys_unchanged():
    """Checkpoints from before the fast layout still load: the same keys and shapes."""
    sd = Encoder(4609).state_dict()
    assert sd["conv1.weight"].shape == (32, 3, 3, 3, 1) and sd["conv2.weight"].shape == (256, 32, 1, 1, 5)
    assert sd["temporal.conv.weight"].shape == (2048, 256, 3, 3) and "temporal.bn.running_var" in sd
    assert {k.split(".")[0] for k in sd} == {"conv1", "conv2", "temporal", "conv4", "bn4", "fc"}


def test_channels_last_weights_keep_the_function():
    """The GPU path stores 4D weights channels-last (the 5D Conv3d weights stay as they are)."""
    from cinevox.training.train import to_channels_last

    torch.manual_seed(0)
    m = EncoderDecoder(9, n_frames=8, frame_size=32).eval()
    x = torch.rand(2, 3, 32, 32, 8)
    with torch.no_grad():
        before = m(x)
        to_channels_last(m)
        after = m(x)
    assert m.encoder.conv4.weight.is_contiguous(memory_format=torch.channels_last)
    assert m.encoder.conv1.weight.dim() == 5
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)
