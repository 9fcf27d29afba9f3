"""The vocabulary of checks (`ipsolve.schema`) and the YAML loader that refuses keys given twice."""
import math

import pytest
import yaml

from ipsolve import config as configs
from ipsolve import schema


@pytest.mark.parametrize("rule, value, says", [
    (schema.Integer(1), 0, "x must be a positive integer, got 0"),
    (schema.Integer(1), True, "x must be a positive integer, got true"),
    (schema.Integer(1), 2.0, "x must be a positive integer, got 2.0"),
    (schema.Integer(1), "2", "x must be a positive integer, got '2'"),
    (schema.Integer(0, 9), 10, "x must be an integer from 0 to 9, got 10"),
    (schema.Number(0, 1), 1.5, "x must be a number in [0, 1], got 1.5"),
    (schema.Number(0, 1), math.nan, "x must be a number in [0, 1], got nan"),
    (schema.Number(0), math.inf, "x must be a finite number ≥ 0, got inf"),
    (schema.Number(0), -1e-9, "x must be a finite number ≥ 0, got -1e-09"),
    (schema.Number(0), 10**400, "x must be a finite number ≥ 0, got 1000"),
    (schema.Number(0, above=True), 0, "x must be a finite number > 0, got 0"),
    (schema.Number(), False, "x must be a finite number, got false"),
    (schema.Text(), None, "x must be a non-empty text, got null"),
    (schema.Fields(), ["a"], 'x must be a mapping of `key: value` lines, got ["a"]'),
    (schema.Flag(), "yes", "x must be true or false, got 'yes'"),
    (schema.Text(), "  ", "x must be a non-empty text, got '  '"),
    (schema.Choice("alex", None), "vgg", "x must be one of alex, null, got 'vgg'"),
    (schema.ListOf(schema.Integer(1)), [], "x must be a list of one or more items, each a positive integer, got []"),
    (schema.ListOf(schema.Integer(1)), [2, 0], "x[1] must be a positive integer, got 0"),
    (schema.ListOf(schema.Integer(1), count=2), [1], "x must be a list of 2 items"),
    (schema.MapOf(schema.Name(), schema.Integer()), {}, "x must be a mapping of one or more `key: value` entries"),
    (schema.MapOf(schema.Integer(1), schema.Integer()), {"a": 1}, "x.a must be a positive integer, got 'a'"),
    (schema.NullOr(schema.Integer(1)), 0, "x must be a positive integer, got 0"),
    (schema.Fields({"a": schema.Integer()}, {"b": schema.Flag()}), {"b": True}, "x.a is missing (an integer)"),
    (schema.Fields({}, {"b": schema.Flag()}), {"c": 1}, "x.c is not a key here: the allowed keys are b"),
    (schema.Fields({}, {"b": schema.Flag()}), {"b": 1}, "x.b must be true or false, got 1"),
])
def test_a_refusal_names_the_key_the_value_and_what_is_allowed(rule, value, says):
    with pytest.raises(ValueError) as refused:
        rule(value, "x")
    assert str(refused.value).startswith(says)


def test_rules_return_the_checked_value():
    assert schema.Number(0, 1)(1, "x") == 1.0 and isinstance(schema.Number(0, 1)(1, "x"), float)
    assert schema.Integer(1)(3, "x") == 3 and schema.NullOr(schema.Integer(1))(None, "x") is None
    assert schema.Fields({"a": schema.ListOf(schema.Integer())})({"a": [1, 2]}, "") == {"a": [1, 2]}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", ".hidden", "", " ", "/abs", "a\nb", 3, None])
def test_names_that_would_be_paths_are_refused(name):
    with pytest.raises(ValueError, match="tasks\\[0\\] must be a plain name"):
        schema.plain_name(name, "tasks[0]")


@pytest.mark.parametrize("name", ["sr4", "deblur_gauss+inp", "nested-2", "inp 30", "a.b"])
def test_plain_names_pass(name):
    assert schema.plain_name(name, "x") == name


