"""The run log: what a resumed run keeps of the rounds logged before it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ctan.report import RunLog, read_log


def test_a_resumed_log_drops_the_steps_after_the_last_completed_round(tmp_path: Path) -> None:
    log = RunLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, "train", {"loss": float(step)})
    log.close()
    resumed = RunLog(tmp_path, tensorboard=False, keep_until=2)
    resumed.log(3, "train", {"loss": 30.0})
    resumed.close()
    assert read_log(tmp_path / "metrics.csv")["train"]["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    with (tmp_path / "metrics.csv").open() as file:
        assert next(csv.reader(file)) == ["step", "split", "name", "value"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2, 3]


def test_a_resumed_log_starts_cleanly_without_earlier_files(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "new", tensorboard=True, keep_until=4)
    log.log(5, "train", {"loss": 1.0})
    log.close()
    assert read_log(tmp_path / "new" / "metrics.csv") == {"train": {"loss": [(5, 1.0)]}}
    assert any((tmp_path / "new" / "tensorboard").iterdir())


def test_a_resumed_log_drops_a_record_torn_by_a_crash(tmp_path: Path) -> None:
    log = RunLog(tmp_path, tensorboard=False)
    log.log(1, "train", {"loss": 1.0})
    log.close()
    with (tmp_path / "metrics.csv").open("a") as file:
        file.write("2,tra")
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 2, "spl')
    RunLog(tmp_path, tensorboard=False, keep_until=2).close()
    assert read_log(tmp_path / "metrics.csv") == {"train": {"loss": [(1, 1.0)]}}
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
