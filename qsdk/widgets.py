"""``Launcher``: run a flow from JupyterLab with a form built from its stages' parameters.

The widget holds no pipeline logic: the form comes from the registry's typed parameters
(``ParamSpec``), values are validated with ``Flow.resolve`` (the code a run uses), and Run
calls ``QuantSDK.run_pipeline`` (what ``qsdk run`` calls) in a background thread, with a
:class:`~qsdk.execution.hooks.Hook` that moves the progress bars and re-colours the flow's graph
(``QuantSDK.graph``, the picture ``qsdk show --format svg`` draws). Parameters left at their
displayed default are not passed, exactly like ``-p`` options not given on the command line.
A parameter whose help text starts with ``CHOICE only:`` (``n_symbols: int = 20  # synthetic
only: ...``), where CHOICE is a choice of a ``Literal`` parameter, is greyed out while that
parameter is set to something else. The History tab lists the last runs (``QuantSDK.runs``).
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from qsdk.config import DEFAULT_EXECUTOR
from qsdk.errors import QsdkError
from qsdk.execution.hooks import Hook

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult
    from qsdk.graph import FlowGraph
    from qsdk.model.flow import Flow, FlowParameter
    from qsdk.sdk import QuantSDK

_WIDE = {"description_width": "130px"}
_COLORS = {"running": "#1976d2", "succeeded": "#2e7d32", "cached": "#558b2f", "failed": "#c62828",
           "skipped": "#757575", "pending": "#9e9e9e"}
_MARKS = {"running": "…", "succeeded": "✓", "cached": "✓ cached", "failed": "✗", "skipped": "skipped",
          "pending": ""}


class Launcher(W.VBox):
    """Pick a flow, fill its parameters, Run; watch each stage and partition; open the results.

    ``sdk``: the project (default: ``QuantSDK()`` for the folder the kernel runs in).
    After a run, ``result`` is the :class:`~qsdk.execution.scheduling.RunResult` (or ``None`` if the run
    could not start; ``error`` then says why); :meth:`wait` blocks until a run has finished.
    """

    def __init__(self, *, sdk: QuantSDK | None = None, flow: str | None = None, executor: str = DEFAULT_EXECUTOR,
                 track: bool = True) -> None:
        if sdk is None:
            from qsdk.sdk import QuantSDK

            sdk = QuantSDK()
        from qsdk.execution.executors import known_executors

        self.sdk = sdk
        flows = sorted(sdk.registry.flows)
        self.flow_picker = W.Dropdown(options=flows, value=flow or (flows[0] if flows else None),
                                      description="Flow", style=_WIDE)
        self.flow_help = W.HTML()
        executors = known_executors()
        self.executor_picker = W.Dropdown(options=executors if executor in executors else [*executors, executor],
                                          value=executor, description="Executor", style=_WIDE)
        self.track_box = W.Checkbox(value=track, description="Track in MLflow", indent=False)
        self.fields: dict[str, W.ValueWidget] = {}
        self.messages: dict[str, W.HTML] = {}
        self.form = W.VBox()
        self.validation = W.HTML()
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.status = W.HTML()
        self.progress: dict[str, W.IntProgress] = {}
        self.partitions: dict[str, W.HTML] = {}
        self.task_status: dict[str, dict[str | None, str]] = {}
        self.progress_box = W.VBox()
        self.links = W.Output()
        self.graph_view = W.HTML()
        self.history = W.HTML()
        self._graph: FlowGraph | None = None
        self._only: dict[str, tuple[str, Any]] = {}
        self.result: RunResult | None = None
        self.error: str | None = None
        self._initial: dict[str, Any] = {}
        self._kinds: dict[str, str] = {}
        self._future: Future[RunResult | None] | None = None
        for widget, css in ((self.flow_picker, "qsdk-flow"), (self.executor_picker, "qsdk-executor"),
                            (self.run_button, "qsdk-run"), (self.status, "qsdk-status"),
                            (self.validation, "qsdk-validation"), (self.links, "qsdk-links"),
                            (self.graph_view, "qsdk-graph"), (self.history, "qsdk-history")):
            widget.add_class(css)
        self.flow_picker.observe(lambda _: self._build_form(), names="value")
        self.run_button.on_click(self._on_run)
        run_tab = W.VBox([self.form, self.validation, W.HBox([self.executor_picker, self.track_box]),
                          self.run_button, self.status, self.progress_box, self.links])
        self.tabs = W.Tab(children=[run_tab, self.history], titles=("Run", "History"))
        self.tabs.observe(lambda change: self.show_history() if change["new"] == 1 else None, names="selected_index")
        super().__init__([
            W.HTML("<b>qsdk launcher</b>"),
            W.HBox([self.flow_picker, self.flow_help]),
            self.graph_view,
            self.tabs,
        ])
        self.add_class("qsdk-launcher")
        self._build_form()

    def __repr__(self) -> str:  # the notebook's saved text/plain output: keep it stable
        return "<qsdk.widgets.Launcher>"

    # ------------------------------------------------------------ form
    @property
    def flow(self) -> Flow:
        return self.sdk.registry.flow(self.flow_picker.value)

    def _build_form(self) -> None:
        self.fields, self.messages, self._initial, self._kinds = {}, {}, {}, {}
        if self.flow_picker.value is None:
            self.form.children = [W.HTML("no flows in pipelines/*.yaml")]
            return
        flow = self.flow
        rows = []
        parameters = flow.parameters()
        for param in parameters:
            name = param.name
            widget = _field(param)
            widget.add_class(f"qsdk-param-{name}")
            widget.observe(lambda _: self.validate(), names="value")
            self.fields[name] = widget
            self._kinds[name] = param.kind
            self.messages[name] = W.HTML()
            self.messages[name].add_class(f"qsdk-message-{name}")
            hint = html.escape(param.type + (f": {param.help}" if param.help else ""))
            rows.append(W.HBox([widget, W.HTML(f"<span style='color:#757575'>{hint}</span>"),
                                self.messages[name]]))
        self.form.children = rows
        self.flow_help.value = f"<i>{html.escape(flow.description)}</i>"
        self._initial = {n: self._value(n) for n in self.fields}
        self._link_choices(parameters)
        self._show_plan({})
        self._load_graph()
        self.validate()

    def _link_choices(self, params: list[FlowParameter]) -> None:
        """Grey out a ``CHOICE only:`` parameter while its choice is not selected."""
        choices = {p.name: p.choices for p in params if p.choices}
        self._only = {}
        for p in params:
            match = _ONLY.match(p.help)
            owner = next((c for c, options in choices.items() if match and match.group(1) in options), None)
            if match and owner and owner != p.name:
                self._only[p.name] = (owner, match.group(1))
        for owner in {o for o, _ in self._only.values()}:
            self.fields[owner].observe(lambda _: self._grey_out(), names="value")
        self._grey_out()

    def _grey_out(self) -> None:
        for name, (owner, choice) in self._only.items():
            self.fields[name].disabled = self.fields[owner].value != choice

    def _value(self, name: str) -> Any:
        value = self.fields[name].value
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, str):
            return value.strip() or None
        return value

    def params(self) -> dict[str, Any]:
        """The parameters to run with: the fields changed from their displayed default."""
        out = {}
        for name in self.fields:
            value = self._value(name)
            if value != self._initial[name] and value is not None:
                out[name] = value
        return out

    def validate(self) -> dict[str, Any] | None:
        """Check the form with ``Flow.resolve``; show the message at the field it concerns."""
        for message in self.messages.values():
            message.value = ""
        self.validation.value = ""
        params = self.params()
        try:
            self.flow.resolve(params)
        except QsdkError as exc:
            text = f"<span style='color:{_COLORS['failed']}'>{html.escape(str(exc))}</span>"
            target = self.messages.get(exc.fields.get("parameter") or "")
            (target or self.validation).value = text
            return None
        return params

    # ------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def _on_run(self, _button: Any = None) -> None:
        if self.running:
            return
        params = self.validate()
        if params is None:
            self._set_status("failed", "fix the parameters marked in red, then Run again")
            return
        self.result, self.error = None, None
        self.links.outputs = ()
        self.run_button.disabled = True
        self._set_status("running", f"starting flow {self.flow_picker.value!r}…")
        future: Future[RunResult | None] = Future()
        future.set_running_or_notify_cancel()
        self._future = future
        job = dict(name=self.flow_picker.value, params=params, executor=self.executor_picker.value,
                   track=self.track_box.value)
        threading.Thread(target=self._work, args=(future, job), name="qsdk-launcher", daemon=True).start()

    def _work(self, future: Future, job: dict[str, Any]) -> None:
        """The background thread: the same call as ``qsdk run``; then the results into the UI."""
        started = time.perf_counter()
        try:
            result = self.sdk.run_pipeline(job["name"], params=job["params"], executor=job["executor"],
                                           hooks=[_Progress(self)], raise_on_failure=False,
                                           track=job["track"])
        except Exception as exc:  # could not start: bad parameters, unknown executor, ...
            self.error = str(exc) if isinstance(exc, QsdkError) else f"{type(exc).__name__}: {exc}"
            self._set_status("failed", f"the run did not start ({time.perf_counter() - started:.1f} s)",
                             detail=self.error)
        else:
            self.result = result
            self._show_result(result)
        finally:
            self.run_button.disabled = False
            future.set_result(self.result)

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the current run has finished and the widget shows its outcome."""
        if self._future is None:
            raise QsdkError("no run started: click Run first")
        return self._future.result(timeout)

    # ------------------------------------------------------------ display
    def _set_status(self, state: str, text: str, *, detail: str | None = None) -> None:
        body = f"<b style='color:{_COLORS.get(state, 'inherit')}'>{html.escape(text)}</b>"
        if detail:
            body += f"<pre style='white-space:pre-wrap;color:{_COLORS['failed']}'>{html.escape(detail)}</pre>"
        self.status.value = body

    def _show_plan(self, plan: dict[str, list[str | None]]) -> None:
        self.progress, self.partitions, self.task_status = {}, {}, {}
        rows = []
        for stage, partitions in plan.items():
            bar = W.IntProgress(value=0, min=0, max=max(len(partitions), 1), description=stage, style=_WIDE,
                                bar_style="info")
            bar.add_class(f"qsdk-progress-{stage}")
            self.progress[stage] = bar
            self.partitions[stage] = W.HTML()
            self.task_status[stage] = dict.fromkeys(partitions, "pending")
            self._render_stage(stage)
            rows.append(W.HBox([bar, self.partitions[stage]]))
        self.progress_box.children = rows

    def _load_graph(self) -> None:
        """The flow's graph, coloured by ``qsdk status`` for the form's defaults when it can be."""
        name = self.flow_picker.value
        try:
            self._graph = self.sdk.graph(name)
        except QsdkError:  # e.g. daily needs a date first: draw it uncoloured
            self._graph = self.sdk.graph(name, states=False)
        self._draw_graph()

    def _draw_graph(self) -> None:
        if self._graph is None:
            return
        from qsdk.graph import to_svg

        states = {stage: _stage_state(tasks.values()) for stage, tasks in self.task_status.items()}
        counts = {stage: len(tasks) if any(p is not None for p in tasks) else 0
                  for stage, tasks in self.task_status.items()}
        graph = self._graph.with_states(states, partitions=counts) if states else self._graph
        svg = to_svg(graph).replace('<svg ', '<svg style="max-width:100%;height:auto" ', 1)
        self.graph_view.value = f"<div style='overflow-x:auto'>{svg}</div>"

    def show_history(self, limit: int = 10) -> None:
        """Fill the History tab: the last runs, with their notebooks and MLflow run."""
        self.history.value = _history_html(self.sdk, limit=limit)

    def _task_state(self, stage: str, partition: str | None, state: str) -> None:
        self.task_status[stage][partition] = state
        done = sum(s in ("succeeded", "cached", "failed", "skipped") for s in self.task_status[stage].values())
        bar = self.progress[stage]
        bar.value = done
        if "failed" in self.task_status[stage].values():
            bar.bar_style = "danger"
        elif done == len(self.task_status[stage]):
            bar.bar_style = "success"
        self._render_stage(stage)
        self._draw_graph()

    def _render_stage(self, stage: str) -> None:
        self.partitions[stage].value = " ".join(
            f"<span style='color:{_COLORS.get(s, 'inherit')}'>{html.escape(p or 'all')} {_MARKS.get(s, s)}</span>"
            for p, s in self.task_status[stage].items()
        )

    def _show_result(self, result: RunResult) -> None:
        for r in result.results:
            if r.stage in self.task_status and self.task_status[r.stage].get(r.partition) in ("pending", "running"):
                self._task_state(r.stage, r.partition, r.status)
        errors = "\n".join(str(r.error) for r in result.failures if r.error is not None)
        self._set_status(result.status, f"{result.status} in {result.duration:.1f} s: run {result.run_id}",
                         detail=errors or None)
        self.links.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": {"text/html": _links_html(result), "text/plain": f"run {result.run_id}"}},)
        self._draw_graph()
        self.show_history()


