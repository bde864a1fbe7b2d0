"""Safe evaluation of edge conditions, edge transforms and loop conditions.

:class:`SafeEvaluator` parses an expression with :mod:`ast`, checks every node against a whitelist
and compiles the tree once into nested Python closures (cached by expression text). Nothing is
ever passed to ``eval``, ``exec`` or ``compile``, and no attribute of a Python object is ever read.

Allowed:
    * literals: ``str``, ``int``, ``float``, ``bool``, ``None`` and list, tuple, dict and set
      displays of allowed expressions (no ``*``/``**`` unpacking, no f-strings);
    * names, looked up with ``scope.get(name)`` (a missing name is ``None``);
    * ``a.b``: ``a.get("b")`` when ``a`` is a mapping, ``len(a)`` for ``a.length`` on a list, tuple
      or string, otherwise ``None``;
    * ``a[k]``: ``a.get(k)`` on a mapping; an ``int`` index (negative counts from the end) or a
      slice on a list, tuple or string; ``None`` when missing, out of range or of another type;
    * comparisons (``== != < <= > >= in, not in, is, is not``; one that raises is ``False``),
      ``and``/``or``/``not``, unary ``-``/``+``, ``+ - * / // % **`` (an operation that raises is
      ``None``), ``x if c else y``;
    * calls by bare name to the pure functions in :data:`ALLOWED_FUNCTIONS`, positional arguments
      only (a call that raises is ``None``).

Rejected with :class:`~flowcraft.errors.ExpressionError` (when checked or first evaluated): any
other construct (lambda, comprehensions, ``:=``, f-strings, bitwise operators, method calls,
keyword arguments), and any name or attribute starting with ``__``.

JavaScript compatibility (blueprints written by the TypeScript Flowcraft): outside string literals
line breaks are spaces (``#`` comments are rejected, so nothing is silently cut off),
``===``/``!==`` become ``==``/``!=``, ``&&``/``||`` become ``and``/``or``, ``?.`` becomes ``.``
(access is null-safe anyway), and a prefix ``!`` is logical negation with JavaScript's precedence
(``!a == b`` is ``(not a) == b``). ``true``, ``false``, ``null`` and ``undefined`` are constants
(they shadow scope keys of those names). Since ``!`` is spelt internally as ``~``, a literal ``~``
is rejected. Operators otherwise follow Python: ``"a" + 1`` is ``None``, not ``"a1"``.

Resource limits: integer results beyond :data:`MAX_INT_BITS` bits and repeated strings longer
than :data:`MAX_STRING_LENGTH` are ``None``; ``str % ...`` formatting and list/tuple repetition are
``None``; ``sum`` is numeric only; ``round`` takes at most 1000 digits; expressions nested deeper
than :data:`MAX_DEPTH` are rejected.
"""

from __future__ import annotations

import ast
import contextlib
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

from flowcraft.errors import ExpressionError

__all__ = [
    # Whitelist and limits
    "ALLOWED_FUNCTIONS",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_STRING_LENGTH",
    # Interface, implementation and shared instance
    "CompiledExpression",
    "Evaluator",
    "SafeEvaluator",
    "default_evaluator",
]

MAX_DEPTH: Final = 100
MAX_INT_BITS: Final = 65_536
MAX_STRING_LENGTH: Final = 10_000

CompiledExpression = Callable[[Mapping[str, Any]], Any]
"""An expression compiled by :meth:`SafeEvaluator.compile`: call it with the scope."""
_ARITHMETIC_ERRORS: Final = (TypeError, ValueError, ArithmeticError)
_SEQUENCES: Final = (list, tuple, str)
_JS_CONSTANTS: Final[Mapping[str, Any]] = {
    "true": True,
    "false": False,
    "null": None,
    "undefined": None,
}


@runtime_checkable
class Evaluator(Protocol):
    """Evaluates condition and transform expressions against a scope."""

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """Evaluate ``expression`` with names resolved in ``scope``.

        Raises:
            ExpressionError: The expression cannot be parsed or is not allowed.
        """
        ...

    def check(self, expression: str) -> None:
        """Raise :class:`ExpressionError` if ``expression`` cannot be parsed or is not allowed."""
        ...


