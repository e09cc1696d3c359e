"""Split an assert-line test into what the sandboxed code evaluates and what only the parent knows.

`assert add(1, 2) == 3` becomes the expression `add(1, 2)` (sent to the sandbox, evaluated there after the
code ran) and a check `<value 0> == 3` that the parent evaluates itself on the value that comes back. The
sandboxed code never sees an expected value, and it never gets to say "this test passed": a verdict is
always computed here, on plain builtin values.

Parent-side operations are the ones a test needs around the call: comparisons, `not`/`and`/`or`,
`abs(f(x) - y) < tol`, `math.isclose`, `sorted`/`set`/`len`/..., arithmetic on numbers, indexing. Whatever
else the test computes is an opaque expression for the sandbox. A test is unsplittable (and so never
passes) when the verdict would have to be computed inside the sandbox: a comparison inside an opaque part
(`all(f(x) == ...)`), two computed sides compared with each other, or anything that is not one assert.
"""

from __future__ import annotations

import ast
import json
import math
import textwrap
from dataclasses import dataclass

# calls the parent evaluates itself (on values that came back, never on objects of the code)
_SAFE_CALLS = {
    "abs": abs, "len": len, "sorted": sorted, "set": set, "frozenset": frozenset, "list": list, "tuple": tuple,
    "round": round, "sum": sum, "min": min, "max": max, "float": float, "int": int, "str": str, "bool": bool,
    "isclose": math.isclose,
}
_SAFE_MATH = {"isclose": math.isclose, "fabs": math.fabs, "isnan": math.isnan, "isinf": math.isinf,
              "floor": math.floor, "ceil": math.ceil, "sqrt": math.sqrt}
_MATH_CONSTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan, "tau": math.tau}
_KEYWORDS = {"sorted": {"reverse"}, "isclose": {"rel_tol", "abs_tol"}}
_COMPARING = {"isclose"}  # calls that compare their arguments: only one argument may be computed
_JUDGING_NAMES = {"all", "any", "isclose"}  # would decide the verdict inside the sandbox
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}
_CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
           ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b, ast.Is: lambda a, b: a is b,
           ast.IsNot: lambda a, b: a is not b}
_MAX_BITS = 1 << 16  # a teacher-written `10 ** 10 ** 9` must not hang the parent


class Unsplittable(ValueError):
    pass


@dataclass(frozen=True)
class SplitTest:
    source: str
    exprs: tuple[str, ...] = ()  # evaluated in the sandbox, in this order, after the code ran
    check: ast.expr | None = None  # the assert's test, each opaque part replaced by a slot
    reason: str = ""  # why the test cannot be split ("" when it can)

    @property
    def splittable(self) -> bool:
        return self.check is not None


class _Slot(ast.expr):
    """Stands for the value of exprs[index] in the parent's copy of the test."""
    _fields = ("index",)


