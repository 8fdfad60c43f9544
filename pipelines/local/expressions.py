"""Expression evaluation for the two dialects Argo uses.

* ``when`` clauses are evaluated like Argo's ``shouldExecute``: govaluate syntax in which every bare
  identifier is a *string* (``tails == heads`` compares two strings), numbers are floats, ``=~`` / ``!~``
  match regular expressions and ``&&`` / ``||`` need booleans.
* ``{{=...}}`` tags, ``depends`` logic, ``retryStrategy.expression``, hook expressions and
  ``valueFrom.expression`` use the expr-lang subset: identifiers resolve in an environment of nested
  maps, ``a.b`` / ``a['b']`` member access, function calls (``asInt``, ``asFloat``, ``string``,
  ``toJson``, ``fromJSON``, ``jsonpath``, ``len``, ``sprig.*`` basics), ``and/or/not``, ``in``,
  ``matches``, ``contains``, ``startsWith``, ``endsWith``, ``??`` and the ternary operator.

One tokenizer and one precedence-climbing parser serve both dialects; :func:`evaluate_when` and
:func:`evaluate` pick the semantics.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from argofl.pipelines.local.errors import ExpressionError

__all__ = ["evaluate", "evaluate_bool", "evaluate_when", "format_value", "go_json", "parse"]

_TWO_CHAR = ("||", "&&", "==", "!=", ">=", "<=", "=~", "!~", "??", "?.", "**")
_ONE_CHAR = "+-*/%<>!()[]{},.?:"
_KEYWORD_OPS = {"and": "&&", "or": "||", "not": "!"}
_WORD_BINARY = ("in", "matches", "contains", "startsWith", "endsWith")


@dataclass(frozen=True)
class Token:
    kind: str  # num, str, ident, var (govaluate [escaped]), op, eof
    value: Any
    pos: int


def _tokenize(text: str, dialect: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit():
            j = i
            while j < n and (text[j].isdigit() or text[j] in "._" or (text[j] in "eE" and j + 1 < n)):
                if text[j] == "." and (j + 1 >= n or not text[j + 1].isdigit()):
                    break
                if text[j] in "eE":
                    if j + 1 < n and (text[j + 1].isdigit() or text[j + 1] in "+-"):
                        j += 2
                        continue
                    break
                j += 1
            raw = text[i:j].replace("_", "")
            if dialect == "when" and j < n and (text[j].isalpha() or text[j] == "_"):
                # govaluate reads `3abc` as the number 3 followed by a variable; treat the whole word as text
                k = j
                while k < n and (text[k].isalnum() or text[k] in "_."):
                    k += 1
                tokens.append(Token("ident", text[i:k], i))
                i = k
                continue
            try:
                value: Any = float(raw) if (dialect == "when" or any(ch in raw for ch in ".eE")) else int(raw)
            except ValueError:
                raise ExpressionError(f"invalid number {text[i:j]!r} at position {i} in {text!r}") from None
            tokens.append(Token("num", value, i))
            i = j
            continue
        if c in "'\"`":
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n and c != "`":
                    esc = text[j + 1]
                    buf.append(
                        {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}.get(esc, "\\" + esc)
                    )
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ExpressionError(f"unterminated string starting at position {i} in {text!r}")
            tokens.append(Token("str", "".join(buf), i))
            i = j + 1
            continue
        if dialect == "when" and c == "[":
            j = text.find("]", i + 1)
            if j < 0:
                raise ExpressionError(f"unclosed '[' at position {i} in {text!r}")
            tokens.append(Token("var", text[i + 1 : j], i))
            i = j + 1
            continue
        if c.isalpha() or c in "_$#":
            j = i + 1
            while j < n and (
                text[j].isalnum()
                or text[j] == "_"
                or (dialect == "when" and text[j] in ".-" and _when_word_continues(text, j))
            ):
                j += 1
            word = text[i:j]
            if dialect == "expr" and word in _KEYWORD_OPS:
                tokens.append(Token("op", _KEYWORD_OPS[word], i))
            elif word in _WORD_BINARY and (dialect == "expr" or word == "in"):
                tokens.append(Token("op", word, i))
            else:
                tokens.append(Token("ident", word, i))
            i = j
            continue
        two = text[i : i + 2]
        if two in _TWO_CHAR:
            tokens.append(Token("op", two, i))
            i += 2
            continue
        if c in _ONE_CHAR:
            tokens.append(Token("op", c, i))
            i += 1
            continue
        raise ExpressionError(f"invalid character {c!r} at position {i} in {text!r}")
    tokens.append(Token("eof", None, n))
    return tokens


def _when_word_continues(text: str, j: int) -> bool:
    """In ``when`` clauses a '.' continues an identifier; a '-' never does (govaluate reads it as minus)."""
    return text[j] == "." and j + 1 < len(text) and (text[j + 1].isalnum() or text[j + 1] == "_")


# ---------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Node:
    op: str
    args: tuple[Any, ...]


_BINARY_PRECEDENCE: dict[str, int] = {
    "??": 5,
    "||": 10,
    "&&": 15,
    "==": 20,
    "!=": 20,
    "<": 20,
    ">": 20,
    "<=": 20,
    ">=": 20,
    "=~": 20,
    "!~": 20,
    "in": 20,
    "matches": 20,
    "contains": 20,
    "startsWith": 20,
    "endsWith": 20,
    "+": 30,
    "-": 30,
    "*": 60,
    "/": 60,
    "%": 60,
    "**": 100,
}


class _Parser:
    def __init__(self, text: str, dialect: str) -> None:
        self.text = text
        self.dialect = dialect
        self.tokens = _tokenize(text, dialect)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.next()
        if tok.kind != "op" or tok.value != value:
            raise self.error(tok, f"expected {value!r}")

    def error(self, tok: Token, what: str) -> ExpressionError:
        found = "end of expression" if tok.kind == "eof" else repr(str(tok.value))
        return ExpressionError(
            f"invalid expression {self.text!r}: {what}, found {found} at position {tok.pos}"
        )

    def parse(self) -> Node:
        if self.peek().kind == "eof":
            raise ExpressionError(f"invalid expression {self.text!r}: it is empty")
        node = self.ternary()
        if self.peek().kind != "eof":
            raise self.error(self.peek(), "unexpected token")
        return node

    def ternary(self) -> Node:
        cond = self.binary(0)
        tok = self.peek()
        if tok.kind == "op" and tok.value == "?":
            self.next()
            yes = self.ternary()
            self.expect(":")
            no = self.ternary()
            return Node("?:", (cond, yes, no))
        return cond

    def binary(self, min_prec: int) -> Node:
        left = self.unary()
        while True:
            tok = self.peek()
            negated = False
            if tok.kind == "op" and tok.value == "!" and self.dialect == "expr":
                # `not in` / `not matches` style: `a not in b`
                nxt = self.tokens[self.i + 1]
                if nxt.kind == "op" and nxt.value in _WORD_BINARY:
                    negated = True
                    tok = nxt
            if tok.kind != "op" or tok.value not in _BINARY_PRECEDENCE:
                return left
            prec = _BINARY_PRECEDENCE[tok.value]
            if prec < min_prec:
                return left
            self.next()
            if negated:
                self.next()
            right = self.binary(prec + 1 if tok.value != "**" else prec)
            left = Node(tok.value, (left, right))
            if negated:
                left = Node("!", (left,))

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("!", "-", "+"):
            self.next()
            operand = self.unary()
            return Node("neg" if tok.value == "-" else ("pos" if tok.value == "+" else "!"), (operand,))
        return self.postfix(self.primary())

    def primary(self) -> Node:
        tok = self.next()
        if tok.kind == "num" or tok.kind == "str":
            return Node("lit", (tok.value,))
        if tok.kind == "var":
            return Node("lit", (tok.value,)) if self.dialect == "when" else Node("name", (tok.value,))
        if tok.kind == "ident":
            if tok.value in ("true", "false"):
                return Node("lit", (tok.value == "true",))
            if self.dialect == "when":
                return Node("lit", (tok.value,))
            if tok.value in ("nil", "null"):
                return Node("lit", (None,))
            return Node("name", (tok.value,))
        if tok.kind == "op" and tok.value == "(":
            if self.dialect == "when":
                items = [self.ternary()]
                while self.peek().kind == "op" and self.peek().value == ",":
                    self.next()
                    items.append(self.ternary())
                self.expect(")")
                return items[0] if len(items) == 1 else Node("list", tuple(items))
            inner = self.ternary()
            self.expect(")")
            return inner
        if tok.kind == "op" and tok.value == "[" and self.dialect == "expr":
            items = []
            if not (self.peek().kind == "op" and self.peek().value == "]"):
                items.append(self.ternary())
                while self.peek().kind == "op" and self.peek().value == ",":
                    self.next()
                    if self.peek().kind == "op" and self.peek().value == "]":
                        break
                    items.append(self.ternary())
            self.expect("]")
            return Node("list", tuple(items))
        if tok.kind == "op" and tok.value == "{" and self.dialect == "expr":
            pairs: list[tuple[Node, Node]] = []
            while not (self.peek().kind == "op" and self.peek().value == "}"):
                key_tok = self.next()
                if key_tok.kind in ("ident", "str", "num"):
                    key = Node("lit", (key_tok.value,))
                else:
                    raise self.error(key_tok, "expected a map key")
                self.expect(":")
                pairs.append((key, self.ternary()))
                if self.peek().kind == "op" and self.peek().value == ",":
                    self.next()
            self.expect("}")
            return Node("map", tuple(pairs))
        raise self.error(tok, "expected a value")

    def postfix(self, node: Node) -> Node:
        if self.dialect == "when":
            return node
        while True:
            tok = self.peek()
            if tok.kind == "op" and tok.value in (".", "?."):
                self.next()
                name = self.next()
                if name.kind != "ident" and not (name.kind == "op" and name.value in _WORD_BINARY):
                    raise self.error(name, "expected a member name")
                node = Node("member", (node, Node("lit", (str(name.value),)), tok.value == "?."))
            elif tok.kind == "op" and tok.value == "[":
                self.next()
                index = self.ternary()
                self.expect("]")
                node = Node("member", (node, index, False))
            elif tok.kind == "op" and tok.value == "(" and node.op in ("name", "member"):
                self.next()
                args = []
                while not (self.peek().kind == "op" and self.peek().value == ")"):
                    args.append(self.ternary())
                    if self.peek().kind == "op" and self.peek().value == ",":
                        self.next()
                    elif not (self.peek().kind == "op" and self.peek().value == ")"):
                        raise self.error(self.peek(), "expected ',' or ')'")
                self.expect(")")
                node = Node("call", (node, tuple(args)))
            else:
                return node


_PARSE_CACHE: dict[tuple[str, str], Node] = {}


def parse(text: str, dialect: str = "expr") -> Node:
    """Parse ``text`` in ``dialect`` ("expr" or "when"); raise :class:`ExpressionError` when malformed."""
    key = (text, dialect)
    cached = _PARSE_CACHE.get(key)
    if cached is None:
        cached = _Parser(text, dialect).parse()
        if len(_PARSE_CACHE) < 4096:
            _PARSE_CACHE[key] = cached
    return cached


# -------------------------------------------------------------------------------------- evaluation


class _Missing:
    """Marker for an identifier that is not in the environment."""


_MISSING = _Missing()


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, Mapping):
        return "map"
    return type(v).__name__


class _Evaluator:
    def __init__(self, text: str, dialect: str, env: Mapping[str, Any]) -> None:
        self.text = text
        self.dialect = dialect
        self.env = env

    def fail(self, what: str) -> ExpressionError:
        return ExpressionError(f"cannot evaluate {self.text!r}: {what}")

    def eval(self, node: Node) -> Any:
        op, args = node.op, node.args
        if op == "lit":
            return args[0]
        if op == "name":
            name = args[0]
            if name in self.env:
                return self.env[name]
            if name in _FUNCTIONS:
                return _FUNCTIONS[name]
            raise self.fail(f"unknown name {name}")
        if op == "list":
            return [self.eval(a) for a in args]
        if op == "map":
            return {str(self.eval(k)): self.eval(v) for k, v in args}
        if op == "member":
            return self.member(node)
        if op == "call":
            fn = self.eval(args[0])
            if not callable(fn):
                raise self.fail(f"{_type_name(fn)} is not a function")
            values = [self.eval(a) for a in args[1]]
            try:
                return fn(*values)
            except ExpressionError:
                raise
            except Exception as exc:
                raise self.fail(f"{exc}") from None
        if op == "?:":
            cond = self.eval(args[0])
            if not isinstance(cond, bool):
                raise self.fail(f"non-bool {format_value(cond)!r} used as condition")
            return self.eval(args[1] if cond else args[2])
        if op == "!":
            value = self.eval(args[0])
            if not isinstance(value, bool):
                raise self.fail(f"invalid operation: ! on {_type_name(value)} {format_value(value)!r}")
            return not value
        if op in ("neg", "pos"):
            value = self.eval(args[0])
            if not _is_num(value):
                raise self.fail(f"invalid operation: unary minus on {_type_name(value)}")
            return -value if op == "neg" else value
        if op in ("&&", "||"):
            left = self.eval(args[0])
            if not isinstance(left, bool):
                raise self.fail(
                    f"value {format_value(left)!r} cannot be used with the logical operator {op!r}"
                )
            if op == "&&" and not left:
                return False
            if op == "||" and left:
                return True
            right = self.eval(args[1])
            if not isinstance(right, bool):
                raise self.fail(
                    f"value {format_value(right)!r} cannot be used with the logical operator {op!r}"
                )
            return right
        if op == "??":
            try:
                left = self.eval(args[0])
            except ExpressionError:
                left = None
            return self.eval(args[1]) if left is None else left
        return self.binary(op, self.eval(args[0]), self.eval(args[1]))

    def member(self, node: Node) -> Any:
        target_node, key_node, optional = node.args
        try:
            target = self.eval(target_node)
        except ExpressionError:
            if optional:
                return None
            raise
        key = self.eval(key_node)
        if target is None:
            if optional:
                return None
            raise self.fail(f"cannot fetch {key} from nil")
        if isinstance(target, Mapping):
            return target.get(str(key)) if str(key) in target else None
        if isinstance(target, list | tuple | str):
            if not _is_num(key):
                raise self.fail(f"cannot index {_type_name(target)} with {_type_name(key)}")
            idx = int(key)
            if idx < 0:
                idx += len(target)
            if not 0 <= idx < len(target):
                raise self.fail(f"index out of range: {int(key)} (array length is {len(target)})")
            return target[idx]
        attr = getattr(target, str(key), _MISSING)
        if attr is _MISSING:
            raise self.fail(f"cannot fetch {key} from {_type_name(target)}")
        return attr

    def binary(self, op: str, left: Any, right: Any) -> Any:
        if op in ("==", "!="):
            equal = _equal(left, right, self.dialect)
            return equal if op == "==" else not equal
        if op in ("<", ">", "<=", ">="):
            if (_is_num(left) and _is_num(right)) or (isinstance(left, str) and isinstance(right, str)):
                return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]
            raise self.fail(
                f"invalid operation: {format_value(left)!r} {op} {format_value(right)!r} "
                f"({_type_name(left)} and {_type_name(right)})"
            )
        if op in ("=~", "!~", "matches"):
            if not isinstance(left, str) or not isinstance(right, str):
                raise self.fail(f"{op} needs two strings, got {_type_name(left)} and {_type_name(right)}")
            try:
                found = re.search(right, left) is not None
            except re.error as exc:
                raise self.fail(f"invalid regular expression {right!r}: {exc}") from None
            return not found if op == "!~" else found
        if op == "in":
            if isinstance(right, Mapping):
                return str(left) in right
            if isinstance(right, list | tuple):
                return any(_equal(left, item, self.dialect) for item in right)
            if isinstance(right, str) and isinstance(left, str):
                return left in right
            raise self.fail(f"invalid operation: in on {_type_name(right)}")
        if op in ("contains", "startsWith", "endsWith"):
            if not isinstance(left, str) or not isinstance(right, str):
                raise self.fail(f"{op} needs two strings, got {_type_name(left)} and {_type_name(right)}")
            return {
                "contains": right in left,
                "startsWith": left.startswith(right),
                "endsWith": left.endswith(right),
            }[op]
        if op == "+":
            if isinstance(left, str) and isinstance(right, str):
                return left + right
            if self.dialect == "when" and (isinstance(left, str) or isinstance(right, str)):
                return format_value(left) + format_value(right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if op in ("+", "-", "*", "/", "%", "**"):
            if not (_is_num(left) and _is_num(right)):
                raise self.fail(
                    f"invalid operation: {format_value(left)!r} {op} {format_value(right)!r} "
                    f"({_type_name(left)} and {_type_name(right)})"
                )
            if op == "+":
                return left + right
            if op == "-":
                return left - right
            if op == "*":
                return left * right
            if op == "**":
                return float(left) ** float(right)
            if op == "/":
                if right == 0:
                    if self.dialect == "when":
                        raise self.fail("division by zero")
                    return math.inf if left > 0 else (-math.inf if left < 0 else math.nan)
                return float(left) / float(right)
            if right == 0:
                raise self.fail("integer divide by zero")
            if isinstance(left, int) and isinstance(right, int):
                return int(math.fmod(left, right))
            return math.fmod(left, right)
        raise self.fail(f"unknown operator {op}")


def _equal(left: Any, right: Any, dialect: str) -> bool:
    if _is_num(left) and _is_num(right):
        return bool(left == right)
    if type(left) is not type(right) and not (isinstance(left, Mapping) and isinstance(right, Mapping)):
        if isinstance(left, list | tuple) and isinstance(right, list | tuple):
            return list(left) == list(right)
        return False
    return bool(left == right)


# ------------------------------------------------------------------------------------------ builtins


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ExpressionError(f"invalid operation: int({value})")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ExpressionError(f'strconv.Atoi: parsing "{value}": invalid syntax') from None
    raise ExpressionError(f"invalid operation: int({_type_name(value)})")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ExpressionError(f"invalid operation: float({value})")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ExpressionError(f'strconv.ParseFloat: parsing "{value}": invalid syntax') from None
    raise ExpressionError(f"invalid operation: float({_type_name(value)})")


def _from_json(value: Any) -> Any:
    if not isinstance(value, str):
        raise ExpressionError(f"fromJSON needs a string, got {_type_name(value)}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ExpressionError(f"fromJSON: {value!r} is not JSON: {exc.msg}") from None


def _len(value: Any) -> int:
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    raise ExpressionError(f"invalid argument for len (type {_type_name(value)})")


def _jsonpath(document: Any, path: str) -> Any:
    """A small JSONPath subset: ``$``, ``.key``, ``['key']``, ``[n]`` and ``[*]``."""
    data = json.loads(document) if isinstance(document, str) else document
    tokens = re.findall(
        r"\.\.?([A-Za-z_][\w-]*)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|\[\s*(-?\d+|\*)\s*\]|\.(\*)",
        path[1:] if path.startswith("$") else path,
    )
    current: list[Any] = [data]
    wildcard = False
    for name, sq, dq, index, star in tokens:
        key = name or sq or dq
        nxt: list[Any] = []
        for item in current:
            if key:
                if isinstance(item, Mapping) and key in item:
                    nxt.append(item[key])
            elif index == "*" or star:
                wildcard = True
                nxt.extend(
                    item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else []
                )
            elif index and isinstance(item, list) and -len(item) <= int(index) < len(item):
                nxt.append(item[int(index)])
        current = nxt
    if wildcard:
        return current
    if not current:
        raise ExpressionError(f"jsonpath {path!r} matched nothing")
    return current[0]


def _sprig_default(default: Any, value: Any = None) -> Any:
    return default if value in (None, "", [], {}, 0, False) else value


_SPRIG: dict[str, Callable[..., Any]] = {
    "trim": lambda s: str(s).strip(),
    "trimAll": lambda cut, s: str(s).strip(str(cut)),
    "trimPrefix": lambda p, s: str(s).removeprefix(str(p)),
    "trimSuffix": lambda p, s: str(s).removesuffix(str(p)),
    "upper": lambda s: str(s).upper(),
    "lower": lambda s: str(s).lower(),
    "title": lambda s: str(s).title(),
    "replace": lambda old, new, s: str(s).replace(str(old), str(new)),
    "contains": lambda sub, s: str(sub) in str(s),
    "hasPrefix": lambda p, s: str(s).startswith(str(p)),
    "hasSuffix": lambda p, s: str(s).endswith(str(p)),
    "repeat": lambda n, s: str(s) * _as_int(n),
    "substr": lambda start, end, s: str(s)[_as_int(start) : _as_int(end)],
    "quote": lambda s: json.dumps(format_value(s)),
    "squote": lambda s: "'" + format_value(s) + "'",
    "toString": lambda v: format_value(v),
    "toJson": lambda v: go_json(v),
    "mustToJson": lambda v: go_json(v),
    "fromJson": _from_json,
    "mustFromJson": _from_json,
    "atoi": _as_int,
    "int": _as_int,
    "int64": _as_int,
    "float64": _as_float,
    "add": lambda *xs: sum(_as_int(x) for x in xs),
    "sub": lambda a, b: _as_int(a) - _as_int(b),
    "mul": lambda *xs: math.prod(_as_int(x) for x in xs),
    "div": lambda a, b: _as_int(a) // _as_int(b),
    "mod": lambda a, b: _as_int(a) % _as_int(b),
    "max": lambda *xs: max(_as_int(x) for x in xs),
    "min": lambda *xs: min(_as_int(x) for x in xs),
    "default": _sprig_default,
    "empty": lambda v: v in (None, "", [], {}, 0, False),
    "ternary": lambda a, b, cond: a if cond else b,
    "list": lambda *xs: list(xs),
    "splitList": lambda sep, s: str(s).split(str(sep)),
    "join": lambda sep, xs: str(sep).join(format_value(x) for x in xs),
    "first": lambda xs: xs[0] if xs else None,
    "last": lambda xs: xs[-1] if xs else None,
    "len": _len,
}

_FUNCTIONS: dict[str, Any] = {
    "asInt": _as_int,
    "asFloat": _as_float,
    "int": _as_int,
    "float": _as_float,
    "string": lambda v: format_value(v),
    "toJson": lambda v: go_json(v),
    "toJSON": lambda v: go_json(v),
    "fromJSON": _from_json,
    "fromJson": _from_json,
    "jsonpath": _jsonpath,
    "len": _len,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "trim": lambda s, chars=None: str(s).strip(chars),
    "split": lambda s, sep: str(s).split(sep),
    "join": lambda xs, sep="": sep.join(format_value(x) for x in xs),
    "abs": lambda x: abs(x),
    "max": lambda *xs: max(xs),
    "min": lambda *xs: min(xs),
    "sprig": _SPRIG,
}


def go_json(value: Any) -> str:
    """JSON as Go's ``json.Marshal`` writes it: compact, map keys sorted, ``<>&`` escaped."""
    text = json.dumps(_normalise_numbers(value), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _normalise_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list | tuple):
        return [_normalise_numbers(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _normalise_numbers(v) for k, v in value.items()}
    return value


def format_value(value: Any) -> str:
    """A value as text, the way Argo writes an expression result or a parameter."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    return go_json(value)


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """Evaluate an expr-lang expression in ``env`` (nested maps)."""
    return _Evaluator(text, "expr", env).eval(parse(text, "expr"))


def evaluate_bool(text: str, env: Mapping[str, Any]) -> bool:
    """Evaluate an expr-lang expression that must produce a boolean."""
    result = evaluate(text, env)
    if not isinstance(result, bool):
        raise ExpressionError(f"expression {text!r} evaluated to {format_value(result)!r}, not a boolean")
    return result


def evaluate_when(text: str) -> bool:
    """Evaluate an already substituted ``when`` clause like Argo's govaluate-based ``shouldExecute``."""
    if not text.strip():
        return True
    try:
        result = _Evaluator(text, "when", {}).eval(parse(text, "when"))
    except ExpressionError as exc:
        raise ExpressionError(
            f"Invalid 'when' expression '{text}': {exc} (hint: try wrapping the affected "
            'expression in quotes ("))'
        ) from None
    if not isinstance(result, bool):
        raise ExpressionError(f"Expected boolean evaluation for '{text}'. Got {format_value(result)}")
    return result
