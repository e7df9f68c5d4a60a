"""A study's report, built only from what its points wrote: `results.csv`, one PNG in the paper's
style, and `index.html` with the plot, the tables and a summary computed from the numbers.

Every figure comes from a point's own `report.json` (the one `fit` writes after evaluating the
weights it names, in fp32), so `vitlab eval` on that checkpoint gives the number the table shows.
Points that have not finished are listed as missing; the report is whatever exists.

Each point says how it stopped (`stopped`: by `patience`, at the step `cap`, or after its fixed
`budget`). A point that reached its cap may not have converged: the page flags it (in the table,
on the plot, and in a sentence) and the computed summary leaves it out, saying so.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitlab.figures import new_figure, save_figure
from vitlab.files import write_text
from vitlab.study import lr_grid
from vitlab.study.curves import Curve, num
from vitlab.study.points import Plan, Point
from vitlab.study.studies import get_study
from vitlab.train.state import RUN_FILES

COLUMNS = [
    "study", "protocol", "family", "label", "variant", "x", "seed", "model", "params",
    "train_images", "per_class", "lr", "steps", "max_steps", "stopped", "batch_size",
    "gflops_per_image", "train_pflops",
    "test_top1", "test_top5", "best_val_acc", "best_epoch", "best_step", "wall_minutes",
    "train_minutes", "weights", "point", "machine",
]  # fmt: skip


LINE_STYLES = ("-", "--", ":", "-.")  # a study's variants (arms), in its order; more are cycled
CAP = "cap"  # report.json `stopped` of a point that reached its step cap (not converged)


# ------------------------------------------------------------------------------ the rows
def row_of(plan: Plan, p: Point, report: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: the point's place in the study and its report.json figures, as stored."""
    best = report.get("best") or {}
    classes = len(report.get("per_class") or {}) or 1
    images = report["steps"] * report["batch_size"]  # images seen in training
    return {
        "study": plan.study,
        "protocol": p.protocol,
        "family": p.family,
        "label": p.label,
        "variant": p.variant,
        "x": p.x,
        "seed": p.seed,
        "model": report.get("model"),
        "params": report["params"],
        "train_images": report["train_images"],
        "per_class": report["train_images"] / classes,
        "lr": lr_grid.resolved_config(plan, p)["lr"],
        "steps": report["steps"],
        "max_steps": report.get("max_steps"),
        "stopped": report.get("stopped"),
        "batch_size": report["batch_size"],
        "gflops_per_image": report["gflops"],
        "train_pflops": 3 * report["gflops"] * images / 1e6,
        "test_top1": report.get("top1"),
        "test_top5": report.get("top5"),
        "best_val_acc": best.get("val_acc"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "wall_minutes": report["wall_minutes"],
        "train_minutes": report["train_minutes"],
        "weights": report["weights"],
        "point": p.id,
        "machine": report.get("machine", ""),
    }


def collect(plan: Plan) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of every point with a report.json, and the ids of those without one."""
    rows, missing = [], []
    for p in plan.points:
        path = p.run_dir / RUN_FILES["report"]
        if path.is_file():
            rows.append(row_of(plan, p, json.loads(path.read_text())))
        else:
            missing.append(p.id)
    return rows, missing


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    return buf.getvalue()


# ------------------------------------------------------------------------------ the curves
def on_curve(plan: Plan, row: dict[str, Any]) -> bool:
    """Whether a row is on a curve: not a run that only feeds others (a pre-training, a
    learning-rate grid point), and with a test figure."""
    off = (*get_study(plan.study).off_curve, lr_grid.GRID)
    return row["variant"] not in off and row["test_top1"] is not None


def capped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose point reached its step cap (not converged): on a curve, or a run that
    feeds others (a pre-training)."""
    return [r for r in rows if r["stopped"] == CAP]


def left_out(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, str]:
    """The curve points the summary draws no conclusion from, and why: each that reached its
    cap, and each that starts from weights of a point that did."""
    cap = {r["point"] for r in capped(rows)}
    starts = {p.id: set(p.needs) - set(p.lr_from) for p in plan.points}
    out = {}
    for r in rows:
        if not on_curve(plan, r):
            continue
        if r["point"] in cap:
            out[r["point"]] = (
                "reached the step cap before its validation accuracy stopped improving"
            )
        elif from_capped := sorted(starts.get(r["point"], set()) & cap):
            out[r["point"]] = f"starts from {', '.join(from_capped)}, which reached its step cap"
    return out


def curves(plan: Plan, rows: list[dict[str, Any]]) -> list[Curve]:
    """Mean and spread over seeds of each (protocol, family, variant) at each x, sorted by x;
    the study's off-curve variants (a pre-training, a grid point) are on none."""
    key = get_study(plan.study).axis.key
    groups: dict[tuple, dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if on_curve(plan, r):
            groups[(r["protocol"], r["family"], r["variant"])][str(r["x"])].append(r)
    out = []
    order = list(plan.families())
    for (proto, _, variant), by_x in sorted(groups.items(), key=lambda g: order.index(g[0][1])):
        points = sorted(by_x.values(), key=lambda rs: statistics.fmean(r[key] for r in rs))
        accs = [[100 * r["test_top1"] for r in rs] for rs in points]
        out.append(
            Curve(
                label=points[0][0]["label"],
                protocol=proto,
                variant=variant,
                xs=[statistics.fmean(r[key] for r in rs) for rs in points],
                means=[statistics.fmean(a) for a in accs],
                spreads=[statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs],
                counts=[len(a) for a in accs],
                names=[str(rs[0]["x"]) for rs in points],
                capped=[sum(r["stopped"] == CAP for r in rs) for rs in points],
            )
        )
    return out


# ------------------------------------------------------------------------------ the summary
def summary(plan: Plan, rows: list[dict[str, Any]]) -> list[str]:
    """Sentences computed from the curves (never from what the paper leads one to expect), of
    the points that converged: a point that reached its step cap is left out, and said so."""
    out = left_out(plan, rows)
    cs = curves(plan, [r for r in rows if r["point"] not in out])
    if cs:
        lines = get_study(plan.study).summary(cs)
    elif out:
        lines = ["No point on a curve has converged yet: nothing to conclude."]
    else:
        lines = ["No point has finished yet."]
    if out:
        why = "; ".join(f"{pid} ({reason})" for pid, reason in out.items())
        lines.append(f"Left out of these sentences, as not converged: {why}.")
    return lines


# ------------------------------------------------------------------------------ the plot
def plot(plan: Plan, cs: list[Curve], path: Path) -> Path:
    """Test top-1 against the study's axis, one panel per protocol (the paper's Figure 3/4 for
    data-scaling, 5 for model-scaling, the pre-training gain for transfer), small."""
    kind = get_study(plan.study)
    protocols = sorted({c.protocol for c in cs}) or [""]
    fig, axes = new_figure(len(protocols), width=5.0, height=3.8)
    colours = {label: f"C{i}" for i, label in enumerate(plan.families().values())}
    for ax, proto in zip(axes, protocols):
        for c in (c for c in cs if c.protocol == proto):
            style = _line_style(kind.variants, c.variant)
            ax.errorbar(
                c.xs, c.means, yerr=c.spreads, fmt="o" + style, color=colours.get(c.label),
                capsize=3, label=c.name, markersize=4,
            )  # fmt: skip
            _mark_capped(ax, c)
            if kind.label_points:
                for x, y, n in zip(c.xs, c.means, c.names):
                    ax.annotate(n, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale(kind.axis.scale)
        ax.set_xlabel(kind.axis.label)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(proto or _title(plan))
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no point has finished yet", ha="center", transform=ax.transAxes)
    return save_figure(fig, path)


def _mark_capped(ax: Any, c: Curve) -> None:
    """A red ring and "cap" beside each point where a seed reached its step cap."""
    at = [(x, y) for x, y, n in zip(c.xs, c.means, c.capped) if n]
    if at:
        xs, ys = zip(*at)
        ax.scatter(xs, ys, s=120, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5)
        for x, y in at:
            ax.annotate("cap", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7,
                        color="red")  # fmt: skip


def _line_style(variants: tuple[str, ...], variant: str) -> str:
    """Solid for the first variant (and a study without any), then dashed, dotted ..."""
    i = variants.index(variant) if variant in variants else 0
    return LINE_STYLES[i % len(LINE_STYLES)]


def _title(plan: Plan) -> str:
    data = plan.points[0].config.get("data", "") if plan.points else ""
    return f"{plan.study} on {data}"


# ------------------------------------------------------------------------------ the page
@dataclass
class StudyReport:
    csv: Path
    plot: Path
    page: Path
    rows: list[dict[str, Any]]
    missing: list[str]
    summary: list[str]
    grid: list[str]  # the learning-rate grids and their choices, one line per grid


def build_report(plan: Plan, notes: list[str] | None = None) -> StudyReport:
    """results.csv, STUDY.png and index.html in the study's folder, from the points' reports."""
    rows, missing = collect(plan)
    cs = curves(plan, rows)
    lines = summary(plan, rows)
    out = plan.out
    write_text(out / "results.csv", csv_text(rows))
    png = plot(plan, cs, out / f"{plan.study}.png")
    page = out / "index.html"
    notes = [*get_study(plan.study).notes(plan), *(notes or [])]
    write_text(page, _page(plan, rows, missing, cs, lines, notes))
    grid = lr_grid.grid_lines(plan)
    return StudyReport(out / "results.csv", png, page, rows, missing, lines, grid)


def _page(plan, rows, missing, cs: list[Curve], lines: list[str], notes: list[str]) -> str:
    esc = html.escape
    desc = str(plan.spec.get("description", "")).strip()
    wall = sum(r["wall_minutes"] for r in rows)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vitlab study: {esc(plan.study)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td.l{text-align:left}.cap{color:#b00}</style></head><body>",
        f"<h1>vitlab study: {esc(plan.study)} <small>({esc(plan.preset)})</small></h1>",
        f"<p>{esc(desc)}</p>" if desc else "",
        "<h2>What the numbers say</h2><ul>",
        *[f"<li>{esc(s)}</li>" for s in lines],
        "</ul>",
        f"<img src='{esc(plan.study)}.png' alt='{esc(plan.study)} plot'>",
        f"<p>{len(rows)} of {len(plan.points)} points finished, {wall:.1f} minutes of training "
        "(epochs, validation and checkpoints, summed over points). Test top-1 of the weights each "
        "point's report.json names (the best by validation accuracy where the preset asks for "
        "it), mean &plusmn; sample standard deviation over seeds.</p>",
        f"<p>Trained on: {esc(_machines(rows))}.</p>",
        _budget_text(plan),
        _cap_text(plan, rows),
        *[f"<p><b>Note:</b> {esc(n)}</p>" for n in notes],
    ]
    if missing:
        parts.append(f"<p><b>Not finished:</b> {esc(', '.join(missing))}</p>")
    parts += [_mean_table(plan, cs), _grid_table(plan), "<h2>Every point</h2>", _rows_table(rows)]
    parts.append("<p>The same table: <a href='results.csv'>results.csv</a>.</p></body></html>")
    return "\n".join(p for p in parts if p)


def _budget_text(plan: Plan) -> str:
    """How long the points trained: to convergence under the budget, or fixed steps."""
    from vitlab.study.budget import budget_of

    b = budget_of(plan.spec)
    if b is None:
        return "<p>Every point trains for the fixed steps its preset gives it.</p>"
    return (
        f"<p>Every supervised point trains until {b.patience} validation passes in a row bring "
        f"no better validation accuracy; a pass comes every pass over its training images (at "
        f"least {b.min_epoch_steps} steps), and its step cap is {b.max_epochs} passes (at least "
        f"{b.min_steps} steps).</p>"
    )


def _cap_text(plan: Plan, rows: list[dict[str, Any]]) -> str:
    """The sentence that flags the points that reached their step cap."""
    left = capped(rows)
    if not left:
        return ""
    ids = html.escape(", ".join(r["point"] for r in left))
    return (
        f"<p class='cap'><b>&#9888; {len(left)} point(s) reached the step cap</b> before their "
        f"validation accuracy stopped improving, so they may not have converged: {ids}. They "
        "are marked <span class='cap'>cap</span> in the tables and ringed in red on the plot, "
        "and the summary above draws no conclusion from them (nor from the points that start "
        "from their weights).</p>"
    )


def _mean_table(plan: Plan, cs: list[Curve]) -> str:
    head = (
        "<tr><th>curve</th><th>x</th><th>"
        + html.escape(get_study(plan.study).axis.label)
        + "</th><th>test top-1 (%)</th><th>seeds</th><th>at the cap</th></tr>"
    )
    body = []
    for c in cs:
        name = " / ".join(s for s in (c.protocol, c.name) if s)
        for n, x, m, s, k, cap in zip(c.names, c.xs, c.means, c.spreads, c.counts, c.capped):
            acc = f"{m:.2f} &plusmn; {s:.2f}" if k > 1 else f"{m:.2f}"
            flag = f"<span class='cap'>cap</span> ({cap} of {k})" if cap else ""
            body.append(
                f"<tr><td class='l'>{html.escape(name)}</td><td>{html.escape(n)}</td>"
                f"<td>{num(x)}</td><td>{acc}</td><td>{k}</td><td>{flag}</td></tr>"
            )
    return "<h2>Means</h2><table>" + head + "".join(body) + "</table>"


def _grid_table(plan: Plan) -> str:
    """The learning-rate grids: each rate's best validation accuracy, and the choice."""
    rows = lr_grid.grid_rows(plan)
    if not rows:
        return ""
    head = "<tr><th>curve</th><th>at</th><th>lr</th><th>best validation</th><th>chosen</th></tr>"
    body = [
        f"<tr><td class='l'>{html.escape(r.curve)}</td><td>{html.escape(r.x)}</td>"
        f"<td>{r.lr:g}</td><td>{'' if r.val_acc is None else f'{100 * r.val_acc:.2f}%'}</td>"
        f"<td>{'&#10003;' if r.chosen else ''}</td></tr>"
        for r in rows
    ]
    return (
        "<h2>Learning rates</h2><p>Each family's rate, chosen on validation accuracy from its "
        "grid (grid points train with the first seed at the reference value; every point "
        "of the curve takes the choice of its nearest reference).</p><table>"
        + head + "".join(body) + "</table>"
    )  # fmt: skip


def _rows_table(rows: list[dict[str, Any]]) -> str:
    cols = ["point", "model", "params", "train_images", "lr", "steps", "max_steps", "stopped",
            "test_top1", "best_val_acc", "best_epoch", "wall_minutes"]  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            align = " class='l'" if c in ("point", "model") else ""
            text = html.escape(_cell(c, r[c]))
            if c == "stopped" and r[c] == CAP:
                text = f"<span class='cap'>&#9888; {text}</span>"
            cells.append(f"<td{align}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "<table><tr>" + head + "</tr>" + "".join(body) + "</table>"


def _cell(column: str, v: Any) -> str:
    if v is None:
        return ""
    if column in ("test_top1", "best_val_acc"):
        return f"{100 * v:.2f}%"
    if column == "lr":
        return f"{v:g}"
    if column == "params":
        return f"{v / 1e6:.2f}M"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _machines(rows: list[dict[str, Any]]) -> str:
    """The machines the points' reports name, and where this page is written when some
    reports (written before reports named one) do not say."""
    names = sorted({r["machine"] for r in rows if r["machine"]})
    unnamed = sum(1 for r in rows if not r["machine"])
    if unnamed:
        import torch

        from vitlab.runtime.device import cpu_info

        cpu = cpu_info()
        here = f"{cpu['model']} ({cpu['cores']} cores), torch {torch.__version__}"
        names.append(f"{unnamed} point(s) whose report names no machine; this page: {here}")
    return "; ".join(names) or "no point has finished"
