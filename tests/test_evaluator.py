"""Tests of the safe expression evaluator (design item 7, reference §9)."""

from __future__ import annotations

import ast
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft.errors import ExpressionError
from flowcraft.evaluator import (
    ALLOWED_FUNCTIONS,
    MAX_DEPTH,
    Evaluator,
    SafeEvaluator,
    default_evaluator,
)


class Sentinel:
    """A callable whose invocation is recorded: it must never be called by an expression."""

    calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        return "called"


class ReadOnlyMapping(Mapping[str, Any]):
    """A Mapping that is not a dict."""

    def __init__(self, **data: Any) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


SCOPE: dict[str, Any] = {
    "result": {"output": {"status": "approved", "ok": False, "count": 12}, "action": "next"},
    "context": {"count": 2, "items": [1, 2, 3], "name": "flow", "_private": "p", "a.b": 7},
    "_outputs.fetch": {"value": 5},
    "items": [10, 20, 30],
    "text": "hello",
    "n": 4,
    "x": 2.5,
    "flag": True,
    "nothing": None,
    "nested": ReadOnlyMapping(inner=ReadOnlyMapping(value=1), length=9),
    "obj": object(),
    "sentinel": Sentinel(),
}


def ev(expression: str, scope: Mapping[str, Any] | None = None) -> Any:
    return SafeEvaluator().evaluate(expression, SCOPE if scope is None else scope)


def test_protocol_and_default_instance() -> None:
    assert isinstance(default_evaluator, SafeEvaluator)
    assert isinstance(default_evaluator, Evaluator)
    assert default_evaluator.evaluate("1 + 1", {}) == 2


