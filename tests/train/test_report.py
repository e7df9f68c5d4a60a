"""What a run writes per epoch (vitlab.train.report): metrics.jsonl, summary.csv and curves.png,
with held-out columns only for the splits the run has."""

import csv
import json

from PIL import Image

from vitlab.train.report import plot_curves, write_history

ROWS = [
    {"epoch": 1, "step": 4, "lr": 1e-3, "train_loss": 2.0, "train_acc": 0.3, "img_s": 100.0,
     "test_loss": 1.5, "test_acc": 0.4, "test_top5": 0.9},
    {"epoch": 2, "step": 8, "lr": 5e-4, "train_loss": 1.0, "train_acc": 0.6, "img_s": 110.0,
     "test_loss": 1.2, "test_acc": 0.5, "test_top5": 0.95},
]  # fmt: skip


def test_history_files_hold_every_epoch_and_only_the_splits_present(tmp_path):
    write_history(tmp_path, ROWS)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert "test_acc" in table[0] and "val_acc" not in table[0]  # no validation split here
    assert float(table[1]["lr"]) == 5e-4


def test_curves_are_one_png(tmp_path):
    path = plot_curves(ROWS, tmp_path / "curves.png")
    w, h = Image.open(path).size
    assert w > 2 * h  # loss, accuracy and learning rate side by side
