"""End to end with Flower's simulation engine (a real SuperLink, Ray workers, the real apps)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import derm_config

from ctan.checkpoint import load_checkpoint
from ctan.config import load_config
from ctan.models import build_model, parameter_groups
from server.rounds import load_state
from server.simulate import PROJECT_ROOT, processes_of, running, simulate, stop_leftovers

pytestmark = pytest.mark.slow


def write_config(
    ham_phantom: Path, tmp: Path, rounds: int, strategy: str = "fedavg", **federation: object
) -> Path:
    raw = derm_config(ham_phantom, tmp).model_dump(mode="json")
    raw["train"]["epochs"] = 1
    raw["federation"] = {
        "id": "sim-test",
        "rounds": rounds,
        "strategy": strategy,
        "min_sites": 3,
        "round_timeout": 120,
        "partition": {"method": "site"},
        "sites": [
            {"name": name, "tasks": ["lesion"] if name == "rosendahl" else ["lesion", "diagnosis"]}
            for name in ("rosendahl", "vidir_modern", "vidir_molemax")
        ],
        **federation,
    }
    path = tmp / "federation.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def final_arrays(output: Path) -> dict[str, np.ndarray]:
    return load_state(output / "sim-test" / "server-state.pt")["arrays"]


@pytest.fixture(scope="module")
def two_rounds(ham_phantom: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("sim")
    path = write_config(ham_phantom, tmp, rounds=2)
    output = tmp / "out"
    assert simulate(path, 0, output, None, resume=False, keep_home=False) == 0
    return load_config(path), output


def test_shared_groups_change_and_heads_stay_per_site(two_rounds):
    config, output = two_rounds
    run = next((output / "sim-test").glob("run-*"))
    saved = load_checkpoint(run / "global_model.pt")
    assert saved.extra["tasks"] == ["diagnosis", "lesion"]
    trained = saved.state_dict
    initial = build_model(config).state_dict()
    groups = parameter_groups(build_model(config))
    for group in ("encoder", "task.lesion", "task.diagnosis"):
        assert any(not torch.equal(trained[k], initial[k]) for k in groups[group]), group
    states = output / "site-state" / "sim-test"
    heads = {
        site: load_checkpoint(states / site / "model.pt").state_dict
        for site in ("rosendahl", "vidir_modern", "vidir_molemax")
    }
    key = groups["heads.lesion"][0]
    assert not torch.equal(heads["rosendahl"][key], heads["vidir_modern"][key])
    shared = groups["encoder"][0]
    assert torch.equal(heads["rosendahl"][shared], heads["vidir_modern"][shared])


def test_site_without_a_task_never_sends_its_group(two_rounds):
    _, output = two_rounds
    log = (output / "site-state" / "sim-test" / "rosendahl" / "payloads.jsonl").read_text()
    sent = [json.loads(line) for line in log.strip().splitlines()]
    assert [p["kind"] for p in sent] == ["query", "train", "evaluate", "train", "evaluate"]
    assert all(p["groups"] == ["encoder", "task.lesion"] for p in sent if p["kind"] == "train")
    metrics = [key for p in sent if p["kind"] != "query" for key in p["values"]["metrics"]]
    assert "lesion.loss" in metrics and not any(k.startswith("diagnosis.") for k in metrics)
    other = (output / "site-state" / "sim-test" / "vidir_modern" / "payloads.jsonl").read_text()
    assert '"groups": ["encoder", "task.diagnosis", "task.lesion"]' in other


def test_metrics_logged_and_report_written(two_rounds):
    _, output = two_rounds
    run = next((output / "sim-test").glob("run-*"))
    rows = (run / "metrics.csv").read_text()
    for needle in (
        "train/rosendahl,lesion.loss",
        "validation/vidir_modern,diagnosis.auc",
        "train/vidir_molemax,bytes-received",
        "round,wall-seconds",
    ):
        assert needle in rows
    report = (run / "report.md").read_text()
    assert "| rosendahl | lesion |" in report and "Traffic and time per round" in report
    assert "Not a medical device" in (run / "model_card.md").read_text()
    assert (run / "federated_curves.png").stat().st_size > 0


def mean_losses(rows: list[dict], split: str) -> dict[int, float]:
    """Round -> mean of the task losses of the ``split`` rows (what model selection uses)."""
    return {
        row["step"]: float(np.mean([v for k, v in row.items() if k.endswith(".loss")]))
        for row in rows
        if row["split"] == split
    }


def best_round(output: Path) -> int:
    run = next((output / "sim-test").glob("run-*"))
    return load_checkpoint(run / "best_global_model.pt").extra["round"]


def test_best_round_kept_by_validation_loss(two_rounds):
    _, output = two_rounds
    run = next((output / "sim-test").glob("run-*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    overall = mean_losses(rows, "validation/all")
    assert sorted(overall) == [1, 2]
    best = load_checkpoint(run / "best_global_model.pt").extra
    assert best["round"] == min(overall, key=overall.get)
    assert best["validation-loss"] == pytest.approx(overall[best["round"]])
    report = (run / "report.md").read_text()
    assert f"Best round by validation loss over the sites: {best['round']} " in report
    for site in ("rosendahl", "vidir_modern", "vidir_molemax"):
        own = mean_losses(rows, f"validation/{site}")
        kept = load_checkpoint(output / "site-state" / "sim-test" / site / "best.pt")
        assert kept.extra["round"] == min(own, key=own.get), site
        assert kept.extra["validation-loss"] == pytest.approx(min(own.values()))


def test_resumed_run_matches_uninterrupted(two_rounds, ham_phantom: Path, tmp_path: Path):
    _, output = two_rounds
    path = write_config(ham_phantom, tmp_path, rounds=2)
    interrupted = tmp_path / "out"
    assert simulate(path, 1, interrupted, None, resume=False, keep_home=False) == 0
    saved = load_state(interrupted / "sim-test" / "server-state.pt")
    assert saved["round"] == 1 and saved["best"]["round"] == 1
    assert saved["best"]["validation-loss"] < math.inf
    assert [site["name"] for site in saved["sites"]] == [
        "rosendahl",
        "vidir_modern",
        "vidir_molemax",
    ]
    assert simulate(path, 2, interrupted, None, resume=True, keep_home=False) == 0
    expected, resumed = final_arrays(output), final_arrays(interrupted)
    assert best_round(interrupted) == best_round(output)
    assert sorted(expected) == sorted(resumed)
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


@pytest.mark.parametrize(
    ("strategy", "options", "state_prefix"),
    [
        ("fedadam", {}, "m_t/"),
        ("fedavgm", {"server_sgd": {"lr": 1.5, "momentum": 0.9}}, "momentum/"),
    ],
)
def test_server_optimiser_runs_and_resumes_with_its_state(
    ham_phantom: Path, tmp_path: Path, strategy: str, options: dict, state_prefix: str
):
    path = write_config(ham_phantom, tmp_path, rounds=2, strategy=strategy, **options)
    uninterrupted, interrupted = tmp_path / "whole", tmp_path / "parts"
    assert simulate(path, 0, uninterrupted, None, resume=False, keep_home=False) == 0
    state = load_state(uninterrupted / "sim-test" / "server-state.pt")
    assert any(key.startswith(state_prefix) for key in state["strategy"])
    assert simulate(path, 1, interrupted, None, resume=False, keep_home=False) == 0
    assert simulate(path, 2, interrupted, None, resume=True, keep_home=False) == 0
    expected, resumed = final_arrays(uninterrupted), final_arrays(interrupted)
    assert {a.dtype for a in expected.values()} == {np.dtype(np.float32)}
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


@contextlib.contextmanager
def simulation_process(
    ham_phantom: Path, tmp_path: Path, until: str
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``server.simulate`` of a 50-round federation in a process of its own, once its log shows
    ``until``, with its private home; killed and its leftovers stopped afterwards, whatever
    the test found."""
    path = write_config(ham_phantom, tmp_path, rounds=50)
    command = [sys.executable, "-m", "server.simulate", "--config", str(path)]
    command += ["--output-dir", str(tmp_path / "out")]
    log = tmp_path / "simulate.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, text=True
        )
    home = None
    try:
        deadline = time.monotonic() + 180
        while until not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        found = re.search(r"private FLWR_HOME (\S+),", log.read_text())
        home = Path(found.group(1)) if found else None
        assert home is not None and processes_of(home), "the SuperLink never started"
        yield process, home
    finally:
        process.kill()
        process.wait()
        if home is not None:
            stop_leftovers(home)
            shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["term", "hangup"])
