"""The studio page's event functions, without a browser: they call the library, a run driven through them
writes what `ipsolve restore` / `ipsolve generate` write (file for file), Stop keeps the latest preview,
bad input is one line and leaves nothing behind, and browser sessions do not see each other's runs."""
import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipsolve.cli import main
from ipsolve.imageio import load_image, save_image
from ipsolve.studio.events import (EXAMPLES, GenerateForm, RestoreForm, Studio, message, prepare_restore,
                                   start_generate)

TIMELESS = ("elapsed_s", "arguments", "measurement", "mask", "previews")


@pytest.fixture
def studio(tmp_path):
    return Studio(["embedded"], tmp_path / "runs")


def read_json(path):
    return json.loads(Path(path).read_text())


def same_pixels(first, second):
    return torch.equal(load_image(first), load_image(second))


def assert_same_run_folder(studio_dir, cli_dir):
    studio_files = sorted(p.name for p in Path(studio_dir).iterdir() if not p.name.startswith("."))
    cli_files = sorted(p.name for p in Path(cli_dir).iterdir() if not p.name.startswith("."))
    assert studio_files == cli_files
    for name in studio_files:
        if name.endswith((".png", ".gif")):
            assert (Path(studio_dir) / name).read_bytes() == (Path(cli_dir) / name).read_bytes(), name
    ours, theirs = read_json(Path(studio_dir) / "run.json"), read_json(Path(cli_dir) / "run.json")
    for record in (ours, theirs):  # a mask file's path differs (the folders do); the tests compare its bytes
        record["task"].pop("mask_path", None)
    assert {k: v for k, v in ours.items() if k not in TIMELESS} == \
           {k: v for k, v in theirs.items() if k not in TIMELESS}
    assert [{k: v for k, v in p.items() if k != "elapsed_s"} for p in ours["previews"]] == \
           [{k: v for k, v in p.items() if k != "elapsed_s"} for p in theirs["previews"]]
    skip = ("out", "measurement", "quiet", "mask")
    assert {k: v for k, v in ours["arguments"].items() if k not in skip} == \
           {k: v for k, v in theirs["arguments"].items() if k not in skip}


def test_a_restore_degraded_on_the_page_equals_ipsolve_degrade_then_restore_file_for_file(studio, tmp_path):
    form = RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="sr4", sigma_y=0.05, degrade_seed=3,
                       outer=3, inner=4, seed=7)
    job = prepare_restore(studio, form)
    views = list(job.views(studio))
    assert [view.answer_label.split(" · ")[0] for view in views if view.answer_label][-1] == "NFE 12"
    assert "PSNR" in views[-1].answer_label and views[-1].status.startswith("done: 3 previews, 12 NFE")
    assert not views[-1].running and views[-1].final.endswith("final.png")

    assert main(["degrade", str(EXAMPLES / "digit_clean.png"), "--task", "sr4", "--sigma-y", "0.05", "--seed", "3",
                 "-o", str(tmp_path / "y.png")]) == 0
    for name in ("measurement.png", "measurement.png.json"):
        ours, theirs = job.job_dir / "input" / name, tmp_path / name.replace("measurement", "y")
        assert ours.read_bytes() == theirs.read_bytes(), name
    assert main(["restore", str(tmp_path / "y.png"), "--model", "embedded", "--outer", "3", "--inner", "4",
                 "--seed", "7", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert_same_run_folder(job.run_dir, tmp_path / "cli")
    with zipfile.ZipFile(views[-1].archive) as bundle:  # the download is the run folder
        names = sorted(Path(name).name for name in bundle.namelist())
        assert names == sorted(p.name for p in job.run_dir.iterdir() if not p.name.startswith("."))
        assert bundle.read("run/final.png") == (job.run_dir / "final.png").read_bytes()


def test_an_uploaded_measurement_with_sidecar_and_mask_restores_like_the_cli_with_other_settings(studio, tmp_path):
    form = RestoreForm(image=str(EXAMPLES / "digit_inp.png"), treat_as="measurement",
                       sidecar=str(EXAMPLES / "digit_inp.png.json"), mask=str(EXAMPLES / "digit_inp.mask.png"),
                       solver="pigdm", outer=2, inner=3, budget=5, eta=0.5, seed=1, samples=2)
    job = prepare_restore(studio, form)
    views = list(job.views(studio))
    assert views[-1].status.startswith("done: 1 previews, 5 NFE")  # the budget planned: one run of 5
    assert "PSNR" not in views[-1].answer_label  # no clean image to compare with
    for name in ("digit_inp.png", "digit_inp.png.json", "digit_inp.mask.png"):  # outside the shipped examples,
        shutil.copy(EXAMPLES / name, tmp_path / name)  # whose strips `ipsolve restore` labels with PSNR
    assert main(["restore", str(tmp_path / "digit_inp.png"), "--solver", "pigdm", "--outer", "2", "--inner", "3",
                 "--budget", "5", "--eta", "0.5", "--seed", "1", "--samples", "2", "--estimate", "mean", "--out",
                 str(tmp_path / "cli"), "--quiet"]) == 0
    assert_same_run_folder(job.run_dir, tmp_path / "cli")


def test_samples_show_the_posterior_mean_and_its_std_beside_the_answer(studio, tmp_path):
    clean = load_image(EXAMPLES / "digit_clean.png")
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="deno", sigma_y=0.2,
                                              outer=2, inner=3, seed=4, samples=3))
    views = [dataclasses.replace(view) for view in job.views(studio)]  # each as it was shown
    during = [view for view in views if view.running and view.mean]
    assert len(during) == 2 and during[0].mean.endswith("preview_01_nfe003_mean.png")
    assert during[0].std.endswith("preview_01_nfe003_std.png") and Path(during[0].std).is_file()
    last = views[-1]
    assert (last.mean, last.std) == (str(job.run_dir / "mean.png"), str(job.run_dir / "std.png"))
    mean = load_image(last.mean)
    assert mean.shape == clean.shape  # one picture of the one measurement, not the grid of its samples
    by_hand = 10 * np.log10(1 / float(((mean.double() - clean.double()) ** 2).mean()))
    assert last.mean_label == f"posterior mean of 3 samples · NFE 6 · PSNR {by_hand:.2f} dB"
    assert Image.open(last.std).mode == "RGB" and Image.open(last.std).width > 3 * clean.shape[-1]  # colour, a bar
    single = list(prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=1,
                                                      inner=2)).views(studio))[-1]
    assert single.mean is None and single.std is None


