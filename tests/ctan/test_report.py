"""The run log (what a resumed run keeps of the rounds logged before it), the federated
report and the model card."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from factories import derm_config

from ctan.config import PhantomConfig, load_config
from ctan.report import RunLog, read_log, write_federated_report


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


def test_report_and_card_say_what_the_run_logged_and_trained(
    ham_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = derm_config(ham_phantom, tmp_path).model_dump(mode="json")
    raw["federation"] = {"id": "card", "rounds": 3, "min_sites": 1}
    config = load_config(raw)
    log = RunLog(tmp_path / "run", tensorboard=False)
    log.log(1, "round", {"wall-seconds": 2.0})
    log.log(1, "train/a", {"lesion.loss": 0.5, "train-seconds": 1.0})
    log.log(1, "validation/a", {"lesion.dice": 0.123456789, "lesion.loss": 0.4})
    log.close()
    sites = [{"name": "a", "tasks": ["lesion"], "labelled": {"lesion": 9}, "code_version": "x"}]
    renamed: list[str] = []
    replace = os.replace

    def recording_replace(source: str, target: str) -> None:
        renamed.append(Path(target).name)
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    write_federated_report(tmp_path / "run", config, sites)
    assert {"federated_curves.png", "report.md", "model_card.md"} <= set(renamed), "not atomic"
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "(fedavg, 1 rounds)" in card and "lesion dice 0.1235" in card
    assert "Not trained (no site held them): diagnosis" in card
    assert "diagnosis (classification" not in card
    assert "phantoms" not in card
    phantom = config.model_copy(
        update={"data": config.data.model_copy(update={"phantom": PhantomConfig()})}
    )
    write_federated_report(tmp_path / "run", phantom, sites)
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "Trained on phantoms (synthetic images in the ham10000 layout)" in card
    assert "1 rounds of 1 local epoch(s)" in (tmp_path / "run" / "report.md").read_text()


def test_undefined_metrics_are_logged_as_strict_json_nulls(tmp_path: Path) -> None:
    log = RunLog(tmp_path, tensorboard=False)
    log.log(1, "validation", {"diagnosis/auc": float("nan"), "lesion/dice": 0.5})
    log.close()

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record["diagnosis/auc"] is None and record["lesion/dice"] == 0.5


def test_a_value_from_before_the_last_round_is_marked_with_its_round(
    ham_phantom: Path, tmp_path: Path
) -> None:
    raw = derm_config(ham_phantom, tmp_path).model_dump(mode="json")
    raw["federation"] = {"id": "stale", "rounds": 2, "min_sites": 1}
    config = load_config(raw)
    log = RunLog(tmp_path / "run", tensorboard=False)
    for step, site, dice in ((1, "a", 0.1), (1, "b", 0.2), (2, "a", 0.3)):
        log.log(step, "round", {"wall-seconds": 2.0})
        log.log(step, f"validation/{site}", {"lesion.dice": dice})
    log.close()
    sites = [
        {"name": n, "tasks": ["lesion"], "labelled": {"lesion": 9}, "code_version": "x"}
        for n in ("a", "b")
    ]
    write_federated_report(tmp_path / "run", config, sites)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| a | 0.3000 |" in report and "| b | 0.2000 (round 1) |" in report
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "- a: lesion dice 0.3000" in card and "- b: lesion dice 0.2000 (round 1)" in card
