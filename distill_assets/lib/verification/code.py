"""Code answers: the Python to run from a response (the sandbox runs it against the row's tests)."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str | None, entry_point: str | None = None) -> str | None:
    """The Python in a response: the fenced block that defines `entry_point` (python-tagged blocks first),
    else the first python/untagged block, else the whole text when it parses as Python."""
    if not text or not text.strip():
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3")]
    plain = [b for lang, b in blocks if lang == ""]
    for group in (py, plain):
        if entry_point:
            for b in group:
                if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", b, re.MULTILINE):
                    return b.strip("\n")
        if group:
            return group[0].strip("\n")
    if not blocks and _parses(text):
        return text.strip("\n")
    return None
