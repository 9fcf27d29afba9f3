"""Composed operators (blur then mask, …) and the nonlinear saturating sensor: algebra against dense
matrices, spec round trips, missing SVD, and measurement files."""
import json

import pytest
import torch

import degradations
from ipsolve.measurement import read_measurement, write_measurement

F64 = torch.float64
STEP = 2 / 255  # one 8-bit level in model units

# (make name, channels, (H, W), parts' extra parameters or None for the defaults)
CASES = [
    ("deblur_gauss+inp", 2, (6, 5), [{"sigma": 1.0, "width": 3}, {"seed": 4}]),
    ("sr2+inp", 1, (8, 6), None),
    ("deblur_uni+sr2+deno", 3, (4, 6), [{"width": 3}, {}, {}]),
    ("color+sr2", 3, (4, 4), None),
]


def build(name, channels, size, extra):
    if extra is None:
        return degradations.make(name, channels=channels, image_size=size, seed=1)
    ops, shape = [], (channels, *size)
    for part, params in zip(name.split("+"), extra):
        ops.append(degradations.make(part, channels=shape[0], image_size=shape[1:], **params))
        shape = ops[-1].measurement_shape
    return degradations.compose(*ops)


@pytest.fixture(params=CASES, ids=[case[0] for case in CASES])
def op(request):
    return build(*request.param)


def dense(fn, shape):
    size = int(torch.tensor(shape).prod())
    return fn(torch.eye(size, dtype=F64).reshape(size, *shape)).reshape(size, -1).T


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_h_is_the_product_of_the_parts(op):
    matrix = dense(op.parts[0].H, op.input_shape)
    for part in op.parts[1:]:
        matrix = dense(part.H, part.input_shape) @ matrix
    torch.testing.assert_close(dense(op.H, op.input_shape), matrix, rtol=1e-12, atol=1e-12)


def test_adjoint(op):
    x, y = randn(3, *op.input_shape), randn(3, *op.measurement_shape, seed=1)
    inner_y = (op.H(x) * y).reshape(3, -1).sum(1)
    torch.testing.assert_close(inner_y, (x * op.Ht(y)).reshape(3, -1).sum(1), rtol=1e-12, atol=1e-12)


def test_pseudo_inverse_is_the_dense_one(op):
    y = randn(2, *op.measurement_shape, seed=2)
    expected = (torch.linalg.pinv(dense(op.H, op.input_shape)) @ y.reshape(2, -1).T).T
    torch.testing.assert_close(op.H_pinv(y).reshape(2, -1), expected, rtol=1e-7, atol=1e-8)


def test_pseudo_inverse_reproduces_consistent_measurements(op):
    y = op.H(randn(2, *op.input_shape, seed=3))
    torch.testing.assert_close(op.H(op.H_pinv(y)), y, rtol=1e-8, atol=1e-8)


def test_spec_round_trip_is_json(op):
    spec = json.loads(json.dumps(op.spec()))
    rebuilt = degradations.make(**spec)
    assert rebuilt.spec() == op.spec() and rebuilt.name == op.name
    x = randn(2, *op.input_shape, seed=4)
    torch.testing.assert_close(rebuilt.H(x), op.H(x), rtol=0, atol=0)


def test_matmul_is_compose_in_matrix_order():
    blur = degradations.make("deblur_uni", channels=1, image_size=(6, 6), width=3)
    mask = degradations.make("inp", channels=1, image_size=(6, 6), seed=2)
    op = mask @ blur
    assert op.name == "deblur_uni+inp" and op.spec() == degradations.compose(blur, mask).spec()
    x = randn(2, 1, 6, 6)
    torch.testing.assert_close(op.H(x), mask.H(blur.H(x)), rtol=0, atol=0)
    twice = degradations.make("deblur_uni", channels=1, image_size=(6, 6), width=5) @ blur
    assert (mask @ twice).name == "deblur_uni+deblur_uni+inp" and len((mask @ twice).parts) == 3
    assert (mask @ twice).measurement_shape == mask.measurement_shape
    after = op @ twice  # a composition on the left: its parts come last
    assert after.name == "deblur_uni+deblur_uni+deblur_uni+inp"
    torch.testing.assert_close(after.H(x), op.H(twice.H(x)), rtol=0, atol=0)
    assert repr(blur) == f"Deblurring({blur.spec()})" and repr(op) == f"ComposedOperator({op.spec()})"