class _Splitter:
    def __init__(self) -> None:
        self.exprs: list[str] = []

    def opaque(self, node: ast.expr) -> tuple[ast.expr, bool]:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Compare):
                raise Unsplittable("the comparison happens inside a computed expression")
            name = sub.func.id if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) else (
                sub.func.attr if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) else None)
            if name in _JUDGING_NAMES:
                raise Unsplittable(f"{name}() would decide the verdict inside the sandbox")
        self.exprs.append(ast.unparse(node))
        return _Slot(index=len(self.exprs) - 1), True

    def visit(self, node: ast.expr) -> tuple[ast.expr, bool]:
        new, tainted = self._visit(node)
        if tainted or isinstance(new, (ast.Constant, ast.Slice)):
            return new, tainted
        try:  # an expected side: evaluate it once, here, so a broken one is the test's fault, not the code's
            return ast.Constant(_eval(new, [])), False
        except Exception as e:
            raise Unsplittable(f"the expected value `{ast.unparse(node)}` cannot be evaluated: {e}") from None

    def _visit(self, node: ast.expr) -> tuple[ast.expr, bool]:
        if isinstance(node, ast.Constant):
            return node, False
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
                and node.attr in _MATH_CONSTS:
            return ast.Constant(_MATH_CONSTS[node.attr]), False
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(isinstance(e, ast.Starred) for e in node.elts):
            parts = [self.visit(e) for e in node.elts]
            return type(node)(elts=[p for p, _ in parts], ctx=ast.Load()), any(t for _, t in parts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            keys, values = [self.visit(k) for k in node.keys], [self.visit(v) for v in node.values]
            return (ast.Dict(keys=[k for k, _ in keys], values=[v for v, _ in values]),
                    any(t for _, t in keys + values))
        if isinstance(node, ast.UnaryOp):
            operand, tainted = self.visit(node.operand)
            return ast.UnaryOp(op=node.op, operand=operand), tainted
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            (left, tl), (right, tr) = self.visit(node.left), self.visit(node.right)
            return ast.BinOp(left=left, op=node.op, right=right), tl or tr
        if isinstance(node, ast.BoolOp):
            parts = [self.visit(v) for v in node.values]
            return ast.BoolOp(op=node.op, values=[p for p, _ in parts]), any(t for _, t in parts)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.Call) and (fn := _safe_call(node)) is not None:
            return self.call(node, fn)
        return self.opaque(node)

    def subscript(self, node: ast.Subscript) -> tuple[ast.expr, bool]:
        mark = len(self.exprs)
        value, tainted = self.visit(node.value)
        if isinstance(node.slice, ast.Slice):
            bounds = [self.visit(b) if b is not None else (None, False)
                      for b in (node.slice.lower, node.slice.upper, node.slice.step)]
            index, ti = ast.Slice(*[b for b, _ in bounds]), any(t for _, t in bounds)
        else:
            index, ti = self.visit(node.slice)
        if ti:  # f(x)[g(y)]: the index is computed too, so the whole thing is the sandbox's
            del self.exprs[mark:]
            return self.opaque(node)
        return ast.Subscript(value=value, slice=index, ctx=ast.Load()), tainted

    def compare(self, node: ast.Compare) -> tuple[ast.expr, bool]:
        parts = [self.visit(e) for e in [node.left, *node.comparators]]
        if sum(t for _, t in parts) > 1:
            raise Unsplittable("compares two computed values: one side must be a literal expected value")
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, (ast.Is, ast.IsNot)):
                pair = (operands[i], operands[i + 1])
                if not any(isinstance(o, ast.Constant) and o.value in (None, True, False) for o in pair):
                    raise Unsplittable("`is` is only checkable against None, True or False")
        return (ast.Compare(left=parts[0][0], ops=node.ops, comparators=[p for p, _ in parts[1:]]),
                any(t for _, t in parts))

    def call(self, node: ast.Call, name: str) -> tuple[ast.expr, bool]:
        args = [self.visit(a) for a in node.args]
        kws = [(k.arg, self.visit(k.value)) for k in node.keywords]
        if any(t for _, (_, t) in kws):
            raise Unsplittable(f"a computed keyword argument of {name}()")
        if name.removeprefix("math.") in _COMPARING and sum(t for _, t in args) > 1:
            raise Unsplittable(f"{name}() of two computed values: one side must be a literal expected value")
        new = ast.Call(func=ast.Name(id=name), args=[a for a, _ in args],
                       keywords=[ast.keyword(arg=k, value=v) for k, (v, _) in kws])
        return new, any(t for _, t in args)


def _safe_call(node: ast.Call) -> str | None:
    """The parent-side name of a whitelisted call (`math.isclose` -> "math.isclose"), else None."""
    f = node.func
    if isinstance(f, ast.Name) and f.id in _SAFE_CALLS:
        name = f.id
    elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math" \
            and f.attr in _SAFE_MATH:
        name = "math." + f.attr
    else:
        return None
    allowed = _KEYWORDS.get(name.removeprefix("math."), set())
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg not in allowed for k in node.keywords):
        return None
    return name


