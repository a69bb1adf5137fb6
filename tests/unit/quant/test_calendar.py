import datetime as dt

import pandas as pd
import pytest

from qsdk.quant import calendar as cal
from qsdk.quant.calendar import (
    CalendarReport,
    is_session,
    month_partitions,
    sessions,
    validate_dates,
    year_partitions,
)


def test_sessions_first_week_of_2015_skips_new_year_and_weekend():
    out = sessions("2015-01-01", "2015-01-10")
    expected = pd.DatetimeIndex(
        ["2015-01-02", "2015-01-05", "2015-01-06", "2015-01-07", "2015-01-08", "2015-01-09"]
    )
    pd.testing.assert_index_equal(out, expected.as_unit("ns"))
    assert out.dtype == "datetime64[ns]" and out.tz is None


def test_sessions_full_year_count_and_holidays():
    out = sessions("2015-01-01", "2015-12-31")
    assert len(out) == 252  # NYSE 2015 had 252 trading days
    assert pd.Timestamp("2015-07-03") not in out  # Independence Day observed
    assert pd.Timestamp("2015-12-25") not in out


def test_sessions_reach_back_before_default_calendar_start():
    out = sessions("1995-01-02", "1995-01-06")  # Jan 2 1995 was a holiday (New Year observed)
    assert list(out.strftime("%Y-%m-%d")) == [
        "1995-01-03",
        "1995-01-04",
        "1995-01-05",
        "1995-01-06",
    ]


def test_sessions_accepts_dates_and_timestamps_with_time():
    a = sessions(dt.date(2020, 3, 2), pd.Timestamp("2020-03-06 15:30"))
    assert len(a) == 5


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        ("2020-02-01", "2020-01-01", "after end"),
        ("1980-01-01", "1980-02-01", "outside calendar"),
        ("not a date", "2020-01-01", "not a valid date"),
    ],
)
def test_sessions_errors(start, end, match):
    with pytest.raises(ValueError, match=match):
        sessions(start, end)


def test_unknown_calendar_raises_value_error():
    with pytest.raises(ValueError, match="Unknown exchange calendar"):
        sessions("2020-01-01", "2020-02-01", calendar="NOPE")


def test_is_session():
    assert is_session("2015-07-02")
    assert not is_session("2015-07-03")  # holiday
    assert not is_session("2015-07-04")  # Saturday
    assert is_session(pd.Timestamp("2015-07-02 23:59"))


def test_validate_dates_reports_non_sessions_and_missing_sessions():
    report = validate_dates(["2015-01-02", "2015-01-03", "2015-01-06", "2015-01-06"])
    assert isinstance(report, CalendarReport)
    assert list(report.non_sessions.strftime("%Y-%m-%d")) == ["2015-01-03"]  # a Saturday
    assert list(report.missing_sessions.strftime("%Y-%m-%d")) == ["2015-01-05"]
    assert not report.ok


def test_validate_dates_ok_and_empty():
    assert validate_dates(sessions("2016-01-01", "2016-03-01")).ok
    empty = validate_dates([])
    assert empty.ok and len(empty.non_sessions) == 0


def test_month_partitions_clip_and_tile():
    parts = month_partitions("2020-01-15", "2020-03-02")
    assert parts == [
        (dt.date(2020, 1, 15), dt.date(2020, 1, 31)),
        (dt.date(2020, 2, 1), dt.date(2020, 2, 29)),  # leap year
        (dt.date(2020, 3, 1), dt.date(2020, 3, 2)),
    ]


def test_partitions_single_day_and_contiguity():
    assert month_partitions("2021-05-05", "2021-05-05") == [(dt.date(2021, 5, 5),) * 2]
    for parts in (
        month_partitions("2019-11-20", "2022-02-10"),
        year_partitions("2019-11-20", "2022-02-10"),
    ):
        assert parts[0][0] == dt.date(2019, 11, 20) and parts[-1][1] == dt.date(2022, 2, 10)
        for (_, prev_end), (nxt_start, _) in zip(parts, parts[1:], strict=False):
            assert nxt_start - prev_end == dt.timedelta(days=1)
        assert all(a <= b for a, b in parts)


def test_year_partitions():
    assert year_partitions("2019-05-01", "2021-02-01") == [
        (dt.date(2019, 5, 1), dt.date(2019, 12, 31)),
        (dt.date(2020, 1, 1), dt.date(2020, 12, 31)),
        (dt.date(2021, 1, 1), dt.date(2021, 2, 1)),
    ]
    with pytest.raises(ValueError, match="after end"):
        year_partitions("2021-01-01", "2020-01-01")


def test_session_closes_are_utc_and_know_early_closes_and_dst():
    from qsdk.quant.calendar import session_closes

    out = session_closes(["2012-07-03", "2012-07-05", "2012-12-03"])
    # July 3rd 2012 closed at 13:00 New York (EDT, UTC-4); December is EST (UTC-5)
    assert list(out) == [pd.Timestamp("2012-07-03 17:00", tz="UTC"), pd.Timestamp("2012-07-05 20:00", tz="UTC"),
                         pd.Timestamp("2012-12-03 21:00", tz="UTC")]
    with pytest.raises(ValueError, match="2012-07-04 is not a trading session of calendar XNYS"):
        session_closes(["2012-07-03", "2012-07-04"])
    assert len(session_closes([])) == 0


def test_sessions_before_counts_sessions_back_from_the_first_session():
    from qsdk.quant.calendar import sessions_before

    # 2015-01-03 is a Saturday: the first session on or after it is Monday 2015-01-05
    assert sessions_before("2015-01-03", 0) == pd.Timestamp("2015-01-05")
    assert sessions_before("2015-01-03", 2) == pd.Timestamp("2014-12-31")  # 01-02, then 12-31
    assert sessions_before("1990-01-10", 1000) == pd.Timestamp("1990-01-02")  # clamped
    with pytest.raises(ValueError, match="count"):
        sessions_before("2015-01-05", -1)


@pytest.fixture
def calendar_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cal.ENV_CACHE, str(tmp_path / "calendars"))
    cal.get_calendar.cache_clear()
    yield tmp_path / "calendars"
    cal.get_calendar.cache_clear()


def test_built_calendars_are_cached_on_disk_and_loaded_by_the_next_process(calendar_cache, monkeypatch):
    built = cal.get_calendar("XNYS")
    files = list(calendar_cache.glob("XNYS-*.pickle"))
    assert len(files) == 1 and oct(calendar_cache.stat().st_mode)[-3:] == "700"
    cal.get_calendar.cache_clear()  # as a new kernel: nothing in memory

    def no_build(*args, **kwargs):
        raise AssertionError("built again instead of loaded from the disk cache")

    monkeypatch.setattr(cal.xcals, "get_calendar", no_build)
    loaded = cal.get_calendar("XNYS")
    assert loaded is not built
    assert loaded.sessions.equals(built.sessions) and loaded.closes.equals(built.closes)


def test_a_corrupt_cache_file_is_rebuilt_and_off_disables_the_cache(calendar_cache, monkeypatch):
    cal.get_calendar("XNYS")
    (path,) = calendar_cache.glob("XNYS-*.pickle")
    path.write_bytes(b"not a pickle")
    cal.get_calendar.cache_clear()
    assert len(cal.sessions("2024-01-01", "2024-01-31")) == 21  # rebuilt
    assert path.read_bytes()[:1] == b"\x80"  # and the cache file rewritten
    monkeypatch.setenv(cal.ENV_CACHE, "off")
    cal.get_calendar.cache_clear()
    path.unlink()
    cal.get_calendar("XNYS")
    assert not path.exists()
