"""Metric values computed another way: LPIPS by hand from the network's weights (inputs in [−1, 1], as the
LPIPS networks were trained), and the FID / KID that `ipsolve eval` reports for a method against closed
forms over the features of its outputs and of clean/ (two images a set, where both have closed forms)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ipsolve import metrics
from ipsolve.config import load_eval_config
from ipsolve.datasets import photo
from ipsolve.imageio import save_image
from ipsolve.services.evaluation import evaluate

# LPIPS v0.1's input normalisation of [−1, 1] images (per-channel shift and scale, from the LPIPS paper's code)
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def convs(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def alexnet_features(image, trunk):
    """The five ReLU outputs of AlexNet's convolutional part for an image already in network units."""
    c = convs(trunk)
    h = F.relu(F.conv2d(image, c[0].weight, c[0].bias, stride=4, padding=2))
    outputs = [h]
    h = F.relu(F.conv2d(F.max_pool2d(h, 3, 2), c[1].weight, c[1].bias, padding=2))
    outputs.append(h)
    h = F.relu(F.conv2d(F.max_pool2d(h, 3, 2), c[2].weight, c[2].bias, padding=1))
    outputs.append(h)
    for conv in c[3:5]:
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=1))
        outputs.append(h)
    return outputs


def lpips_by_hand(x, ref, model, unit_range):
    """Σ_l mean_hw w_l · (f̂_l(x) − f̂_l(ref))², f̂ the channel-normalised features; `unit_range` maps
    [0, 1] images to [−1, 1] first (False: the bug of feeding [0, 1] images as they are)."""
    def network_input(image):
        image = image.clamp(0, 1).expand(-1, 3, -1, -1)
        return ((2 * image - 1 if unit_range else image) - SHIFT) / SCALE

    total = torch.zeros(x.shape[0])
    with torch.no_grad():
        for f0, f1, lin in zip(alexnet_features(network_input(x), model.net),
                               alexnet_features(network_input(ref), model.net), convs(model.lins)):
            n0 = f0 / (f0.square().sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = f1 / (f1.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total += F.conv2d((n0 - n1).square(), lin.weight).mean(dim=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def astronaut64():
    image = torch.from_numpy(photo("astronaut")).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(64, 64), mode="area")


@pytest.mark.parametrize("channels", [3, 1])
def test_lpips_equals_the_hand_computation_on_minus_one_to_one_inputs(astronaut64, channels):
    g = torch.Generator().manual_seed(channels)
    photo_pair = astronaut64 if channels == 3 else astronaut64.mean(1, keepdim=True)
    ref = torch.cat([photo_pair, photo_pair.flip(-1)])
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(-0.2, 1.2)  # outside [0, 1]: clamped
    model = metrics.load_lpips("alex")
    value = metrics.lpips_distance(x, ref)
    expected = lpips_by_hand(x, ref, model, unit_range=True)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    wrong = lpips_by_hand(x, ref, model, unit_range=False)
    assert ((wrong - expected).abs() / expected).min() > 0.05  # the input range is visible in the value


# ------------------------------------------------------------------------------------------- FID / KID

def fid_of_pairs(f, g):
    """FID of two 2-image feature sets in closed form: each covariance is p pᵀ with p = (f₁ − f₂)/√2, so
    Tr √(S_f S_g) = |p·q| and FID = ‖μ_f − μ_g‖² + ‖p‖² + ‖q‖² − 2 |p·q|."""
    p, q = (f[0] - f[1]) / np.sqrt(2), (g[0] - g[1]) / np.sqrt(2)
    return float(np.sum((f.mean(0) - g.mean(0)) ** 2) + p @ p + q @ q - 2 * abs(p @ q))


def kid_of_pairs(f, g):
    """Unbiased MMD² with the kernel (a·b/d + 1)³ for two 2-image sets: k(f₁, f₂) + k(g₁, g₂) − ½ Σ k(f_i, g_j)."""
    d = f.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    return float(k(f[0], f[1]) + k(g[0], g[1]) - sum(k(a, b) for a in f for b in g) / 2)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """`ipsolve eval` of two methods on two digits with FID and KID on; and the Inception features of the
    images in clean/ and in each method's folder (those eval extracted are recorded, not recomputed)."""
    root = tmp_path_factory.mktemp("fid")
    images = torch.load(Path(__file__).parent / "data" / "mnist_heldout16.pt", weights_only=True)["images"]
    for i in range(2):
        save_image(images[i].float() / 255, root / "data" / f"digit_{i}.png")
    (root / "eval").mkdir()
    config = {"model": "gaussian:1x32x32", "seed": 1, "batch_size": 2,
              "tasks": [{"name": "sr4", "operator": "sr4", "sigma_y_pixel": 0.0}], "budgets": [2],
              "methods": {"ddrm": {}, "nested": {"inner_steps": 1}}, "metrics": {"lpips": None, "fid": "clean"}}
    (root / "eval" / "two.yml").write_text(yaml.safe_dump(config))
    seen, extract = {}, metrics.image_features

    def recording(paths, *args, **kwargs):
        features = extract(paths, *args, **kwargs)
        seen.update((Path(path).resolve(), row) for path, row in zip(paths, features))
        return features

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "image_features", recording)
        report = evaluate(load_eval_config(root / "eval" / "two.yml"), root / "data", root / "out")
    out = root / "out"
    folders = {"clean": out / "clean", "ddrm": out / "sr4" / "ddrm" / "nfe002",
               "nested": out / "sr4" / "nested" / "nfe002"}
    files = {name: sorted(p.resolve() for p in folder.glob("*.png")) for name, folder in folders.items()}
    missing = [p for paths in files.values() for p in paths if p not in seen]
    if missing:
        seen.update(zip(missing, extract(missing, metrics.InceptionFeatures(), mode="clean")))
    return report, {name: np.stack([seen[p] for p in paths]) for name, paths in files.items()}


def test_reported_fid_and_kid_compare_each_method_with_the_clean_images(evaluated):
    report, features = evaluated
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == {"ddrm", "nested"} and all(len(f) == 2 for f in features.values())
    for method, other in (("ddrm", "nested"), ("nested", "ddrm")):
        expected = fid_of_pairs(features[method], features["clean"])
        assert rows[method]["fid"] == pytest.approx(expected, rel=1e-6)
        assert rows[method]["kid"] == pytest.approx(kid_of_pairs(features[method], features["clean"]), rel=1e-5)
        against_other = fid_of_pairs(features[method], features[other])
        assert abs(against_other - expected) > 0.01 * expected  # the reference set is visible in the value


def test_fid_closed_form_agrees_with_the_covariance_formula(evaluated):
    """The pair formula above against scipy's matrix square root on the same features (one check of the
    check), and against `metrics.fid_from_features`."""
    from scipy import linalg

    _, features = evaluated
    f, g = features["ddrm"].astype(np.float64), features["clean"].astype(np.float64)
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    # restricted to the span of the four feature vectors, where both covariances live
    basis, _ = np.linalg.qr(np.concatenate([f - f.mean(0), g - g.mean(0)]).T)
    small_f, small_g = basis.T @ cov_f @ basis, basis.T @ cov_g @ basis
    root = linalg.sqrtm(small_f @ small_g)
    by_sqrtm = float(np.sum((f.mean(0) - g.mean(0)) ** 2) + np.trace(cov_f) + np.trace(cov_g)
                     - 2 * np.trace(root).real)
    assert fid_of_pairs(f, g) == pytest.approx(by_sqrtm, rel=1e-6)
    assert metrics.fid_from_features(f, g) == pytest.approx(by_sqrtm, rel=1e-6)
