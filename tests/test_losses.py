import hashlib

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from cinevox.losses import (
    DecoderLoss,
    EncoderLoss,
    EndToEndLoss,
    PerceptualLoss,
    cosine_distance,
    ssim_loss,
    total_variation,
)
from cinevox.metrics import ssim_per_image
from cinevox.models import EncoderDecoder, VGG16Features, load_vgg16_features
from cinevox.models.vgg import WeightsNotFoundError


def test_ssim_matches_skimage_per_image():
    rng = np.random.default_rng(0)
    a = rng.random((3, 3, 40, 48)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    got = ssim_per_image(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(3):
        ref = structural_similarity(
            a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), channel_axis=2, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False, data_range=1,
        )
        assert got[i] == pytest.approx(ref, abs=1e-4)
    loss = ssim_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert loss == pytest.approx(1 - got.mean(), abs=1e-6)


def test_cosine_distance_matches_numpy():
    rng = np.random.default_rng(1)
    p, t = rng.standard_normal((5, 17)), rng.standard_normal((5, 17))
    ref = 1 - (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))
    np.testing.assert_allclose(cosine_distance(torch.from_numpy(p), torch.from_numpy(t)).numpy(), ref, rtol=1e-6)


def test_encoder_loss_value():
    rng = np.random.default_rng(2)
    p, t = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    cos = 1 - (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))
    ref = ((p - t) ** 2).mean() + 0.5 * cos.mean()
    got = EncoderLoss(0.5)(torch.from_numpy(p), torch.from_numpy(t)).item()
    assert got == pytest.approx(ref, rel=1e-6)
    authors = EncoderLoss(0.5, mse_over_voxels=True)(torch.from_numpy(p), torch.from_numpy(t)).item()
    assert authors == pytest.approx(((p - t) ** 2).mean() / 9 + 0.5 * cos.mean(), rel=1e-6)


def test_total_variation_matches_numpy():
    x = np.random.default_rng(3).random((2, 3, 7, 11))
    ref = (np.abs(np.diff(x, axis=2)).sum() + np.abs(np.diff(x, axis=3)).sum()) / x.size
    assert total_variation(torch.from_numpy(x)).item() == pytest.approx(ref, rel=1e-9)


def _random_vgg_file(path):
    torch.manual_seed(5)
    state = VGG16Features().state_dict()
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    torch.save(state, path)
    return state


def test_vgg_loads_torchvision_layout_from_file(tmp_path):
    state = _random_vgg_file(tmp_path / "vgg16.pth")
    assert "features.28.weight" in state  # torchvision's key layout
    net = load_vgg16_features(tmp_path / "vgg16.pth")
    torch.testing.assert_close(net.features[28].weight, state["features.28.weight"])
    assert not any(p.requires_grad for p in net.parameters())


def test_vgg_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_vgg16_features(tmp_path / "nope.pth")


def test_vgg_download_checks_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    src = tmp_path / "served" / "vgg16-test.pth"
    src.parent.mkdir()
    _random_vgg_file(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(WeightsNotFoundError, match="download"):
        load_vgg16_features(url=src.as_uri(), hash_prefix="00000000")
    net = load_vgg16_features(url=src.as_uri(), hash_prefix=digest[:8])
    assert net.source == src.as_uri()
    cached = tmp_path / "torchhome" / "hub" / "checkpoints" / "vgg16-test.pth"
    assert cached.is_file()  # second call reads the hub cache
    assert load_vgg16_features(url=src.as_uri(), hash_prefix="ffffffff").source == str(cached)


def test_vgg_random_fallback_is_explicit(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    bad_url = (tmp_path / "missing.pth").as_uri()
    with pytest.raises(WeightsNotFoundError):
        load_vgg16_features(url=bad_url)
    net = load_vgg16_features(url=bad_url, allow_random=True)
    assert "RANDOMLY INITIALISED" in caplog.text and net.source.startswith("random")


def test_perceptual_loss_zero_for_identical_positive_otherwise():
    torch.manual_seed(0)
    loss = PerceptualLoss(VGG16Features().eval())
    a = torch.rand(2, 3, 32, 40)
    assert loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(a, torch.rand(2, 3, 32, 40)).item() > 0.01
    assert PerceptualLoss(VGG16Features().eval(), resize=64)(a, a.flip(-1)).item() > 0


def test_one_step_lowers_end_to_end_loss():
    torch.manual_seed(0)
    model = EncoderDecoder(23, n_frames=8, frame_size=32)
    crit = EndToEndLoss(EncoderLoss(), DecoderLoss(PerceptualLoss(VGG16Features().eval())), eps=0.5)
    clip, v, f = torch.rand(6, 3, 32, 32, 8), torch.randn(6, 23), torch.rand(6, 3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_value():
        model.eval()
        with torch.no_grad():
            return crit(*model(clip)[:1], v, model(clip)[1], f)[0].item()

    before = loss_value()
    model.train()
    v_hat, f_hat = model(clip)
    loss, le, ld = crit(v_hat, v, f_hat, f)
    assert loss.item() == pytest.approx(0.5 * le.item() + 0.5 * ld.item(), rel=1e-6)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert loss_value() < before
