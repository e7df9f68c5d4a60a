"""Progress bars that stay readable in log files.

On a terminal a bar refreshes as tqdm does (10 times a second). When stderr is a file (`nohup`,
Slurm, CI) every refresh is another line of the log, so there it refreshes every 30 seconds.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def refresh_seconds() -> float:
    """Seconds between refreshes: tqdm's 0.1 on a terminal, 30 when stderr is a file."""
    return 0.1 if sys.stderr.isatty() else 30.0


def say(message: str) -> None:
    """Print a line on stderr above any progress bar (not onto the bar's own line)."""
    tqdm.write(message, file=sys.stderr)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` (on stderr), refreshing every `refresh_seconds()`."""
    kwargs.setdefault("mininterval", refresh_seconds())
    return tqdm(iterable, **kwargs)