def test_stop_keeps_the_latest_preview_as_the_answer_and_the_download(studio):
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=6, inner=5))
    views = []
    for view in job.views(studio):
        views.append(view)
        if view.strip and len(view.strip) == 2:
            studio.set_job("tab", "restore", job)
            studio.stop("tab", "restore")
    last = views[-1]
    record = read_json(job.run_dir / "run.json")
    assert record["status"] == "interrupted" and record["interrupted"] is True
    kept = record["previews"][-1]
    assert 2 <= len(record["previews"]) < 6 and last.status.startswith("stopped after NFE")
    assert f"kept preview {kept['step']} (NFE {kept['nfe']})" in last.status
    assert last.answer == last.final and same_pixels(last.final, job.run_dir / kept["file"])
    assert record["nfe"] < 30  # stopped within a network call of the request, not at the end


def test_compare_shows_the_plain_solver_at_the_same_nfe_written_like_restore_vanilla(studio, tmp_path):
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=2, inner=4,
                                              compare=True))
    views = list(job.views(studio))
    assert views[-1].vanilla_label.startswith("plain NFE 8")
    assert views[-1].answer_label.startswith("NFE 8")
    main(["degrade", str(EXAMPLES / "digit_clean.png"), "--task", "sr4", "--sigma-y", "0.05", "-o",
          str(tmp_path / "y.png")])
    main(["restore", str(tmp_path / "y.png"), "--outer", "2", "--inner", "4", "--vanilla", "--out",
          str(tmp_path / "cli"), "--quiet"])
    assert_same_run_folder(job.job_dir / "vanilla", tmp_path / "cli")


