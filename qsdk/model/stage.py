"""An immutable stage: a notebook, its typed parameters, its declared tables, its partitioning."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qsdk.errors import ParameterError, RegistryError
from qsdk.model import params as P

PartitionBy = Literal["year", "month"]


@dataclass(frozen=True)
class PartitionSpec:
    """How a stage's date range splits into partitions that run independently.

    ``start`` and ``end`` name the notebook's date parameters that hold the range; each
    partition runs the notebook with those two parameters narrowed to its slice. ``every``:
    calendar years (or months) per partition, in blocks aligned to multiples of ``every``
    (``by: year, every: 5``: 2000-2004, 2005-2009, ...; ``by: month, every: 3``: quarters), so a
    partition's key does not depend on where the range starts. A partition costs a fresh
    kernel (about a second of CPU), and a stage with look-back recomputes it per partition:
    larger blocks amortise both, smaller ones give more parallelism and finer re-runs.
    """

    by: PartitionBy
    start: str = "start"
    end: str = "end"
    every: int = 1

    def split(self, start: str, end: str) -> list[tuple[str, str]]:
        lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
        out: list[tuple[str, str]] = []
        cur = lo
        while cur <= hi:
            if self.by == "year":
                first = cur.year - cur.year % self.every
                nxt = dt.date(first + self.every, 1, 1)
            else:
                index = cur.year * 12 + cur.month - 1
                index += self.every - index % self.every
                nxt = dt.date(index // 12, index % 12 + 1, 1)
            out.append((cur.isoformat(), min(nxt - dt.timedelta(days=1), hi).isoformat()))
            cur = nxt
        return out


@dataclass(frozen=True)
class SourceSpec:
    """Data a stage reads that is not a lakehouse table, for its cache key.

    ``package``: an installed distribution whose version is the data's identity (packaged
    market data); ``files``: a glob under the project root whose files' contents are.
    """

    kind: Literal["package", "files"]
    name: str

    @property
    def label(self) -> str:
        return self.name if self.kind == "package" else f"files {self.name}"


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, P.ParamSpec] = field(compare=False)
    defaults: dict[str, Any] = field(default_factory=dict, compare=False)
    partition: PartitionSpec | None = None
    description: str = ""
    timeout: float | None = None
    retries: int = 0
    resources: dict[str, float] = field(default_factory=dict, compare=False)
    # modules a pre-warmed kernel imports before it is handed to this stage (see qsdk.execution.kernels)
    preload: tuple[str, ...] = field(default=(), compare=False)
    # data outside the lakehouse the stage's results depend on (registry `sources:`)
    sources: tuple[SourceSpec, ...] = field(default=(), compare=False)

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """Validated parameters for one run: registry defaults, then ``values`` on top."""
        overridden = (self.partition.start, self.partition.end) if self.partition is not None else ()
        resolved = P.validate(self.params, {**self.defaults, **values}, stage=self.name, overridden=overridden)
        if self.partition is not None:
            start, end = resolved.get(self.partition.start), resolved.get(self.partition.end)
            if start is None or end is None:
                raise ParameterError(
                    f"stage {self.name!r} is partitioned by {self.partition.by}: set both "
                    f"{self.partition.start!r} and {self.partition.end!r}",
                    stage=self.name,
                )
            if start > end:
                raise ParameterError(
                    f"stage {self.name!r}: {self.partition.start}={start} is after "
                    f"{self.partition.end}={end}; swap them",
                    stage=self.name,
                    parameter=self.partition.start,
                )
        return resolved

    def partitions(self, resolved: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
        """``(partition key, parameters)`` for each task of this stage."""
        if self.partition is None:
            return [(None, resolved)]
        ps = self.partition
        return [
            (f"{lo}_{hi}", {**resolved, ps.start: lo, ps.end: hi})
            for lo, hi in ps.split(resolved[ps.start], resolved[ps.end])
        ]

    def check_partition_params(self) -> None:
        if self.partition is None:
            return
        for name in (self.partition.start, self.partition.end):
            spec = self.params.get(name)
            if spec is None or spec.type.kind != "date":
                raise RegistryError(
                    f"stage {self.name!r} is partitioned on parameter {name!r}, which its notebook "
                    f"{self.notebook.name} must declare as a date (`{name}: \"date\" = ...`)"
                )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "notebook": str(self.notebook),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "partition": None if self.partition is None else
            self.partition.by if self.partition.every == 1 else f"{self.partition.every} {self.partition.by}s",
            "parameters": {n: s.to_dict() for n, s in self.params.items()},
            "defaults": dict(self.defaults),
        }
