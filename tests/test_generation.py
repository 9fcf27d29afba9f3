"""Nested Diffusion generation (`ipsolve.generation`, `ipsolve generate`) on tiny random-weight Stable
Diffusion and DiT folders (latents 4×8×8, images 16×16) and the embedded pixel model."""
import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import solvers  # noqa: E402
from ipsolve.cli import main  # noqa: E402
from ipsolve.feedback import Feedback  # noqa: E402
from ipsolve.generation import generate  # noqa: E402
from ipsolve.guidance import guided  # noqa: E402
from ipsolve.imageio import load_image  # noqa: E402

TILE, PAD = 16, 2  # decoded tiny images are 16×16; save_grid pads by 2


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def noise(n=2, seed=1):
    return torch.randn(n, 4, 8, 8, generator=seeded(seed))


def previews(run):
    with torch.no_grad():
        return list(run)


def released(start, stop, count):
    """round(linspace(start, stop, count)) descending, independently of solvers.timesteps."""
    return [int(v) for v in np.linspace(start, stop, count).round()[::-1]]


# --- presets and NFE ----------------------------------------------------------------------------

def test_stable_diffusion_preset_uses_the_released_grids(sd):
    run = generate(sd, 4, 5, 1, cond=sd.encode_prompt("a cat"))
    assert run.outer_timesteps == released(1, 999, 5)[:-1]
    assert run.inner_timesteps == [released(1, t, 5) for t in run.outer_timesteps]
    dpm = generate(sd, 4, 5, 1, cond=sd.encode_prompt("a cat"), inner="dpm_solver")
    assert dpm.inner_timesteps == [released(0, t, 6)[:-1] for t in dpm.outer_timesteps]


def test_dit_preset_uses_the_released_grids(dit):
    run = generate(dit, 5, 4, 1, cond=dit.class_labels(3))
    assert run.outer_timesteps == [999, 799, 599, 400, 200]
    assert run.inner_timesteps[0] == [999, 666, 333, 0]
    assert run.inner_timesteps == [released(0, t, 4) for t in run.outer_timesteps]