def test_pinv_iterations_caps_the_conjugate_gradient_steps():
    """One iteration is one CG step on HᵀH x = Hᵀy from 0: x₁ = (bᵀb / bᵀHᵀHb) b with b = Hᵀy."""
    blur = degradations.make("deblur_uni", channels=1, image_size=(6, 6), width=3)
    mask = degradations.make("inp", channels=1, image_size=(6, 6), seed=2)
    op = degradations.compose(blur, mask, pinv_iterations=1)
    y = randn(1, 1, 18)
    b = op.Ht(y)
    step = (b * b).sum() / (op.H(b) * op.H(b)).sum()
    torch.testing.assert_close(op.H_pinv(y), step * b, rtol=1e-12, atol=1e-12)


def test_make_by_name_chains_the_image_sizes():
    op = degradations.make("sr2+deblur_uni", channels=3, image_size=(16, 20))
    assert [part.input_shape for part in op.parts] == [(3, 16, 20), (3, 8, 10)] and op.measurement_shape == (3, 8, 10)


def test_no_svd_and_bad_compositions():
    op = degradations.make("deblur_uni+inp", channels=1, image_size=(6, 6))
    for method in ("singulars", "V", "Vt", "U", "Ut"):
        with pytest.raises(NotImplementedError, match="no SVD"):
            getattr(op, method)(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="cannot apply"):
        degradations.compose(degradations.make("sr2", channels=1, image_size=(4, 4)),
                             degradations.make("deno", channels=1, image_size=(4, 4)))
    with pytest.raises(ValueError, match="nothing can follow"):
        degradations.make("inp+deno", channels=1, image_size=(4, 4))
    with pytest.raises(ValueError, match="parts="):
        degradations.make("deblur_uni+inp", channels=1, image_size=(6, 6), width=3)
    with pytest.raises(ValueError, match="linear operators"):
        degradations.make("saturate+inp", channels=1, image_size=(6, 6))


@pytest.mark.parametrize("name, extra", [("deblur_gauss+inp", [{"sigma": 1.0, "width": 3}, {"seed": 4}]),
                                         ("deblur_uni+sr2", [{"width": 3}, {}])])
def test_measurement_file_round_trip(tmp_path, name, extra):
    op = build(name, 3, (8, 6), extra)
    y = op.H(torch.rand(1, 3, 8, 6, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.6 - 0.8)
    write_measurement(tmp_path / "y.png", y, op, sigma_y=0.05)
    measurement = read_measurement(tmp_path / "y.png")
    assert measurement.op.spec() == op.spec() and measurement.sigma_y == pytest.approx(0.05)
    torch.testing.assert_close(measurement.y, y.float(), rtol=0, atol=STEP / 2 + 1e-6)
    if name.endswith("inp"):
        mask = degradations.load_mask(tmp_path / "y.mask.png")
        assert torch.equal(mask, op.parts[-1].mask)


def test_composed_measurement_with_an_explicit_mask_reads_back_the_mask_file(tmp_path):
    mask = degradations.random_mask((6, 6), 0.5, seed=7)
    op = degradations.compose(degradations.make("deblur_uni", channels=1, image_size=(6, 6), width=3),
                              degradations.Inpainting(mask, channels=1))
    y = op.H(torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1)) - 0.5)
    write_measurement(tmp_path / "y.png", y, op, sigma_y=0.0)
    measurement = read_measurement(tmp_path / "y.png")
    assert torch.equal(measurement.op.parts[-1].mask, mask)
    torch.testing.assert_close(measurement.y, y, rtol=0, atol=STEP / 2 + 1e-6)