def split_test(source: str) -> SplitTest:
    """Split one test line; never raises (an unsplittable test carries its reason)."""
    try:
        tree = ast.parse(textwrap.dedent(source).strip(), mode="exec")
    except (SyntaxError, ValueError) as e:
        return SplitTest(source, reason=f"not valid Python: {e}")
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return SplitTest(source, reason="not a single assert statement")
    splitter = _Splitter()
    try:
        check, _ = splitter.visit(tree.body[0].test)
    except Unsplittable as e:
        return SplitTest(source, reason=str(e))
    except RecursionError:
        return SplitTest(source, reason="nested too deeply")
    if not splitter.exprs:
        return SplitTest(source, reason="the test does not involve the code (nothing to evaluate)")
    return SplitTest(source, exprs=tuple(splitter.exprs), check=check)


def verdict(splits: list[SplitTest], values: dict) -> tuple[list[dict], str, str]:
    """Per-test rows, the status and the reason, from the values that came back ({(test, expr): value})."""
    rows = []
    for i, s in enumerate(splits):
        if s.splittable:
            ok, err = judge(s, [values.get((i, j), MISSING) for j in range(len(s.exprs))])
            status = "pass" if ok else "fail"
        else:
            ok, err, status = False, s.reason, "unverifiable"
        rows.append({"index": i, "test": s.source[:200], "ok": ok, "status": status, "error": err})
    bad = [t for t in rows if t["status"] == "fail"]
    unverifiable = [t for t in rows if t["status"] == "unverifiable"]
    if bad:
        return rows, "fail", f"tests_failed: {len(bad)}/{len(rows)}; first: {bad[0]['error']}"
    if unverifiable:
        return rows, "unverifiable", (f"unverifiable: {len(unverifiable)}/{len(rows)} test(s) could not be split, "
                                      f"the other {len(rows) - len(unverifiable)} passed; first: "
                                      f"{unverifiable[0]['error']}")
    return rows, "pass", "ok"


class Raised:
    """An expression that raised inside the sandbox: "TypeError: ..."."""

    def __init__(self, error: str) -> None:
        self.error = error


class _Failed(Exception):
    pass


def judge(test: SplitTest, values: list) -> tuple[bool, str | None]:
    """Evaluate the parent's side of `test` on the values that came back (plain builtins or `Raised`).

    Returns (ok, error). A value that is missing, or raised, fails the test only if the check needs it (so
    `x is None or f(x) > 0` keeps Python's short-circuit meaning).
    """
    if not test.splittable:
        return False, f"unverifiable: {test.reason}"
    try:
        ok = bool(_eval(test.check, values))
    except _Failed as e:
        return False, str(e)
    except RecursionError:
        return False, "RecursionError: the value is nested too deeply to compare"
    except Exception as e:  # the value does not fit the check: a wrong answer, like in Python
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    if ok:
        return True, None
    shown = "; ".join(f"{expr} = {_short(v)}" for expr, v in zip(test.exprs, values)
                      if not isinstance(v, Raised) and v is not MISSING)
    return False, "AssertionError" + (f": got {shown}" if shown else "")


def _short(v: object) -> str:
    try:
        text = repr(v)
    except ValueError:  # an int too long to print
        text = f"<int of {v.bit_length()} bits>" if isinstance(v, int) else "<unprintable>"
    return text if len(text) <= 120 else text[:117] + "..."


MISSING = object()  # no value came back for this expression


