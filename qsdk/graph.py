"""The pipeline as a picture: a flow's stages and tables, each stage coloured by its state.

:func:`flow_graph` builds the graph (a stage's partitions collapsed into one node with a count);
:func:`layout` places it with grandalf's Sugiyama layered layout (the algorithm behind
Graphviz's ``dot``, in pure Python, so nothing beyond ``pip install`` is needed); then
:func:`to_mermaid`, :func:`to_svg` and :func:`to_png` draw it. The SVG is qsdk's own, written
from the layout's coordinates, so each node carries ``data-node``/``data-state`` attributes that
the launcher widget re-colours live and tests can read; the PNG is drawn by matplotlib from the
same coordinates.

States: from ``qsdk status`` (``cached``, ``stale``, ``never`` run, ``broken``), or from a run
(``succeeded``, ``failed``, ``skipped``, ``cached``), or while one runs (``pending``,
``running``). Tables have no state of their own.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["mermaid", "svg", "png"]

# fill colours per state; the legend lists them in this order
COLORS: dict[str, str] = {
    "cached": "#a5d6a7", "succeeded": "#66bb6a", "stale": "#ffcc80", "never": "#e0e0e0",
    "pending": "#eeeeee", "running": "#64b5f6", "failed": "#ef5350", "skipped": "#bdbdbd",
    "broken": "#e57373", "unknown": "#ffffff",
}
LABELS = {"never": "never run"}
TABLE_COLOR = "#e3f2fd"
_STAGE_H, _TABLE_H, _CHAR_W, _PAD = 44.0, 30.0, 7.2, 18.0


@dataclass(frozen=True)
class Node:
    id: str
    kind: Literal["stage", "table"]
    label: str
    state: str = "unknown"
    partitions: int = 0  # a stage's partitions (collapsed into this node); 0: not partitioned
    detail: str = ""  # a tooltip: why stale, the error of a broken stage...

    @property
    def caption(self) -> str:
        return f"{self.label} ×{self.partitions}" if self.partitions > 1 else self.label

    @property
    def size(self) -> tuple[float, float]:
        # a stage keeps room for a partition count, so live re-colouring never outgrows the layout
        text = max(len(self.label) + 4, len(self.state_label)) if self.kind == "stage" else len(self.caption)
        return text * _CHAR_W + 2 * _PAD, _STAGE_H if self.kind == "stage" else _TABLE_H

    @property
    def state_label(self) -> str:
        return LABELS.get(self.state, self.state)


@dataclass
class FlowGraph:
    flow: str
    nodes: dict[str, Node]
    edges: list[tuple[str, str]]  # table -> stage (a read), stage -> table (a write)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # node centres, after layout()

    def stage_states(self) -> dict[str, str]:
        return {n.label: n.state for n in self.nodes.values() if n.kind == "stage"}

    def with_states(self, states: Mapping[str, str], *, partitions: Mapping[str, int] | None = None,
                    details: Mapping[str, str] | None = None) -> FlowGraph:
        """The same graph and layout with stage ``states`` (and partition counts) replaced."""
        partitions, details = partitions or {}, details or {}
        nodes = {k: Node(n.id, n.kind, n.label, states.get(n.label, n.state), partitions.get(n.label, n.partitions),
                         details.get(n.label, n.detail)) if n.kind == "stage" else n
                 for k, n in self.nodes.items()}
        return FlowGraph(self.flow, nodes, self.edges, self.positions)


def stage_id(name: str) -> str:
    return f"stage_{name}"


def table_id(name: str) -> str:
    return "table_" + name.replace(".", "__")


def flow_graph(stages: Iterable[tuple[str, Iterable[str], Iterable[str]]], *, flow: str,
               states: Mapping[str, str] | None = None, partitions: Mapping[str, int] | None = None,
               details: Mapping[str, str] | None = None) -> FlowGraph:
    """The graph of ``stages``: ``(name, inputs, outputs)`` each, in any order."""
    states, partitions, details = states or {}, partitions or {}, details or {}
    nodes: dict[str, Node] = {}
    edges: list[tuple[str, str]] = []
    for name, inputs, outputs in stages:
        sid = stage_id(name)
        nodes[sid] = Node(sid, "stage", name, states.get(name, "unknown"), partitions.get(name, 0),
                          details.get(name, ""))
        for table in inputs:
            nodes.setdefault(table_id(table), Node(table_id(table), "table", table))
            edges.append((table_id(table), sid))
        for table in outputs:
            nodes.setdefault(table_id(table), Node(table_id(table), "table", table))
            edges.append((sid, table_id(table)))
    return FlowGraph(flow, nodes, edges)


def states_from_status(rows: Iterable[Any]) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """Per stage, from ``qsdk status`` rows (one per partition): its state, partition count and
    why. ``cached`` when every partition is, ``never`` when none ever ran, else ``stale``."""
    per: dict[str, list[Any]] = {}
    for row in rows:
        per.setdefault(row.stage, []).append(row)
    states, counts, details = {}, {}, {}
    for stage, items in per.items():
        kinds = {r.state for r in items}
        states[stage] = "cached" if kinds == {"cached"} else "never" if kinds == {"never"} else "stale"
        counts[stage] = len(items) if any(r.partition is not None for r in items) else 0
        details[stage] = "; ".join(dict.fromkeys(reason for r in items for reason in r.reasons))
    return states, counts, details


def states_from_run(run: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """Per stage, from a run's ``run.json``: its status, partition count and first error."""
    states, counts, details = {}, {}, {}
    for stage, entry in (run.get("stages") or {}).items():
        states[stage] = str(entry.get("status") or "unknown")
        counts[stage] = len(entry.get("partitions") or {})
        errors = entry.get("errors") or []
        details[stage] = str(errors[0].get("message", "")) if errors and isinstance(errors[0], dict) else ""
    return states, counts, details