def bad(tmp_path, name):
    path = tmp_path / name
    if name == "text.png":
        path.write_text("not an image at all\n")
    elif name == "colour.png":
        save_image(torch.rand(3, 32, 32), path)
    elif name == "small.png":
        save_image(torch.rand(1, 30, 30), path)
    elif name == "mask16.png":
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("case, words", [
    ("text", "is not a readable image"),
    ("colour", "takes 1-channel images"),
    ("size", "multiples of"),
    ("budget", "smaller than one inner run"),
    ("mask", "mask of the image"),
    ("outer", "--outer"),
    ("clean-mask", "mask of the image"),
    ("none", "upload an image"),
])
def test_bad_input_is_one_readable_line_and_leaves_nothing_behind(studio, tmp_path, case, words):
    form = {"text": RestoreForm(image=bad(tmp_path, "text.png")),
            "colour": RestoreForm(image=bad(tmp_path, "colour.png"), task="deno"),
            "size": RestoreForm(image=bad(tmp_path, "small.png"), task="deno"),
            "budget": RestoreForm(image=str(EXAMPLES / "digit_clean.png"), inner=5, budget=3),
            "mask": RestoreForm(image=str(EXAMPLES / "digit_clean.png"), treat_as="measurement", task="inp",
                                mask=bad(tmp_path, "mask16.png")),
            "outer": RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=0),
            "clean-mask": RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="inp_mask",
                                      mask=bad(tmp_path, "mask16.png")),
            "none": RestoreForm(image=None)}[case]
    with pytest.raises((ValueError, OSError)) as error:
        prepare_restore(studio, form)
    text = message(error.value)
    assert words in text and "\n" not in text and "Traceback" not in text
    assert not studio.runs_dir.exists() or not any(studio.runs_dir.iterdir())


