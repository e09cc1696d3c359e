"""`distill sql "<query>"`: a read-only query of the store, printed as a table.

Only reads are accepted (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN; no PRAGMA, COPY, ATTACH or writes),
and they run on a read-only DuckDB connection under the store's shared lock, with external file access off.
While a step writes, the query waits up to --timeout seconds, then fails naming the holder.
"""

from __future__ import annotations

import argparse
import re

import duckdb
import pandas as pd

from distill_assets.cli.common import store
from distill_assets.cli.errors import RunError, UsageError
from distill_assets.lib.settings import get_settings

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_PRAGMA = re.compile(r"(?:^|;)\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*pragma\b", re.I | re.S)


def read_statements(query: str) -> list[str]:
    """The statements of `query`; raises UsageError naming the first one that is not a read."""
    try:
        stmts = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise UsageError(f"cannot parse the query: {str(e).splitlines()[0]}") from None
    if not stmts:
        raise UsageError("empty query")
    # DuckDB 1.5 hands a PRAGMA back rewritten as a SELECT: look for one in the text as written
    pragmas = [m.start() for m in _PRAGMA.finditer(query)]
    if pragmas:
        raise UsageError(f"a statement is PRAGMA: distill sql runs read-only queries (SELECT, WITH, DESCRIBE, "
                         f"SHOW, SUMMARIZE, EXPLAIN): {query[pragmas[0]:].strip()[:80]}")
    for i, st in enumerate(stmts, 1):
        if st.type not in READ_STATEMENTS:
            kind = st.type.name if hasattr(st.type, "name") else str(st.type)
            raise UsageError(f"statement {i} is {kind}: distill sql runs read-only queries (SELECT, WITH, "
                             f"DESCRIBE, SHOW, SUMMARIZE, EXPLAIN): {st.query.strip()[:80]}")
    return [st.query for st in stmts]


def cmd_sql(args: argparse.Namespace) -> int:
    statements = read_statements(args.query)
    st = store()
    if st.is_lake or not get_settings().database.exists():
        st.execute("SELECT 1")  # a fresh store: create the ledger's tables and views, so they answer
    try:
        with st.reader(args.timeout) as conn:
            if not st.is_lake:  # the lake reads its own Parquet files
                conn.execute("SET enable_external_access = false")
            frames = [conn.execute(q).df() for q in statements]
    except TimeoutError as e:
        raise RunError(str(e)) from None
    except duckdb.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    for df in frames:
        _print(df, args.json)
    return 0


def _print(df: pd.DataFrame, as_json: bool) -> None:
    if as_json:
        print(df.to_json(orient="records", indent=2, date_format="iso", default_handler=str))
        return
    if df.empty:
        print("(no rows)" if len(df.columns) else "(no result)")
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200, "display.max_rows", 500):
        print(df.to_string(index=False))
    print(f"({len(df)} row{'s' if len(df) != 1 else ''})")