def test_saturation_is_the_formula_and_round_trips():
    op = degradations.make("saturate", channels=3, image_size=(4, 6), gain=3.0)
    x = randn(2, 3, 4, 6) * 0.5
    torch.testing.assert_close(op.H(x), torch.tanh(3.0 * x) / torch.tanh(torch.tensor(3.0, dtype=F64)))
    assert degradations.make(**json.loads(json.dumps(op.spec()))).spec() == op.spec()
    with pytest.raises(ValueError, match="gain"):
        degradations.make("saturate", gain=-1.0)


def test_saturation_defaults_to_gain_two_on_rgb():
    x = randn(1, 3, 2, 2)
    expected = torch.tanh(2 * x) / torch.tanh(torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(degradations.Saturation(image_size=(2, 2)).H(x), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("gain", [0, 0.0, 50, 50.0, -1.0, True, "2"])
def test_saturation_gain_outside_zero_to_fifty_is_refused(gain):
    with pytest.raises(ValueError, match=r"gain must be a number in \(0, 50\), got"):
        degradations.Saturation(gain=gain, channels=1, image_size=(2, 2))


@pytest.mark.parametrize("gain", [0.5, 1, 49.5])
def test_saturation_gains_inside_the_range_are_the_formula(gain):
    x = randn(1, 1, 2, 2) * 0.1
    expected = torch.tanh(gain * x) / torch.tanh(torch.tensor(float(gain), dtype=F64))
    torch.testing.assert_close(degradations.Saturation(gain, channels=1, image_size=(2, 2)).H(x), expected,
                               rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("x, shown", [([0.5], "list"), (torch.zeros(1, 3, 4, 5), r"\(1, 3, 4, 5\)")])
def test_saturation_refuses_other_inputs_naming_them(x, shown):
    op = degradations.Saturation(channels=3, image_size=(4, 6))
    with pytest.raises(ValueError, match=rf"^saturate expects images of shape \(B, 3, 4, 6\), got {shown}$"):
        op.H(x)


def test_saturation_measurement_file_round_trip(tmp_path):
    op = degradations.make("saturate", channels=3, image_size=(4, 6), gain=2.0)
    y = op.H(torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    write_measurement(tmp_path / "y.png", y, op, sigma_y=0.02)
    measurement = read_measurement(tmp_path / "y.png")
    assert measurement.op.spec() == op.spec()
    torch.testing.assert_close(measurement.y, y, rtol=0, atol=STEP / 2 + 1e-6)


def test_make_draws_the_random_mask_from_the_seed_given_or_zero_also_inside_a_composition():
    """`make("inp")` keeps the pixels of random_mask(size, 0.5, seed) with seed 0 by default; a composition
    hands its seed to its parts."""
    x = randn(1, 1, 6, 6)
    kept = lambda seed: x[:, :, degradations.random_mask((6, 6), 0.5, seed)]  # noqa: E731  (B, C, kept)
    assert not torch.equal(kept(0), kept(5))
    torch.testing.assert_close(degradations.make("inp", channels=1, image_size=(6, 6)).H(x), kept(0), rtol=0, atol=0)
    composed = degradations.make("deblur_uni+inp", channels=1, image_size=(6, 6), seed=5)
    torch.testing.assert_close(composed.parts[1].H(x), kept(5), rtol=0, atol=0)


def test_make_saturate_defaults_to_gain_two():
    x = randn(1, 3, 2, 2)
    expected = torch.tanh(2 * x) / torch.tanh(torch.tensor(2.0, dtype=F64))
    op = degradations.make("saturate", channels=3, image_size=(2, 2))
    torch.testing.assert_close(op.H(x), expected, rtol=0, atol=1e-15)


def test_parts_for_another_image_size_are_refused_even_when_their_names_match():
    parts = [{"name": "deblur_uni", "channels": 1, "image_size": [4, 4], "width": 3},
             {"name": "inp", "channels": 1, "image_size": [4, 4], "seed": 0}]
    assert degradations.make("deblur_uni+inp", channels=1, image_size=(4, 4), parts=parts).input_shape == (1, 4, 4)
    with pytest.raises(ValueError, match="do not match"):
        degradations.make("deblur_uni+inp", channels=1, image_size=(6, 6), parts=parts)
