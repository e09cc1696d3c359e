"""The assert splitter: what goes to the sandbox, what stays with the parent, and the parent's verdict."""

import math

import pytest

from distill_assets.lib.verification.testsplit import (
    MISSING,
    Raised,
    decode_value,
    judge,
    read_results,
    split_test,
)


@pytest.mark.parametrize("line,exprs", [
    ("assert add(1, 2) == 3", ("add(1, 2)",)),
    ('assert add(1, 2) == 3, "add is wrong"', ("add(1, 2)",)),
    ("assert 3 == add(1, 2)", ("add(1, 2)",)),
    ("assert is_even(4)", ("is_even(4)",)),
    ("assert not is_even(3)", ("is_even(3)",)),
    ("assert f(0) is None", ("f(0)",)),
    ("assert f(1) is True", ("f(1)",)),
    ("assert f(1) is not False", ("f(1)",)),
    ("assert f(1) != 2", ("f(1)",)),
    ("assert abs(f(2) - 1.414) < 1e-3", ("f(2)",)),
    ("assert math.isclose(f(2), 1.414, rel_tol=1e-3)", ("f(2)",)),
    ("assert 0 <= f(5) < 10", ("f(5)",)),
    ("assert sorted(f([3, 1, 2])) == [1, 2, 3]", ("f([3, 1, 2])",)),
    ("assert f('ab')[0] == 'a'", ("f('ab')",)),
    ("assert f(1)[:2] == (1, 2)", ("f(1)",)),
    ("assert f(1) == float('inf')", ("f(1)",)),
    ("assert f(1) == -math.pi", ("f(1)",)),
    ("assert f(1) == {'a': [1, (2, 3)], 'b': {4}}", ("f(1)",)),
    ("assert f(1) == 2 and f(2) == 4", ("f(1)", "f(2)")),
    ("assert f(1)[g(0)] == 1", ("f(1)[g(0)]",)),  # a computed index: the whole subscript is the sandbox's
    ("assert len(Solution().run([1, 2])) == 2", ("Solution().run([1, 2])",)),
    ("    assert f(1) == 1\n", ("f(1)",)),  # indentation from a test file
])
def test_splittable_forms(line, exprs):
    s = split_test(line)
    assert s.splittable, s.reason
    assert s.exprs == exprs


@pytest.mark.parametrize("line,why", [
    ("assert f(1) == g(1)", "two computed values"),
    ("assert math.isclose(f(1), g(1))", "two computed values"),
    ("assert f(1) == [i for i in range(3)]", "two computed values"),
    ("assert all(f(x) == x for x in range(3))", "all() would decide"),
    ("assert check(f)", None),  # splittable as a truthiness check; decided in the parent
    ("assert f([x for x in range(5) if x > 2]) == 3", "comparison happens inside"),
    ("assert f(1) is 3", "`is` is only checkable"),
    ("x = f(1)\nassert x == 2", "not a single assert"),
    ("f(1)", "not a single assert"),
    ("assert f(1 ==", "not valid Python"),
    ("assert True", "does not involve the code"),
    ("assert f(1) == 10 ** 10 ** 10", "cannot be evaluated"),
    ("assert f(1) == 1 / 0", "cannot be evaluated"),
])
def test_unsplittable_forms(line, why):
    s = split_test(line)
    if why is None:
        assert s.splittable
        return
    assert not s.splittable and why in s.reason
    assert judge(s, []) == (False, f"unverifiable: {s.reason}")


def _j(line, *values):
    return judge(split_test(line), list(values))


def test_the_parent_compares_with_python_semantics():
    assert _j("assert add(1, 2) == 3", 3) == (True, None)
    assert _j("assert add(1, 2) == 3", 3.0) == (True, None)  # as in Python: 3 == 3.0
    ok, err = _j("assert add(1, 2) == 3", -1)
    assert not ok and err == "AssertionError: got add(1, 2) = -1"
    assert _j("assert is_even(4)", 1)[0] and not _j("assert is_even(4)", 0)[0]
    assert _j("assert not is_even(3)", [])[0]
    assert _j("assert f(0) is None", None)[0] and not _j("assert f(0) is None", 0)[0]
    assert _j("assert f(1) is True", True)[0] and not _j("assert f(1) is True", 1)[0]
    assert _j("assert abs(f(2) - 1.414) < 1e-3", 1.4142)[0] and not _j("assert abs(f(2) - 1.414) < 1e-3", 1.5)[0]
    assert _j("assert math.isclose(f(2), 1.414, rel_tol=1e-3)", 1.4142)[0]
    assert _j("assert 0 <= f(5) < 10", 9)[0] and not _j("assert 0 <= f(5) < 10", 10)[0]
    assert _j("assert sorted(f([3, 1, 2])) == [1, 2, 3]", [2, 3, 1])[0]
    assert _j("assert f(1) == {'a': [1, (2, 3)]}", {"a": [1, (2, 3)]})[0]
    assert not _j("assert f(1) == {'a': [1, (2, 3)]}", {"a": [1, [2, 3]]})[0]  # a list is not a tuple
    assert _j("assert f(1) == float('inf')", math.inf)[0]
    assert _j("assert f(1) + 'b' == 'ab'", "a")[0]