def test_a_generation_steered_on_the_page_replays_from_its_picks_file(studio, tmp_path):
    session = start_generate(studio, "tab", GenerateForm(n=3, outer=3, inner=4, seed=5))
    first = session.step()
    assert len(first.candidates) == 3 and first.step == 1 and first.running
    second = session.step(keep=[1])
    assert second.step == 2
    last = session.step()
    assert not last.running and last.status.startswith("done") and last.final
    record = read_json(session.run_dir / "run.json")
    assert record["feedback"] == [{"step": 1, "keep": [1]}] and record["status"] == "done"
    assert read_json(session.run_dir / "picks.json") == {"1": [1]}
    assert "--picks picks.json" in (session.run_dir / "replay.txt").read_text()
    # after keeping candidate 1, the next candidates all come from it
    step1 = [load_image(path) for path, _ in first.candidates]
    for path, _ in second.candidates:
        distances = [float((load_image(path) - image).abs().mean()) for image in step1]
        assert int(np.argmin(distances)) == 1
    assert main(["generate", "--model", "embedded", "--n", "3", "--outer", "3", "--inner", "4", "--seed", "5",
                 "--picks", str(session.run_dir / "picks.json"), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    for path in sorted(session.run_dir.glob("preview_*.png")):
        assert path.read_bytes() == (tmp_path / "cli" / path.name).read_bytes(), path.name
    assert read_json(tmp_path / "cli" / "run.json")["feedback"] == record["feedback"]


def test_stopping_a_generation_keeps_the_latest_candidates_and_sessions_are_separate(studio):
    mine = start_generate(studio, "tab-a", GenerateForm(n=2, outer=4, inner=3))
    theirs = start_generate(studio, "tab-b", GenerateForm(n=2, outer=4, inner=3))
    mine.step()
    theirs.step()
    assert studio.job("tab-a", "generate") is mine and studio.job("tab-b", "generate") is theirs
    studio.stop("tab-a")
    view = mine.view()
    assert not view.running and view.status.startswith("stopped after outer step 1")
    assert read_json(mine.run_dir / "run.json")["status"] == "interrupted"
    assert theirs.step().step == 2  # the other tab's run goes on
    studio.forget("tab-b")  # its tab closed
    assert studio.job("tab-b", "generate") is None
    assert read_json(theirs.run_dir / "run.json")["status"] == "interrupted"


def test_a_bad_keep_is_one_line_and_the_run_goes_on(studio):
    session = start_generate(studio, "tab", GenerateForm(n=2, outer=2, inner=2))
    session.step()
    with pytest.raises(ValueError, match="candidate 5 does not exist"):
        session.step(keep=[5])
    assert session.step(keep=[0]).step == 2


def test_messages_name_uploaded_files_as_the_user_named_them_not_by_server_paths(studio, tmp_path):
    upload = tmp_path / "gradio-cache-0123456789" / "notes.png"
    upload.parent.mkdir()
    upload.write_text("text, not pixels\n")
    for treat_as in ("clean", "measurement"):
        with pytest.raises(ValueError) as error:
            prepare_restore(studio, RestoreForm(image=str(upload), treat_as=treat_as))
        assert str(error.value).startswith("notes.png is not a readable image")
        assert "gradio-cache" not in str(error.value) and str(studio.runs_dir) not in str(error.value)


@pytest.mark.parametrize("family", ["sd", "dit"])
def test_a_prompt_or_class_changed_on_the_page_is_recorded_and_replays(family, request, tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    folder = request.getfixturevalue(f"{family}_folder")  # tiny random-weight pipelines (conftest)
    first, later, flag, option = {
        "sd": ({"prompt": "a cat"}, "a dog", "--prompt-at", ["--prompt", "a cat"]),
        "dit": ({"class_label": "3"}, "7", "--class-at", ["--class", "3"])}[family]
    studio = Studio([folder], tmp_path / "runs")
    session = start_generate(studio, "tab", GenerateForm(model=folder, n=2, outer=3, inner=2, seed=4, **first))
    session.step()
    session.step(keep=[1], cond_text=later)
    session.step()
    change = later if family == "sd" else int(later)
    record = read_json(session.run_dir / "run.json")
    assert record["feedback"] == [{"step": 1, "keep": [1]}, {"step": 1, "cond": change}]
    assert f"{flag} 1" in (session.run_dir / "replay.txt").read_text()
    assert main(["generate", "--model", folder, *option, "--n", "2", "--outer", "3", "--inner", "2", "--seed", "4",
                 "--picks", str(session.run_dir / "picks.json"), flag, "1", later, "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    for path in sorted(session.run_dir.glob("preview_*.png")):
        assert path.read_bytes() == (tmp_path / "cli" / path.name).read_bytes(), path.name


def test_the_studio_command_refuses_a_model_it_cannot_load_in_one_line_before_serving(tmp_path, capsys):
    assert main(["studio", "--model", "embedded", "--model", str(tmp_path / "missing.ckpt"), "--runs",
                 str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ipsolve: error:") and "missing.ckpt" in error and "\n" not in error
    assert not (tmp_path / "runs").exists()


def test_a_clean_image_degraded_with_a_mask_file_equals_ipsolve_degrade_with_mask(studio, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, ::2] = 255
    Image.fromarray(mask).save(tmp_path / "stripes.png")
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="inp_mask",
                                              sigma_y=0.0, mask=str(tmp_path / "stripes.png"), outer=1, inner=2))
    list(job.views(studio))
    assert main(["degrade", str(EXAMPLES / "digit_clean.png"), "--task", "inp_mask", "--mask",
                 str(tmp_path / "stripes.png"), "-o", str(tmp_path / "y.png")]) == 0
    assert (job.job_dir / "input" / "measurement.png").read_bytes() == (tmp_path / "y.png").read_bytes()
    assert (job.job_dir / "input" / "measurement.mask.png").read_bytes() == (tmp_path / "y.mask.png").read_bytes()
    assert main(["restore", str(tmp_path / "y.png"), "--outer", "1", "--inner", "2", "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    assert_same_run_folder(job.run_dir, tmp_path / "cli")


def test_the_studio_loads_each_model_once_for_restores_their_vanilla_twin_and_generations(tmp_path, monkeypatch):
    import ipsolve.models

    loads = []
    real = ipsolve.models.load_model

    def counted(name, *args, **kwargs):
        loads.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ipsolve.models, "load_model", counted)
    studio = Studio(["embedded"], tmp_path / "runs")
    first = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=1, inner=2))
    list(first.views(studio))
    compared = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=1, inner=2,
                                                   compare=True))
    list(compared.views(studio))
    generation = start_generate(studio, "tab", GenerateForm(n=2, outer=1, inner=2))
    generation.step()
    assert loads == ["embedded"]
    assert compared.twin[1].model is compared.inputs.model  # the vanilla twin shares it
    assert first.inputs.model is compared.inputs.model is generation.model


def test_models_the_studio_command_loaded_at_start_are_not_loaded_again(tmp_path, monkeypatch):
    import ipsolve.models

    model = ipsolve.models.load_model("embedded", device="cpu")
    monkeypatch.setattr(ipsolve.models, "load_model", lambda *args, **kwargs: pytest.fail("loaded again"))
    studio = Studio(["embedded"], tmp_path / "runs", device="cpu", loaded={"embedded": model})
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), outer=1, inner=2))
    assert job.inputs.model is model and list(job.views(studio))[-1].status.startswith("done")