def test_the_first_difference_is_named_by_its_key_path():
    before = {"methods": {"ddrm": {"eta": 0.85}}, "budgets": [2, 4]}
    assert schema.first_difference(before, before) is None
    assert schema.first_difference(before, {**before, "budgets": [2, 5]}) == ("budgets[1]", 4, 5)
    assert schema.first_difference(before, {**before, "budgets": [2]}) == ("budgets", [2, 4], [2])
    assert schema.first_difference(before, {**before, "methods": {"ddrm": {"eta": 0.2}}}) == \
        ("methods.ddrm.eta", 0.85, 0.2)
    assert schema.first_difference(before, {**before, "seed": 1}) == ("seed", None, 1)


def test_confined_follows_links(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    inside = tmp_path / "out" / "a" / "b"
    assert schema.confined(tmp_path / "out", inside, "x") == inside.resolve()
    with pytest.raises(ValueError, match="x resolves to .* outside the output folder"):
        schema.confined(tmp_path / "out", tmp_path / "out" / "link" / "a", "x")
    with pytest.raises(ValueError, match="outside the output folder"):
        schema.confined(tmp_path / "out", tmp_path / "out" / ".." / "a", "x")


@pytest.mark.parametrize("text, line", [
    ("a: 1\na: 2\n", 2),
    ("methods:\n  ddrm: {}\n  nested: {}\n  ddrm: {eta: 0.2}\n", 4),
    ("m: {eta: 1, eta: 2}\n", 1),
    ("tasks:\n- name: x\n  operator: deno\n  name: y\n", 4),
])
def test_yaml_keys_given_twice_are_refused_with_their_line(tmp_path, text, line):
    (tmp_path / "c.yml").write_text(text)
    with pytest.raises(ValueError, match=f"not valid YAML \\(line {line}, .*given twice"):
        configs.read_yaml(tmp_path / "c.yml")


def test_merge_keys_and_equal_values_in_other_mappings_are_no_duplicates(tmp_path):
    (tmp_path / "c.yml").write_text("base: &b {eta: 0.5}\nddrm:\n  <<: *b\n  eta: 0.85\nnested: {eta: 0.5}\n")
    assert configs.read_yaml(tmp_path / "c.yml") == {"base": {"eta": 0.5}, "ddrm": {"eta": 0.85},
                                                     "nested": {"eta": 0.5}}


def test_every_solver_option_has_a_rule_and_a_new_one_flows_in(monkeypatch):
    for solver, options in configs.SOLVER_OPTIONS.items():
        for option in options:
            assert callable(configs.option_rule(solver, option))
    # an option added to SOLVER_OPTIONS without a range is checked against its default's type
    monkeypatch.setitem(configs.SOLVER_OPTIONS, "pigdm", ("eta", "cg_iterations", "safeguard"))
    with pytest.raises(ValueError, match="methods.pigdm.cg_iterations must be an integer, got 2.5"):
        configs._method("pigdm", {"cg_iterations": 2.5}, (2,), "methods.pigdm")
    method = configs._method("pigdm", {"cg_iterations": 5}, (2,), "methods.pigdm")
    assert method.options == {"eta": 1.0, "cg_iterations": 5, "safeguard": None}
    # a true/false default gives a flag
    defaults = {"cg_iterations": 100, "safeguard": True, "eta": 1.0}
    monkeypatch.setattr(configs, "solver_default", lambda solver, option: defaults[option])
    with pytest.raises(ValueError, match="methods.pigdm.safeguard must be true or false, got 'no'"):
        configs._method("pigdm", {"safeguard": "no"}, (2,), "methods.pigdm")


def test_a_task_file_names_its_own_file_and_key(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "loud.yml").write_text(yaml.safe_dump({"operator": "deno", "sigma_y_pixel": 3}))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "e.yml").write_text(yaml.safe_dump({"model": "embedded", "tasks": ["loud"],
                                                              "budgets": [2], "methods": {"ddrm": {}}}))
    with pytest.raises(ValueError) as refused:
        configs.load_eval_config(tmp_path / "eval" / "e.yml")
    assert str(refused.value) == f"{tmp_path / 'tasks' / 'loud.yml'}: sigma_y_pixel must be a number in [0, 1], got 3"
