"""Metric maths on real photos and synthetic data; extractors use RANDOM weights (no downloads)."""

import math

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from moebius.errors import CheckpointError, InputError
from moebius.eval.fid import feature_statistics, fid_from_features, frechet_distance
from moebius.eval.ids import fit_linear_svm, inception_discriminative_scores
from moebius.eval.inception import FIDInceptionV3, InceptionFeatures
from moebius.eval.lpips import LPIPS
from moebius.eval.pixel import psnr, ssim
from moebius.eval.weights import ASSETS, find_weights


def _photo(name: str, size: int = 128) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[:size, :size, :3])


def _degrade(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 12, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "retina")]


def _spd(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


# ----------------------------------------------------------------------------- FID
def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 1.0, 1.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # commuting covariances: the trace term is Σ (√a − √b)²
    expected = float(((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    s1, s2 = _spd(16, 0), _spd(16, 1)
    mu1, mu2 = torch.linspace(-1, 1, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_samples_from_two_gaussians_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    n, dim = 200_000, 4
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * 2.0 + 1.0
    y = torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.5
    expected = dim * (1.0**2) + dim * (2.0 - 0.5) ** 2  # ‖μ₁−μ₂‖² + Σ(σ₁−σ₂)²
    assert fid_from_features(x, y) == pytest.approx(expected, rel=0.02)


def test_fid_few_samples_path_equals_covariance_path():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, 64, generator=g, dtype=torch.float64)
    b = torch.randn(45, 64, generator=g, dtype=torch.float64) * 1.5 + 0.3
    via_covariances = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert fid_from_features(a, b) == pytest.approx(via_covariances, rel=1e-6)


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    # RANDOM weights (tests only); 75 px is Inception's smallest input, to keep the test cheap
    return InceptionFeatures.load(random_weights=True, input_size=75)


def test_fid_of_a_photo_set_with_itself_is_zero(inception, photos):
    features = inception(photos)
    assert features.shape == (len(photos), 2048)
    assert torch.isfinite(features).all() and features.std(0).mean() > 0
    assert abs(fid_from_features(features, features)) < 1e-8
    degraded = inception([_degrade(p, i) for i, p in enumerate(photos)])
    assert fid_from_features(features, degraded) > 1e-6


def test_inception_state_dict_has_the_pytorch_fid_layout():
    shapes = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    # a few keys of pt_inception-2015-12-05-6726825d.pth as pytorch-fid loads it
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)


def test_inception_loads_a_weight_file_without_batchnorm_counters(tmp_path, inception, photos):
    state = {
        k: v for k, v in inception.net.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / ASSETS["inception"].filename)
    loaded = InceptionFeatures.load(weights_dir=str(tmp_path), download=False, input_size=75)
    assert not loaded.random_weights and loaded.weights.endswith(ASSETS["inception"].filename)
    assert torch.allclose(loaded(photos[:2]), inception(photos[:2]), atol=1e-6)

    torch.save({"fc.weight": state["fc.weight"]}, tmp_path / ASSETS["inception"].filename)
    with pytest.raises(CheckpointError):
        InceptionFeatures.load(weights_dir=str(tmp_path), download=False)


def test_missing_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MOEBIUS_WEIGHTS_DIR", raising=False)
    with pytest.raises(InputError, match="pt_inception-2015-12-05-6726825d.pth"):
        find_weights("inception", tmp_path / "empty", download=False)
    monkeypatch.setenv("MOEBIUS_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert find_weights("alexnet", download=False) == tmp_path / "alexnet-owt-7be5be79.pth"


# ----------------------------------------------------------------------------- LPIPS
def _to_lpips_input(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_on_identical_images_and_symmetric(net, photos):
    lpips = LPIPS.load(net, random_weights=True)  # RANDOM weights: tests only
    x = _to_lpips_input(photos[:3])
    y = _to_lpips_input([_degrade(p, 7) for p in photos[:3]])
    with torch.inference_mode():
        assert torch.equal(lpips(x, x), torch.zeros(3))
        d_xy, d_yx = lpips(x, y), lpips(y, x)
    assert torch.allclose(d_xy, d_yx, rtol=1e-5, atol=0)
    assert (d_xy > 0).all()


def test_lpips_loads_torchvision_backbone_and_lpips_heads(tmp_path, photos):
    reference = LPIPS.load("alex", random_weights=True, seed=3)
    backbone = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)  # present in the real file, unused
    heads = {}
    for k, v in reference.heads.state_dict().items():  # a whole lpips module's layout
        heads[f"lin{k.split('.')[0]}.model.1.weight"] = v
        heads[f"lins.{k.split('.')[0]}.model.1.weight"] = v
    torch.save(backbone, tmp_path / ASSETS["alexnet"].filename)
    torch.save(heads, tmp_path / ASSETS["lpips-alex"].filename)
    loaded = LPIPS.load("alex", weights_dir=str(tmp_path), download=False)
    assert not loaded.random_weights
    x, y = _to_lpips_input(photos[:2]), _to_lpips_input(photos[2:4])
    with torch.inference_mode():
        assert torch.allclose(loaded(x, y), reference(x, y))


# ----------------------------------------------------------------------------- PSNR / SSIM
@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_psnr_and_ssim_match_scikit_image(name):
    target = _photo(name, 160)
    pred = _degrade(target, 1)
    assert psnr(pred, target) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=255), rel=1e-12
    )
    gaussian = structural_similarity(
        pred, target, data_range=255, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(pred, target) == pytest.approx(gaussian, abs=1e-10)
    uniform = structural_similarity(pred, target, data_range=255, channel_axis=-1)
    assert ssim(pred, target, window="uniform") == pytest.approx(uniform, abs=1e-10)


def test_masked_psnr_and_ssim_use_only_the_hole(photos):
    target = photos[0]
    pred = target.copy()
    mask = np.zeros(target.shape[:2], np.uint8)
    mask[40:90, 30:100] = 1
    pred[mask > 0] = _degrade(target, 2)[mask > 0]
    mse = np.mean((pred[mask > 0].astype(np.float64) - target[mask > 0]) ** 2)
    assert psnr(pred, target, mask) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(pred, target) > psnr(pred, target, mask)
    _, full = structural_similarity(
        pred, target, data_range=255, channel_axis=-1, full=True,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )  # fmt: skip
    valid = full[5:-5, 5:-5]  # windows that fit inside the image
    expected = valid[mask[5:-5, 5:-5] > 0].mean()
    assert ssim(pred, target, mask) == pytest.approx(expected, abs=1e-10)
    assert math.isnan(ssim(pred, target, np.zeros_like(mask)))


# ----------------------------------------------------------------------------- U-IDS / P-IDS
def test_svm_reaches_the_optimum_of_the_liblinear_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 10, generator=g, dtype=torch.float64)
    y = torch.where(
        x[:, 0] + 0.5 * torch.randn(120, generator=g, dtype=torch.float64) > 0, 1.0, -1.0
    )
    w = fit_linear_svm(x, y).requires_grad_(True)
    xb = torch.cat([x, torch.ones(120, 1, dtype=torch.float64)], 1)
    objective = 0.5 * w @ w + (1 - y * (xb @ w)).clamp(min=0).pow(2).sum()
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.norm() < 1e-6


def test_ids_separable_and_indistinguishable_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 16, generator=g, dtype=torch.float64)
    u_ids, p_ids = inception_discriminative_scores(real, real + 10.0)
    assert (u_ids, p_ids) == (0.0, 0.0)
    # identical sets: the SVM cannot do better than chance and never prefers a fake
    u_ids, p_ids = inception_discriminative_scores(real, real.clone())
    assert u_ids == pytest.approx(0.5) and p_ids == 0.0
