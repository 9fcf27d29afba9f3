"""Human feedback between the outer steps of Nested Diffusion (paper §5).

After outer step k the user may keep chosen candidates (they replace the others: `run.keep(indices)`
replicates them over the batch) and may change the conditioning — the prompt or class — that the
following inner runs use (`run.set_cond(cond)`). Choices come from scripted rules (`--pick 2:0,3`, a JSON
file `{"2": [0, 3]}`, `--prompt-at 2 "..."`) or from a terminal prompt. `Feedback` applies them and is a
`hook(preview, run)` for `solvers.nested`, so the Python API and the command line share it.
Steps are numbered from 1, as `preview.step` and the preview files are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


def parse_indices(text):
    """'0,3' → [0, 3] (non-negative integers, comma separated)."""
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a list of candidate indices: write them like 0,3") from None
    if not indices or min(indices) < 0:
        raise ValueError(f"{text!r}: candidate indices are non-negative integers, like 0,3")
    return indices


def parse_pick_rules(rules):
    """['2:0,3', …] → {2: [0, 3], …}: after outer step 2 keep candidates 0 and 3."""
    picks = {}
    for rule in rules:
        step, sep, indices = rule.partition(":")
        if not sep or not step.strip().isdigit():
            raise ValueError(f"--pick {rule!r} must read STEP:INDICES, e.g. 2:0,3")
        add_choice(picks, int(step), parse_indices(indices), "--pick")
    return picks


def load_picks(path):
    """A JSON file {"2": [0, 3], …} → {2: [0, 3], …}."""
    try:
        with open(path, encoding="utf-8") as file:
            raw = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such picks file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f'{path}: picks must be a JSON object like {{"2": [0, 3]}}')
    picks = {}
    for step, indices in raw.items():
        if not str(step).isdigit() or not isinstance(indices, list) or not all(
                isinstance(i, int) and i >= 0 for i in indices) or not indices:
            raise ValueError(f'{path}: entry {step!r}: {indices!r} must map a step to indices, like "2": [0, 3]')
        picks[int(step)] = indices
    return picks


def add_choice(choices, step, value, source):
    """Put `value` at `step` in `choices`; two choices for one step are a ValueError."""
    if step in choices:
        raise ValueError(f"{source} gives step {step} twice: give each step once")
    choices[step] = value


def merge_picks(*sources):
    """One {step: indices} from several sources; a step given twice is a ValueError."""
    merged = {}
    for picks in sources:
        for step, indices in picks.items():
            add_choice(merged, step, indices, "the picks")
    return merged


@dataclass
class Choice:
    """What to do after one outer step: candidates to keep and/or a new conditioning (prompt or class)."""

    keep: list[int] | None = None
    cond: object = None


class Feedback:
    """Applies feedback after each outer step; call it as `hook(preview, run)`.

    picks: {step: candidate indices}; schedule: {step: new prompt or class}; encode turns a prompt or
    class into the model's conditioning; ask (optional): callable(preview) → Choice, e.g. a TerminalPrompt.
    Every applied choice is recorded in `events` (JSON-serialisable).
    """

    def __init__(self, picks=None, schedule=None, encode=None, ask=None):
        self.picks, self.schedule = dict(picks or {}), dict(schedule or {})
        if self.schedule and encode is None:
            raise ValueError("a conditioning schedule needs an `encode` function for its prompts or classes")
        self.encode, self.ask = encode, ask
        self.events = []

    def check(self, outer_steps, candidates):
        """ValueError unless every scripted step lies before the last outer step and every index < candidates."""
        for kind, choices in (("pick", self.picks), ("conditioning change", self.schedule)):
            for step in choices:
                if not 1 <= step < outer_steps:
                    raise ValueError(f"{kind} after step {step}: steps run from 1 to {outer_steps - 1} "
                                     f"(nothing follows the last of {outer_steps} outer steps)")
        for step, indices in self.picks.items():
            if max(indices) >= candidates:
                raise ValueError(f"pick after step {step}: candidate {max(indices)} does not exist "
                                 f"(there are {candidates}, numbered from 0)")

    def __call__(self, preview, run):
        choice = Choice(keep=self.picks.get(preview.step), cond=self.schedule.get(preview.step))
        if self.ask is not None:
            asked = self.ask(preview)
            choice = Choice(keep=asked.keep if asked.keep is not None else choice.keep,
                            cond=asked.cond if asked.cond is not None else choice.cond)
        if choice.keep is not None:
            run.keep(choice.keep)
            self.events.append({"step": preview.step, "keep": list(choice.keep)})
        if choice.cond is not None:
            run.set_cond(self.encode(choice.cond))
            self.events.append({"step": preview.step, "cond": choice.cond})


class TerminalPrompt:
    """Asks at the terminal which candidates to keep and (for conditional models) a new prompt or class.

    cond_name: "prompt", "class" or None (unconditional: only candidates are asked);
    parse_cond turns the typed text into the value handed to Feedback's `encode`.
    """

    def __init__(self, cond_name=None, parse_cond=str, read=input, write=print):
        self.cond_name, self.parse_cond = cond_name, parse_cond
        self.read, self.write = read, write

    def __call__(self, preview):
        candidates = preview.x0.shape[0]
        self.write(f"after outer step {preview.step} ({preview.nfe} NFE): candidates 0…{candidates - 1}")
        keep = self._ask("keep candidates (e.g. 0,2; Enter keeps all): ",
                         lambda text: self._indices(text, candidates))
        cond = None
        if self.cond_name is not None:
            cond = self._ask(f"new {self.cond_name} (Enter keeps the current one): ", self.parse_cond)
        return Choice(keep=keep, cond=cond)

    def _ask(self, question, parse):
        """Read until the answer parses; an empty answer or end of input means no change (None)."""
        while True:
            try:
                text = self.read(question).strip()
            except EOFError:
                return None
            if not text:
                return None
            try:
                return parse(text)
            except ValueError as error:
                self.write(f"  {error}")

    @staticmethod
    def _indices(text, candidates):
        indices = parse_indices(text)
        if max(indices) >= candidates:
            raise ValueError(f"candidate {max(indices)} does not exist: choose among 0…{candidates - 1}")
        return indices