class _Progress(Hook):
    """Moves the launcher's bars; called in the run's driver thread."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def before_flow(self, *, run: Any, **_: Any) -> None:
        self.launcher._show_plan({stage: [t.partition for t in tasks] for stage, tasks in run.tasks.items()})
        self.launcher._draw_graph()  # every stage of the run: pending
        self.launcher._set_status("running", f"running flow {run.flow.name!r}: run {run.run_id}")

    def before_task(self, *, task: Any, **_: Any) -> None:
        self.launcher._task_state(task.stage, task.partition, "running")

    def after_task(self, *, task: Any, result: Any, **_: Any) -> None:
        self.launcher._task_state(task.stage, task.partition, result.status)


# ------------------------------------------------------------------ form helpers

_ONLY = re.compile(r"^\s*([\w-]+) only\b")  # "synthetic only: number of symbols"


def _stage_state(states: Iterable[str]) -> str:
    """One node colour for a stage from its partitions' states while a run goes on."""
    found = set(states)
    if "failed" in found:
        return "failed"
    if found <= {"cached"}:
        return "cached"
    if found <= {"succeeded", "cached"}:
        return "succeeded"
    if found <= {"skipped"}:
        return "skipped"
    if found <= {"pending"}:
        return "pending"
    return "running"  # some running, or some done and some still to come


