"""Metrics against hand computations, closed forms and the lpips package's own linear layers."""
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ipsolve import metrics
from ipsolve.datasets import photo


def test_psnr_per_image_matches_hand_computation():
    ref = torch.zeros(2, 3, 4, 4)
    x = torch.zeros(2, 3, 4, 4)
    x[0] = 0.1                      # MSE 0.01 → 20 dB
    x[1, :, :2] = 0.5               # half the pixels off by 0.5: MSE 0.125 → 10·log10(8)
    expected = torch.tensor([20.0, 10 * math.log10(8)])
    assert torch.allclose(metrics.psnr(x, ref), expected, atol=1e-5)


def test_psnr_clamps_to_unit_range_and_follows_dtype():
    ref = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    x = ref.clone()
    x[..., 0, 0] = 7.0              # clamped to 1: error 0.5 on one pixel of four → MSE 1/16
    value = metrics.psnr(x, ref)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(10 * math.log10(16))


def test_psnr_clamps_both_images_at_both_ends():
    ref = torch.tensor([[[[1.5, -0.5, 0.2]]]])  # → 1, 0, 0.2
    x = torch.tensor([[[[-0.3, 0.5, 1.4]]]])    # → 0, 0.5, 1: errors 1, 0.5, 0.8, MSE 0.63
    assert metrics.psnr(x, ref).item() == pytest.approx(-10 * math.log10(0.63), rel=1e-6)


def test_fid_of_float32_features_is_computed_in_float64():
    """Features far from the origin: their spread is below float32's resolution there, so the means and
    covariances must be taken in float64 (as the features would be by np.cov)."""
    rng = np.random.default_rng(5)
    features, reference = 1e4 + rng.normal(size=(6, 50)), 1e4 + 2 * rng.normal(size=(5, 50))
    exact = metrics.fid_from_features(features, reference)
    by_covariance = metrics.frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                             reference.mean(0), np.cov(reference, rowvar=False))
    assert exact == pytest.approx(by_covariance, rel=1e-6)
    stored = [np.asarray(f, np.float32).astype(np.float64) for f in (features, reference)]
    as_stored = metrics.frechet_distance(stored[0].mean(0), np.cov(stored[0], rowvar=False),
                                         stored[1].mean(0), np.cov(stored[1], rowvar=False))
    assert metrics.fid_from_features(*(np.asarray(f, np.float32) for f in (features, reference))) == \
        pytest.approx(as_stored, rel=1e-6)


def test_frechet_distance_matches_gaussian_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, size=5), rng.uniform(0.5, 2, size=5)
    # diagonal (commuting) covariances: Tr(S1 + S2 − 2 (S1 S2)^½) = Σ (a + b − 2√(ab))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_fid_of_few_samples_equals_covariance_formula():
    rng = np.random.default_rng(2)
    features, reference = rng.normal(size=(20, 64)), 1.3 * rng.normal(size=(15, 64)) + 0.2
    by_covariance = metrics.frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                             reference.mean(0), np.cov(reference, rowvar=False))
    assert metrics.fid_from_features(features, reference) == pytest.approx(by_covariance, rel=1e-6)
    assert metrics.fid_from_features(features, features) == pytest.approx(0, abs=1e-9)


def test_log_fid_auc_is_the_trapezoid_area_of_log_fid():
    # ln FID = 3, 2, 1 at NFE 10, 20, 30: 10·(3+2)/2 + 10·(2+1)/2 = 40, whatever the order given
    assert metrics.log_fid_auc([30, 10, 20], [math.e, math.e ** 3, math.e ** 2]) == pytest.approx(40)
    assert math.isnan(metrics.log_fid_auc([10], [5.0]))


@pytest.fixture(scope="module")
def astronaut64():
    image = torch.from_numpy(photo("astronaut")).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(64, 64), mode="area")


def test_lpips_is_zero_for_identical_images_and_grows_with_blur(astronaut64):
    assert metrics.lpips_distance(astronaut64, astronaut64).item() == pytest.approx(0, abs=1e-7)
    blurred = [TF.gaussian_blur(astronaut64, kernel_size=9, sigma=s) for s in (0.5, 1.0, 2.0)]
    values = torch.cat([metrics.lpips_distance(b, astronaut64) for b in blurred])
    assert values.shape == (3,)
    assert torch.all(values[1:] > values[:-1])
    assert 0.01 < values[0] and values[-1] < 1.0   # plausible range of LPIPS(alex)


