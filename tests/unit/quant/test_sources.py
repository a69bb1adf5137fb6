"""Packaged sources: what they cover, and the clear error for a range they do not."""

from __future__ import annotations

import datetime as dt

import pytest

from qsdk.quant import sources


def test_bokeh_coverage_is_the_packaged_history():
    first, last = sources.coverage("bokeh")
    bars = sources.load("bokeh", start=first.isoformat(), end=last.isoformat())
    assert (first, last) == (bars["date"].min().date(), bars["date"].max().date())
    assert first.year == 2000 and last.year == 2013  # the Quandl WIKI sample the README describes
    assert sources.load("bokeh", start=(last + dt.timedelta(days=1)).isoformat(), end="2013-12-31").empty


def test_require_bars_names_the_dates_a_source_covers():
    first, last = sources.coverage("bokeh")
    after = (last + dt.timedelta(days=4)).isoformat()
    with pytest.raises(ValueError) as info:
        sources.require_bars(sources.load("bokeh", start=after, end=after), source="bokeh", start=after, end=after)
    assert str(info.value) == (f"source 'bokeh' has no bars between {after} and {after}: it covers {first} to "
                               f"{last}; pick dates inside that range")
    with pytest.raises(ValueError, match="it covers every session from 2000-01-03"):
        sources.require_bars(sources.load("synthetic", start="1999-06-01", end="1999-06-30"), source="synthetic",
                             start="1999-06-01", end="1999-06-30")
    sources.require_bars(sources.load("bokeh", start="2005-01-03", end="2005-01-03"), source="bokeh",
                         start="2005-01-03", end="2005-01-03")  # bars: no error