# ------------------------------------------------------------------ layout


class _Box:
    """What grandalf lays out: a box of width ``w`` and height ``h``; it sets ``xy``."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy = (0.0, 0.0)


def layout(graph: FlowGraph, *, gap: float = 60.0) -> FlowGraph:
    """Place ``graph`` left to right with grandalf's Sugiyama layout; sets ``graph.positions``.

    grandalf layers top-down, so each box is given to it turned (width for height) and the
    result is turned back; separate components are placed one below the other.
    """
    from grandalf.graphs import Edge, Graph, Vertex
    from grandalf.layouts import SugiyamaLayout

    vertices = {k: Vertex(k) for k in graph.nodes}
    for key, vertex in vertices.items():
        w, h = graph.nodes[key].size
        vertex.view = _Box(h, w)
    edges = [Edge(vertices[a], vertices[b]) for a, b in graph.edges]
    top = 0.0
    positions: dict[str, tuple[float, float]] = {}
    for component in Graph(list(vertices.values()), edges).C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.xspace, sugiyama.yspace = 24, gap
        sugiyama.init_all()
        sugiyama.draw()
        placed = {v.data: (v.view.xy[1], v.view.xy[0]) for v in component.sV}  # turned back: x <- y
        lo = min(y - graph.nodes[k].size[1] / 2 for k, (_, y) in placed.items())
        hi = max(y + graph.nodes[k].size[1] / 2 for k, (_, y) in placed.items())
        positions.update({k: (x, y - lo + top) for k, (x, y) in placed.items()})
        top += hi - lo + gap
    left = min(x - graph.nodes[k].size[0] / 2 for k, (x, _) in positions.items()) if positions else 0.0
    graph.positions = {k: (x - left + 10, y + 10) for k, (x, y) in positions.items()}
    return graph


# ------------------------------------------------------------------ drawing


def to_mermaid(graph: FlowGraph) -> str:
    """Mermaid ``flowchart LR``: stages as boxes, tables as cylinders, a class per state."""
    lines = ["flowchart LR"]
    for node in graph.nodes.values():
        text = node.caption.replace('"', "'")
        if node.kind == "table":
            lines.append(f'    {node.id}[("{text}")]')
        else:
            lines.append(f'    {node.id}["{text}<br/><i>{node.state_label}</i>"]')
    lines += [f"    {a} --> {b}" for a, b in graph.edges]
    used = sorted({n.state for n in graph.nodes.values() if n.kind == "stage"})
    lines += [f"    classDef {state} fill:{COLORS.get(state, '#ffffff')},stroke:#424242" for state in used]
    lines.append(f"    classDef table fill:{TABLE_COLOR},stroke:#90a4ae")
    for state in used:
        members = [n.id for n in graph.nodes.values() if n.kind == "stage" and n.state == state]
        lines.append(f"    class {','.join(members)} {state}")
    tables = [n.id for n in graph.nodes.values() if n.kind == "table"]
    if tables:
        lines.append(f"    class {','.join(tables)} table")
    return "\n".join(lines) + "\n"


def to_svg(graph: FlowGraph) -> str:
    """An SVG of the laid-out ``graph`` (:func:`layout` first), with a legend of the states."""
    if not graph.positions:
        layout(graph)
    width, height = _extent(graph)
    legend = [s for s in COLORS if any(n.state == s for n in graph.nodes.values() if n.kind == "stage")]
    height += 34 if legend else 0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="qsdk-flow-graph" data-flow="{_e(graph.flow)}" '
           f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
           'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           '<defs><marker id="qsdk-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#616161"/>'
           '</marker></defs>',
           '<rect width="100%" height="100%" fill="#ffffff"/>']
    for a, b in graph.edges:
        (x1, y1), (x2, y2) = _anchor(graph, a, right=True), _anchor(graph, b, right=False)
        mid = (x1 + x2) / 2
        out.append(f'<path class="qsdk-edge" d="M {x1:.1f} {y1:.1f} C {mid:.1f} {y1:.1f}, {mid:.1f} {y2:.1f}, '
                   f'{x2:.1f} {y2:.1f}" fill="none" stroke="#9e9e9e" stroke-width="1.3" '
                   'marker-end="url(#qsdk-arrow)"/>')
    for node in graph.nodes.values():
        out.append(_svg_node(graph, node))
    x = 10.0
    for state in legend:
        out.append(f'<rect x="{x:.0f}" y="{height - 26:.0f}" width="14" height="14" rx="3" '
                   f'fill="{COLORS[state]}" stroke="#616161"/>'
                   f'<text x="{x + 19:.0f}" y="{height - 15:.0f}">{_e(LABELS.get(state, state))}</text>')
        x += 34 + len(LABELS.get(state, state)) * _CHAR_W
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_node(graph: FlowGraph, node: Node) -> str:
    (cx, cy), (w, h) = graph.positions[node.id], node.size
    x, y = cx - w / 2, cy - h / 2
    tip = f"<title>{_e(node.label)}{': ' + _e(node.detail) if node.detail else ''}</title>"
    if node.kind == "table":
        return (f'<g class="qsdk-node qsdk-table" data-node="{_e(node.label)}" data-kind="table">{tip}'
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{h / 2:.1f}" '
                f'fill="{TABLE_COLOR}" stroke="#90a4ae"/>'
                f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" fill="#37474f">{_e(node.caption)}</text></g>')
    fill = COLORS.get(node.state, "#ffffff")
    return (f'<g class="qsdk-node qsdk-stage" data-node="{_e(node.label)}" data-kind="stage" '
            f'data-state="{_e(node.state)}" data-partitions="{node.partitions}">{tip}'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" fill="{fill}" '
            f'stroke="#424242" stroke-width="1.2"/>'
            f'<text x="{cx:.1f}" y="{cy - 3:.1f}" text-anchor="middle" font-weight="bold">{_e(node.caption)}</text>'
            f'<text x="{cx:.1f}" y="{cy + 13:.1f}" text-anchor="middle" font-size="11" fill="#424242">'
            f'{_e(node.state_label)}</text></g>')


def to_png(graph: FlowGraph, path: str | Path, *, dpi: int = 110) -> Path:
    """A PNG of the laid-out ``graph``, drawn with matplotlib from the same coordinates."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if not graph.positions:
        layout(graph)
    width, height = _extent(graph)
    fig = plt.figure(figsize=(width / 72, height / 72), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for a, b in graph.edges:
        ax.add_patch(FancyArrowPatch(_anchor(graph, a, right=True), _anchor(graph, b, right=False),
                                     arrowstyle="-|>", mutation_scale=9, color="#9e9e9e", lw=1.0,
                                     connectionstyle="arc3,rad=0"))
    for node in graph.nodes.values():
        (cx, cy), (w, h) = graph.positions[node.id], node.size
        table = node.kind == "table"
        ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h,
                                    boxstyle=f"round,pad=0,rounding_size={h / 2 if table else 6}",
                                    fc=TABLE_COLOR if table else COLORS.get(node.state, "#ffffff"),
                                    ec="#90a4ae" if table else "#424242", lw=1.0))
        if table:
            ax.text(cx, cy, node.caption, ha="center", va="center", fontsize=8.5, color="#37474f")
        else:
            ax.text(cx, cy - 7, node.caption, ha="center", va="center", fontsize=8.5, weight="bold")
            ax.text(cx, cy + 9, node.state_label, ha="center", va="center", fontsize=7.5, color="#424242")
    out = Path(path)
    fig.savefig(out, dpi=dpi, facecolor="white")
    plt.close(fig)
    return out


def _extent(graph: FlowGraph) -> tuple[float, float]:
    if not graph.positions:
        return 200.0, 60.0
    right = max(x + graph.nodes[k].size[0] / 2 for k, (x, _) in graph.positions.items())
    bottom = max(y + graph.nodes[k].size[1] / 2 for k, (_, y) in graph.positions.items())
    return right + 10, bottom + 10


def _anchor(graph: FlowGraph, key: str, *, right: bool) -> tuple[float, float]:
    (x, y), (w, _) = graph.positions[key], graph.nodes[key].size
    return (x + w / 2 if right else x - w / 2), y


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
