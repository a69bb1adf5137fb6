"""Exchange trading calendars and date partitions.

Sessions come from :mod:`exchange_calendars`. A *session* is a trading day, represented as a
tz-naive, midnight-normalized ``datetime64[ns]`` timestamp (the exchange-local date).

Calendars are built with an explicit early start (``1990-01-01``) because the
``exchange_calendars`` default only reaches back about 20 years. Building one takes about 0.15 s,
paid by every stage notebook (a fresh kernel each), so built calendars are cached in memory and
on disk (``$QSDK_CALENDAR_CACHE``, default ``~/.cache/qsdk/calendars``; ``off`` disables it),
keyed by everything that determines them: name, start, the library's default end (a year from
today), and the exchange_calendars and pandas versions.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import exchange_calendars as xcals
import numpy as np
import pandas as pd

CALENDAR_START = "1990-01-01"
ENV_CACHE = "QSDK_CALENDAR_CACHE"

DateLike: TypeAlias = str | dt.date | dt.datetime | pd.Timestamp


@functools.lru_cache(maxsize=16)
def get_calendar(name: str = "XNYS") -> xcals.ExchangeCalendar:
    """Return the (cached) ``exchange_calendars`` calendar ``name`` starting at 1990-01-01."""
    path = _cache_file(name)
    cached = _load_cached(path) if path is not None else None
    if cached is not None:
        return cached
    try:
        with warnings.catch_warnings():
            # exchange_calendars trips a pandas>=3.1 deprecation internally; not actionable here.
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
            built = xcals.get_calendar(name, start=CALENDAR_START)
    except xcals.errors.InvalidCalendarName as exc:
        raise ValueError(
            f"Unknown exchange calendar {name!r}; use an ISO MIC code such as 'XNYS' "
            f"(see exchange_calendars.get_calendar_names())."
        ) from exc
    if path is not None:
        _store(path, built)
    return built


def _cache_file(name: str) -> Path | None:
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qsdk", "calendars")
    if root.lower() in ("off", "0", "false", "none"):
        return None
    from exchange_calendars.exchange_calendar import GLOBAL_DEFAULT_END

    key = f"{name}-{CALENDAR_START}-{GLOBAL_DEFAULT_END.date()}-xcals{xcals.__version__}-pandas{pd.__version__}"
    return Path(root) / f"{key}.pickle"


def _load_cached(path: Path) -> xcals.ExchangeCalendar | None:
    """The calendar pickled at ``path``, if it is ours (this user's file) and intact."""
    try:
        if path.stat().st_uid != os.getuid():
            return None
        with path.open("rb") as fh:
            cal = pickle.load(fh)
    except Exception:  # missing, unreadable, truncated, from another version: build instead
        return None
    return cal if isinstance(cal, xcals.ExchangeCalendar) else None


def _store(path: Path, cal: xcals.ExchangeCalendar) -> None:
    """Write atomically (parallel kernels may build at once); drop this calendar's stale files."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(cal, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        for old in path.parent.glob(f"{cal.name}-*.pickle"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home: the calendar is still cached in memory


def _to_day(value: DateLike, *, what: str) -> pd.Timestamp:
    """Parse ``value`` into a tz-naive midnight ``pd.Timestamp`` (ns); raise ValueError if invalid."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}={value!r} is not a valid date; pass e.g. '2020-01-31'.") from exc
    if ts is pd.NaT:
        raise ValueError(f"{what} is missing (NaT); pass a concrete date such as '2020-01-31'.")
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts.normalize().as_unit("ns")


def _check_bounds(cal: xcals.ExchangeCalendar, first: pd.Timestamp, last: pd.Timestamp) -> None:
    lo, hi = cal.first_session, cal.last_session
    if first < lo or last > hi:
        raise ValueError(
            f"Dates {first.date()}..{last.date()} fall outside calendar {cal.name} bounds "
            f"{lo.date()}..{hi.date()}; restrict the date range to those bounds."
        )


def sessions(start: DateLike, end: DateLike, *, calendar: str = "XNYS") -> pd.DatetimeIndex:
    """Trading sessions in ``[start, end]`` (both inclusive) as tz-naive ``datetime64[ns]`` dates.

    Raises ValueError if ``start > end`` or the range leaves the calendar's bounds.
    """
    first, last = _to_day(start, what="start"), _to_day(end, what="end")
    if first > last:
        raise ValueError(f"start ({first.date()}) is after end ({last.date()}); swap them.")
    cal = get_calendar(calendar)
    _check_bounds(cal, first, last)
    out = cal.sessions_in_range(first, last)
    if out.tz is not None:
        out = out.tz_localize(None)
    # Rebuild from raw values to drop the calendar's custom business-day ``freq``.
    return pd.DatetimeIndex(out.as_unit("ns").to_numpy())


def is_session(date: DateLike, *, calendar: str = "XNYS") -> bool:
    """True if ``date`` (time of day ignored) is a trading session of ``calendar``."""
    day = _to_day(date, what="date")
    cal = get_calendar(calendar)
    _check_bounds(cal, day, day)
    return bool(cal.is_session(day))


