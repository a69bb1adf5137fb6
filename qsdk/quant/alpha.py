"""Alpha signals from features: cross-sectional z-scores, fixed-weight composites, and weights
learnt point in time from the features' past information coefficients.

Frames are *long*: one row per (``date``, ``symbol``). A score at ``date`` uses only feature
values known at the close of ``date``; learnt weights use only labels whose ``known_time`` is at
or before the decision time (see :func:`point_in_time_ic_weights`): that rule is what keeps a
learnt alpha free of look-ahead, and the null-data tests check it end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from qsdk.quant.features import trailing_windows
from qsdk.quant.metrics import information_coefficient


def cross_sectional_zscore(
    df: pd.DataFrame, columns: Sequence[str], *, by: str = "date", clip: float | None = 3.0
) -> pd.DataFrame:
    """Per-``by`` z-score ``(x - mean) / std`` (ddof=1) of each column, clipped to ``±clip``.

    NaN stays NaN (and does not enter the mean or std); a cross-section with fewer than two
    values or zero dispersion gives NaN. Returns a frame with ``columns`` on ``df``'s index.
    """
    missing = [c for c in (by, *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"df is missing columns {missing}; expected {by!r} and the feature columns.")
    values = df[list(columns)].astype("float64")
    groups = values.groupby(df[by], sort=False)
    std = groups.transform("std")
    z = (values - groups.transform("mean")) / std.where(std > 0)
    return z.clip(-clip, clip) if clip is not None else z


def combine(z: pd.DataFrame, weights: Mapping[str, float] | pd.DataFrame) -> pd.Series:
    """Weighted average of feature z-scores: ``sum_f w_f z_f / sum_f |w_f|``.

    ``weights``: fixed ``{feature: weight}``, or a frame aligned to ``z`` (one weight per row
    and feature, e.g. from :func:`point_in_time_ic_weights`). A missing z-score counts as 0
    (neutral); features with a missing weight are left out; a row with no usable feature
    (every z-score missing or every weight missing or 0) is NaN. Returns a Series named ``score``.
    """
    if isinstance(weights, Mapping):
        unknown = [f for f in weights if f not in z.columns]
        if unknown:
            raise ValueError(f"weights name features {unknown} that are not columns of z ({list(z.columns)}).")
        w = pd.DataFrame({f: float(v) for f, v in weights.items()}, index=z.index)
    else:
        w = weights.reindex(index=z.index)
    features = list(w.columns)
    zf = z[features].astype("float64")
    wf = w[features].astype("float64")
    used = wf.notna() & zf.notna()
    numerator = (zf.fillna(0.0) * wf.fillna(0.0)).sum(axis=1)
    denominator = wf.abs().where(wf.notna(), 0.0).sum(axis=1)
    score = numerator / denominator.where(denominator > 0)
    return score.where(used.any(axis=1)).rename("score")


def feature_ics(
    df: pd.DataFrame, features: Sequence[str], *, label: str = "forward_return",
    method: str = "spearman",
) -> pd.DataFrame:
    """Per-date IC of each feature against ``label`` (:func:`metrics.information_coefficient`).

    Returns a frame indexed by signal date with one column per feature (NaN where a date has
    too few names with both values).
    """
    out = {}
    for feature in features:
        frame = df[["date", "symbol", feature, label]].rename(columns={feature: "factor", label: "forward_return"})
        out[feature] = information_coefficient(frame, method=method)  # type: ignore[arg-type]
    ics = pd.DataFrame(out)
    ics.index.name = "date"
    return ics.sort_index()


def _trailing_mean(frame: pd.DataFrame, *, window: int, min_periods: int) -> pd.DataFrame:
    """``frame.rolling(window, min_periods).mean()``, each window summed on its own (see
    :func:`qsdk.quant.features.trailing_windows`: the result does not depend on the first row)."""
    out = {}
    for column in frame.columns:
        windows = trailing_windows(frame[column].to_numpy(dtype="float64"), window)
        count = (~np.isnan(windows)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[column] = np.where(count >= min_periods, np.nansum(windows, axis=1) / count, np.nan)
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def point_in_time_ic_weights(
    ics: pd.DataFrame,
    available_at: pd.Series,
    decision_times: pd.Series,
    *,
    window: int = 252,
    min_periods: int = 20,
) -> pd.DataFrame:
    """Feature weights for each decision: the mean IC over the last ``window`` signal dates
    whose labels were all known at the decision time.

    ``ics``: per signal date (index, sorted) and feature (columns), e.g. :func:`feature_ics`.
    ``available_at``: per signal date, when its last label became known (the labels'
    ``known_time``). ``decision_times``: per decision date (index), the time the weights are
    used (the session close). A signal date's rolling mean is usable from the time all labels
    up to that date are known (the running maximum of ``available_at``), so a weight never
    contains a return realised after its decision time. NaN until ``min_periods`` ICs are known.
    Returns a frame indexed like ``decision_times`` with one column per feature.
    """
    if window < 1 or min_periods < 1:
        raise ValueError(f"window and min_periods must be >= 1, got {window} and {min_periods}.")
    ics = ics.sort_index()
    rolling = _trailing_mean(ics, window=window, min_periods=min(min_periods, window))
    usable_from = pd.to_datetime(available_at.reindex(ics.index)).cummax()
    table = rolling.assign(_available=usable_from.to_numpy()).dropna(subset=["_available"])
    table = table.sort_values("_available", kind="mergesort")
    table = table.drop_duplicates("_available", keep="last")  # same time: the latest signal date wins
    query = pd.DataFrame({"_time": pd.to_datetime(decision_times).to_numpy(),
                          "_pos": np.arange(len(decision_times))}).sort_values("_time", kind="mergesort")
    if len(table) == 0:
        return pd.DataFrame(np.nan, index=decision_times.index, columns=ics.columns)
    query["_time"] = query["_time"].astype(table["_available"].dtype)
    matched = pd.merge_asof(query, table, left_on="_time", right_on="_available", direction="backward")
    weights = matched.sort_values("_pos")[list(ics.columns)]
    weights.index = decision_times.index
    return weights
