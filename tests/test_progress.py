import sys

import pytest
from tqdm import std as tqdm_std
from tqdm import tqdm

from vitlab.progress import progress_bar, refresh_seconds


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, moved on by the test instead of by sleeping: the counts are exact."""
    now = [0.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: now[0])  # bars read it as `self._time`
    monkeypatch.setattr(tqdm, "monitor_interval", 0)  # no monitor thread on the real clock
    return now


def _refreshes(make_bar, clock, capsys, seconds: float, steps: int = 400) -> int:
    """Lines a bar writes over `steps` steps that take `seconds` in all."""
    for _ in make_bar(range(steps)):
        clock[0] += seconds / steps
    return capsys.readouterr().err.count("\r")


def test_a_bar_writing_into_a_log_file_refreshes_rarely(clock, capsys):
    """With stderr a file (nohup, Slurm, CI), a second of steps is the opening and closing line,
    where tqdm's own default writes a line every tenth of a second."""
    assert refresh_seconds() == 30.0  # capsys: stderr is not a terminal
    assert _refreshes(lambda it: tqdm(it), clock, capsys, seconds=1.0) >= 5  # the baseline
    assert _refreshes(lambda it: progress_bar(it, desc="steps"), clock, capsys, 1.0) <= 2


def test_a_long_run_into_a_log_file_still_shows_progress_every_30_seconds(clock, capsys):
    lines = _refreshes(lambda it: progress_bar(it), clock, capsys, seconds=120.0)
    assert 4 <= lines <= 2 + 120 / 30  # opening and closing lines, one per 30 s between
    assert _refreshes(lambda it: tqdm(it), clock, capsys, seconds=120.0) > 100


def test_on_a_terminal_a_bar_refreshes_as_often_as_tqdm(clock, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert refresh_seconds() == 0.1
    ours = _refreshes(lambda it: progress_bar(it), clock, capsys, seconds=1.0)
    assert ours == _refreshes(lambda it: tqdm(it), clock, capsys, seconds=1.0) >= 5