@dataclass(frozen=True)
class CalendarReport:
    """Result of :func:`validate_dates`.

    ``non_sessions``: distinct given dates that are not trading sessions (weekends, holidays).
    ``missing_sessions``: sessions between the min and max given date that are absent.
    """

    non_sessions: pd.DatetimeIndex
    missing_sessions: pd.DatetimeIndex

    @property
    def ok(self) -> bool:
        """True when there are neither non-sessions nor missing sessions."""
        return len(self.non_sessions) == 0 and len(self.missing_sessions) == 0


def validate_dates(dates: Iterable[DateLike], *, calendar: str = "XNYS") -> CalendarReport:
    """Compare ``dates`` with the calendar's sessions (duplicates and time of day are ignored)."""
    series = _as_series(dates)
    if series.isna().any():
        raise ValueError("dates contains missing values (NaT); drop them before validating.")
    _, uniques = pd.factorize(series, sort=False)  # parse each distinct value once
    days = pd.DatetimeIndex(_normalized(uniques).unique()).sort_values().as_unit("ns")
    if len(days) == 0:
        empty = pd.DatetimeIndex([], dtype="datetime64[ns]")
        return CalendarReport(non_sessions=empty, missing_sessions=empty)
    expected = sessions(days[0], days[-1], calendar=calendar)
    return CalendarReport(
        non_sessions=pd.DatetimeIndex(days.difference(expected).to_numpy()),
        missing_sessions=pd.DatetimeIndex(expected.difference(days).to_numpy()),
    )


def _partitions(start: DateLike, end: DateLike, *, freq: str) -> list[tuple[dt.date, dt.date]]:
    first, last = _to_day(start, what="start"), _to_day(end, what="end")
    if first > last:
        raise ValueError(f"start ({first.date()}) is after end ({last.date()}); swap them.")
    period_starts = pd.period_range(first, last, freq=freq)
    out = []
    for period in period_starts:
        lo = max(period.start_time.normalize(), first)
        hi = min(period.end_time.normalize(), last)
        out.append((lo.date(), hi.date()))
    return out


def month_partitions(start: DateLike, end: DateLike) -> list[tuple[dt.date, dt.date]]:
    """Calendar months tiling ``[start, end]`` inclusively, first/last clipped to the range.

    Example: ``month_partitions("2020-01-15", "2020-03-02")`` ->
    ``[(2020-01-15, 2020-01-31), (2020-02-01, 2020-02-29), (2020-03-01, 2020-03-02)]``.
    """
    return _partitions(start, end, freq="M")


def year_partitions(start: DateLike, end: DateLike) -> list[tuple[dt.date, dt.date]]:
    """Calendar years tiling ``[start, end]`` inclusively, first/last clipped to the range."""
    return _partitions(start, end, freq="Y")


def session_closes(dates: Iterable[DateLike], *, calendar: str = "XNYS") -> pd.DatetimeIndex:
    """The close of each session in ``dates`` as UTC timestamps (early closes included).

    This is qsdk's event time of a daily bar, and the time a value computed from that bar
    becomes known. Raises ValueError naming the first date that is not a session. Vectorized:
    each distinct date is looked up once, so a column of a million rows is cheap.
    """
    codes, uniques = pd.factorize(_as_series(dates), sort=False)
    if (codes < 0).any():
        raise ValueError("dates contains missing values; drop them first.")
    if len(uniques) == 0:
        return pd.DatetimeIndex([], dtype="datetime64[ns, UTC]")
    days = _normalized(uniques)
    cal = get_calendar(calendar)
    _check_bounds(cal, days.min(), days.max())
    closes = cal.closes
    if closes.index.tz is not None:
        closes = closes.tz_localize(None)
    found = pd.DatetimeIndex(closes.reindex(days).to_numpy())
    if found.hasnans:
        bad = days[found.isna()][0]
        raise ValueError(f"{bad.date()} is not a trading session of calendar {calendar}.")
    found = found.tz_localize("UTC") if found.tz is None else found.tz_convert("UTC")
    return found.take(codes)


def _as_series(dates: Iterable[DateLike]) -> pd.Series:
    if isinstance(dates, pd.Series):
        return dates
    if isinstance(dates, pd.Index | np.ndarray):
        return pd.Series(dates)
    return pd.Series(list(dates), dtype="object")


def _normalized(values: Iterable[DateLike]) -> pd.DatetimeIndex:
    """Distinct-or-not dates as tz-naive midnight ``datetime64[ns]``."""
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Index(values), errors="raise"))
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return idx.normalize().as_unit("ns")


def sessions_before(date: DateLike, count: int, *, calendar: str = "XNYS") -> pd.Timestamp:
    """The session ``count`` sessions before the first session on or after ``date``.

    A stage that computes rolling features over ``[start, end]`` reads its input from
    ``sessions_before(start, lookback)``. Clamped to the calendar's first session.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    day = _to_day(date, what="date")
    cal = get_calendar(calendar)
    _check_bounds(cal, day, day)
    first = cal.date_to_session(day, direction="next")
    position = max(0, cal.sessions.get_loc(first) - count)
    out = cal.sessions[position]
    return (out.tz_localize(None) if out.tz is not None else out).as_unit("ns")
