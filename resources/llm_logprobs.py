"""Teacher logprobs in the ledger: one `teacher_logprobs` row per answered call, journaled with its call.

A row holds the generated tokens as ids of the student's tokenizer and their logprobs, compactly:
`token_ids` int32 [n, k+1] and `logprobs` float16 [n, k+1], both C-order bytes; column 0 is the sampled token,
columns 1..k the server's top-k alternatives, best first (-1 / -inf where a token has no id or the server sent
fewer). Servers name tokens by text, so the caller supplies the `TokenMap` that turns text into ids: the
resources know the row layout, not the tokenizer.
"""

from __future__ import annotations

import base64
from typing import Protocol

import numpy as np
import pandas as pd

from resources.clock import parse_utc
from resources.llm_types import TokenLogprobs

LOGPROB_COLUMNS = ["call_key", "model", "k", "n_tokens", "token_ids", "logprobs", "tokenizer", "unmapped",
                   "created_at"]
JOURNAL_KEY = "_logprobs"  # the row rides in its call's journal line, so a torn line loses both or neither


class TokenMap(Protocol):
    """Token text -> id of one tokenizer; `name` identifies that tokenizer (recorded with every row)."""

    name: str

    def encode(self, logprobs: TokenLogprobs, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids int32 [n, k+1], logprobs float16 [n, k+1], sampled tokens without an id)."""
        ...


def logprob_row(call_key: str, model: str, logprobs: TokenLogprobs, k: int, token_map: TokenMap,
                created_at: str) -> dict:
    """A journal-safe row (blobs as base64 text) for one answered call."""
    ids, lps, unmapped = token_map.encode(logprobs, k)
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    lps = np.ascontiguousarray(lps, dtype=np.float16)
    if ids.shape != (len(logprobs), k + 1) or lps.shape != ids.shape:
        raise ValueError(f"token map {token_map.name!r} returned shapes {ids.shape}/{lps.shape}, "
                         f"expected ({len(logprobs)}, {k + 1})")
    return {"call_key": call_key, "model": model, "k": int(k), "n_tokens": int(ids.shape[0]),
            "token_ids": base64.b64encode(ids.tobytes()).decode(), "logprobs": base64.b64encode(lps.tobytes()).decode(),
            "tokenizer": token_map.name, "unmapped": int(unmapped), "created_at": created_at}


def logprob_frame(rows: list[dict]) -> pd.DataFrame:
    """The `teacher_logprobs` rows carried by journal/pending call rows, blobs decoded, one per call key."""
    found = [r[JOURNAL_KEY] for r in rows if isinstance(r.get(JOURNAL_KEY), dict)]
    if not found:
        return pd.DataFrame(columns=LOGPROB_COLUMNS)
    frame = pd.DataFrame(found, columns=LOGPROB_COLUMNS)
    for col in ("token_ids", "logprobs"):
        frame[col] = [base64.b64decode(v) for v in frame[col]]
    frame["created_at"] = parse_utc(frame["created_at"])
    return frame.drop_duplicates("call_key", keep="last")


def decode_arrays(token_ids: bytes, logprobs: bytes, n_tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored blobs back as arrays: ids int32 [n, k+1], logprobs float16 [n, k+1]."""
    ids = np.frombuffer(token_ids, dtype=np.int32).reshape(int(n_tokens), int(k) + 1)
    lps = np.frombuffer(logprobs, dtype=np.float16).reshape(int(n_tokens), int(k) + 1)
    return ids, lps