def brush(size=(32, 32), box=(8, 24, 10, 22), dots=()):
    """The brush editor's value as the page sends it: RGBA numpy arrays, the rectangle rows box[0]:box[1],
    columns box[2]:box[3] painted white on the one layer, plus single barely painted pixels `dots`."""
    layer = np.zeros((*size, 4), np.uint8)
    if box is not None:
        layer[box[0]:box[1], box[2]:box[3]] = 255
    for row, column in dots:
        layer[row, column] = (0, 0, 0, 1)  # alpha 1: painted all the same
    background = np.zeros((*size, 4), np.uint8)
    return {"background": background, "layers": [layer], "composite": background}


def test_a_mask_painted_with_the_brush_is_the_missing_region_and_replays_with_ipsolve_degrade(studio, tmp_path):
    expected = np.full((32, 32), 255, np.uint8)  # white = observed
    expected[8:24, 10:22] = 0
    expected[2, 30] = 0
    job = prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="inp", sigma_y=0.0,
                                              painted=brush(dots=[(2, 30)]), outer=1, inner=2))
    list(job.views(studio))
    inputs = job.job_dir / "input"
    for name in ("drawn.mask.png", "measurement.mask.png"):
        assert np.array_equal(np.array(Image.open(inputs / name).convert("L")), expected), name
    clean = np.array(Image.open(EXAMPLES / "digit_clean.png"))
    measured = np.array(Image.open(inputs / "measurement.png"))
    assert np.array_equal(measured[expected == 255], clean[expected == 255])  # observed: the clean pixels
    assert clean[expected == 0].any() and not measured[expected == 0].any()  # painted: missing (black)
    assert read_json(inputs / "measurement.png.json")["mask"] == "measurement.mask.png"
    assert main(["degrade", str(inputs / "clean.png"), "--task", "inp", "--sigma-y", "0", "--mask",
                 str(inputs / "drawn.mask.png"), "-o", str(tmp_path / "y.png")]) == 0
    assert (inputs / "measurement.png").read_bytes() == (tmp_path / "y.png").read_bytes()


def test_nothing_painted_degrades_as_without_the_brush(studio):
    form = RestoreForm(image=str(EXAMPLES / "digit_clean.png"), task="inp", degrade_seed=2, outer=1, inner=1)
    plain = prepare_restore(studio, form)
    unpainted = prepare_restore(studio, dataclasses.replace(form, painted=brush(box=None)))
    assert not (unpainted.job_dir / "input" / "drawn.mask.png").exists()
    for name in ("measurement.png", "measurement.mask.png"):
        assert (plain.job_dir / "input" / name).read_bytes() == (unpainted.job_dir / "input" / name).read_bytes()


@pytest.mark.parametrize("case, words", [
    ("and-uploaded", "both painted and uploaded"),
    ("not-inpainting", "a painted mask is for inpainting (inp, inp_box, inp_mask), not sr4"),
    ("other-size", "the painted mask is 64x48 but the image is 32x32"),
    ("measurement", "the brush paints the mask of a clean image"),
    ("everything", "the brush painted every pixel"),
])
def test_a_painted_mask_that_cannot_be_used_is_one_line_and_leaves_nothing_behind(studio, tmp_path, case, words):
    digit = str(EXAMPLES / "digit_clean.png")
    form = {"and-uploaded": RestoreForm(image=digit, task="inp", painted=brush(),
                                        mask=str(EXAMPLES / "digit_inp.mask.png")),
            "not-inpainting": RestoreForm(image=digit, task="sr4", painted=brush()),
            "other-size": RestoreForm(image=digit, task="inp", painted=brush(size=(64, 48))),
            "everything": RestoreForm(image=digit, task="inp", painted=brush(box=(0, 32, 0, 32))),
            "measurement": RestoreForm(image=str(EXAMPLES / "digit_inp.png"), treat_as="measurement",
                                       sidecar=str(EXAMPLES / "digit_inp.png.json"),
                                       mask=str(EXAMPLES / "digit_inp.mask.png"), painted=brush())}[case]
    with pytest.raises(ValueError) as error:
        prepare_restore(studio, form)
    text = message(error.value)
    assert words in text and "\n" not in text
    assert not studio.runs_dir.exists() or not any(studio.runs_dir.iterdir())