# ---------------------------------------------------------------------------------------------
# Allowed constructs


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'abc'", "abc"),
        ('"abc"', "abc"),
        ("42", 42),
        ("-3.5", -3.5),
        ("True", True),
        ("False", False),
        ("None", None),
        ("[1, 'a', None]", [1, "a", None]),
        ("(1, 2)", (1, 2)),
        ("()", ()),
        ("{'a': 1, 'b': [n]}", {"a": 1, "b": [4]}),
        ("{1, 2, 2}", {1, 2}),
        ("[]", []),
        ("{}", {}),
    ],
)
def test_literals(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


def test_names_and_missing_names() -> None:
    assert ev("n") == 4
    assert ev("missing") is None
    assert ev("nothing") is None
    assert ev("len") is None  # a function name is not a value: names read only the scope
    assert ev("n", {"n": 1}) == 1


def test_attribute_access_on_mappings() -> None:
    assert ev("result.output.status") == "approved"
    assert ev("result.output.missing") is None
    assert ev("result.missing.deeper.still") is None
    assert ev("nothing.anything") is None
    assert ev("context._private") == "p"
    assert ev("nested.inner.value") == 1  # any Mapping, not only dict
    assert ev("nested.length") == 9  # a mapping's "length" is its key


def test_attribute_access_on_non_mappings_is_none() -> None:
    assert ev("obj.foo") is None
    assert ev("n.real") is None
    assert ev("text.upper") is None
    assert ev("sentinel.calls") is None


def test_length_of_sequences() -> None:
    assert ev("items.length") == 3
    assert ev("text.length") == 5
    assert ev("(1, 2).length") == 2
    assert ev("n.length") is None


def test_subscripts() -> None:
    assert ev('context["count"]') == 2
    assert ev('context["a.b"]') == 7
    assert ev('context["missing"]') is None
    assert ev("items[0]") == 10
    assert ev("items[-1]") == 30
    assert ev("items[3]") is None
    assert ev("items['0']") is None
    assert ev("items[True]") is None
    assert ev("text[1]") == "e"
    assert ev("nothing[0]") is None
    assert ev("obj[0]") is None
    assert ev("n[0]") is None
    assert ev("context[[1]]") is None  # unhashable key
    assert ev("nested['inner']['value']") == 1
    assert ev("{(1, 2): 't'}[(1, 2)]") == "t"


def test_slices() -> None:
    assert ev("items[1:]") == [20, 30]
    assert ev("items[:-1]") == [10, 20]
    assert ev("items[::2]") == [10, 30]
    assert ev("text[1:3]") == "el"
    assert ev("items[::0]") is None
    assert ev("items['a':]") is None
    assert ev("context[1:2]") is None
    assert ev("nothing[1:2]") is None


def test_builder_form_and_context_keys() -> None:
    assert ev('context["count"] + 1') == 3
    assert ev('_outputs_fetch["value"]') is None
    scope = {"context": {"_outputs.fetch": {"value": 5}}}
    assert ev('context["_outputs.fetch"]["value"]', scope) == 5
    assert ev('context["_outputs.fetch"].value * 2', scope) == 10


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("n == 4", True),
        ("n != 4", False),
        ("n < 5", True),
        ("n <= 4", True),
        ("n > 4", False),
        ("n >= 4", True),
        ("1 < n < 5", True),
        ("1 < n < 3", False),
        ("5 > n > 1 > 0", True),
        ("2 in items", False),
        ("20 in items", True),
        ("20 not in items", False),
        ("'count' in context", True),
        ("'ell' in text", True),
        ("nothing is None", True),
        ("n is not None", True),
        ("nothing < 1", False),  # TypeError gives False
        ("'a' > 1", False),
        ("1 in nothing", False),
        ("1 not in nothing", False),
        ("[1] in context", False),
        ("1 < 2 < 'a'", False),
    ],
)
def test_comparisons(expression: str, expected: Any) -> None:
    assert ev(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("flag and n", 4),
        ("nothing and n", None),
        ("nothing or n", 4),
        ("0 or '' or None", None),
        ("1 and 2 and 3", 3),
        ("1 and 0 and 3", 0),
        ("0 or 0 or 7", 7),
        ("not flag", False),
        ("not nothing", True),
        ("-n", -4),
        ("+x", 2.5),
        ("-nothing", None),
        ("-text", None),
    ],
)
def test_boolean_and_unary(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("n + 1", 5),
        ("n - 1", 3),
        ("n * x", 10.0),
        ("n / 8", 0.5),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("2 ** 10", 1024),
        ("'ab' + 'c'", "abc"),
        ("'ab' * 2", "abab"),
        ("2 * 'ab'", "abab"),
        ("[1] + [2]", [1, 2]),
        ("n / 0", None),
        ("n // 0", None),
        ("n % 0", None),
        ("'a' + 1", None),
        ("nothing + 1", None),
        ("10.0 ** 1000", None),  # OverflowError
        ("2 ** 100000", None),  # capped
        ("(2 ** 1000) ** 1000", None),
        ("'a' * 10 ** 9", None),
        ("[1] * 3", None),  # list repetition is not supported
        ("'%s' % n", None),  # no printf formatting
        ("2 ** -1", 0.5),
        ("1 ** 100000000", 1),
    ],
)
def test_arithmetic(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


def test_conditional_expression() -> None:
    assert ev("'big' if n > 3 else 'small'") == "big"
    assert ev("'big' if n > 9 else 'small'") == "small"
    assert ev("'yes' if missing else 'no'") == "no"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("len(items)", 3),
        ("len(context)", 5),
        ('len(context["items"]) > 0', True),
        ("len(nothing)", None),
        ("min(items)", 10),
        ("max(1, n)", 4),
        ("min([])", None),
        ("abs(-n)", 4),
        ("round(x)", 2),
        ("round(1.2345, 2)", 1.23),
        ("round(5, -10 ** 9)", None),
        ("sum(items)", 60),
        ("sum(items, 1)", 61),
        ("sum([[1], [2]], [])", None),
        ("sum(['a'])", None),
        ("any([0, nothing, 1])", True),
        ("all([])", True),
        ("str(n)", "4"),
        ("str(2 ** 60000)", None),  # too many digits for str()
        ("int('12')", 12),
        ("int('x')", None),
        ("float('1.5')", 1.5),
        ("bool(nothing)", False),
        ("sorted([3, 1, 2])", [1, 2, 3]),
        ("sorted([1, 'a'])", None),
    ],
)
def test_whitelisted_calls(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


def test_whitelisted_functions_are_not_taken_from_the_scope() -> None:
    Sentinel.calls = 0
    assert ev("len(items)", {"len": Sentinel(), "items": [1]}) == 1
    assert Sentinel.calls == 0


# ---------------------------------------------------------------------------------------------
# JavaScript compatibility


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("result.output.status === 'approved'", True),
        ("result.output.status !== 'approved'", False),
        ("result.output.count > 10 && context.count < 3", True),
        ("result.output.count > 20 || context.count < 3", True),
        ("!result.output.ok", True),
        ("!!result.output.ok", False),
        ("n != 4", False),
        ("!(n > 3 && flag)", False),
        ("!nothing == true", True),  # JS precedence: (!nothing) == true
        ("missing === undefined", True),
        ("nothing === null", True),
        ("true && !false", True),
        ("context?.items?.[1]", 2),
        ("nothing?.a?.b", None),
        ("x ? .5 : 1", ExpressionError),  # the ternary operator is not supported
        ("context.items.length > 2", True),
        ("result.output.count > 10 &&\n  context.count < 3", True),
    ],
)
def test_javascript_operators(expression: str, expected: Any) -> None:
    if expected is ExpressionError:
        with pytest.raises(ExpressionError):
            ev(expression)
    else:
        assert ev(expression) is expected or ev(expression) == expected


