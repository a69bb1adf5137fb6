import numpy as np
import pandas as pd
import pytest

from qsdk.quant.pit import point_in_time_join

T = pd.Timestamp


def _features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": ["A", "A", "A", "B"],
            "event_time": [T("2020-03-31"), T("2020-03-31"), T("2020-06-30"), T("2020-03-31")],
            "known_time": [T("2020-04-20"), T("2020-08-01"), T("2020-07-20"), T("2020-04-10")],
            "eps": [1.0, 1.5, 2.0, 9.0],
        }
    )


def _join_one(symbol: str, ts: str, **kwargs) -> float:
    q = pd.DataFrame({"symbol": [symbol], "timestamp": [T(ts)]})
    return point_in_time_join(q, _features(), **kwargs)["eps"].iloc[0]


def test_restatement_first_value_then_revision():
    # Q1 (event 03-31) first known 04-20 as 1.0, restated 08-01 as 1.5; Q2 (06-30) known 07-20.
    assert np.isnan(_join_one("A", "2020-04-19"))  # nothing known yet
    assert _join_one("A", "2020-04-20") == 1.0  # known_time <= t is inclusive
    assert _join_one("A", "2020-05-01") == 1.0
    assert _join_one("A", "2020-07-25") == 2.0  # Q2 published: newest event wins
    # The Q1 restatement (08-01) is the most recently *known* row, but Q2 has the later
    # event_time, so Q2 is still returned. A merge_asof on max(event, known) would give 1.5.
    assert _join_one("A", "2020-08-02") == 2.0


def test_restatement_between_and_after_revision_when_it_is_the_latest_event():
    feats = pd.DataFrame(
        {
            "symbol": ["A", "A"],
            "event_time": [T("2020-03-31"), T("2020-03-31")],
            "known_time": [T("2020-04-20"), T("2020-05-20")],  # K1 < K2
            "eps": [1.0, 1.5],
        }
    )
    q = pd.DataFrame({"symbol": "A", "timestamp": [T("2020-05-01"), T("2020-06-01")]})
    assert point_in_time_join(q, feats)["eps"].tolist() == [1.0, 1.5]


def test_late_published_value_is_not_returned_before_it_is_known():
    feats = pd.DataFrame(
        {
            "symbol": ["A", "A"],
            "event_time": [T("2020-01-01"), T("2020-02-01")],
            "known_time": [T("2020-01-02"), T("2020-03-15")],  # Feb value published late
            "x": [10.0, 20.0],
        }
    )
    q = pd.DataFrame({"symbol": "A", "timestamp": [T("2020-02-10"), T("2020-03-15")]})
    # 02-10: Feb event happened but is unknown -> Jan value; 03-15: Feb value now known.
    assert point_in_time_join(q, feats)["x"].tolist() == [10.0, 20.0]


def test_future_event_time_known_early_is_not_returned():
    # A forecast row "known" before its event_time must not be used before the event happens.
    feats = pd.DataFrame(
        {
            "symbol": ["A"],
            "event_time": [T("2020-06-30")],
            "known_time": [T("2020-01-01")],
            "x": [1.0],
        }
    )
    q = pd.DataFrame({"symbol": "A", "timestamp": [T("2020-03-01"), T("2020-06-30")]})
    out = point_in_time_join(q, feats)["x"].tolist()
    assert np.isnan(out[0]) and out[1] == 1.0


def test_ttl_expires_stale_values():
    ttl = pd.Timedelta(days=60)
    # 05-01: Q1 (03-31) is 31 days old -> kept; 07-10: Q2 unknown, Q1 is 101 days old -> expired
    assert _join_one("A", "2020-05-01", ttl=ttl) == 1.0
    assert np.isnan(_join_one("A", "2020-07-10", ttl=ttl))
    assert _join_one("A", "2020-07-25", ttl=ttl) == 2.0  # Q2 (06-30) is 25 days old


def test_ties_on_event_time_take_latest_known_then_last_row():
    feats = pd.DataFrame(
        {
            "symbol": ["A", "A", "A"],
            "event_time": [T("2020-01-01")] * 3,
            "known_time": [T("2020-01-05"), T("2020-01-03"), T("2020-01-05")],
            "x": [1.0, 2.0, 3.0],
        }
    )
    q = pd.DataFrame({"symbol": "A", "timestamp": [T("2020-01-04"), T("2020-01-06")]})
    assert point_in_time_join(q, feats)["x"].tolist() == [2.0, 3.0]


def test_keeps_entity_rows_order_index_and_columns():
    q = pd.DataFrame(
        {
            "symbol": ["B", "A", "C", "A", "A"],
            "timestamp": [
                T("2020-05-01"),
                T("2020-08-02"),
                T("2020-05-01"),
                pd.NaT,
                T("2020-05-01"),
            ],
            "label": [1, 2, 3, 4, 5],
        },
        index=[50, 40, 30, 20, 10],
    )
    out = point_in_time_join(q, _features())
    assert list(out.columns) == ["symbol", "timestamp", "label", "eps"]
    assert out.index.tolist() == [50, 40, 30, 20, 10]
    pd.testing.assert_frame_equal(out[["symbol", "timestamp", "label"]], q)
    # C has no features; NaT timestamp matches nothing
    np.testing.assert_array_equal(out["eps"].to_numpy(), [9.0, 2.0, np.nan, np.nan, 1.0])