def _sum(values: Any, start: Any = 0) -> Any:
    return sum(values, start) if isinstance(start, int | float) else None


def _round(number: Any, digits: Any = None) -> Any:
    # int.__round__ computes 10 ** -digits: bound it.
    return round(number, digits) if digits is None or abs(digits) <= 1000 else None


ALLOWED_FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = MappingProxyType(
    {
        "abs": abs,
        "all": all,
        "any": any,
        "bool": bool,
        "float": float,
        "int": int,
        "len": len,
        "max": max,
        "min": min,
        "round": _round,
        "sorted": sorted,
        "str": str,
        "sum": _sum,
    }
)


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return a * b if a.bit_length() + b.bit_length() <= MAX_INT_BITS else None
    if isinstance(b, str):
        a, b = b, a
    if isinstance(a, str) and isinstance(b, int):
        return a * b if len(a) * b <= MAX_STRING_LENGTH else None
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return None
    return a * b


def _mod(a: Any, b: Any) -> Any:
    return None if isinstance(a, str) else a % b


def _pow(a: Any, b: Any) -> Any:
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and b > 0
        and abs(a) > 1
        and b * math.log2(abs(a)) > MAX_INT_BITS
    ):
        return None
    return a**b


_BINARY: Final[Mapping[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
}
_COMPARE: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_DESCRIPTIONS: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: "assignment expression ':='",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Starred: "unpacking with '*'",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
}


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at ``start`` (or ``len(text)``)."""
    quote = text[start]
    delimiter = quote * 3 if text.startswith(quote * 3, start) else quote
    i = start + len(delimiter)
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
        elif text.startswith(delimiter, i):
            return i + len(delimiter)
        elif char == "\n" and len(delimiter) == 1:
            return i
        else:
            i += 1
    return len(text)


def _translate_js(text: str) -> str:
    """Rewrite JavaScript operators outside string literals; raises ``ValueError`` on ``~``."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "'\"":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
            continue
        step, replacement = 1, char
        if text.startswith("===", i) or text.startswith("!==", i):
            step, replacement = 3, char + "="
        elif text.startswith("!=", i):
            step, replacement = 2, "!="
        elif char == "!":
            replacement = " ~"
        elif text.startswith("&&", i):
            step, replacement = 2, " and "
        elif text.startswith("||", i):
            step, replacement = 2, " or "
        elif text.startswith("?.", i) and not text[i + 2 : i + 3].isdigit():
            step, replacement = 2, "" if text[i + 2 : i + 3] == "[" else "."
        elif char in "\r\n":
            replacement = " "
        elif char in "~#":
            raise ValueError(f"{'comments' if char == '#' else 'the operator ~'} (outside strings)")
        out.append(replacement)
        i += step
    return "".join(out)