@pytest.mark.parametrize(
    "literal",
    ["'a && b'", '"a || b"', "'x === y'", "'!x'", "'a !== b'", "'?.'", "'it\\'s && ok'", "'~#'"],
)
def test_javascript_operators_inside_strings_are_kept(literal: str) -> None:
    assert ev(literal) == ast.literal_eval(literal)
    assert ev(f"{literal} + '!'") == ast.literal_eval(literal) + "!"


def test_triple_quoted_string_is_kept() -> None:
    assert ev("'''it's && \"ok\"'''") == 'it\'s && "ok"'


def test_the_issue_examples() -> None:
    scope = {
        "result": {"output": {"status": "approved", "ok": True}},
        "context": {"count": 1, "items": ["a"]},
    }
    evaluator = SafeEvaluator()
    assert evaluator.evaluate("result.output.status == 'approved'", scope) is True
    assert evaluator.evaluate("!result.output.ok", scope) is False
    assert evaluator.evaluate('len(context["items"]) > 0', scope) is True
    scope = {"result": {"output": 11}, "context": {"count": 2}}
    assert evaluator.evaluate("result.output > 10 && context.count < 3", scope) is True


# ---------------------------------------------------------------------------------------------
# Disallowed constructs


@pytest.mark.parametrize(
    ("expression", "construct"),
    [
        ("open('/etc/passwd')", "open"),
        ("getattr(n, 'real')", "getattr"),
        ("eval('1')", "eval"),
        ("__import__('os')", "__import__"),
        ("type(n)", "type"),
        ("sentinel()", "sentinel"),
        ("n.__class__", "__class__"),
        ("().__class__.__bases__", "__bases__"),
        ("context.__dict__", "__dict__"),
        ("__builtins__", "__builtins__"),
        ("text.upper()", "text.upper"),
        ("context['f']()", "context['f']"),
        ("(lambda: 1)()", "lambda"),
        ("lambda: 1", "lambda"),
        ("[i for i in items]", "comprehension"),
        ("{i: i for i in items}", "comprehension"),
        ("(i for i in items)", "generator"),
        ("(y := 1)", ":="),
        ("[*items]", "*"),
        ("{**context}", "**"),
        ("f'{n}'", "f-string"),
        ("len(items, key=1)", "keyword"),
        ("sorted(items, key=len)", "keyword"),
        ("n & 1", "BitAnd"),
        ("n | 1", "BitOr"),
        ("n << 1", "LShift"),
        ("~n", "~"),
        ("n # comment", "comment"),
        ("b'x'", "literal"),
        ("1j", "literal"),
        ("...", "literal"),
    ],
)
def test_disallowed_constructs(expression: str, construct: str) -> None:
    with pytest.raises(ExpressionError) as info:
        SafeEvaluator().check(expression)
    assert repr(expression) in info.value.message
    assert construct in info.value.message
    assert info.value.expression == expression
    assert info.value.is_fatal
    with pytest.raises(ExpressionError):
        SafeEvaluator().evaluate(expression, SCOPE)


