"""Point-in-time (as-of) joins that respect both event time and knowledge time.

A feature row says "the value of ``features`` for ``entity`` as of ``event_time``, first known
(published / ingested) at ``known_time``". Restatements are separate rows with the same
``event_time`` and a later ``known_time``.

Rule, for a query ``(entity, t)``: among the feature rows of that entity with
``event_time <= t`` **and** ``known_time <= t``, return the one with the largest ``event_time``;
ties on ``event_time`` go to the largest ``known_time`` (the latest revision known at ``t``);
remaining exact ties go to the row that comes last in ``feature_df``. With ``ttl``, the chosen row
must also satisfy ``event_time >= t - ttl``, otherwise the result is missing. A value is never
taken from a row that was unknown at ``t`` (no look-ahead).

Note that a plain ``merge_asof`` on ``available_at = max(event_time, known_time)`` selects the
same *eligible set* but the wrong row when ``known_time`` is not monotone in ``event_time``
(e.g. an old period restated after a newer period was published). Here the eligible prefix
(sorted by ``available_at``) is reduced with a running arg-max of the ``(event_time, known_time)``
priority, then ``merge_asof`` picks the prefix end for each query; everything is vectorized.
This extends Feast's point-in-time join (latest ``event_timestamp <= t`` within ``ttl``, the
created timestamp breaking ties) by also requiring ``known_time <= t``.

Times may be tz-naive or tz-aware (not mixed); tz-aware times are compared as UTC instants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _require(df: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} is missing columns {missing}; pass the right column names via the "
            f"entity/timestamp/event_time/known_time arguments."
        )


def _as_times(values: pd.Series, *, what: str, allow_nat: bool) -> pd.Series:
    """Convert to datetime64[ns] (tz-aware values are converted to UTC); validate NaT."""
    try:
        out = pd.to_datetime(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Column {what} could not be parsed as datetimes: {exc}") from exc
    if out.dt.tz is not None:
        out = out.dt.tz_convert("UTC")
    if not allow_nat and out.isna().any():
        raise ValueError(
            f"Column {what} has {int(out.isna().sum())} missing values (NaT); drop those rows or "
            f"fill them (e.g. known_time = event_time if the value was known immediately)."
        )
    return out.dt.as_unit("ns")


def _check_same_tz(a: pd.Series, b: pd.Series, c: pd.Series) -> None:
    kinds = {s.dt.tz is None for s in (a, b, c)}
    if len(kinds) > 1:
        raise ValueError(
            "Mixing tz-naive and tz-aware timestamps; make timestamp, event_time and known_time "
            "all tz-naive or all tz-aware."
        )


def _resolve_features(
    entity_df: pd.DataFrame,
    feature_df: pd.DataFrame,
    keys: Sequence[str],
    features: Sequence[str] | None,
) -> list[str]:
    if features is None:
        features = [c for c in feature_df.columns if c not in keys]
    features = list(features)
    if not features:
        raise ValueError("No feature columns to join; feature_df has only key columns.")
    _require(feature_df, "feature_df", features)
    clash = [c for c in features if c in entity_df.columns]
    if clash:
        raise ValueError(
            f"Feature columns {clash} already exist in entity_df; rename or drop them first."
        )
    return features


def _best_rows_table(codes: np.ndarray, event: pd.Series, known: pd.Series) -> pd.DataFrame:
    """One row per (entity code, available_at): the best feature row known by that time.

    Best = max (event_time, known_time, row position) among rows with available_at <= that time.
    """
    n = len(codes)
    event_ns = event.to_numpy(dtype="datetime64[ns]").view("int64")
    known_ns = known.to_numpy(dtype="datetime64[ns]").view("int64")
    rows = np.arange(n)
    by_priority = np.lexsort((rows, known_ns, event_ns))  # by_priority[p] = row with priority p
    priority = np.empty(n, dtype=np.int64)
    priority[by_priority] = np.arange(n)
    available = np.maximum(event_ns, known_ns)

    order = np.lexsort((priority, available, codes))
    table = pd.DataFrame(
        {"_code": codes[order], "_available": available[order], "_priority": priority[order]}
    )
    best_priority = table.groupby("_code", sort=False)["_priority"].cummax().to_numpy()
    table["_row"] = by_priority[best_priority]
    table = table.drop_duplicates(["_code", "_available"], keep="last")
    table["_available"] = table["_available"].to_numpy().view("datetime64[ns]")
    # merge_asof needs the right frame globally sorted on the "on" key.
    return table[["_code", "_available", "_row"]].sort_values("_available", kind="mergesort")


def point_in_time_join(
    entity_df: pd.DataFrame,
    feature_df: pd.DataFrame,
    *,
    entity: str = "symbol",
    timestamp: str = "timestamp",
    event_time: str = "event_time",
    known_time: str = "known_time",
    ttl: pd.Timedelta | str | None = None,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Attach to each ``(entity, timestamp)`` row the latest feature values known at ``timestamp``.

    See the module docstring for the exact selection rule. Returns a copy of ``entity_df`` (same
    index, row order and columns) with the feature columns appended; rows without a qualifying
    feature row (or whose ``timestamp``/``entity`` is missing) get NaN/None. ``features`` defaults
    to every ``feature_df`` column except ``entity``, ``event_time`` and ``known_time``.
    """
    _require(entity_df, "entity_df", [entity, timestamp])
    _require(feature_df, "feature_df", [entity, event_time, known_time])
    features = _resolve_features(entity_df, feature_df, [entity, event_time, known_time], features)
    if ttl is not None:
        try:
            ttl = pd.Timedelta(ttl)
        except ValueError as exc:
            raise ValueError(
                f"ttl={ttl!r} is not a duration; pass e.g. pd.Timedelta(days=5)."
            ) from exc
        if ttl is pd.NaT or ttl < pd.Timedelta(0):
            raise ValueError(f"ttl must be a non-negative pd.Timedelta or None, got {ttl!r}.")

    query_ts = _as_times(entity_df[timestamp], what=timestamp, allow_nat=True)
    event = _as_times(feature_df[event_time], what=event_time, allow_nat=False)
    known = _as_times(feature_df[known_time], what=known_time, allow_nat=False)
    _check_same_tz(query_ts, event, known)

    codes, _ = pd.factorize(
        pd.concat([entity_df[entity], feature_df[entity]], ignore_index=True), use_na_sentinel=True
    )
    query_codes, feature_codes = codes[: len(entity_df)], codes[len(entity_df) :]
    best = _best_rows_table(
        feature_codes, event.reset_index(drop=True), known.reset_index(drop=True)
    )

    ts_naive = query_ts.dt.tz_localize(None) if query_ts.dt.tz is not None else query_ts
    query = pd.DataFrame(
        {"_code": query_codes, "_ts": ts_naive.to_numpy(), "_pos": np.arange(len(entity_df))}
    )
    query = query[(query["_code"] >= 0) & query["_ts"].notna()].sort_values("_ts", kind="mergesort")
    matched = pd.merge_asof(
        query, best, left_on="_ts", right_on="_available", by="_code", direction="backward"
    )
    row = np.full(len(entity_df), -1, dtype=np.int64)
    hit = matched["_row"].notna().to_numpy()
    pos, found = matched["_pos"].to_numpy()[hit], matched["_row"].to_numpy()[hit].astype(np.int64)
    if ttl is not None:
        event_naive = event.dt.tz_localize(None) if event.dt.tz is not None else event
        fresh = (
            event_naive.to_numpy()[found] >= matched["_ts"].to_numpy()[hit] - pd.Timedelta(ttl).to_timedelta64()
        )
        pos, found = pos[fresh], found[fresh]
    row[pos] = found

    values = feature_df[features].reset_index(drop=True).reindex(row)
    values.index = entity_df.index
    out = entity_df.copy()
    for name in features:
        out[name] = values[name]
    return out