class _Compiler:
    """Turns a validated AST into closures; raises ExpressionError on anything not allowed."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.depth = 0

    def reject(self, problem: str) -> ExpressionError:
        return _error(self.expression, f"is not allowed: {problem}")

    def compile(self, node: ast.expr) -> CompiledExpression:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.reject(f"it is nested more than {MAX_DEPTH} levels deep")
            return self._compile(node)
        finally:
            self.depth -= 1

    def _compile(self, node: ast.expr) -> CompiledExpression:
        if isinstance(node, ast.Constant):
            value = node.value
            if value is not None and type(value) not in (str, int, float, bool):
                raise self.reject(f"literal {value!r}")
            return lambda _scope: value
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.BoolOp):
            return self._bool_op(node)
        if isinstance(node, ast.UnaryOp):
            return self._unary_op(node)
        if isinstance(node, ast.BinOp):
            return self._bin_op(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            test, body, orelse = map(self.compile, (node.test, node.body, node.orelse))
            return lambda scope: body(scope) if test(scope) else orelse(scope)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict):
            return self._display(node)
        description = _DESCRIPTIONS.get(type(node), f"construct {type(node).__name__}")
        raise self.reject(description)

    def _name(self, name: str) -> CompiledExpression:
        if name in _JS_CONSTANTS:
            constant = _JS_CONSTANTS[name]
            return lambda _scope: constant
        if name.startswith("__"):
            raise self.reject(f"name {name!r} (names starting with '__' are not allowed)")
        return lambda scope: scope.get(name)

    def _attribute(self, node: ast.Attribute) -> CompiledExpression:
        name = node.attr
        if name.startswith("__"):
            raise self.reject(f"attribute {name!r} (attributes starting with '__' are not allowed)")
        target = self.compile(node.value)

        def attribute(scope: Mapping[str, Any]) -> Any:
            value = target(scope)
            if type(value) is dict or isinstance(value, Mapping):
                return value.get(name)
            if name == "length" and isinstance(value, _SEQUENCES):
                return len(value)
            return None

        return attribute

    def _subscript(self, node: ast.Subscript) -> CompiledExpression:
        target = self.compile(node.value)
        if isinstance(node.slice, ast.Slice):
            parts = [
                (lambda _scope: None) if part is None else self.compile(part)
                for part in (node.slice.lower, node.slice.upper, node.slice.step)
            ]

            def slice_(scope: Mapping[str, Any]) -> Any:
                value = target(scope)
                bounds = [part(scope) for part in parts]
                if not isinstance(value, _SEQUENCES) or any(
                    bound is not None and type(bound) is not int for bound in bounds
                ):
                    return None
                try:
                    return value[slice(*bounds)]
                except ValueError:  # a zero step
                    return None

            return slice_
        key_of = self.compile(node.slice)

        def subscript(scope: Mapping[str, Any]) -> Any:
            value, key = target(scope), key_of(scope)
            if type(value) is dict or isinstance(value, Mapping):
                try:
                    return value.get(key)
                except TypeError:  # unhashable key
                    return None
            if type(key) is int and isinstance(value, _SEQUENCES):
                try:
                    return value[key]
                except IndexError:
                    return None
            return None

        return subscript

    def _bool_op(self, node: ast.BoolOp) -> CompiledExpression:
        operands = [self.compile(value) for value in node.values]
        is_and = isinstance(node.op, ast.And)
        if len(operands) == 2:
            left, right = operands
            if is_and:
                return lambda scope: left(scope) and right(scope)
            return lambda scope: left(scope) or right(scope)

        def bool_op(scope: Mapping[str, Any]) -> Any:
            result = None
            for operand in operands:
                result = operand(scope)
                if bool(result) is not is_and:
                    return result
            return result

        return bool_op

    def _unary_op(self, node: ast.UnaryOp) -> CompiledExpression:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):  # Invert is JavaScript's "!"
            return lambda scope: not operand(scope)
        function = operator.neg if isinstance(node.op, ast.USub) else operator.pos

        def unary_op(scope: Mapping[str, Any]) -> Any:
            try:
                return function(operand(scope))
            except _ARITHMETIC_ERRORS:
                return None

        return unary_op

    def _bin_op(self, node: ast.BinOp) -> CompiledExpression:
        function = _BINARY.get(type(node.op))
        if function is None:
            raise self.reject(f"operator {type(node.op).__name__}")
        left, right = self.compile(node.left), self.compile(node.right)

        def bin_op(scope: Mapping[str, Any]) -> Any:
            try:
                return function(left(scope), right(scope))
            except _ARITHMETIC_ERRORS:
                return None

        return bin_op

    def _compare(self, node: ast.Compare) -> CompiledExpression:
        functions = [_COMPARE[type(op)] for op in node.ops]
        operands = [self.compile(value) for value in (node.left, *node.comparators)]
        if len(functions) == 1:
            function, (left, right) = functions[0], operands

            def compare(scope: Mapping[str, Any]) -> Any:
                try:
                    return function(left(scope), right(scope))
                except (TypeError, ValueError):
                    return False

            return compare

        def compare_chain(scope: Mapping[str, Any]) -> Any:
            result: Any = True
            left = operands[0](scope)
            for function, operand in zip(functions, operands[1:], strict=True):
                right = operand(scope)
                try:
                    result = function(left, right)
                except (TypeError, ValueError):
                    return False
                if not result:
                    return result
                left = right
            return result

        return compare_chain

    def _call(self, node: ast.Call) -> CompiledExpression:
        allowed = ", ".join(sorted(ALLOWED_FUNCTIONS))
        if not isinstance(node.func, ast.Name):
            called = ast.unparse(node.func)
            raise self.reject(f"call to {called!r} (only {allowed} may be called, by bare name)")
        function = ALLOWED_FUNCTIONS.get(node.func.id)
        if function is None:
            raise self.reject(f"call to {node.func.id!r} (only {allowed} may be called)")
        if node.keywords:
            raise self.reject(f"keyword arguments in the call to {node.func.id!r}")
        arguments = [self.compile(argument) for argument in node.args]

        def call(scope: Mapping[str, Any]) -> Any:
            try:
                return function(*[argument(scope) for argument in arguments])
            except _ARITHMETIC_ERRORS:
                return None

        return call

    def _display(self, node: ast.List | ast.Tuple | ast.Set | ast.Dict) -> CompiledExpression:
        if isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                raise self.reject("dict unpacking with '**'")
            pairs = [
                (self.compile(key), self.compile(value))
                for key, value in zip(node.keys, node.values, strict=True)
                if key is not None
            ]

            def dict_(scope: Mapping[str, Any]) -> Any:
                try:
                    return {key(scope): value(scope) for key, value in pairs}
                except TypeError:  # unhashable key
                    return None

            return dict_
        items = [self.compile(item) for item in node.elts]
        if isinstance(node, ast.List):
            return lambda scope: [item(scope) for item in items]
        if isinstance(node, ast.Tuple):
            return lambda scope: tuple([item(scope) for item in items])

        def set_(scope: Mapping[str, Any]) -> Any:
            try:
                return {item(scope) for item in items}
            except TypeError:  # unhashable item
                return None

        return set_


def _error(expression: str, problem: str) -> ExpressionError:
    quoted = repr(expression if len(expression) <= 200 else expression[:200] + "...")
    return ExpressionError(f"Expression {quoted} {problem}", expression=expression)


def _compile(expression: str) -> CompiledExpression:
    if not isinstance(expression, str):
        raise _error(repr(expression), f"is a {type(expression).__name__}, not a string")
    try:
        source = _translate_js(expression).strip()
    except ValueError as exc:
        raise _error(expression, f"is not allowed: {exc}") from None
    if not source:
        raise _error(expression, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _error(expression, f"cannot be parsed: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _error(expression, f"cannot be parsed: {exc or type(exc).__name__}") from exc
    return _Compiler(expression).compile(tree.body)


class SafeEvaluator:
    """The default :class:`Evaluator`: whitelisted AST, compiled once, no ``eval``.

    Args:
        cache_size: How many compiled expressions to keep (oldest evicted first).
    """

    def __init__(self, *, cache_size: int = 4096) -> None:
        self._cache: dict[str, CompiledExpression] = {}
        self._cache_size = max(cache_size, 1)

    def compile(self, expression: str) -> CompiledExpression:
        """Compile (or fetch from the cache) ``expression`` into a function of the scope.

        Raises:
            ExpressionError: The expression cannot be parsed or is not allowed.
        """
        compiled = self._cache.get(expression)
        if compiled is None:
            compiled = _compile(expression)
            if len(self._cache) >= self._cache_size:
                with contextlib.suppress(StopIteration, RuntimeError, KeyError):
                    del self._cache[next(iter(self._cache))]
            self._cache[expression] = compiled
        return compiled

    def check(self, expression: str) -> None:
        """Raise :class:`ExpressionError` if ``expression`` cannot be parsed or is not allowed."""
        self.compile(expression)

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """Evaluate ``expression`` with names resolved in ``scope``; missing data gives ``None``.

        Raises:
            ExpressionError: The expression cannot be parsed or is not allowed.
        """
        compiled = self._cache.get(expression) or self.compile(expression)
        try:
            return compiled(scope)
        except RecursionError as exc:
            raise _error(expression, "recursed too deeply") from exc


default_evaluator: Final = SafeEvaluator()
