"""parse_utc: the ledger's created_at strings, whichever form isoformat() gave them."""

from datetime import UTC, datetime

import pandas as pd
import pytest

from resources.clock import parse_utc


def test_parse_utc_reads_whole_seconds_beside_fractions():
    # isoformat() drops ".ffffff" when microsecond == 0: at 100k teacher calls one such stamp came up
    stamps = [datetime(2026, 12, 4, 16, 40, 0, 123456, tzinfo=UTC).isoformat(),
              datetime(2026, 12, 4, 16, 40, 1, 0, tzinfo=UTC).isoformat()]
    assert stamps[1] == "2026-12-04T16:40:01+00:00"
    with pytest.raises(ValueError):  # the inferred single format this replaces
        pd.to_datetime(pd.Series(stamps), utc=True)
    got = parse_utc(pd.Series(stamps))
    assert list(got) == [pd.Timestamp("2026-12-04T16:40:00.123456Z"), pd.Timestamp("2026-12-04T16:40:01Z")]
    assert str(got.dt.tz) == "UTC"
