"""Running a study's points: in this process, as N local processes, or as commands for someone
else's scheduler (Slurm job arrays, `xargs -P`, a cluster launcher). No scheduler of our own.

A point is done when its run directory holds `report.json` (the last thing `fit` writes); a
point with `last.state.pt` but no report resumes from that checkpoint; a point that needs others
(it loads a pre-training's weights, or takes its learning rate from a grid) waits until they are
done, and its point.yaml is written again just before it runs, with the rate its grid chose
(`vitlab.study.lr_grid`). So a killed study, rerun, continues where it stopped and never
retrains a finished point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from vitlab.errors import VitlabError
from vitlab.progress import progress_bar, say
from vitlab.study.plan import POINT_FILE, Plan, Point, write_point
from vitlab.train.state import RUN_FILES, STATE_FILE

log = logging.getLogger("vitlab")

LOG_FILE = "train.log"  # a point run in a process of its own writes its output here


@dataclass
class Outcome:
    """What one call of `run_points` did."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # done before this call
    failed: dict[str, str] = field(default_factory=dict)  # id -> the reason
    waiting: list[str] = field(default_factory=list)  # never ran: what they start from failed
    minutes: float = 0.0


def is_done(p: Point) -> bool:
    return (p.run_dir / RUN_FILES["report"]).is_file()


def command(p: Point, python: bool = False) -> list[str]:
    """The `vitlab train` command line that runs (or resumes) a point."""
    head = [sys.executable, "-m", "vitlab"] if python else ["vitlab"]
    return [*head, "train", "--config", str(p.run_dir / POINT_FILE), "--resume", "auto", "-q"]


def print_commands(plan: Plan) -> tuple[list[str], list[Point]]:
    """One shell line per unfinished point that can start now, and the points that wait for
    others (a pre-training, a learning-rate grid) to finish first."""
    done = {p.id for p in plan.points if is_done(p)}
    ready = [p for p in plan.points if p.id not in done and set(p.needs) <= done]
    later = [p for p in plan.points if p.id not in done and not set(p.needs) <= done]
    return [shlex.join(command(p)) for p in ready], later


def threads_per_job(jobs: int) -> int:
    """This machine's threads (OMP_NUM_THREADS, else its cores) shared evenly by `jobs`."""
    total = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return max(1, total // jobs)


def run_points(
    plan: Plan, jobs: int = 1, on_done: Callable[[Point], None] | None = None
) -> Outcome:
    """Train every unfinished point, `jobs` at a time (1: in this process, so Ctrl-C stops it
    at once), each after the points it needs; a point that fails is reported and the others
    go on."""
    out, t0 = Outcome(), time.perf_counter()
    out.skipped = [p.id for p in plan.points if is_done(p)]
    todo = [p for p in plan.points if p.id not in out.skipped]
    if todo:
        say(f"{plan.study}: {len(todo)} of {len(plan.points)} points to train, {jobs} at a time")
    with progress_bar(total=len(todo), desc=plan.study, unit="point", dynamic_ncols=True) as bar:

        def finished(p: Point, error: str | None) -> None:
            if error:
                out.failed[p.id] = error
                say(f"point {p.id} failed: {error}")
            else:
                say(finished_line(p))
                out.trained.append(p.id)
                if on_done is not None:
                    on_done(p)
            bar.update(1)

        def start(p: Point) -> None:  # its point.yaml, with the rate its grid chose
            write_point(plan, p)

        if jobs == 1:
            _one_at_a_time(todo, set(out.skipped), start, finished)
        else:
            _in_processes(todo, set(out.skipped), jobs, start, finished)
    done = set(out.skipped) | set(out.trained)
    out.waiting = [p.id for p in todo if p.id not in done and p.id not in out.failed]
    out.minutes = (time.perf_counter() - t0) / 60
    return out


def _ready(todo: list[Point], done: set[str]) -> list[Point]:
    return [p for p in todo if set(p.needs) <= done]


def _one_at_a_time(todo: list[Point], done: set[str], start: Callable, finished: Callable) -> None:
    todo = list(todo)
    while ready := _ready(todo, done):
        p = ready[0]
        todo.remove(p)
        start(p)
        error = _in_process(p)
        if not error:
            done.add(p.id)
        finished(p, error)


def _in_processes(
    todo: list[Point], done: set[str], jobs: int, start: Callable, finished: Callable
) -> None:
    run = _subprocess(threads_per_job(jobs))
    todo = list(todo)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, Point] = {}
        while True:
            for p in _ready(todo, done)[: jobs - len(running)]:
                todo.remove(p)
                start(p)
                running[pool.submit(run, p)] = p
            if not running:  # nothing left, or what is left needs a point that failed
                return
            for f in wait(running, return_when=FIRST_COMPLETED)[0]:
                p = running.pop(f)
                error = f.result()
                if not error:
                    done.add(p.id)
                finished(p, error)


def _in_process(p: Point) -> str | None:
    """Train one point with `vitlab.train.fit`, its log in the run directory's train.log (only
    warnings on the console); a user-facing error is returned, not raised."""
    from vitlab.train.config import build_config
    from vitlab.train.run import fit

    with _point_log(p.run_dir / LOG_FILE):
        try:
            cfg = build_config(str(p.run_dir / POINT_FILE))
            fit(cfg, resume="auto" if (p.run_dir / STATE_FILE).is_file() else None)
        except VitlabError as e:
            log.error("%s", e)
            return str(e)
    return None


@contextlib.contextmanager
def _point_log(path: Path) -> Iterator[None]:
    """vitlab's log lines into `path`, and only its warnings onto the console handlers."""
    logger = logging.getLogger("vitlab")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    console = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for h in console:
        h.addFilter(_warnings_only)
    try:
        yield
    finally:
        for h in console:
            h.removeFilter(_warnings_only)
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name != "vitlab"


STOPPED = {"patience": "stopped by patience", "cap": "reached its cap: not converged"}
STOPPED["budget"] = "fixed budget"


def finished_line(p: Point) -> str:
    """One line about a finished point, from its report.json: its test figure, its best
    validation, the steps it trained of its cap and why it stopped, its minutes."""
    r = json.loads((p.run_dir / RUN_FILES["report"]).read_text())
    best = r.get("best") or {}
    if r.get("top1") is not None:
        top1 = f"test top-1 {100 * r['top1']:.2f}%"
    elif r.get("val_loss") is not None:
        top1 = f"{r.get('objective', 'pre-training')} validation loss {r['val_loss']:.4f}"
    else:
        top1 = "no test split"
    at = ""
    if best.get("val_acc") is not None:
        at = f", best validation {100 * best['val_acc']:.2f}% at step {best['step']}"
    steps = f", {r['steps']} steps"
    if r.get("max_steps") is not None:
        steps += f" of {r['max_steps']}"
    if r.get("stopped") is not None:
        steps += f" ({STOPPED.get(r['stopped'], r['stopped'])})"
    return f"{p.id}: {top1}{at}{steps}, {r['wall_minutes']:.1f} min"


def _subprocess(threads: int) -> Callable[[Point], str | None]:
    """Train a point as `python -m vitlab train ...` with `threads` threads, its output in the
    run directory's train.log; a failure returns the log's last line."""

    def run(p: Point) -> str | None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        logfile = p.run_dir / LOG_FILE
        with open(logfile, "ab") as f:
            cmd = command(p, python=True)
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if rc == 0:
            return None
        return f"exit status {rc}: {_last_line(logfile)} (the whole log: {logfile})"

    return run


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"