def test_a_signal_stops_every_process_the_simulation_started(
    ham_phantom: Path, tmp_path: Path, signum: signal.Signals
):
    with simulation_process(ham_phantom, tmp_path, until="submitted") as (process, home):
        time.sleep(5)
        process.send_signal(signum)
        assert process.wait(timeout=60) == 128 + signum
        deadline = time.monotonic() + 30
        while processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_of(home) == []
        assert not home.exists()


def test_ctrl_c_twice_still_stops_every_process_and_removes_the_home(
    ham_phantom: Path, tmp_path: Path
) -> None:
    with simulation_process(ham_phantom, tmp_path, until="round 1/") as (process, home):
        agents = [
            pid
            for pid in processes_of(home)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::DashboardAgent")
        ]
        assert agents, "Ray's dashboard agent was not found by the private home"
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 128 + signal.SIGINT
        assert processes_of(home) == []
        assert not any(running(pid) for pid in agents)
        assert not home.exists()


def test_sites_that_do_not_fit_the_partition_are_named_before_anything_starts(
    ham_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from server.simulate import main

    path = write_config(
        ham_phantom, tmp_path, rounds=1, sites=[{"name": "rosendahl", "tasks": ["lesion"]}]
    )
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "federation.yaml" in error and "rosendahl" in error
    assert "private FLWR_HOME" not in error and not (tmp_path / "out").exists()


def test_a_site_too_small_to_split_is_named_before_anything_starts(
    ham_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from server.simulate import main

    path = write_config(ham_phantom, tmp_path, rounds=1)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["split"] = {"validation": 0.01, "test": 0.01}
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "cannot split its" in error and "split is empty" in error
    assert not (tmp_path / "out").exists()