class CallSpy:
    """Passes calls through to a model and records the batch size of each network call."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, cond)


def test_a_guided_evaluation_counts_one_nfe_and_is_one_batched_call(sd):
    spy = CallSpy(sd)
    shown = previews(generate(spy, 3, 4, 2, cond=sd.encode_prompt("a cat"), generator=seeded()))
    assert [p.nfe for p in shown] == [4, 8, 12]
    assert spy.batches == [4] * 12  # 12 guided evaluations, each one call on 2n = 4 latents


def test_guidance_one_makes_one_unguided_call_per_step(sd):
    spy = CallSpy(sd)
    previews(generate(spy, 2, 3, 2, cond=sd.encode_prompt("a cat"), guidance=1.0, generator=seeded()))
    assert spy.batches == [2] * 6


# --- equivalences -------------------------------------------------------------------------------

def test_one_outer_step_is_plain_guided_ddim_for_stable_diffusion(sd):
    cond = sd.encode_prompt("a cat")
    nested_x0 = previews(generate(sd, 1, 6, 2, cond=cond, x_T=noise(), generator=seeded(5)))[0].x0
    with torch.no_grad():
        plain = solvers.ddim(guided(sd, 7.5, sd.null_cond()), noise(), released(1, 999, 6), eta=0.85,
                             generator=seeded(5), cond=cond)
    torch.testing.assert_close(nested_x0, plain)


def test_one_outer_step_is_plain_guided_ddpm_with_learned_variance_for_dit(dit):
    cond = dit.class_labels(3)
    nested_x0 = previews(generate(dit, 1, 5, 2, cond=cond, x_T=noise(), generator=seeded(5)))[0].x0
    with torch.no_grad():
        plain = solvers.ddpm(guided(dit, 1.5, dit.null_cond()), noise(), released(0, 999, 5),
                             generator=seeded(5), cond=cond)
    torch.testing.assert_close(nested_x0, plain)


def test_a_prompt_change_after_step_k_changes_only_later_previews(sd):
    def run(feedback=None):
        return previews(generate(sd, 4, 2, 2, cond=sd.encode_prompt("a cat"), x_T=noise(), generator=seeded(),
                                 hook=feedback))

    same, changed = run(), run(Feedback(schedule={2: "a dog"}, encode=sd.encode_prompt))
    for step in (0, 1):
        torch.testing.assert_close(changed[step].x0, same[step].x0)
    for step in (2, 3):
        assert not torch.allclose(changed[step].x0, same[step].x0)


def test_same_seed_same_samples_other_seed_other_samples(dit):
    def final(seed):
        return previews(generate(dit, 2, 3, 2, cond=dit.class_labels(1), generator=seeded(seed)))[-1].x0

    torch.testing.assert_close(final(0), final(0))
    assert not torch.allclose(final(0), final(1))


# --- the command --------------------------------------------------------------------------------

def generate_cli(*args):
    return main(["generate", "--quiet", *map(str, args)])


def tiles(path, count):
    """The `count` 16×16 images of a saved grid (row-major, ~√count per row)."""
    grid = load_image(path)
    per_row = int(np.ceil(np.sqrt(count)))
    return [grid[:, PAD + (k // per_row) * (TILE + PAD):][:, :TILE, PAD + (k % per_row) * (TILE + PAD):][:, :, :TILE]
            for k in range(count)]


def test_generate_writes_previews_final_strip_and_record(sd_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 3, "--inner", 2, "--n", 4,
                        "--out", out) == 0
    names = ["preview_01_nfe002.png", "preview_02_nfe004.png", "preview_03_nfe006.png"]
    for name in names + ["final.png", "strip.png", "anytime.gif", "run.json"]:
        assert (out / name).is_file()
    assert load_image(out / names[0]).shape == (3, 2 * (TILE + PAD) + PAD, 2 * (TILE + PAD) + PAD)
    torch.testing.assert_close(load_image(out / "final.png"), load_image(out / names[-1]))
    record = json.loads((out / "run.json").read_text())
    assert [p["file"] for p in record["previews"]] == names
    assert record["nfe"] == 6 and record["solver"] == "nested(ddim)" and record["guidance"] == 7.5
    assert record["inner_options"] == {"eta": 0.85}
    assert "final.png" in capsys.readouterr().out


def test_generate_is_deterministic_under_a_seed(sd_folder, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 2, "--inner", 2, "--n", 2,
                     "--seed", seed, "--out", tmp_path / name)
    final = {name: load_image(tmp_path / name / "final.png") for name in "abc"}
    torch.testing.assert_close(final["a"], final["b"])
    assert not torch.equal(final["a"], final["c"])


def test_pick_replicates_the_chosen_candidate(sd_folder, tmp_path):
    out = tmp_path / "out"
    # DPM-Solver++ inside and DDIM η = 0 outside are deterministic: replicas stay identical.
    generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 3, "--inner", 2, "--n", 4,
                 "--inner-sampler", "dpm_solver", "--pick", "1:2", "--out", out)
    first, second = tiles(out / "preview_01_nfe002.png", 4), tiles(out / "preview_02_nfe004.png", 4)
    assert not torch.equal(first[0], first[2])
    assert all(torch.equal(tile, second[0]) for tile in second)
    record = json.loads((out / "run.json").read_text())
    assert record["feedback"] == [{"step": 1, "keep": [2]}]


def test_prompt_at_changes_only_the_later_previews(sd_folder, tmp_path):
    common = ("--model", sd_folder, "--prompt", "a cat", "--outer", 3, "--inner", 2, "--n", 2)
    generate_cli(*common, "--out", tmp_path / "same")
    generate_cli(*common, "--prompt-at", 2, "a dog", "--out", tmp_path / "changed")
    for name, equal in (("preview_01_nfe002.png", True), ("preview_02_nfe004.png", True),
                        ("preview_03_nfe006.png", False)):
        same, changed = load_image(tmp_path / "same" / name), load_image(tmp_path / "changed" / name)
        assert torch.equal(same, changed) == equal


def test_picks_file_and_interactive_answers_reach_the_run(sd_folder, tmp_path, monkeypatch):
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps({"1": [1]}))
    generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 2, "--inner", 2, "--n", 2,
                 "--picks", picks, "--out", tmp_path / "scripted")
    assert json.loads((tmp_path / "scripted" / "run.json").read_text())["feedback"] == [{"step": 1, "keep": [1]}]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal("0\na dog\n"))
    generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 2, "--inner", 2, "--n", 2,
                 "--interactive", "--out", tmp_path / "asked")
    record = json.loads((tmp_path / "asked" / "run.json").read_text())
    assert record["feedback"] == [{"step": 1, "keep": [0]}, {"step": 1, "cond": "a dog"}]


def test_budget_is_shared_over_the_inner_runs_that_fit(sd_folder, tmp_path):
    generate_cli("--model", sd_folder, "--prompt", "a cat", "--outer", 3, "--inner", 2, "--n", 1,
                 "--budget", 5, "--out", tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert [p["nfe"] for p in record["previews"]] == [3, 5]  # 2 + 2 fit: 5 shared as 3 + 2, no 1-call run


def test_dit_generates_from_a_class_with_ddpm_inside(dit_folder, tmp_path):
    assert generate_cli("--model", dit_folder, "--class", 3, "--outer", 2, "--inner", 3, "--n", 2,
                        "--out", tmp_path) == 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["solver"] == "nested(ddpm)" and record["guidance"] == 1.5 and record["nfe"] == 6
    assert record["outer_timesteps"] == released(0, 999, 3)[:-1]


def test_pixel_models_go_through_the_same_command(tmp_path):
    assert generate_cli("--model", "embedded", "--outer", 2, "--inner", 1, "--n", 1, "--out", tmp_path) == 0
    assert load_image(tmp_path / "preview_02_nfe002.png").shape == (1, 32, 32)
    assert json.loads((tmp_path / "run.json").read_text())["guidance"] is None


@pytest.mark.parametrize("arguments, message", [
    (("--model", "sd15", "--prompt", "a cat"), "stable-diffusion-v1-5"),
    (("--model", "dit", "--class", "1"), "DiT-XL-2-256"),
    (("--model", "embedded", "--prompt", "a cat"), "unconditional"),
    (("--model", "embedded", "--guidance", "2"), "--guidance needs a conditional model"),
    (("--model", "embedded", "--pick", "3:0"), "steps run from 1 to 2"),
    (("--model", "embedded", "--pick", "1:7"), "candidate 7 does not exist"),
    (("--model", "embedded", "--interactive"), "needs a terminal"),
])
def test_bad_input_is_one_line_and_exit_2(arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPSOLVE_WEIGHTS", str(tmp_path / "weights"))
    assert generate_cli(*arguments, "--outer", 3, "--inner", 1, "--out", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("ipsolve: error:") and error.count("\n") == 1
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("arguments, message", [
    (("--outer", "2"), "needs --prompt"),
    (("--prompt", "a cat", "--class-at", "1", "2"), "--class-at are for DiT"),
    (("--prompt", "a cat", "--prompt-at", "x", "a dog"), "not an outer step"),
])
def test_conditioning_must_fit_the_model(arguments, message, sd_folder, tmp_path, capsys):
    assert generate_cli("--model", sd_folder, *arguments, "--out", tmp_path) == 2
    assert message in capsys.readouterr().err