@pytest.mark.parametrize(
    "expression",
    ["import os", "x = 1", "1 +", "", "   ", "a b", "def f(): pass", "x ? 1 : 2", "\x00"],
)
def test_unparseable_expressions(expression: str) -> None:
    with pytest.raises(ExpressionError) as info:
        SafeEvaluator().check(expression)
    assert info.value.expression == expression


def test_deep_nesting_is_rejected_not_a_crash() -> None:
    for expression in ["-" * 5000 + "1", "not " * 5000 + "1", "(" * 300 + "1" + ")" * 300]:
        with pytest.raises(ExpressionError):
            SafeEvaluator().check(expression)
    SafeEvaluator().check("-" * (MAX_DEPTH - 1) + "1")


def test_long_expressions_are_abbreviated_in_messages() -> None:
    expression = "open(" + "1 + " * 500 + "1)"
    with pytest.raises(ExpressionError) as info:
        SafeEvaluator().check(expression)
    assert len(info.value.message) < 500
    assert info.value.expression == expression


def test_non_string_expression() -> None:
    with pytest.raises(ExpressionError):
        SafeEvaluator().check(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Caching and speed


def test_compiled_expressions_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluator = SafeEvaluator()
    parses = 0
    real_parse = ast.parse

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        nonlocal parses
        parses += 1
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", counting_parse)
    for count in range(5):
        assert evaluator.evaluate("context.count + 1", {"context": {"count": count}}) == count + 1
    evaluator.check("context.count + 1")
    assert parses == 1
    compiled = evaluator.compile("context.count + 1")
    assert compiled({"context": {"count": 9}}) == 10
    assert parses == 1


def test_cache_is_bounded() -> None:
    evaluator = SafeEvaluator(cache_size=3)
    for i in range(10):
        assert evaluator.evaluate(f"{i} + 0", {}) == i
    assert len(evaluator._cache) <= 3


# ---------------------------------------------------------------------------------------------
# Properties: arbitrary input never runs arbitrary code nor reaches dunders

NAMES = [
    "n", "x", "text", "items", "context", "result", "nothing", "obj", "nested", "sentinel",
    "missing", "true", "null", "undefined", "len", "str", "int", "sorted", "min", "max", "sum",
    "round", "__import__", "eval", "exec", "open", "getattr", "setattr", "type", "globals",
    "vars", "compile", "__builtins__", "__class__", "_outputs", "breakpoint", "input", "print",
]  # fmt: skip
ATTRIBUTES = [
    "__class__", "__bases__", "__subclasses__", "__globals__", "__dict__", "__init__", "__call__",
    "__code__", "__builtins__", "__mro__", "__getattribute__", "_private", "length", "output",
    "count", "items", "status", "mro", "upper", "format", "real", "gi_frame", "f_globals",
]  # fmt: skip
LITERALS = ["0", "1", "-2", "2.5", "'a'", '"__class__"', "None", "True", "[]", "()", "{}", "1e308"]
BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">=", "in", "not in", "is",
          "and", "or", "&&", "||", "===", "!==", "&", "|", "<<", "@", ","]  # fmt: skip