def test_lpips_linear_layers_equal_the_lpips_package_weights():
    import lpips

    ours = metrics.load_lpips("alex")
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    for mine, theirs in zip(metrics._conv_layers(ours.lins), metrics._conv_layers(reference.lins)):
        assert torch.equal(mine.weight, theirs.weight)


def test_lpips_trunk_computes_the_flax_convolution():
    """conv1 with mapped weights = the flax definition (NHWC cross-correlation with an HWIO kernel)."""
    params = metrics.read_flax_checkpoint(metrics.lpips_weights_path("alex"))["AlexNet_0"]["Conv_0"]
    conv = metrics._conv_layers(metrics.load_lpips("alex").net)[0]
    image = torch.rand(1, 3, 23, 23, generator=torch.Generator().manual_seed(0))
    torch_out = conv(image)[0].detach().numpy()                     # (64, 5, 5), stride 4, padding 2
    padded = np.pad(image[0].permute(1, 2, 0).numpy(), ((2, 2), (2, 2), (0, 0)))
    for row, col in [(0, 0), (2, 3), (4, 1)]:
        patch = padded[4 * row:4 * row + 11, 4 * col:4 * col + 11]   # (kH, kW, in)
        flax_out = np.einsum("hwi,hwio->o", patch, params["kernel"]) + params["bias"]
        np.testing.assert_allclose(torch_out[:, row, col], flax_out, rtol=1e-4, atol=1e-5)


def test_missing_lpips_weights_give_one_clear_line(tmp_path, monkeypatch):
    missing = tmp_path / "alexnet.ckpt"
    with pytest.raises(FileNotFoundError, match="LPIPS alex weights not found") as error:
        metrics.lpips_weights_path("alex", missing)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv(metrics.LPIPS_WEIGHTS_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="IPSOLVE_LPIPS_WEIGHTS"):
        metrics.lpips_weights_path("alex")
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        metrics.lpips_weights_path("squeeze")


def test_weights_reader_refuses_anything_but_numpy_arrays(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"kernel": print}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print is not allowed"):
        metrics.read_flax_checkpoint(path)


def test_inception_features_of_two_images(tmp_path):
    extractor = metrics.InceptionFeatures()
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    features = extractor(torch.cat([images[:1], images]))
    assert features.shape == (3, 2048)
    assert torch.isfinite(features).all() and (features >= 0).all()   # average-pooled ReLU outputs
    assert torch.allclose(features[0], features[1]) and not torch.allclose(features[1], features[2])


def resized_by_hand(path, mode):
    """clean-fid's resizing to 299×299 on [0, 255] values: "clean" is PIL bicubic on each channel as a float
    image, "legacy_pytorch" torch's bilinear interpolation; RGB first, values clipped to [0, 255]."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    if mode == "clean":
        channels = [np.asarray(Image.fromarray(rgb[:, :, c], mode="F").resize((299, 299), Image.BICUBIC))
                    for c in range(3)]
        return torch.from_numpy(np.stack(channels).clip(0, 255))
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(299, 299), mode="bilinear", align_corners=False)[0].clamp(0, 255)


def test_image_features_are_the_network_on_clean_fid_resized_images(tmp_path):
    from ipsolve.imageio import save_image

    g = torch.Generator().manual_seed(3)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    save_image(torch.rand(3, 24, 40, generator=g), paths[0])
    save_image(torch.rand(1, 16, 16, generator=g), paths[1])  # gray: read as RGB
    extractor = metrics.InceptionFeatures()
    found = {}
    for mode, batch_size in (("clean", 1), ("legacy_pytorch", 32)):
        found[mode] = metrics.image_features(paths, extractor, mode=mode, batch_size=batch_size)
        expected = extractor(torch.stack([resized_by_hand(p, mode) for p in paths])).numpy()
        np.testing.assert_allclose(found[mode], expected, rtol=1e-4, atol=1e-4)
    assert np.abs(found["clean"] - found["legacy_pytorch"]).max() > 1e-2
    np.testing.assert_allclose(metrics.image_features(paths, extractor), found["clean"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown FID mode"):
        metrics.image_features(paths, extractor, mode="legacy_tensorflow")


def test_lpips_uses_the_weights_file_it_is_given(tmp_path):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FileNotFoundError, match="LPIPS alex weights not found"):
        metrics.lpips_distance(image, image, weights=tmp_path / "absent.ckpt")
