import time

from tqdm import tqdm

from vitlab.progress import progress_bar


def _refreshes(make_bar, capsys) -> int:
    for _ in make_bar(range(400)):
        time.sleep(0.002)  # about a second of work
    return capsys.readouterr().err.count("\r")


def test_a_bar_writing_into_a_log_file_refreshes_rarely(capsys):
    """With stderr a file (nohup, Slurm, CI), a second of steps is the opening and closing line,
    where tqdm's own default writes a line every tenth of a second."""
    assert _refreshes(lambda it: tqdm(it), capsys) >= 5  # the baseline this guards against
    assert _refreshes(lambda it: progress_bar(it, desc="steps"), capsys) <= 2