def test_errors_missing_values_and_short_circuit():
    ok, err = _j("assert f(1) == 2", Raised("ZeroDivisionError: division by zero"))
    assert not ok and err == "ZeroDivisionError: division by zero"
    ok, err = _j("assert f(1) == 2", MISSING)
    assert not ok and err.startswith("no result")
    ok, err = _j("assert f(1) < 2", "a")  # a wrong type is a wrong answer, as in Python
    assert not ok and err.startswith("TypeError")
    # `or` short-circuits as in Python: the second value is not needed, so its error does not count
    assert _j("assert f(1) is None or f(2) > 0", None, Raised("E: boom"))[0]
    assert _j("assert f(1) is None or f(2) > 0", 1, Raised("E: boom")) == (False, "E: boom")


def test_the_parent_refuses_work_it_cannot_bound():
    ok, err = _j("assert f(1) ** 100000 == 1", 10)
    assert not ok and "too large" in err
    ok, err = _j("assert f(1) * 2 == [1, 1]", [1])  # sequence repetition is not done by the parent
    assert not ok and "not checked by the parent" in err


@pytest.mark.parametrize("wire,value", [
    (None, None), (True, True), (3, 3), (2.5, 2.5), ("x", "x"), ([1, [2]], [1, [2]]),
    ({"t": [1, 2]}, (1, 2)), ({"s": [1]}, {1}), ({"f": [1]}, frozenset({1})), ({"b": "ff00"}, b"\xff\x00"),
    ({"d": [[1, "a"], [{"t": [1]}, None]]}, {1: "a", (1,): None}),
])
def test_decode_value(wire, value):
    got = decode_value(wire)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("wire", [{"x": 1}, {"t": 1}, {"d": [[1]]}, {"s": [[1]]}, {"t": [1], "s": [2]}])
def test_decode_value_refuses_malformed(wire):
    with pytest.raises((ValueError, TypeError)):
        decode_value(wire)


SPLITS = [split_test("assert f(1) == 1"), split_test("assert f(2) == 2")]


def _lines(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def test_read_results_accepts_the_protocol():
    raw = _lines('{"k":"started"}', '{"k":"ran"}', '{"k":"v","t":0,"e":0,"v":1}',
                 '{"k":"v","t":1,"e":0,"x":"TypeError: t"}', '{"k":"done"}')
    events, values, broken = read_results(raw, False, SPLITS)
    assert broken is None and [e["k"] for e in events] == ["started", "ran", "v", "v", "done"]
    assert values[(0, 0)] == 1 and isinstance(values[(1, 0)], Raised)


@pytest.mark.parametrize("raw,why", [
    (_lines('{"k":"started"}', '{"k":"v","t":0,"e":0,"v":1}'), "unexpected 'v' after 'started'"),
    (_lines('{"k":"started"}', '{"k":"ran"}', '{"k":"v","t":0,"e":0,"v":1}', '{"k":"v","t":0,"e":0,"v":1}'),
     "already answered"),
    (_lines('{"k":"started"}', '{"k":"ran"}', '{"k":"v","t":5,"e":0,"v":1}'), "unknown"),
    (_lines('{"k":"started"}', '{"k":"ran"}', '{"event":"test","ok":true}'), "not a protocol line"),
    (_lines('{"k":"started"}', '{"k":"ran"}', '{"k":["x"]}'), "not a protocol line"),
    (_lines('{"k":"started"}', '{"k":"done"}', '{"k":"done"}'), "unexpected 'done'"),
    (_lines('{"k":"started"}', '{"k":"started"}'), "unexpected 'started'"),
    (_lines('{"k":"started"}', '{"k":"ran"}', '{"k":"v","t":0,"e":0,"v":{"q":1}}'), "malformed"),
    (_lines('{"k":"started"}', '{"k":"ran"}') + b'{"k":"v","t":0', "cut off"),
])
def test_read_results_refuses_a_tampered_channel(raw, why):
    events, _, broken = read_results(raw, False, SPLITS)
    assert broken and why in broken
    assert events and events[0]["k"] == "started"  # what came before is kept: a code error still shows


def test_a_partial_line_after_a_kill_is_not_a_claim():
    raw = _lines('{"k":"started"}', '{"k":"ran"}') + b'{"k":"v","t":0'
    assert read_results(raw, True, SPLITS)[2] is None