def _field(param: FlowParameter) -> W.ValueWidget:
    common: dict[str, Any] = {"description": param.name, "style": _WIDE}
    kind, choices, initial = param.kind, param.choices, param.default
    if choices:
        options = list(choices)
        return W.Dropdown(options=options, value=initial if initial in options else options[0], **common)
    if kind == "bool":
        return W.Checkbox(value=bool(initial), **common)
    if kind == "date":
        value = dt.date.fromisoformat(str(initial)[:10]) if initial else None
        return W.DatePicker(value=value, **common)
    if kind == "int" and initial is not None:
        return W.IntText(value=int(initial), **common)
    if kind == "float" and initial is not None:
        return W.FloatText(value=float(initial), **common)
    if kind == "list":
        text = ", ".join(str(v) for v in initial) if initial else ""
        return W.Text(value=text, placeholder="comma-separated", **common)
    return W.Text(value="" if initial is None else str(initial), placeholder=param.type, **common)


def _links_html(result: RunResult) -> str:
    """Executed notebooks (relative links open them in JupyterLab) and the MLflow run."""
    items = []
    run_dir = Path(result.run_dir)
    for r in result.results:
        if not r.notebook or r.status not in ("succeeded", "failed", "cached"):
            continue
        path = Path(r.notebook)
        try:
            label = str(path.relative_to(run_dir))
        except ValueError:
            label = str(path)
        href = os.path.relpath(path, Path.cwd())
        items.append(f"<li>{html.escape(r.key)} ({r.status}): <a href='{html.escape(href)}' target='_blank' "
                     f"title='{html.escape(str(path))}'>{html.escape(label)}</a></li>")
    mlflow_id = result.extra.get("mlflow_run_id")
    if mlflow_id:
        uri = str(result.extra.get("mlflow_tracking_uri") or "")
        link = _mlflow_link(mlflow_id, uri)
        where = link or (f"<code>{html.escape(mlflow_id)}</code> in {html.escape(uri)} "
                         "(browse it with <code>make mlflow-ui</code>)")
        mlflow = f"<div class='qsdk-mlflow'>MLflow run: {where}</div>"
    else:
        mlflow = "<div class='qsdk-mlflow'>MLflow: not tracked</div>"
    return (f"<div>Executed notebooks under <code>{html.escape(str(run_dir))}</code>:"
            f"<ul>{''.join(items) or '<li>none</li>'}</ul></div>{mlflow}")