def expressions() -> st.SearchStrategy[str]:
    atoms = st.sampled_from(NAMES) | st.sampled_from(LITERALS)

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds("{}.{}".format, children, st.sampled_from(ATTRIBUTES)),
            st.builds("{}[{}]".format, children, children | st.sampled_from(ATTRIBUTES).map(repr)),
            st.builds("{}({})".format, st.sampled_from(NAMES), children),
            st.builds("{}.{}({})".format, children, st.sampled_from(ATTRIBUTES), children),
            st.builds("({}) {} ({})".format, children, st.sampled_from(BINARY), children),
            st.builds("{}{}".format, st.sampled_from(["not ", "!", "-", "~"]), children),
            st.builds("({} if {} else {})".format, children, children, children),
            st.builds("[{}, {}]".format, children, children),
            st.builds("{{{}: {}}}".format, children, children),
            st.builds("(lambda: {})".format, children),
            st.builds("[{} for _ in {}]".format, children, children),
            st.builds("(w := {})".format, children),
            st.builds("f'{{{}}}'".format, children),
            st.builds("{}[{}:{}]".format, children, children, children),
        )

    return st.recursive(atoms, extend, max_leaves=12)


FORBIDDEN_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    types.CodeType,
    types.FrameType,
    types.MappingProxyType,
    type,
)


def assert_safe_value(value: Any, depth: int = 0) -> None:
    assert not isinstance(value, FORBIDDEN_TYPES), value
    if depth < 20 and isinstance(value, list | tuple | set | frozenset):
        for item in value:
            assert_safe_value(item, depth + 1)
    elif depth < 20 and isinstance(value, dict):
        for key, item in value.items():
            assert_safe_value(key, depth + 1)
            assert_safe_value(item, depth + 1)


def evaluate_safely(evaluator: SafeEvaluator, expression: str) -> Any:
    Sentinel.calls = 0
    scope = dict(SCOPE, sentinel=Sentinel())
    try:
        value = evaluator.evaluate(expression, scope)
    except ExpressionError as error:
        assert error.expression == expression
        value = None
    assert Sentinel.calls == 0, expression
    assert_safe_value(value)
    return value


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(expressions())
def test_generated_expressions_never_run_code(expression: str) -> None:
    evaluate_safely(SafeEvaluator(), expression)


@PROPERTY_SETTINGS
@given(st.text(max_size=60))
def test_random_text_never_runs_code(text: str) -> None:
    evaluate_safely(SafeEvaluator(), text)


@PROPERTY_SETTINGS
@given(st.text(alphabet="ab_.[]()'\"!&|=<>+-*/%~:,?#0123 \n\\", max_size=60))
def test_random_operator_soup_never_runs_code(text: str) -> None:
    evaluate_safely(SafeEvaluator(), text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(NAMES + LITERALS),
    st.lists(st.sampled_from(ATTRIBUTES), min_size=1, max_size=4),
    st.booleans(),
)
def test_no_dunder_is_reachable(base: str, path: list[str], as_subscript: bool) -> None:
    if as_subscript:
        expression = base + "".join(f"[{name!r}]" for name in path)
    else:
        expression = base + "".join(f".{name}" for name in path)
    has_dunder = any(name.startswith("__") for name in path) or base.startswith("__")
    evaluator = SafeEvaluator()
    if has_dunder and not as_subscript:
        with pytest.raises(ExpressionError):
            evaluator.check(expression)
        return
    value = evaluate_safely(evaluator, expression)
    if any(name.startswith("__") for name in path):
        # Subscripts only read mapping keys: no object in the scope has dunder *keys*.
        assert value is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_string_literals_survive_translation(text: str) -> None:
    assert SafeEvaluator().evaluate(repr(text), {}) == text
    assert SafeEvaluator().evaluate(f"{text!r} == {text!r} && true", {}) is True


def test_allowed_functions_are_the_documented_whitelist() -> None:
    assert set(ALLOWED_FUNCTIONS) == {
        "abs", "all", "any", "bool", "float", "int", "len", "max", "min", "round", "sorted",
        "str", "sum",
    }  # fmt: skip
