"""Feature views: named feature columns of a lakehouse table, with the two times a
point-in-time join needs.

Declared under ``features:`` in ``pipelines/*.yaml`` and validated when the registry loads::

    features:
      momentum:
        table: gold.features_momentum   # a declared table (written by some stage)
        entity: symbol                  # join key (default: symbol)
        event_time: event_time          # the time the value is "as of" (default: event_time)
        known_time: known_time          # the time it became known (default: known_time)
        ttl: 10d                        # optional: a value older than this counts as missing
        features: [mom_21, mom_63]

``DataLoader.training_set(entity_df, ["momentum", "risk:vol_21"])`` joins them point in time
(:func:`qsdk.quant.pit.point_in_time_join`): for each ``(symbol, timestamp)`` the latest row
with ``event_time <= timestamp`` and ``known_time <= timestamp`` (within ``ttl``), never a
later one. A reference is ``view`` (all its features) or ``view:feature``.

Time convention of this project's daily views: ``event_time`` is the session close of the
bar's date (UTC, early closes included) and ``known_time`` the time the value was known: the
same close for values computed from closing prices, a vendor's publication time otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from qsdk.errors import RegistryError
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.featureviews import FeatureView, format_ttl, parse_ttl, resolve

__all__ = ["FeatureView", "describe", "format_ttl", "parse_ttl", "parse_view", "resolve"]

_VIEW_KEYS = {"table", "entity", "event_time", "known_time", "ttl", "features", "description"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NUMERIC = {"float64", "float32", "int64", "int32"}


def parse_view(name: str, spec: Any, origin: str, tables: Mapping[str, TableSpec]) -> FeatureView:
    """One ``features:`` entry, checked against the table contracts."""
    where = f"{origin}: feature view {name!r}"
    if not _NAME.match(str(name)):
        raise RegistryError(f"{where}: use lower-case letters, digits and '_' for a feature view name")
    if not isinstance(spec, Mapping):
        raise RegistryError(f"{where}: expected a mapping with table: and features:")
    unknown = set(spec) - _VIEW_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_VIEW_KEYS)}")
    table = spec.get("table")
    if not isinstance(table, str) or table not in tables:
        raise RegistryError(
            f"{where}: table {table!r} is not declared under tables:; known: {', '.join(sorted(tables))}"
        )
    contract = tables[table]
    features = spec.get("features")
    if isinstance(features, str) or not isinstance(features, Sequence) or not features:
        raise RegistryError(f"{where}: features: must be a non-empty list of column names of {table}")
    view = FeatureView(
        name=str(name),
        table=str(table),
        features=tuple(str(f) for f in features),
        entity=str(spec.get("entity", "symbol")),
        event_time=str(spec.get("event_time", "event_time")),
        known_time=str(spec.get("known_time", "known_time")),
        ttl=parse_ttl(spec.get("ttl"), where=where),
        description=str(spec.get("description") or ""),
    )
    expected = {view.entity: {"string"}, view.event_time: {"timestamp"}, view.known_time: {"timestamp"},
                **{f: _NUMERIC for f in view.features}}
    for column, types in expected.items():
        actual = contract.columns.get(column)
        if actual is None:
            raise RegistryError(
                f"{where}: column {column!r} is not in table {table} (columns: {', '.join(contract.columns)})"
            )
        if actual not in types:
            raise RegistryError(
                f"{where}: column {column!r} of {table} is {actual}; it must be {' or '.join(sorted(types))}"
            )
    if len(set(view.features)) != len(view.features):
        raise RegistryError(f"{where}: features: lists a column twice")
    if set(view.features) & {view.entity, view.event_time, view.known_time}:
        raise RegistryError(f"{where}: features: must not list the entity or time columns")
    return view


def describe(views: Mapping[str, FeatureView]) -> list[dict[str, Any]]:
    """Rows for ``qsdk features``: one per view, sorted by name."""
    return [views[name].to_dict() for name in sorted(views)]