def test_custom_column_names_and_feature_subset_and_object_values():
    feats = pd.DataFrame(
        {
            "ticker": ["A", "A"],
            "period_end": [T("2020-01-01"), T("2020-02-01")],
            "filed": [T("2020-01-10"), T("2020-02-10")],
            "rating": ["buy", "sell"],
            "ignored": [1, 2],
        }
    )
    q = pd.DataFrame(
        {"ticker": ["A", "A", "A"], "asof": [T("2020-01-05"), T("2020-01-15"), T("2020-03-01")]}
    )
    out = point_in_time_join(
        q,
        feats,
        entity="ticker",
        timestamp="asof",
        event_time="period_end",
        known_time="filed",
        features=["rating"],
    )
    assert list(out.columns) == ["ticker", "asof", "rating"]
    assert pd.isna(out["rating"].iloc[0])
    assert out["rating"].iloc[1:].tolist() == ["buy", "sell"]


def test_all_matched_keeps_integer_dtype():
    feats = pd.DataFrame(
        {
            "symbol": ["A"],
            "event_time": [T("2020-01-01")],
            "known_time": [T("2020-01-01")],
            "n": [7],
        }
    )
    out = point_in_time_join(pd.DataFrame({"symbol": ["A"], "timestamp": [T("2020-02-01")]}), feats)
    assert out["n"].dtype == "int64" and out["n"].iloc[0] == 7


def test_empty_inputs():
    empty_q = pd.DataFrame(
        {"symbol": pd.Series([], dtype=object), "timestamp": pd.Series([], dtype="datetime64[ns]")}
    )
    assert list(point_in_time_join(empty_q, _features()).columns) == ["symbol", "timestamp", "eps"]
    q = pd.DataFrame({"symbol": ["A"], "timestamp": [T("2020-05-01")]})
    out = point_in_time_join(q, _features().iloc[:0])
    assert out["eps"].isna().all()


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (lambda f: f.assign(known_time=[pd.NaT, *f["known_time"][1:]]), {}, "missing values"),
        (lambda f: f.drop(columns="known_time"), {}, "missing columns"),
        (lambda f: f, {"features": ["nope"]}, "missing columns"),
        (lambda f: f.rename(columns={"eps": "timestamp"}), {}, "already exist"),
        (lambda f: f, {"ttl": pd.Timedelta(days=-1)}, "ttl"),
        (lambda f: f.assign(event_time=f["event_time"].dt.tz_localize("UTC")), {}, "tz-naive"),
    ],
)
def test_errors(mutate, kwargs, match):
    q = pd.DataFrame({"symbol": ["A"], "timestamp": [T("2020-05-01")]})
    with pytest.raises(ValueError, match=match):
        point_in_time_join(q, mutate(_features()), **kwargs)


def _brute_force(q: pd.DataFrame, f: pd.DataFrame, ttl: pd.Timedelta | None) -> list[float]:
    out = []
    for sym, ts in zip(q["symbol"], q["timestamp"], strict=True):
        ok = f[(f["symbol"] == sym) & (f["event_time"] <= ts) & (f["known_time"] <= ts)]
        if ttl is not None:
            ok = ok[ok["event_time"] >= ts - ttl]
        if ok.empty:
            out.append(np.nan)
            continue
        ok = ok.assign(_row=np.arange(len(ok)))
        best = ok.sort_values(["event_time", "known_time", "_row"]).iloc[-1]
        out.append(best["x"])
    return out


@pytest.mark.parametrize("ttl", [None, pd.Timedelta(days=5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_restatements(seed, ttl):
    rng = np.random.default_rng(seed)
    n = 300
    base = T("2020-01-01")
    event = base + pd.to_timedelta(rng.integers(0, 40, n), unit="D")
    # publication delays 0..20 days, so known_time is far from monotone in event_time
    known = event + pd.to_timedelta(rng.integers(0, 20, n), unit="D")
    f = pd.DataFrame(
        {
            "symbol": rng.choice(["A", "B", "C"], n),
            "event_time": event,
            "known_time": known,
            "x": rng.normal(size=n).round(6),
        }
    )
    q = pd.DataFrame(
        {
            "symbol": rng.choice(["A", "B", "C", "D"], 200),
            "timestamp": base + pd.to_timedelta(rng.integers(-2, 70, 200), unit="D"),
        }
    )
    got = point_in_time_join(q, f, ttl=ttl)["x"].to_numpy()
    np.testing.assert_array_equal(got, _brute_force(q, f, ttl))


def test_tz_aware_times_are_compared_as_instants():
    ny = "America/New_York"
    feats = pd.DataFrame(
        {
            "symbol": ["A", "A"],
            "event_time": pd.to_datetime(["2020-01-01 10:00", "2020-01-02 10:00"]).tz_localize(ny),
            "known_time": pd.to_datetime(["2020-01-01 16:00", "2020-01-02 16:00"]).tz_localize(ny),
            "x": [1.0, 2.0],
        }
    )
    utc = pd.to_datetime(["2020-01-02 20:59", "2020-01-02 21:00", "2020-01-01 21:00"])
    q = pd.DataFrame({"symbol": "A", "timestamp": utc.tz_localize("UTC")})
    # 20:59 UTC = 15:59 New York: the Jan 2 row is not known yet (16:00) -> Jan 1 value
    np.testing.assert_array_equal(point_in_time_join(q, feats)["x"], [1.0, 2.0, 1.0])
    # with a 1-day ttl the Jan 1 10:00 NY (15:00 UTC) value has expired by Jan 2 20:59 UTC
    out = point_in_time_join(q, feats, ttl="1D")["x"].to_numpy()
    np.testing.assert_array_equal(out, [np.nan, 2.0, 1.0])
