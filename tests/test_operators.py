"""Properties every degradation operator must have, and each one against an independent computation."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import degradations
from degradations.bicubic import bicubic_weight

F64 = torch.float64

# (make name, channels, (H, W), params): small sizes, square and non-square.
CASES = [
    ("deno", 3, (4, 6), {}),
    ("sr2", 3, (4, 6), {}),
    ("sr3", 1, (6, 9), {}),
    ("color", 3, (4, 5), {}),
    ("inp", 3, (5, 4), {}),
    ("inp_box", 2, (6, 6), {}),
    ("deblur_uni", 1, (6, 8), {"width": 3}),
    ("deblur_gauss", 2, (5, 7), {"sigma": 1.0, "width": 5, "boundary": "zero"}),
    ("deblur_aniso", 1, (9, 10), {}),
    ("deblur", 1, (6, 5), {"kernel_h": [0.2, 0.5, 0.3], "kernel_w": [0.5, 0.5], "boundary": "circular"}),
    ("deblur_uni", 1, (8, 8), {"width": 4, "boundary": "replicate", "threshold": 0.1}),
    ("sr_bicubic2", 2, (4, 8), {}),
    ("sr_bicubic3", 1, (6, 9), {}),
    ("cs2", 2, (4, 8), {}),
    ("cs4", 1, (8, 4), {"seed": 3}),
]
IDS = [f"{name}-{c}x{h}x{w}-{i}" for i, (name, c, (h, w), _) in enumerate(CASES)]


def build(case):
    name, channels, size, params = case
    return degradations.make(name, channels=channels, image_size=size, **params)


@pytest.fixture(params=CASES, ids=IDS)
def op(request):
    return build(request.param)


def random_images(op, batch=3, seed=0, dtype=F64):
    return torch.randn(batch, *op.input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_measurements(op, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *op.measurement_shape, generator=generator, dtype=F64)


def dense(fn, shape):
    """The matrix of a linear map on tensors of `shape` (batch omitted): column j = fn(e_j), flattened."""
    size = int(torch.tensor(shape).prod())
    basis = torch.eye(size, dtype=F64).reshape(size, *shape)
    return fn(basis).reshape(size, -1).T


# ---------------------------------------------------------------- the SVD protocol
def test_V_is_orthogonal(op):
    x = random_images(op)
    z = torch.randn(3, op.dim, dtype=F64)
    assert op.Vt(x).shape == (3, op.dim)
    torch.testing.assert_close(op.V(op.Vt(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.Vt(op.V(z)), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.Vt(x).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)


def test_U_has_orthonormal_columns(op):
    w = torch.randn(3, op.rank, dtype=F64)
    y = random_measurements(op)
    assert op.Ut(y).shape == (3, op.rank)
    torch.testing.assert_close(op.Ut(op.U(w)), w, rtol=0, atol=1e-12)
    projected = op.U(op.Ut(y))  # a projector onto range(H): idempotent
    torch.testing.assert_close(op.U(op.Ut(projected)), projected, rtol=0, atol=1e-12)
    if op.rank == y[0].numel():
        torch.testing.assert_close(projected, y, rtol=0, atol=1e-12)


def test_dense_H_equals_U_sigma_Vt_and_its_singular_values(op):
    matrix = dense(op.H, op.input_shape)
    u_matrix = dense(op.U, (op.rank,))
    v_matrix = dense(op.V, (op.dim,))
    s = op.singulars()
    assert s.dtype == F64 and s.device.type == "cpu" and s.ndim == 1 and (s > 0).all()
    torch.testing.assert_close(matrix, u_matrix @ torch.diag(s) @ v_matrix[:, :op.rank].T, rtol=0, atol=1e-12)
    expected = torch.zeros(min(matrix.shape), dtype=F64)
    expected[:op.rank] = s.sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(matrix), expected, rtol=0, atol=1e-10)


def test_adjoint(op):
    x, y = random_images(op), random_measurements(op)
    lhs = (op.H(x) * y).flatten(1).sum(1)
    rhs = (x * op.Ht(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense(op.Ht, op.measurement_shape), dense(op.H, op.input_shape).T,
                               rtol=0, atol=1e-12)


def test_pseudo_inverse(op):
    matrix = dense(op.H, op.input_shape)
    pinv = dense(op.H_pinv, op.measurement_shape)
    torch.testing.assert_close(matrix @ pinv @ matrix, matrix, rtol=0, atol=1e-10)
    expected = torch.linalg.pinv(matrix, rtol=1e-10)
    assert (pinv - expected).norm() <= 1e-9 * expected.norm()  # relative: blur pseudo-inverses are large


def test_direct_forms_equal_the_generic_spectral_forms(op):
    x, y = random_images(op), random_measurements(op)
    generic = degradations.SVDOperator
    torch.testing.assert_close(op.H(x), generic._H(op, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.Ht(y), generic._Ht(op, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.H_pinv(y), generic._H_pinv(op, y), rtol=1e-12, atol=1e-10)


def test_spec_rebuilds_the_same_operator(op):
    spec = json.loads(json.dumps(op.spec()))
    rebuilt = degradations.make(**spec)
    x = random_images(op)
    assert rebuilt.name == op.name and rebuilt.spec() == op.spec()
    torch.testing.assert_close(rebuilt.H(x), op.H(x), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.Vt(x), op.Vt(x), rtol=0, atol=0)


def test_follows_dtype_and_batch(op):
    x64 = random_images(op, batch=4)
    x32 = x64.float()
    for method, argument in [("H", x32), ("Vt", x32), ("Ht", op.H(x32)), ("H_pinv", op.H(x32)),
                             ("V", op.Vt(x32)), ("Ut", op.H(x32)), ("U", op.Ut(op.H(x32)))]:
        assert getattr(op, method)(argument).dtype == torch.float32, method
    torch.testing.assert_close(op.H(x32), op.H(x64).float(), rtol=1e-5, atol=1e-5)
    one_by_one = torch.cat([op.H_pinv(op.H(x64[i:i + 1])) for i in range(4)])
    torch.testing.assert_close(op.H_pinv(op.H(x64)), one_by_one, rtol=0, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_follows_device(op):
    x = random_images(op).cuda()
    assert op.H(x).device == x.device and op.V(op.Vt(x)).device == x.device
    torch.testing.assert_close(op.H_pinv(op.H(x)).cpu(), op.H_pinv(op.H(x.cpu())), rtol=0, atol=1e-10)


# ---------------------------------------------------------------- independent truths
def test_block_sr_is_average_pooling_and_nearest_upsampling():
    op = degradations.SuperResolution(factor=4, channels=3, image_size=(8, 12))
    x = torch.randn(2, 3, 8, 12, dtype=F64)
    torch.testing.assert_close(op.H(x), F.avg_pool2d(x, 4), rtol=0, atol=1e-14)
    y = op.H(x)
    torch.testing.assert_close(op.H_pinv(y), F.interpolate(y, scale_factor=4, mode="nearest"), rtol=0, atol=0)
    assert op.measurement_shape == (3, 2, 3)
    torch.testing.assert_close(op.singulars(), torch.full((18,), 0.25, dtype=F64))


def test_colorization_is_the_weighted_gray():
    op = degradations.Colorization(image_size=(4, 6))
    x = torch.randn(2, 3, 4, 6, dtype=F64)
    gray = 0.3333 * x[:, 0] + 0.3334 * x[:, 1] + 0.3333 * x[:, 2]
    torch.testing.assert_close(op.H(x), gray[:, None], rtol=0, atol=1e-14)
    weights = torch.tensor([0.3333, 0.3334, 0.3333], dtype=F64)
    torch.testing.assert_close(op.singulars(), torch.full((24,), weights.norm().item(), dtype=F64))


def test_inpainting_is_masking():
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) > 0.4
    op = degradations.Inpainting(mask=mask, channels=3)
    x = torch.randn(2, 3, 5, 7, dtype=F64)
    assert op.measurement_shape == (3, int(mask.sum()))
    torch.testing.assert_close(op.H(x), x[:, :, mask], rtol=0, atol=0)
    torch.testing.assert_close(op.H_pinv(op.H(x)), x * mask, rtol=0, atol=0)


def test_inpainting_masks_from_seed_box_and_file(tmp_path):
    random = degradations.make("inp", image_size=(10, 10), seed=5)
    assert random.mask.sum() == 50
    torch.testing.assert_close(degradations.make("inp", image_size=(10, 10), seed=5).mask, random.mask)
    assert not torch.equal(degradations.make("inp", image_size=(10, 10), seed=6).mask, random.mask)
    box = degradations.make("inp_box", image_size=(8, 10), box=(1, 2, 3, 4)).mask
    assert (~box).sum() == 12 and not box[1:4, 2:6].any()
    from PIL import Image
    pixels = torch.zeros(6, 9, dtype=torch.uint8)
    pixels[2:, 3:] = 255
    Image.fromarray(pixels.numpy()).save(tmp_path / "mask.png")
    op = degradations.make("inp_mask", image_size=(6, 9), mask_path=tmp_path / "mask.png")
    torch.testing.assert_close(op.mask, pixels > 0)


def kernel_2d_blur(x, kernel_h, kernel_w, mode):
    """conv2d with the outer-product kernel after padding by (L−1)//2 before and L//2 after."""
    kernel = torch.outer(torch.tensor(kernel_h, dtype=F64), torch.tensor(kernel_w, dtype=F64))
    lh, lw = kernel.shape
    padded = F.pad(x, ((lw - 1) // 2, lw // 2, (lh - 1) // 2, lh // 2), mode=mode)
    channels = x.shape[1]
    return F.conv2d(padded, kernel.expand(channels, 1, lh, lw), groups=channels)


@pytest.mark.parametrize("boundary, mode", [("reflect", "reflect"), ("zero", "constant"),
                                            ("replicate", "replicate"), ("circular", "circular")])
def test_deblurring_is_conv2d_with_the_named_kernel(boundary, mode):
    x = torch.randn(2, 3, 12, 10, dtype=F64)
    kernels = {
        "deblur_uni": ([1 / 9] * 9, [1 / 9] * 9),
        "deblur_gauss": (gauss(10.0, 5), gauss(10.0, 5)),
        "deblur_aniso": (gauss(1.0, 9), gauss(20.0, 9)),
    }
    for name, (kernel_h, kernel_w) in kernels.items():
        op = degradations.make(name, image_size=(12, 10), boundary=boundary)
        torch.testing.assert_close(op.H(x), kernel_2d_blur(x, kernel_h, kernel_w, mode), rtol=0, atol=1e-12)
    asymmetric = degradations.Deblurring([0.1, 0.6, 0.3, 0.0, 0.2], [0.7, 0.3], image_size=(12, 10),
                                         boundary=boundary)
    expected = kernel_2d_blur(x, [0.1, 0.6, 0.3, 0.0, 0.2], [0.7, 0.3], mode)
    torch.testing.assert_close(asymmetric.H(x), expected, rtol=0, atol=1e-12)


def gauss(sigma, width):
    """The Gaussian taps written out: exp(−t²/2σ²) at t = −(width−1)/2 … (width−1)/2, normalised."""
    taps = [math.exp(-0.5 * ((t - (width - 1) / 2) / sigma) ** 2) for t in range(width)]
    return [tap / sum(taps) for tap in taps]


def test_deblurring_threshold_drops_small_singular_values():
    exact = degradations.make("deblur_gauss", channels=1, image_size=(16, 16), sigma=2.0, width=9)
    truncated = degradations.make("deblur_gauss", channels=1, image_size=(16, 16), sigma=2.0, width=9,
                                  threshold=0.05)
    assert truncated.rank < exact.rank == 256
    assert truncated.singulars().min() > 0.05 ** 2


def reference_bicubic(x, factor):
    """Direct formula: y_i = Σ_t w_t x[i·r + r/2 − 2r + t] (half-sample mirrored), the reference's SRConv."""
    taps = torch.tensor([bicubic_weight(torch.tensor((t - 2 * factor + 0.5) / factor)).item()
                         for t in range(4 * factor)], dtype=F64)
    taps = taps / taps.sum()
    size = x.shape[-1]

    def mirror(j):
        return -j - 1 if j < 0 else (2 * size - 1 - j if j >= size else j)

    rows = []
    for i in range(size // factor):
        centre = i * factor + factor // 2
        rows.append(sum(taps[t] * x[..., mirror(centre - 2 * factor + t)] for t in range(4 * factor)))
    return torch.stack(rows, dim=-1)


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_sr_is_the_reference_filter(factor):
    x = torch.randn(2, 3, 8 * factor, 4 * factor, dtype=F64)
    op = degradations.make(f"sr_bicubic{factor}", image_size=x.shape[-2:])
    along_w = reference_bicubic(x, factor)
    expected = reference_bicubic(along_w.transpose(-1, -2), factor).transpose(-1, -2)
    torch.testing.assert_close(op.H(x), expected, rtol=0, atol=1e-12)
    assert op.rank == x[0].numel() // factor ** 2  # nothing below the 3e-2 threshold


def test_bicubic_sr_interior_matches_antialiased_interpolate():
    factor = 4
    x = torch.randn(1, 3, 64, 64, dtype=F64)
    op = degradations.make("sr_bicubic4", image_size=(64, 64))
    torch_bicubic = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    interior = slice(2, -2)  # PIL/torch renormalise truncated taps at the border instead of mirroring
    torch.testing.assert_close(op.H(x)[..., interior, interior], torch_bicubic[..., interior, interior],
                               rtol=0, atol=1e-6)


def test_walsh_hadamard_keeps_permuted_orthonormal_coefficients():
    from scipy.linalg import hadamard

    op = degradations.make("cs4", channels=2, image_size=(4, 8), seed=7)
    x = torch.randn(3, 2, 4, 8, dtype=F64)
    transform = torch.tensor(hadamard(32), dtype=F64) / 32 ** 0.5
    coefficients = x.reshape(3, 2, 32) @ transform.T
    order = torch.randperm(32, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(op.H(x), coefficients[:, :, order[:8]], rtol=0, atol=1e-12)
    assert op.measurement_shape == (2, 8)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, message", [
    (lambda: degradations.make("sr3", image_size=(8, 8)), "must divide the image size"),
    (lambda: degradations.make("sr_bicubic4", image_size=(8, 6)), "must divide the image size"),
    (lambda: degradations.make("color", channels=1, image_size=(8, 8)), "needs channels=3"),
    (lambda: degradations.make("blur", image_size=(8, 8)), "unknown degradation 'blur'"),
    (lambda: degradations.make("deno", image_size=(8, 8), factor=2), "bad parameters for deno"),
    (lambda: degradations.make("inp_mask", image_size=(8, 8), mask=torch.ones(4, 4, dtype=torch.bool)),
     "the mask is 4x4 but image_size is 8x8"),
    (lambda: degradations.Inpainting(mask=torch.ones(4, 4)), "must be a bool tensor"),
    (lambda: degradations.make("cs2", image_size=(8, 6)), "power-of-two"),
    (lambda: degradations.make("deblur_uni", image_size=(4, 4)), "cannot be reflected"),
    (lambda: degradations.make("deblur_gauss", image_size=(8, 8), boundary="wrap"), "unknown boundary"),
    (lambda: degradations.make("deno", image_size=(0, 8)), "image_size"),
])
def test_bad_parameters_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_inputs_raise_value_errors():
    op = degradations.make("sr2", channels=3, image_size=(4, 4))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 4, 4\)"):
        op.H(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expects images .*got \(3, 4, 4\)"):
        op.H(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="contains NaN"):
        op.H(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="floating-point"):
        op.H(torch.zeros(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="expects measurements"):
        op.H_pinv(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(B, 48\)"):
        op.V(torch.zeros(1, 47))


# ---------------------------------------------------------------- argument checks, bound by bound
@pytest.mark.parametrize("call, message", [
    (lambda: degradations.Denoising(channels=0, image_size=(4, 4)), "channels must be a positive integer, got 0"),
    (lambda: degradations.Denoising(channels=2.0, image_size=(4, 4)), "channels must be a positive integer, got 2.0"),
    (lambda: degradations.Denoising(channels=True, image_size=(4, 4)), "channels must be a positive integer, got True"),
    (lambda: degradations.SuperResolution(factor=0, image_size=(4, 4)), "positive integer, got 0"),
    (lambda: degradations.SuperResolution(factor=2.0, image_size=(4, 4)), "positive integer, got 2.0"),
    (lambda: degradations.SuperResolution(factor=True, image_size=(4, 4)), "positive integer, got True"),
    (lambda: degradations.Denoising(image_size=(4, 0)), r"two positive integers \(H, W\), got \(4, 0\)"),
    (lambda: degradations.Denoising(image_size=(4, 4.5)), r"two positive integers \(H, W\), got \(4, 4.5\)"),
    (lambda: degradations.random_mask((4, 4), fraction=0), r"observed fraction must be in \(0, 1\], got 0"),
    (lambda: degradations.random_mask((4, 4), fraction=1.5), r"observed fraction must be in \(0, 1\], got 1.5"),
])
def test_each_bound_of_the_parameter_checks_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_smallest_valid_parameters_are_accepted():
    x = torch.randn(2, 1, 1, 5, dtype=F64)
    torch.testing.assert_close(degradations.Denoising(channels=1, image_size=(1, 5)).H(x), x, rtol=0, atol=0)
    x = torch.randn(2, 1, 5, 1, dtype=F64)
    torch.testing.assert_close(degradations.Denoising(channels=1, image_size=(5, 1)).H(x), x, rtol=0, atol=0)
    # factor 1: H is the identity, V = I (the Householder completion of e₁ is I itself)
    op = degradations.SuperResolution(factor=1, channels=2, image_size=(3, 4))
    x = torch.randn(2, 2, 3, 4, dtype=F64)
    torch.testing.assert_close(op.H(x), x, rtol=0, atol=0)
    torch.testing.assert_close(op.Vt(x), x.reshape(2, -1), rtol=0, atol=0)
    assert torch.equal(degradations.random_mask((3, 5), fraction=1), torch.ones(3, 5, dtype=torch.bool))


def test_orthogonal_completion_starts_with_the_unit_vector_and_is_orthogonal():
    from degradations.base import orthogonal_completion

    for unit in (torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([0.6, 0, 0.8], dtype=F64),
                 torch.tensor([0.0, 1.0], dtype=F64)):
        q = orthogonal_completion(unit)
        assert q.dtype == F64
        torch.testing.assert_close(q[:, 0], unit, rtol=0, atol=1e-15)
        torch.testing.assert_close(q.T @ q, torch.eye(unit.numel(), dtype=F64), rtol=0, atol=1e-15)


def test_operators_default_to_rgb_images():
    assert degradations.Denoising(image_size=(2, 2)).input_shape == (3, 2, 2)
    assert degradations.SuperResolution(2, image_size=(2, 2)).input_shape == (3, 2, 2)
    assert degradations.Inpainting(torch.ones(2, 2, dtype=torch.bool)).input_shape == (3, 2, 2)


def test_singulars_are_float64_whatever_the_subclass_gives():
    op = degradations.base.SVDOperator((1, 1, 2), (1, 1, 2), torch.tensor([0.5, 0.25]), "half")
    assert op.singulars().dtype == F64 and op.singulars().tolist() == [0.5, 0.25]


def test_bad_input_messages_name_the_argument_and_the_expected_shape():
    op = degradations.make("sr2", channels=3, image_size=(4, 4))
    for call, what in [(lambda: op.H([1.0]), "image batch"), (lambda: op.H_pinv([1.0]), "measurement"),
                       (lambda: op.V([1.0]), "spectral vector"), (lambda: op.U([1.0]), "vector of kept coefficients")]:
        with pytest.raises(ValueError, match=f"^the {what} must be a torch.Tensor, got list$"):
            call()
    with pytest.raises(ValueError, match=r"^sr2 expects measurements of shape \(B, 3, 2, 2\), got \(1, 3, 4, 4\);"):
        op.H_pinv(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("mask, shown", [([[True]], "list"), (torch.ones(2, 2, 2, dtype=torch.bool), r"\(2, 2, 2\)")])
def test_a_mask_of_the_wrong_kind_is_refused_naming_what_it_is(mask, shown):
    with pytest.raises(ValueError, match=f"must be a bool tensor \\(H, W\\), True = observed; got {shown}$"):
        degradations.Inpainting(mask)


def test_random_mask_defaults_to_ddrms_half_mask_from_seed_0():
    expected = torch.ones(16, dtype=torch.bool)
    expected[torch.randperm(16, generator=torch.Generator().manual_seed(0))[:8]] = False
    assert torch.equal(degradations.random_mask((4, 4)), expected.reshape(4, 4))


@pytest.mark.parametrize("box", [(-1, 0, 2, 2), (0, -1, 2, 2), (0, 0, 0, 2), (0, 0, 2, 0), (3, 0, 2, 2), (0, 5, 2, 2)],
                         ids=["top", "left", "height", "width", "bottom", "right"])
def test_a_box_not_inside_the_image_is_refused(box):
    with pytest.raises(ValueError, match=rf"box \({', '.join(map(str, box))}\) = \(top, left, height, width\) "
                                         r"must lie inside the 4x6 image"):
        degradations.box_mask((4, 6), box)


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (1, 2, 3, 4)], ids=["top-left-pixel", "touching-bottom-right"])
def test_a_box_reaching_the_image_edges_is_accepted(box):
    top, left, height, width = box
    expected = torch.ones(4, 6, dtype=torch.bool)
    for row in range(top, top + height):
        for column in range(left, left + width):
            expected[row, column] = False
    assert torch.equal(degradations.box_mask((4, 6), box), expected)


def test_the_default_box_of_a_one_row_image_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"box \(0, 1, 0, 2\) = \(top, left, height, width\) must lie inside the 1x4"):
        degradations.box_mask((1, 4))


def test_load_mask_reads_rgb_files_and_refuses_grey_pixels(tmp_path):
    from PIL import Image

    pixels = torch.zeros(6, 9, 3, dtype=torch.uint8)
    pixels[2:, 3:] = 255
    Image.fromarray(pixels.numpy(), "RGB").save(tmp_path / "rgb.png")
    assert torch.equal(degradations.load_mask(tmp_path / "rgb.png"), pixels[..., 0] == 255)
    pixels[0, 0] = 128
    Image.fromarray(pixels.numpy(), "RGB").save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="is not a binary mask: 1 of its 54 pixels are neither black nor white"):
        degradations.load_mask(tmp_path / "grey.png")
