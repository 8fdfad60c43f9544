"""Expression evaluation, template substitution, depends logic and loop expansion of the local executor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from argofl.pipelines.local.depends import TaskResults, resolve_depends
from argofl.pipelines.local.errors import ExpressionError, WorkflowInputError
from argofl.pipelines.local.expressions import evaluate, evaluate_bool, evaluate_when
from argofl.pipelines.local.model import Node, Phase
from argofl.pipelines.local.scopes import aggregate_outputs, expand_loop, item_name, item_scope
from argofl.pipelines.local.templating import (
    Unresolved,
    expand_scope,
    strict_prefixes,
    substitute,
    substitute_obj,
)

# ------------------------------------------------------------------------------------------- when


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("heads == heads", True),
        ("heads == tails", False),
        ("tails != heads", True),
        ("Failed == Failed", True),
        ("'hello world' == 'hello world'", True),
        ('"a b" != "a b"', False),
        ("5 > 3", True),
        ("5 < 3", False),
        ("2 >= 2.0", True),
        ("17.10 == 17.1", True),
        ("1 == '1'", False),
        ("abc =~ '^a.c$'", True),
        ("abc !~ '^x'", True),
        ("true && false", False),
        ("true || false", True),
        ("!(1 > 2)", True),
        ("(heads == heads) && (2 > 1 || 1 > 2)", True),
        ("b > a", True),
        ("even == even && 4 > 3", True),
        ("item.key == item.key", True),
    ],
)
def test_when_comparisons(clause: str, expected: bool) -> None:
    assert evaluate_when(clause) is expected


def test_when_empty_is_true() -> None:
    assert evaluate_when("   ") is True


@pytest.mark.parametrize("clause", ["heads ==", "1 > heads", "heads && tails", "my-value == my-value", "5"])
def test_when_errors_quote_the_clause(clause: str) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate_when(clause)
    assert clause in str(info.value)


# --------------------------------------------------------------------------------------- expr-lang


def test_expression_arithmetic_and_functions() -> None:
    env = {"inputs": {"parameters": {"x": "41", "f": "1.5", "j": '{"a": [1, 2]}'}}}
    assert evaluate("asInt(inputs.parameters.x) + 1", env) == 42
    assert evaluate("asFloat(inputs.parameters.f) * 2", env) == 3.0
    assert evaluate("string(7) + 'x'", env) == "7x"
    assert evaluate("jsonpath(inputs.parameters.j, '$.a[1]')", env) == 2
    assert evaluate("toJson([1, 'a'])", env) == '[1,"a"]'
    assert evaluate("sprig.upper('abc')", env) == "ABC"
    assert evaluate("len(fromJSON(inputs.parameters.j).a)", env) == 2
    assert evaluate("10 / 4", env) == 2.5
    assert evaluate("7 % 3", env) == 1


def test_expression_members_ternary_and_operators() -> None:
    env = {"tasks": {"flip-coin": {"outputs": {"result": "heads"}}, "heads": {"outputs": {"result": "H"}}}}
    then, otherwise = "tasks.heads.outputs.result", "tasks.tails.outputs.result"
    expr = f"tasks['flip-coin'].outputs.result == 'heads' ? {then} : {otherwise}"
    assert evaluate(expr, env) == "H"
    assert evaluate("'abc' matches '^a'", {}) is True
    assert evaluate("'abc' contains 'b' and not ('abc' startsWith 'z')", {}) is True
    assert evaluate("2 in [1, 2, 3]", {}) is True
    assert evaluate("missing ?? 'fallback'", {}) == "fallback"


def test_expression_unknown_name_is_named() -> None:
    with pytest.raises(ExpressionError, match="unknown name nope"):
        evaluate("nope + 1", {})


def test_expression_bool_required() -> None:
    with pytest.raises(ExpressionError, match="not a boolean"):
        evaluate_bool("1 + 1", {})


def test_expression_syntax_error_quotes_it() -> None:
    with pytest.raises(ExpressionError, match=r"asInt\(x"):
        evaluate("asInt(x", {"x": "1"})


# ------------------------------------------------------------------------------------- templating


def test_substitute_simple_and_whitespace() -> None:
    scope = {"inputs.parameters.message": "hello", "workflow.name": "wf-1"}
    assert substitute("{{inputs.parameters.message}} from {{ workflow.name }}", scope) == "hello from wf-1"


def test_substitute_leaves_unknown_tags_when_lenient() -> None:
    assert substitute("{{steps.a.outputs.result}}-{{item}}", {}) == "{{steps.a.outputs.result}}-{{item}}"


def test_missing_parameter_is_named() -> None:
    with pytest.raises(Unresolved) as info:
        substitute("echo {{inputs.parameters.missing}}", {}, strict_prefixes("inputs"))
    assert "{{inputs.parameters.missing}}" in str(info.value)
    assert info.value.tag == "inputs.parameters.missing"


def test_absent_optional_is_reported() -> None:
    with pytest.raises(Unresolved, match="absent optional"):
        substitute("{{steps.a.outputs.result}}", {"steps.a.outputs.result": None})


def test_expression_tags() -> None:
    scope = {"inputs.parameters.x": "2", "item": "3"}
    assert substitute("n={{=asInt(inputs.parameters.x) + 1}}", scope) == "n=3"
    assert substitute("{{=asInt(item) * 2}} {{=inputs.parameters.x == '2'}}", scope) == "6 true"
    # names not yet in scope stay for a later pass; strict names fail
    assert substitute("{{=asInt(steps.a.outputs.result)}}", {}) == "{{=asInt(steps.a.outputs.result)}}"
    with pytest.raises(ExpressionError, match="steps"):
        substitute("{{=asInt(steps.a.outputs.result)}}", {}, strict_prefixes("steps"))


def test_substitute_obj_copies_and_skips() -> None:
    obj: dict[str, Any] = {"a": ["{{x}}", {"b": "{{x}}"}], "hooks": {"exit": "{{x}}"}, "n": 3}
    out = substitute_obj(obj, {"x": "1"}, skip_keys=("hooks",))
    assert out == {"a": ["1", {"b": "1"}], "hooks": {"exit": "{{x}}"}, "n": 3}
    assert obj["a"][0] == "{{x}}"


def test_expand_scope_drops_prefix_conflicts() -> None:
    env = expand_scope({"steps.a.outputs.parameters": "[..]", "steps.a.outputs.parameters.p": "1", "w": "x"})
    assert env == {"steps": {"a": {"outputs": {"parameters": {"p": "1"}}}}, "w": "x"}


# ---------------------------------------------------------------------------------------- depends


TASKS: dict[str, dict[str, Any]] = {
    "A": {"name": "A"},
    "B": {"name": "B", "continueOn": {"failed": True}},
    "C-1": {"name": "C-1"},
}


def test_depends_bare_name_expands_with_continue_on() -> None:
    dep = resolve_depends({"name": "D", "depends": "A && B"}, TASKS, "dag")
    assert dep.dependencies == ("A", "B")
    assert "(A.Succeeded || A.Skipped || A.Daemoned)" in dep.logic
    assert "B.Failed" in dep.logic
    assert dep.evaluate({"A": TaskResults(Skipped=True), "B": TaskResults(Failed=True)}) is True
    assert dep.evaluate({"A": TaskResults(Failed=True), "B": TaskResults(Succeeded=True)}) is False


def test_depends_results_and_hyphens() -> None:
    dep = resolve_depends({"name": "D", "depends": "(C-1.Failed || C-1.Errored) && !A.Omitted"}, TASKS, "dag")
    assert dep.evaluate({"C-1": TaskResults(Errored=True), "A": TaskResults(Succeeded=True)}) is True
    assert dep.evaluate({"C-1": TaskResults(Succeeded=True), "A": TaskResults(Succeeded=True)}) is False


def test_dependencies_list() -> None:
    dep = resolve_depends({"name": "D", "dependencies": ["A", "C-1"]}, TASKS, "dag")
    assert dep.evaluate({"A": TaskResults(Succeeded=True), "C-1": TaskResults(Daemoned=True)}) is True


@pytest.mark.parametrize("depends", ["A &&", "A && (B || ", "A B", "A.Finished"])
def test_malformed_depends_quotes_expression(depends: str) -> None:
    with pytest.raises(WorkflowInputError) as info:
        resolve_depends({"name": "D", "depends": depends}, TASKS, "spec.templates[0].dag.tasks[3]")
    assert repr(depends) in str(info.value)
    assert "spec.templates[0].dag.tasks[3]" in str(info.value)


def test_depends_unknown_task() -> None:
    with pytest.raises(WorkflowInputError, match="unknown task 'Z'"):
        resolve_depends({"name": "D", "depends": "A && Z"}, TASKS, "dag")


# ------------------------------------------------------------------------------------------ loops


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        ({"count": "5"}, ["0", "1", "2", "3", "4"]),
        ({"start": "100", "end": "102"}, ["100", "101", "102"]),
        ({"start": "200", "count": "3"}, ["200", "201", "202"]),
        ({"start": "3", "end": "0"}, ["3", "2", "1", "0"]),
        ({"count": "3", "format": "user%02X"}, ["user00", "user01", "user02"]),
        ({"start": "9", "end": "11", "format": "%03d"}, ["009", "010", "011"]),
        ({"count": "0"}, []),
    ],
)
def test_with_sequence(seq: dict[str, str], expected: list[str]) -> None:
    assert expand_loop({"withSequence": seq}, "step") == expected


def test_with_sequence_needs_end_or_count() -> None:
    with pytest.raises(WorkflowInputError, match="neither end nor count"):
        expand_loop({"withSequence": {"start": "1"}}, "step")


@pytest.mark.parametrize(
    "seq", [{"count": "100000000"}, {"start": "1", "end": "100000001"}, {"end": "-100000000"}]
)
def test_a_with_sequence_too_long_to_hold_is_refused_before_expanding(seq: dict[str, str]) -> None:
    """A mistyped count expanded a node per item until the machine ran out of memory."""
    with pytest.raises(
        WorkflowInputError, match=r"^step\.withSequence: 10000000[01] items .* more than the 100000 "
    ):
        expand_loop({"withSequence": seq}, "step")


def test_with_param_must_be_a_json_list() -> None:
    assert expand_loop({"withParam": '[1, "a", {"k": "v"}]'}, "s") == [1, "a", {"k": "v"}]
    with pytest.raises(WorkflowInputError, match="could not be parsed as a JSON list"):
        expand_loop({"withParam": "not json"}, "s")


def test_item_names_and_scope() -> None:
    assert item_name("echo", 0, 1) == "echo(0:1)"
    assert item_name("echo", 1, "hello world") == "echo(1:hello world)"
    assert item_name("t", 3, {"tag": "17.10", "image": "ubuntu"}) == "t(3:image:ubuntu,tag:17.10)"
    assert item_name("p", 0, "f(x)") == "p(0:fx)"
    assert item_scope({"num": 2, "even": "yes"}) == {
        "item.num": "2",
        "item.even": "yes",
        "item": '{"even":"yes","num":2}',
    }
    assert item_scope(2.0) == {"item": "2"}


def _child(name: str, phase: str, result: str | None, params: dict[str, str]) -> Node:
    outputs: dict[str, object] = {"parameters": [{"name": k, "value": v} for k, v in params.items()]}
    if result is not None:
        outputs["result"] = result
    return Node(
        id=name,
        name=name,
        display_name=name,
        type="Pod",
        template_name="t",
        phase=Phase(phase),
        outputs=outputs,
    )


def test_aggregated_outputs() -> None:
    children = [
        _child("wf[0].s(2:c)", "Succeeded", "plain text", {"p": "3"}),
        _child("wf[0].s(0:a)", "Succeeded", '{"k": 1}', {"p": "1"}),
        _child("wf[0].s(1:b)", "Failed", "2", {"p": "2"}),
        _child("wf[0].s(10:d)", "Succeeded", "4", {"p": "4"}),
    ]
    out = aggregate_outputs("steps.s", children)
    assert json.loads(out["steps.s.outputs.result"]) == [{"k": 1}, "plain text", 4]
    assert out["steps.s.outputs.parameters.p"] == '["1","3","4"]'
    assert json.loads(out["steps.s.outputs.parameters"]) == [{"p": "1"}, {"p": "3"}, {"p": "4"}]


def test_aggregated_json_parameters_are_parsed_when_all_are_objects() -> None:
    children = [
        _child("s(0:a)", "Succeeded", None, {"p": '{"a":1}'}),
        _child("s(1:b)", "Succeeded", None, {"p": "[2]"}),
    ]
    assert aggregate_outputs("tasks.s", children)["tasks.s.outputs.parameters.p"] == '[{"a":1},[2]]'