def decode_value(x: object, depth: int = 0) -> object:
    """The inverse of the child's encoder (JSON with tagged tuples, sets, dicts, bytes); ValueError if malformed."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if depth > 80:
        raise ValueError("value nested too deeply")
    if type(x) is list:
        return [decode_value(v, depth + 1) for v in x]
    if type(x) is dict and len(x) == 1:
        (tag, body), = x.items()
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is list:
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in body):
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in body}
            items = [decode_value(v, depth + 1) for v in body]
            if tag in ("t", "s", "f"):
                return {"t": tuple, "s": set, "f": frozenset}[tag](items)
    raise ValueError(f"malformed value: {str(x)[:80]}")


def _eval(node: ast.expr, values: list):
    if isinstance(node, _Slot):
        v = values[node.index] if node.index < len(values) else MISSING
        if v is MISSING:
            raise _Failed("no result: the process ended before this test was evaluated")
        if isinstance(v, Raised):
            raise _Failed(v.error)
        return v
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_eval(e, values) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {_eval(k, values): _eval(v, values) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, values)
        if isinstance(node.op, ast.Not):
            return not v
        _number(v)
        return {ast.USub: lambda x: -x, ast.UAdd: lambda x: +x, ast.Invert: lambda x: ~x}[type(node.op)](v)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.Add) and type(a) is type(b) and type(a) in (str, list, tuple):
            return a + b  # both already bounded in size
        _number(a), _number(b)
        if isinstance(node.op, ast.Pow) and (abs(b) > 1024 or _bits(a) * max(abs(b), 1) > _MAX_BITS):
            raise _Failed("OverflowError: power too large to evaluate")
        if isinstance(node.op, ast.Mult) and _bits(a) + _bits(b) > _MAX_BITS:
            raise _Failed("OverflowError: product too large to evaluate")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.BoolOp):
        result = None
        for sub in node.values:
            result = _eval(sub, values)
            if bool(result) == isinstance(node.op, ast.Or):
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, values)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Slice):
        return slice(*[_eval(b, values) if b is not None else None for b in (node.lower, node.upper, node.step)])
    if isinstance(node, ast.Subscript):
        return _eval(node.value, values)[_eval(node.slice, values)]
    if isinstance(node, ast.Call):
        name = node.func.id
        fn = _SAFE_MATH[name[5:]] if name.startswith("math.") else _SAFE_CALLS[name]
        args = [_eval(a, values) for a in node.args]
        return fn(*args, **{k.arg: _eval(k.value, values) for k in node.keywords})
    raise _Failed(f"cannot evaluate {type(node).__name__}")  # the splitter never builds one


def _number(v: object) -> None:
    if type(v) not in (int, float, bool):
        raise _Failed(f"TypeError: arithmetic on {type(v).__name__} is not checked by the parent")


def _bits(v: object) -> int:
    return v.bit_length() if isinstance(v, int) else 64


# the child's protocol: which line may follow which (anything else is a broken, i.e. tampered, channel)
_NEXT = {"start": {"started"}, "started": {"code_error", "ran", "timeout"},
         "ran": {"entry_point_missing", "v", "timeout", "done"}, "end": set()}


def read_results(raw: bytes, cut: bool, splits: list[SplitTest]) -> tuple[list[dict], dict, str | None]:
    """The child's result lines as far as they keep the protocol: (events, {(test, expr): value}, why not).

    Untrusted input: anything out of order, unknown, repeated or malformed stops the reading, and the reason
    makes the run a fail. `cut`: the run was killed or overflowed, so a last partial line is not a claim.
    """
    *lines, partial = raw.split(b"\n")
    events, values, state = [], {}, "start"
    for n, line in enumerate(lines):
        try:
            ev = json.loads(line)
            k = ev["k"]
            if type(k) is not str:
                raise TypeError
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            return events, values, f"line {n + 1} is not a protocol line"
        if k not in _NEXT.get(state, set()):
            return events, values, f"unexpected {str(k)[:40]!r} after {state!r}"
        if k == "v":
            t, e = ev.get("t"), ev.get("e")
            if type(t) is not int or type(e) is not int or not (0 <= t < len(splits)) \
                    or not (0 <= e < len(splits[t].exprs)) or (t, e) in values:
                return events, values, f"line {n + 1}: a value for an unknown or already answered expression"
            try:
                values[(t, e)] = Raised(str(ev["x"])[:500]) if "x" in ev else decode_value(ev["v"])
            except (ValueError, TypeError, KeyError, RecursionError) as err:
                return events, values, f"line {n + 1}: {err}"
        else:
            state = k if k in ("started", "ran") else "end"
        events.append(ev)
    return events, values, "a result line was cut off" if partial and not cut else None