def _mlflow_ui() -> str | None:
    """The base URL of an MLflow UI serving on this machine, if one is: ``$QSDK_MLFLOW_UI``, or
    ``make mlflow-ui``'s ``http://127.0.0.1:$MLFLOW_PORT`` (5000) when something listens there."""
    import socket

    if os.environ.get("QSDK_MLFLOW_UI"):
        return os.environ["QSDK_MLFLOW_UI"].rstrip("/")
    port = int(os.environ.get("MLFLOW_PORT") or 5000)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return f"http://127.0.0.1:{port}"
    except OSError:
        return None


def _mlflow_link(mlflow_id: str, uri: str, *, ui: str | None = None) -> str | None:
    """An ``<a>`` to the run's page: on a tracking server, or on a local MLflow UI when one runs."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else (ui or _mlflow_ui())
    if base is None:
        return None
    href = f"{base}/#/runs/{mlflow_id}"
    try:
        from qsdk.integrations import mlflow as tracking

        experiment = tracking.client(uri).get_run(mlflow_id).info.experiment_id
        href = f"{base}/#/experiments/{experiment}/runs/{mlflow_id}"
    except Exception:  # an unknown run or an unreachable store: the short link still opens in the UI
        pass
    return f"<a href='{html.escape(href)}' target='_blank'>{html.escape(mlflow_id)}</a>"


def _history_html(sdk: QuantSDK, *, limit: int) -> str:
    """The last runs as a table: id, flow, status, start, duration, notebooks, MLflow run."""
    from qsdk.history import run_record

    ui = _mlflow_ui()
    rows = []
    for r in sdk.runs(limit=limit):
        notebooks: list[str] = []
        if r.status != "unfinished":
            stages = run_record(sdk.config.runs_dir, r.run_id).get("stages") or {}
            for entry in stages.values():
                for nb in entry.get("notebooks") or []:
                    label = str(Path(nb).relative_to(r.run_dir)) if nb.startswith(r.run_dir) else nb
                    notebooks.append(f"<a href='{html.escape(os.path.relpath(nb, Path.cwd()))}' target='_blank'>"
                                     f"{html.escape(label)}</a>")
        mlflow = "-"
        if r.mlflow_run_id:
            mlflow = (_mlflow_link(r.mlflow_run_id, r.tracking_uri or "", ui=ui) if ui or
                      str(r.tracking_uri or "").startswith("http") else None) or f"<code>{r.mlflow_run_id}</code>"
        took = "-" if r.duration_s is None else f"{r.duration_s:.1f} s"
        colour = _COLORS.get(r.status, "inherit")
        rows.append(f"<tr class='qsdk-history-run' data-run='{html.escape(r.run_id)}'>"
                    f"<td><code>{html.escape(r.run_id)}</code></td><td>{html.escape(r.flow)}</td>"
                    f"<td style='color:{colour}'>{html.escape(r.status)}</td><td>{html.escape(r.started[:19])}</td>"
                    f"<td>{took}</td><td>{'<br>'.join(notebooks) or '-'}</td><td>{mlflow}</td></tr>")
    if not rows:
        return "<i>no runs yet</i>"
    head = "".join(f"<th style='text-align:left'>{h}</th>" for h in
                   ("run", "flow", "status", "started (UTC)", "took", "executed notebooks", "MLflow run"))
    return f"<table class='qsdk-history-table'><tr>{head}</tr>{''.join(rows)}</table>"
