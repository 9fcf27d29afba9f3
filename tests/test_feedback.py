"""Human-feedback rules: --pick parsing, picks files, the Feedback hook and the terminal prompt."""
import json
from types import SimpleNamespace

import pytest
import torch

import solvers
from ipsolve.feedback import (Choice, Feedback, TerminalPrompt, load_picks, merge_picks, parse_indices,
                              parse_pick_rules)


class RecordingRun:
    """Stands in for a NestedRun: records keep / set_cond calls."""

    def __init__(self):
        self.calls = []

    def keep(self, indices):
        self.calls.append(("keep", list(indices)))

    def set_cond(self, cond):
        self.calls.append(("set_cond", cond))


def preview(step, candidates=4):
    return SimpleNamespace(step=step, nfe=10 * step, x0=torch.zeros(candidates, 1, 2, 2))


def test_pick_rules_map_steps_to_candidates():
    assert parse_pick_rules(["2:0,3", "1:1"]) == {2: [0, 3], 1: [1]}
    assert parse_indices(" 4, 0") == [4, 0]


@pytest.mark.parametrize("rule", ["2", "x:1", "2:", "2:a,b", "2:-1", ":1"])
def test_malformed_pick_rules_are_value_errors(rule):
    with pytest.raises(ValueError):
        parse_pick_rules([rule])


def test_a_step_given_twice_is_a_value_error():
    with pytest.raises(ValueError, match="step 2 twice"):
        parse_pick_rules(["2:0", "2:1"])
    with pytest.raises(ValueError, match="step 2 twice"):
        merge_picks({2: [0]}, {2: [1]})


def test_picks_file_is_read_as_json(tmp_path):
    path = tmp_path / "picks.json"
    path.write_text(json.dumps({"2": [0, 3], "3": [1]}))
    assert load_picks(path) == {2: [0, 3], 3: [1]}
    assert merge_picks(load_picks(path), {1: [2]}) == {2: [0, 3], 3: [1], 1: [2]}


@pytest.mark.parametrize("content", ['[1, 2]', '{"2": 3}', '{"two": [1]}', '{"2": []}', '{"2": [-1]}', "{"])
def test_bad_picks_files_are_value_errors(tmp_path, content):
    path = tmp_path / "picks.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_picks(path)


def test_missing_picks_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such picks file"):
        load_picks(tmp_path / "absent.json")


def test_feedback_applies_picks_and_schedule_at_their_steps():
    feedback = Feedback(picks={1: [2]}, schedule={2: "a dog"}, encode=str.upper)
    run = RecordingRun()
    for step in (1, 2, 3):
        feedback(preview(step), run)
    assert run.calls == [("keep", [2]), ("set_cond", "A DOG")]
    assert feedback.events == [{"step": 1, "keep": [2]}, {"step": 2, "cond": "a dog"}]


def test_answers_at_the_terminal_override_the_script():
    answers = {1: Choice(keep=[0]), 2: Choice(cond="a cat")}
    feedback = Feedback(picks={1: [3], 2: [1]}, schedule={}, encode=str, ask=lambda p: answers[p.step])
    run = RecordingRun()
    feedback(preview(1), run)
    feedback(preview(2), run)
    assert run.calls == [("keep", [0]), ("keep", [1]), ("set_cond", "a cat")]


def test_check_rejects_steps_without_a_following_step_and_missing_candidates():
    Feedback(picks={1: [3]}, schedule={2: "x"}, encode=str).check(outer_steps=3, candidates=4)
    with pytest.raises(ValueError, match="steps run from 1 to 2"):
        Feedback(picks={3: [0]}).check(outer_steps=3, candidates=4)
    with pytest.raises(ValueError, match="steps run from 1 to 2"):
        Feedback(schedule={0: "x"}, encode=str).check(outer_steps=3, candidates=4)
    with pytest.raises(ValueError, match="candidate 4 does not exist"):
        Feedback(picks={1: [0, 4]}).check(outer_steps=3, candidates=4)


def test_a_schedule_needs_an_encoder():
    with pytest.raises(ValueError, match="encode"):
        Feedback(schedule={1: "x"})


def test_terminal_prompt_asks_again_after_a_bad_answer():
    answers = iter(["0,9", "1,3", "a red car"])
    said = []
    ask = TerminalPrompt("prompt", read=lambda question: next(answers), write=said.append)
    assert ask(preview(2)) == Choice(keep=[1, 3], cond="a red car")
    assert any("candidate 9 does not exist" in line for line in said)


def test_terminal_prompt_empty_answers_and_end_of_input_change_nothing():
    answers = iter([""])

    def read(question):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    assert TerminalPrompt("class", parse_cond=int, read=read, write=lambda line: None)(preview(1)) == Choice()
    assert TerminalPrompt(None, read=lambda q: "2", write=lambda line: None)(preview(1)) == Choice(keep=[2])


class ShrinkingModel:
    """An analytic ε-model: ε = x / 2."""

    alphas_cumprod = torch.linspace(0.9999, 0.0001, 1000, dtype=torch.float64)

    def __call__(self, x, t):
        return 0.5 * x


def test_feedback_as_nested_hook_replicates_the_picked_candidate():
    """With a deterministic inner sampler and outer η = 0, keeping candidate 2 after step 1 makes every
    later candidate equal to what candidate 2 alone would have become."""
    model = ShrinkingModel()
    x_T = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kept = list(solvers.nested(model, inner="ddim", outer_steps=3, inner_steps=2, x_T=x_T,
                               hook=Feedback(picks={1: [2]})))
    alone = list(solvers.nested(model, inner="ddim", outer_steps=3, inner_steps=2, x_T=x_T[2:3]))
    for step in (1, 2):
        torch.testing.assert_close(kept[step].x0, alone[step].x0.expand(4, -1, -1, -1))
    torch.testing.assert_close(kept[0].x0[2], alone[0].x0[0])
