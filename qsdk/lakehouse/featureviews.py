"""Feature views as the lakehouse reads them: named feature columns of a table, with the two
times a point-in-time join needs, and :func:`resolve` from references to views.

The registry (:mod:`qsdk.model.featurestore`) declares and validates them; a stage context
carries them (``FeatureView.to_dict()`` form), so ``DataLoader.training_set`` in a kernel joins
without loading the registry.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qsdk.errors import RegistryError, UnknownNameError

_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?|w|weeks?)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class FeatureView:
    name: str
    table: str
    features: tuple[str, ...]
    entity: str = "symbol"
    event_time: str = "event_time"
    known_time: str = "known_time"
    ttl: dt.timedelta | None = None
    description: str = ""

    def columns(self, features: Sequence[str] | None = None) -> list[str]:
        """The table columns a join reads: entity, the two times, and the features."""
        return [self.entity, self.event_time, self.known_time, *(features or self.features)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureView:
        """The inverse of :meth:`to_dict` (a view as a stage context carries it)."""
        return cls(name=data["name"], table=data["table"], features=tuple(data["features"]),
                   entity=data["entity"], event_time=data["event_time"], known_time=data["known_time"],
                   ttl=parse_ttl(data["ttl"]), description=data.get("description", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "table": self.table,
            "entity": self.entity,
            "event_time": self.event_time,
            "known_time": self.known_time,
            "ttl": format_ttl(self.ttl),
            "features": list(self.features),
            "description": self.description,
        }


def parse_ttl(value: Any, *, where: str = "ttl") -> dt.timedelta | None:
    """``None``, a number of seconds, or text like ``10d``, ``36h``, ``2 weeks``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RegistryError(f"{where}: ttl must be a duration like '10d' or '36h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _TTL.match(str(value))
        if not match:
            raise RegistryError(
                f"{where}: ttl {value!r} is not a duration; write e.g. '10d', '36h', '90min' or '2 weeks'"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0]]
    if seconds <= 0:
        raise RegistryError(f"{where}: ttl must be positive, got {value!r}")
    return dt.timedelta(seconds=seconds)


def format_ttl(ttl: dt.timedelta | None) -> str | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def resolve(refs: Sequence[str] | str, views: Mapping[str, FeatureView]) -> list[tuple[FeatureView, list[str]]]:
    """``["momentum", "risk:vol_21"]`` -> ``[(view, [feature, ...]), ...]`` in first-mention order.

    Output column names are the feature names: two requested features with the same name are
    an error (request one of them explicitly as ``view:feature``).
    """
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        raise UnknownNameError("no features requested: pass view names or 'view:feature' references", known=sorted(views))
    chosen: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for ref in refs:
        view_name, _, feature = str(ref).partition(":")
        view = views.get(view_name)
        if view is None:
            known = ", ".join(sorted(views)) or "(none)"
            raise UnknownNameError(f"unknown feature view {view_name!r} in {ref!r}; known views: {known}",
                                   known=sorted(views))
        if feature and feature not in view.features:
            raise UnknownNameError(
                f"feature view {view_name!r} has no feature {feature!r}; its features: {', '.join(view.features)}",
                known=list(view.features),
            )
        for name in [feature] if feature else view.features:
            if name in owner and owner[name] != view_name:
                raise UnknownNameError(
                    f"feature {name!r} is in both {owner[name]!r} and {view_name!r}: request "
                    f"'{owner[name]}:{name}' or '{view_name}:{name}', not both views whole",
                    known=sorted(views),
                )
            owner[name] = view_name
            selected = chosen.setdefault(view_name, [])
            if name not in selected:
                selected.append(name)
    return [(views[name], cols) for name, cols in chosen.items()]
