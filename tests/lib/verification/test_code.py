import pytest

from distill_assets.lib.verification.code import extract_code


@pytest.mark.parametrize("text,expected", [
    ("Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "def add(a, b):\n    return a + b"),
    ("```python\nimport math\n```\n```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a + b"),
    ("```\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a + b"),
    ("def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a + b"),
    ("Sorry, I cannot write that.", None),
])
def test_extract_code(text, expected):
    assert extract_code(text, "add") == expected
