"""The aggregation, table and docs-section functions of scripts/bench_mtl.py, on synthetic runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bench_mtl as bench
import pytest

from ctan.tasks import TaskSpec

TASKS = [
    TaskSpec(name="dose", kind="regression", classes=1, metrics=["mae"]),
    TaskSpec(name="organs", kind="segmentation", classes=2, exclusive=False, metrics=["dice"]),
]


def _run(arch: str, seed: int, mae: float, dice: float, seconds: float = 1.0) -> dict:
    return {
        "arch": arch,
        "seed": seed,
        "metrics": {"dose": {"mae": mae}, "organs": {"dice": dice}},
        "epoch_seconds": [seconds * 3, seconds, seconds * 1.1],
        "split_sizes": {"train": 10, "validation": 2, "test": 3},
    }


def test_delta_m_sign_for_lower_is_better() -> None:
    stl = {"dose": {"mae": 2.0}, "organs": {"dice": 0.5}}
    lower_error = {"dose": {"mae": 1.0}, "organs": {"dice": 0.5}}
    higher_dice = {"dose": {"mae": 2.0}, "organs": {"dice": 0.6}}
    assert bench.seed_delta_m(lower_error, stl, TASKS) == pytest.approx(25.0)
    assert bench.seed_delta_m(higher_dice, stl, TASKS) == pytest.approx(10.0)


def test_delta_m_is_nan_where_a_metric_is_undefined() -> None:
    stl = {"dose": {"mae": 2.0}, "organs": {"dice": 0.5}}
    assert math.isnan(
        bench.seed_delta_m({"dose": {"mae": None}, "organs": {"dice": 1}}, stl, TASKS)
    )


def test_summarise_pairs_seeds_with_stl_and_gives_t_interval() -> None:
    runs = []
    for seed, gain in enumerate([10.0, 20.0, 30.0]):
        runs.append(_run("stl", seed, 2.0, 0.5, seconds=2.0))
        runs.append(_run("hps", seed, 2.0, 0.5 * (1 + gain / 100), seconds=1.0))
    summary = bench.summarise(runs, TASKS)
    assert list(summary) == ["stl", "hps"]
    delta = summary["hps"]["delta_m"]
    # one task of two gains gain% -> Δm = gain / 2
    assert delta["values"] == pytest.approx([5.0, 10.0, 15.0])
    assert delta["mean"] == pytest.approx(10.0)
    assert delta["ci95"] == pytest.approx(4.303 * 5.0 / math.sqrt(3), rel=1e-3)
    assert summary["stl"]["delta_m"]["mean"] == pytest.approx(0.0)
    dice = summary["hps"]["metrics"]["organs"]["dice"]
    assert dice["mean"] == pytest.approx(0.6) and dice["sd"] == pytest.approx(0.05)
    assert dice["n"] == 3
    # fastest epoch of each run, as a ratio to HPS on the same seed
    assert summary["stl"]["epoch_ratio_to_hps"] == pytest.approx(2.0)
    assert summary["hps"]["epoch_ratio_to_hps"] == pytest.approx(1.0)


def test_summarise_without_stl_run_of_a_seed_leaves_it_out() -> None:
    runs = [_run("stl", 0, 2.0, 0.5), _run("ctan", 0, 1.0, 0.5), _run("ctan", 1, 1.0, 0.5)]
    delta = bench.summarise(runs, TASKS)["ctan"]["delta_m"]
    assert delta["seeds"] == [0]
    assert delta["mean"] == pytest.approx(25.0) and math.isnan(delta["ci95"])
    assert math.isnan(bench.summarise(runs, TASKS)["ctan"]["epoch_ratio_to_hps"])


def test_render_table_after_json_round_trip() -> None:
    runs = [_run(a, s, 2.0 - 0.1 * s, 0.5) for s in (0, 1) for a in ("stl", "hps", "ctan")]
    summary = json.loads(json.dumps(bench.json_safe(bench.summarise(runs, TASKS))))
    tasks = [{"name": t.name, "metrics": t.metrics} for t in TASKS]
    table = bench.render_table(summary, tasks).splitlines()
    assert table[0].startswith("| arch | dose mae ↓ | organs dice ↑ | Δm vs STL")
    assert len(table) == 2 + 3
    assert table[2].startswith("| STL | 1.95 ± 0.071 | 0.500 ± 0 |")
    assert "0 (reference)" in table[2]
    assert "+0.00 ± 0.00 (n=2)" in table[4]


def test_render_table_marks_missing_values() -> None:
    summary = {
        "ctan": {
            "metrics": {
                "dose": {"mae": {"mean": None, "sd": None, "n": 0}},
                "organs": {"dice": {"mean": 0.5, "sd": None, "n": 1}},
            },
            "delta_m": {"seeds": [], "values": [], "mean": None, "ci95": None},
            "epoch_ratio_to_hps": None,
        }
    }
    tasks = [{"name": t.name, "metrics": t.metrics} for t in TASKS]
    assert (
        bench.render_table(summary, tasks).splitlines()[2] == "| CTAN | n/a | 0.500 | n/a | n/a |"
    )


def test_number_text_keeps_the_precision_it_shows() -> None:
    cases = {5.0: "5.00", 0.23: "0.230", 0.0094: "0.00940", 406.0: "406", 9.996: "10.0"}
    assert {v: bench.number_text(v) for v in cases} == cases
    assert bench.number_text(0.99951, 2) == "1.0"
    assert bench.number_text(12345.6) == "12300"
    assert bench.number_text(-0.1778, 4) == "-0.1778"
    assert bench.number_text(1.2e-6) == "1.20e-06"
    assert bench.number_text(0.0) == "0"
    assert bench.number_text(None) == bench.number_text(math.nan) == "n/a"


def test_render_rewrites_every_stored_section_from_its_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [_run(a, s, 2.0 - 0.1 * s, 0.5) for s in (0, 1) for a in ("stl", "hps", "ctan")]
    summary = bench.json_safe(bench.summarise(runs, TASKS))
    suite = {
        "config": "configs/toy.yaml",
        "sizes": {"spatial_dims": 2, "image_size": [8, 8], "widths": [4], "batch_size": 2},
        "epochs": 1,
        "seeds": [0, 1],
        "resplit": False,
        "runs": runs,
        "wall_seconds": 60.0,
        "tasks": [{"name": t.name, "metrics": t.metrics} for t in TASKS],
        "summary": summary,
    }
    report = {
        "quick": True,
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"device": "cpu", "device_name": "x", "cpu_count": 2, "torch": "2"},
        "file": "bench_mtl_quick.json",
        "suites": {"toy": suite},
    }
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_mtl_quick.json").write_text(json.dumps(report))
    (results / "bench_mtlx.json").write_text("not this benchmark's file")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("intro\n<!-- bench_mtl_quick:start -->\nold\n<!-- bench_mtl_quick:end -->\n")
    (tmp_path / "bench_mtl_quick.png").write_bytes(b"png")
    monkeypatch.setattr(bench, "RESULTS", results)
    assert bench.main(["--render", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert (
        text.startswith("intro\n<!-- bench_mtl_quick:start -->\nMode: quick") and "old" not in text
    )
    assert "| STL | 1.95 ± 0.071 | 0.500 ± 0 |" in text and "(bench_mtl_quick.png)" in text
    (results / "bench_mtl.json").write_text("{")
    with pytest.raises(ValueError, match=r"bench_mtl\.json is not valid JSON"):
        bench.render_stored(results, docs, "bench_mtl", bench.render_section)
    assert "| STL | 1.95" in docs.read_text()


def test_json_safe_replaces_non_finite() -> None:
    assert bench.json_safe({"a": [math.nan, 1.0, (math.inf,)], 2: "x"}) == {
        "a": [None, 1.0, [None]],
        "2": "x",
    }


def test_plot_delta_m_writes_png(tmp_path: Path) -> None:
    runs = [_run(a, s, 2.0 - 0.1 * s * (a == "ctan"), 0.5) for s in (0, 1) for a in bench.ARCHS]
    suites = {"toy": {"summary": bench.json_safe(bench.summarise(runs, TASKS))}}
    path = bench.plot_delta_m(suites, tmp_path / "plot.png", target=4.67)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_change_only_what_they_name() -> None:
    suite = bench.SUITES["derm"]
    plain = bench.suite_config(suite, quick=True, epochs=None)
    uncertainty = bench.suite_config(suite, quick=True, epochs=None, variant="uncertainty")
    balanced = bench.suite_config(suite, quick=True, epochs=None, variant="balanced")
    assert plain.train.weighting == "equal" and uncertainty.train.weighting == "uncertainty"
    assert uncertainty.tasks == plain.tasks and balanced.train == plain.train
    weights = {t.name: t.class_weights for t in balanced.tasks}
    assert weights == {"lesion": None, "diagnosis": "balanced"}
    assert set(bench.VARIANTS) >= {"uncertainty", "dwa", "balanced"}
    with pytest.raises(ValueError, match="unknown variant 'focal'"):
        bench.suite_config(suite, quick=True, epochs=None, variant="focal")
