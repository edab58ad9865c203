"""scripts/check_targets.py on temporary result files: pass, fail, stale and not measured."""

from __future__ import annotations

import json
from pathlib import Path

import bench_federated
import check_targets as targets
import pytest


def _mtl(ctan: float, hps: float, mtan: float, complete: bool = True) -> dict:
    summary = {
        arch: {"delta_m": {"mean": value}}
        for arch, value in (("ctan", ctan), ("hps", hps), ("mtan", mtan))
    }
    return {
        "suites": {
            suite: {"complete": complete, "summary": summary}
            for suite in ("openkbp", "derm", "chest")
        }
    }


def _by_name(results: Path) -> dict[str, object]:
    return {t.name: targets.check(t, results) for t in targets.TARGETS}


def test_every_target_is_not_measured_without_files(tmp_path: Path) -> None:
    outcomes = _by_name(tmp_path)
    assert {o.status for o in outcomes.values()} == {"not measured"}
    assert outcomes["mtl/derm: CTAN Δm vs STL (%)"].threshold == pytest.approx(4.67)


def test_mtl_targets_pass_and_fail(tmp_path: Path) -> None:
    (tmp_path / "bench_mtl.json").write_text(json.dumps(_mtl(ctan=5.0, hps=6.0, mtan=1.0)))
    outcomes = _by_name(tmp_path)
    assert outcomes["mtl/chest: CTAN Δm vs STL (%)"].status == "pass"
    assert outcomes["mtl/chest: CTAN Δm above HPS's (%)"].status == "fail"
    assert outcomes["mtl/chest: CTAN Δm above HPS's (%)"].threshold == pytest.approx(6.0)
    assert outcomes["mtl/chest: CTAN Δm above MTAN's (%)"].status == "pass"
    (tmp_path / "bench_mtl.json").write_text(json.dumps(_mtl(ctan=4.0, hps=1.0, mtan=1.0)))
    assert _by_name(tmp_path)["mtl/openkbp: CTAN Δm vs STL (%)"].status == "fail"


def test_incomplete_suite_or_null_value_is_not_measured(tmp_path: Path) -> None:
    (tmp_path / "bench_mtl.json").write_text(json.dumps(_mtl(5.0, 1.0, 1.0, complete=False)))
    assert _by_name(tmp_path)["mtl/derm: CTAN Δm vs STL (%)"].status == "not measured"
    (tmp_path / "bench_mtl.json").write_text(json.dumps(_mtl(None, 1.0, 1.0)))
    assert _by_name(tmp_path)["mtl/derm: CTAN Δm vs STL (%)"].status == "not measured"


def _federated(suite: str, complete: bool, **checks: float) -> dict:
    """A suite record of the settings its config gives now, with ``checks``."""
    settings = bench_federated.current_settings(suite, None)
    return settings | {"complete": complete, "seeds": [0, 1, 2], "checks": checks}


def test_federated_targets_wait_for_every_seed(tmp_path: Path) -> None:
    suites = {
        "derm": _federated("derm", True, fed_over_central=0.99, fed_over_alone=0.9),
        "openkbp": _federated("openkbp", False, fed_over_central=0.99) | {"seeds": [0]},
    }
    (tmp_path / "bench_federated.json").write_text(json.dumps({"suites": suites}))
    outcomes = _by_name(tmp_path)
    assert outcomes["federated/derm: federated / centralised CTAN (worst task)"].status == "pass"
    assert outcomes["federated/derm: federated CTAN / sites alone (worst task)"].status == "fail"
    waiting = outcomes["federated/openkbp: federated / centralised CTAN (worst task)"]
    assert waiting.status == "not measured" and "seeds run: [0]" in waiting.note


def test_a_federated_suite_measured_with_other_settings_is_stale(tmp_path: Path) -> None:
    derm = _federated("derm", True, fed_over_central=0.99, fed_over_alone=1.2)
    derm["sizes"] = derm["sizes"] | {"batch_size": 1000}
    (tmp_path / "bench_federated.json").write_text(json.dumps({"suites": {"derm": derm}}))
    outcome = _by_name(tmp_path)["federated/derm: federated / centralised CTAN (worst task)"]
    assert outcome.status == "stale" and outcome.value == pytest.approx(0.99)
    assert "batch_size 1000 → " in outcome.note and "--suite derm`" in outcome.note
    assert targets.main(["--results", str(tmp_path), "--strict"]) == 1


def test_model_and_data_targets(tmp_path: Path) -> None:
    archs = {"ctan": {"step_ratio_to_hps": 1.2, "images_per_second": 25.0}}
    models = {"results": {"2d": {"archs": archs}, "3d": {"archs": {"ctan": {}}}}}
    (tmp_path / "bench_models.json").write_text(json.dumps(models))
    data = {
        "openkbp_parse_s_per_patient": {"value": 0.2},
        "epoch_s": {"ratio_uncached_over_cached": 9.0},
    }
    (tmp_path / "bench_data.json").write_text(json.dumps(data))
    outcomes = _by_name(tmp_path)
    assert outcomes["models/2d: CTAN/HPS training-step time on CPU"].status == "pass"
    assert outcomes["models/3d: CTAN/HPS training-step time on CPU"].status == "not measured"
    assert outcomes["models/2d: CTAN 64x64 training images per second"].status == "fail"
    assert outcomes["data: OpenKBP parse seconds per patient"].status == "pass"
    assert outcomes["data: uncached / cached epoch time"].status == "fail"


def test_exit_status_only_strict_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bench_data.json").write_text("{not json")
    assert targets.main(["--results", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "NOT MEASURED" in output and "bad JSON" in output
    assert targets.main(["--results", str(tmp_path), "--strict"]) == 1
