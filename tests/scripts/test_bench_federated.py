"""The pure parts of scripts/bench_federated.py: ratios, site weighting, tables, markers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bench_federated as bench
import pytest

TASKS = [
    {"name": "dose", "metrics": ["dose_score", "dvh_score"], "higher_is_better": [False, False]},
    {"name": "organs", "metrics": ["dice"], "higher_is_better": [True]},
]


def _run(variant: str, seed: int, dose: float, dice: float) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "metrics": {"dose": {"dose_score": dose, "dvh_score": 2 * dose}, "organs": {"dice": dice}},
    }


def test_oriented_ratio_is_above_one_when_better_in_either_direction():
    assert bench.oriented_ratio(0.9, 0.6, higher_is_better=True) == pytest.approx(1.5)
    assert bench.oriented_ratio(2.0, 4.0, higher_is_better=False) == pytest.approx(2.0)
    assert math.isnan(bench.oriented_ratio(None, 1.0, True))
    assert math.isnan(bench.oriented_ratio(1.0, 0.0, True))
    assert math.isnan(bench.oriented_ratio(0.0, 1.0, False))


def test_weighted_site_mean_weights_by_labelled_cases_and_skips_missing():
    sites = {
        "a": {
            "metrics": {"organs": {"dice": 0.9}, "dose": {"mae": 1.0}},
            "labelled": {"organs": 30, "dose": 10},
        },
        "b": {
            "metrics": {"organs": {"dice": 0.5}, "dose": {"mae": math.nan}},
            "labelled": {"organs": 10, "dose": 10},
        },
        "c": {
            "metrics": {"organs": {"dice": 0.1}, "dose": {"mae": 3.0}},
            "labelled": {"organs": 0, "dose": 30},
        },
    }
    means = bench.weighted_site_mean(sites)
    assert means["organs"]["dice"] == pytest.approx((0.9 * 30 + 0.5 * 10) / 40)
    assert means["dose"]["mae"] == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    empty = bench.weighted_site_mean({"a": {"metrics": {"t": {"m": None}}, "labelled": {"t": 5}}})
    assert math.isnan(empty["t"]["m"])


def test_summary_and_checks_orient_primary_metrics():
    runs = [
        _run("centralised-ctan", 0, dose=2.0, dice=0.80),
        _run("centralised-ctan", 1, dose=2.2, dice=0.82),
        _run("federated-ctan", 0, dose=2.1, dice=0.79),
        _run("federated-ctan", 1, dose=2.1, dice=0.79),
        _run("alone-ctan", 0, dose=3.0, dice=0.60),
        _run("alone-ctan", 1, dose=3.0, dice=0.60),
    ]
    summary = bench.summarise(runs, TASKS)
    assert list(summary) == ["centralised-ctan", "federated-ctan", "alone-ctan"]
    assert summary["centralised-ctan"]["dose"]["dose_score"]["mean"] == pytest.approx(2.1)
    assert summary["federated-ctan"]["organs"]["dice"]["n"] == 2
    checks = bench.suite_checks(summary, TASKS)
    assert checks["per_task"]["dose"]["fed_over_central"] == pytest.approx(1.0)
    assert checks["per_task"]["organs"]["fed_over_central"] == pytest.approx(0.79 / 0.81)
    assert checks["fed_over_central"] == pytest.approx(0.79 / 0.81)
    assert checks["fed_over_alone"] == pytest.approx(min(3.0 / 2.1, 0.79 / 0.60))
    missing = bench.suite_checks(bench.summarise(runs[:2], TASKS), TASKS)
    assert math.isnan(missing["fed_over_central"])


def test_round_overheads_and_summary_count_rounds_with_enough_training():
    rows = [
        {"step": "1", "split": "round", "name": "train-wall-seconds", "value": "33"},
        {"step": "1", "split": "round", "name": "site-train-seconds", "value": "60"},
        {"step": "1", "split": "train/a", "name": "train-seconds", "value": "30"},
        {"step": "2", "split": "round", "name": "train-wall-seconds", "value": "11"},
        {"step": "2", "split": "round", "name": "site-train-seconds", "value": "10"},
    ]
    rounds = bench.round_overheads(rows)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["ratio"] == pytest.approx(0.55)
    assert rounds[0]["slowest_site_seconds"] == 30
    assert rounds[0]["critical_ratio"] == pytest.approx(1.1)
    assert math.isnan(rounds[1]["critical_ratio"])
    summary = bench.overhead_summary([{"name": "x", "rounds": rounds}], min_train_seconds=30)
    assert summary["rounds"] == 1
    assert summary["ratio"] == pytest.approx(0.55)
    assert summary["critical_ratio"] == pytest.approx(1.1)
    assert summary["all_rounds_ratio"] == pytest.approx((0.55 + 1.1) / 2)
    none = bench.overhead_summary([{"name": "x", "rounds": rounds[1:]}], min_train_seconds=30)
    assert math.isnan(none["ratio"])


def test_head_payloads_and_byte_excess():
    local = [json.dumps({"groups": ["encoder", "task.a"], "bytes": 100}), ""]
    assert bench.head_payloads(local) == {"groups": [], "bytes": 0}
    shared = [*local, json.dumps({"groups": ["encoder", "heads.a"], "bytes": 300})]
    assert bench.head_payloads(shared) == {"groups": ["heads.a"], "bytes": 300}
    assert bench.byte_excess(1030, 1000) == pytest.approx(0.03)
    assert bench.byte_excess(970, 1000) == pytest.approx(0.03)
    assert math.isnan(bench.byte_excess(10, 0))


def _report() -> dict:
    summary = bench.summarise(
        [_run("centralised-ctan", 0, 2.0, 0.8), _run("federated-ctan", 0, 2.1, 0.78)], TASKS
    )
    suite = {
        "config": "configs/federated/openkbp-iid.yaml",
        "tasks": TASKS,
        "sizes": {"spatial_dims": 2, "image_size": [32, 32], "widths": [8, 16], "batch_size": 4},
        "rounds": 2,
        "local_epochs": 1,
        "seeds": [0],
        "site_sizes": {"site_1": "10/2/3"},
        "wall_seconds": 60.0,
        "complete": True,
        "summary": summary,
        "checks": bench.suite_checks(summary, TASKS),
    }
    return bench.json_safe(
        {
            "quick": True,
            "date": "2026-01-01",
            "file": "bench_federated_quick.json",
            "machine": {"device": "cpu", "cpu_count": 2, "torch": "2", "flwr": "1.42.0"},
            "suites": {"openkbp": suite},
            "bytes": {
                "openkbp": {
                    "site": "site_1",
                    "groups": ["encoder", "task.dose"],
                    "raw_bytes": 1000,
                    "recorddict_bytes": 1010,
                    "object_bytes": 1040,
                    "excess": 0.04,
                }
            },
            "heads": {
                "head_groups": [],
                "sites_checked": 3,
                "runs_checked": 1,
                "runs_with_federated_heads": 0,
            },
            "overhead": {
                "ratio": math.nan,
                "rounds": 0,
                "all_rounds_ratio": 0.7,
                "min_train_seconds": 30.0,
                "concurrency": 2,
            },
        }
    )


def test_table_has_a_row_per_variant_with_direction_arrows():
    table = bench.render_table(_report()["suites"]["openkbp"])
    lines = table.splitlines()
    assert lines[0] == "| variant | dose dose_score ↓ | dose dvh_score ↓ | organs dice ↑ |"
    assert lines[2].startswith("| centralised-ctan | 2.00 | 4.00 | 0.800 |")
    assert len(lines) == 4


def test_a_variant_run_on_fewer_seeds_says_so():
    runs = [_run("centralised-ctan", s, 2.0, 0.8) for s in (0, 1)]
    runs.append(_run("federated-ctan", 0, 2.1, 0.7))
    suite = _report()["suites"]["openkbp"] | {"seeds": [0, 1]}
    suite["summary"] = bench.json_safe(bench.summarise(runs, TASKS))
    lines = bench.render_table(suite).splitlines()
    assert lines[2].startswith("| centralised-ctan | 2.00 ± 0 |")
    assert lines[3].startswith("| federated-ctan (seeds run: 1 of 2) | 2.10 |")


def test_section_names_ratios_bytes_heads_and_overhead():
    section = bench.render_section(_report())
    assert "#### openkbp" in section
    assert "worst task): 0.952 (target ≥ 0.97)" in section
    assert "sites alone: n/a" in section
    assert "Per task, the same two ratios: dose (dose_score) " in section
    assert "worst excess 4.00%" in section
    assert "head groups sent: none over 3 site logs" in section
    assert "= n/a over 0 rounds" in section and "0.700 over all rounds" in section
    assert "deployed over TLS: not measured" in section


def test_section_names_the_code_revision_of_each_row():
    report = _report()
    runs = [_run("centralised-ctan", 0, 2.0, 0.8), _run("federated-ctan", 0, 2.1, 0.78)]
    report["suites"]["openkbp"]["runs"] = [runs[0], runs[1] | {"code": "0123456789ab"}]
    section = bench.render_section(report)
    assert "Code revision: not recorded (centralised-ctan); `0123456789ab` (federated-ctan)." in (
        section
    )


def test_target_ratios_keep_three_decimals():
    assert bench.ratio_text(1.0028) == "1.003", "a ratio just above 1 must not print as 1"
    assert bench.ratio_text(0.13915) == "0.139"
    assert bench.ratio_text(None) == bench.ratio_text(math.nan) == "n/a"


def test_section_reports_the_deployed_overhead():
    report = _report()
    rounds = [
        {"round": 1, "train_wall_seconds": 40.0, "site_train_seconds": 38.0, "ratio": 40 / 38}
    ]
    report["deployment_overhead"] = bench.overhead_summary([{"rounds": rounds}]) | {
        "sites": 2,
        "cases_per_site": 150,
        "local_epochs": 5,
    }
    section = bench.render_section(report)
    assert "deployed over TLS on 127.0.0.1 (a real SuperLink and 2 SuperNodes" in section
    assert "1.05 over 1 rounds with ≥ 30 s" in section


def test_suites_point_at_federated_configs():
    for suite in bench.SUITES.values():
        assert (bench.ROOT / suite.config).is_file()
        assert suite.config.startswith("configs/federated/")


def test_report_keeps_federated_runs_of_earlier_invocations(tmp_path: Path):
    path, docs = tmp_path / "bench_federated.json", tmp_path / "benchmarks.md"
    rounds = [{"round": 1, "train_wall_seconds": 40.0, "site_train_seconds": 50.0, "ratio": 0.8}]
    heads = {"a": {"groups": [], "bytes": 0}, "b": {"groups": [], "bytes": 0}}
    run = {"rounds": rounds, "heads": heads, "heads_mode": "local"}
    first = bench.Report(path, docs, quick=True)
    first.add_federated("derm/seed0/ctan", run, 2)
    first.write()
    second = bench.Report(path, docs, quick=True)
    second.add_federated("overhead", run, 2)
    second.add_federated("derm/seed0/ctan", run, 2)
    assert second.data["heads"]["runs_checked"] == 2
    assert second.data["heads"]["sites_checked"] == 4
    assert second.data["overhead"]["rounds"] == 2


def test_head_check_counts_the_runs_whose_heads_are_local(tmp_path: Path):
    report = bench.Report(tmp_path / "bench_federated.json", tmp_path / "b.md", quick=True)
    sent = {"a": {"groups": ["heads.lesion"], "bytes": 500}}
    kept = {"a": {"groups": [], "bytes": 0}}
    report.add_federated(
        "derm/seed0/ctan", {"rounds": [], "heads": sent, "heads_mode": "federated"}, 2
    )
    report.add_federated(
        "chest/seed0/ctan", {"rounds": [], "heads": kept, "heads_mode": "local"}, 2
    )
    assert report.data["heads"] == {
        "head_groups": [],
        "head_bytes_sent": 0,
        "sites_checked": 1,
        "runs_checked": 1,
        "runs_with_federated_heads": 1,
    }
    report.add_federated(
        "openkbp/seed0/ctan", {"rounds": [], "heads": sent, "heads_mode": "local"}, 2
    )
    assert report.data["heads"]["head_groups"] == ["heads.lesion"]
    assert report.data["heads"]["head_bytes_sent"] == 500
    section = bench.render_section(_report() | {"heads": report.data["heads"]})
    assert "1 runs with federated heads, which send them by design, not counted" in section


def test_ablations_change_every_run_of_a_suite(tmp_path: Path):
    suite = bench.SUITES["derm"]
    plain = bench.bench_config(suite, quick=True, seed=1, work=tmp_path)
    balanced = bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="balanced")
    heads = bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="federated-heads")
    weights = {t.name: t.class_weights for t in balanced.tasks}
    assert weights == {"lesion": None, "diagnosis": "balanced"}
    assert all(t.class_weights is None for t in plain.tasks)
    assert all(t.logit_adjustment == 0 for t in balanced.tasks), "one imbalance correction"
    assert plain.federation.heads == "local" and heads.federation.heads == "federated"
    assert heads.tasks == plain.tasks and heads.experiment.seed == 1
    quarter = bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="quarter-batch")
    assert (plain.train.batch_size, quarter.train.batch_size) == (8, 2)
    assert quarter.train.epochs == plain.train.epochs
    chest = bench.SUITES["chest"]
    adjusted = bench.bench_config(
        chest, quick=True, seed=1, work=tmp_path, ablation="logit-adjusted"
    )
    taus = {t.name: t.logit_adjustment for t in adjusted.tasks}
    assert taus == {"covid": 1.0, "severe": 1.0}
    assert {t.name: t.logit_adjustment for t in plain.tasks} == {"lesion": 0.0, "diagnosis": 1.0}
    with pytest.raises(ValueError, match="'logit-adjusted' changes nothing"):
        bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="logit-adjusted")
    double = bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="double-rounds")
    assert double.federation.rounds == 2 * plain.federation.rounds
    assert double.train.epochs == 2 * plain.train.epochs
    unmirrored = bench.bench_config(
        suite, quick=True, seed=1, work=tmp_path, ablation="no-mirroring"
    )
    assert plain.train.augmentation.flip_axes is None
    assert unmirrored.train.augmentation.flip_axes == []
    assert unmirrored.train.augmentation.affine == plain.train.augmentation.affine
    assert unmirrored.train.batch_size == plain.train.batch_size
    with pytest.raises(ValueError, match="'no-mirroring' changes nothing"):
        bench.bench_config(chest, quick=True, seed=1, work=tmp_path, ablation="no-mirroring")
    with pytest.raises(ValueError, match="unknown ablation 'dwa'"):
        bench.bench_config(suite, quick=True, seed=1, work=tmp_path, ablation="dwa")


def test_ablation_report_has_its_own_file_and_section(tmp_path: Path):
    assert bench.report_tag(False, None) == "bench_federated"
    assert bench.report_tag(True, None) == "bench_federated_quick"
    assert bench.report_tag(False, "balanced") == "bench_federated_balanced"
    report = _report() | {"ablation": bench.ABLATIONS["federated-heads"]}
    section = bench.render_section(report)
    assert "Change: task heads averaged too (federation.heads: federated)" in section
    assert "#### openkbp" in section and "Bytes, heads and overhead" not in section
    docs = tmp_path / "benchmarks.md"
    docs.write_text("<!-- bench_federated:start -->\nmain\n<!-- bench_federated:end -->\n")
    ablation = bench.Report(tmp_path / "v.json", docs, quick=False, ablation="balanced")
    ablation.write()
    text = docs.read_text()
    assert "<!-- bench_federated:start -->\nmain\n<!-- bench_federated:end -->" in text
    assert "<!-- bench_federated_balanced:start -->" in text and "Change: class-balanced" in text
    assert json.loads((tmp_path / "v.json").read_text())["ablation"].startswith("class-balanced")


def _suite(seeds: list[int], batch: int = 32, federation: str = "f") -> dict:
    return {
        "config": "configs/federated/x.yaml",
        "tasks": [{"name": "a", "metrics": ["dice"], "higher_is_better": [True]}],
        "sizes": {"batch_size": batch},
        "rounds": 2,
        "local_epochs": 1,
        "strategy": "fedavg",
        "digests": {"training": f"t{batch}", "federation": federation},
        "seeds": seeds,
        "site_sizes": {"s1": f"seed{seeds[0]}"},
        "wall_seconds": 0.0,
        "runs": [
            {"variant": v, "seed": s, "wall_seconds": 10.0}
            for s in seeds
            for v in ("centralised-ctan", "alone-ctan")
        ],
    }


def test_earlier_seeds_are_kept_only_with_the_same_settings():
    stored = _suite([0, 1])
    fresh = _suite([2]) | {"runs": []}
    merged = bench.merge_earlier_seeds(stored, fresh)
    assert merged["seeds"] == [0, 1, 2] and merged["site_sizes"] == {"s1": "seed0"}
    assert sorted({r["seed"] for r in merged["runs"]}) == [0, 1]
    assert merged["wall_seconds"] == 40.0
    rerun = bench.merge_earlier_seeds(_suite([0, 1]), _suite([1]) | {"runs": []})
    assert rerun["seeds"] == [0, 1] and {r["seed"] for r in rerun["runs"]} == {0}
    changed = bench.merge_earlier_seeds(_suite([0, 1], batch=8), _suite([2]) | {"runs": []})
    assert changed["seeds"] == [2] and changed["runs"] == []
    assert bench.merge_earlier_seeds(None, _suite([2]))["seeds"] == [2]
    federated = bench.merge_earlier_seeds(
        _suite([0, 1]), _suite([1]) | {"runs": []}, ["federated-ctan", "alone-ctan"]
    )
    assert sorted((r["variant"], r["seed"]) for r in federated["runs"]) == [
        ("alone-ctan", 0),
        ("centralised-ctan", 0),
        ("centralised-ctan", 1),
    ]


def test_a_suite_is_complete_with_every_variant_of_every_seed():
    record = _suite([0, 1])
    variants = ("centralised-ctan", "alone-ctan")
    assert bench.is_complete(record, variants, [0, 1])
    assert not bench.is_complete(record, variants, [0, 1, 2])
    assert not bench.is_complete(record, (*variants, "federated-ctan"), [0, 1])


def test_runs_are_reused_where_their_digests_match(tmp_path):
    main = _suite([0, 1])
    main["runs"].append({"variant": "federated-ctan", "seed": 0, "wall_seconds": 10.0})
    heads = _suite([0, 1, 2], federation="g") | {"runs": []}
    reused = bench.reusable_runs(main, heads, "bench_federated.json")
    assert sorted(reused) == [(v, s) for v in ("alone-ctan", "centralised-ctan") for s in (0, 1)]
    assert reused[("alone-ctan", 0)]["reused_from"] == "bench_federated.json"
    same = bench.reusable_runs(main, _suite([0]) | {"runs": []}, "bench_federated.json")
    assert ("federated-ctan", 0) in same and len(same) == 5
    assert bench.reusable_runs(main, _suite([0], batch=8), "bench_federated.json") == {}
    undigested = {k: v for k, v in main.items() if k != "digests"}
    assert bench.reusable_runs(undigested, _suite([0]), "bench_federated.json") == {}
    assert bench.reusable_runs(None, _suite([0]), "bench_federated.json") == {}
    again = main | {"runs": [{"variant": "alone-ctan", "seed": 0, "reused_from": "first.json"}]}
    assert bench.reusable_runs(again, _suite([0]), "x.json")[("alone-ctan", 0)]["reused_from"] == (
        "first.json"
    )


def test_a_report_reads_the_other_results_files_of_its_mode(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    main = _suite([0, 1])
    quarter = _suite([0, 1], batch=8)
    quarter["runs"].append(
        {"variant": "federated-ctan", "seed": 0, "wall_seconds": 30.0, "metrics": {}}
    )
    federated_run = {"name": "derm/seed0/ctan", "rounds": [], "heads": {}, "heads_mode": "local"}
    (results / "bench_federated.json").write_text(json.dumps({"suites": {"derm": main}}))
    (results / "bench_federated_quarter-batch.json").write_text(
        json.dumps({"suites": {"derm": quarter}, "federated_runs": [federated_run]})
    )
    (results / "bench_federated_quick.json").write_text(json.dumps({"suites": {"derm": main}}))
    docs = tmp_path / "benchmarks.md"
    heads = bench.Report(
        results / "bench_federated_federated-heads.json",
        docs,
        quick=False,
        ablation="federated-heads",
    )
    assert list(heads.sources) == ["bench_federated.json", "bench_federated_quarter-batch.json"]
    borrowed = heads.reusable("derm", _suite([0], federation="g"))
    assert sorted(borrowed) == [(v, s) for v in ("alone-ctan", "centralised-ctan") for s in (0, 1)]
    assert {r["reused_from"] for r in borrowed.values()} == {"bench_federated.json"}
    shipped = bench.Report(results / "bench_federated.json", docs, quick=False)
    taken = shipped.reusable("derm", _suite([0], batch=8))
    assert taken[("federated-ctan", 0)]["reused_from"] == "bench_federated_quarter-batch.json"
    shipped.take_over(taken[("federated-ctan", 0)], "derm/seed0/ctan", 4)
    assert shipped.data["federated_runs"] == [federated_run]
    suite = _suite([0]) | {
        "runs": [{"variant": "alone-ctan", "reused_from": "bench_federated.json"}]
    }
    assert "`alone-ctan`: runs of `bench_federated.json`" in bench._reused_text(suite)[0]
    assert bench._reused_text(_suite([0])) == []

    heads_file = {
        "suites": {
            "derm": main
            | {"runs": [dict(r, reused_from="bench_federated.json") for r in main["runs"]]}
        }
    }
    (results / "bench_federated_federated-heads.json").write_text(json.dumps(heads_file))
    again = bench.Report(results / "bench_federated.json", docs, quick=False)
    assert again.reusable("derm", _suite([0])) == {}, "its own runs, copied by an ablation"


def test_config_digests_ignore_the_seed_but_not_the_training_or_federation():
    suite = bench.SUITES["derm"]
    work = Path("/tmp/unused")
    first = bench.config_digests(bench.bench_config(suite, False, 0, work))
    assert first == bench.config_digests(bench.bench_config(suite, False, 1, work))
    quarter = bench.config_digests(bench.bench_config(suite, False, 0, work, "quarter-batch"))
    assert quarter["training"] != first["training"]
    assert quarter["federation"] == first["federation"]
    heads = bench.config_digests(bench.bench_config(suite, False, 0, work, "federated-heads"))
    assert heads["training"] == first["training"] and heads["federation"] != first["federation"]


def test_settings_at_their_defaults_leave_the_digests_alone():
    """A field added to the config later, with a default, must not orphan the stored records:
    a setting at its default digests like one left out."""
    config = bench.bench_config(bench.SUITES["chest"], False, 0, Path("/tmp/unused"))
    digests = bench.config_digests(config)
    train = config.train.model_copy(update={"amp": True, "num_workers": 0})
    explicit = config.model_copy(update={"train": train})
    assert "amp" in explicit.train.model_fields_set
    assert bench.config_digests(explicit) == digests
    full_precision = config.model_copy(
        update={"train": config.train.model_copy(update={"amp": False})}
    )
    assert bench.config_digests(full_precision)["training"] != digests["training"]


def test_the_training_digest_names_the_labels_a_left_right_mirror_exchanges(
    tmp_path: Path, monkeypatch
):
    suite = bench.SUITES["openkbp"]
    config = bench.bench_config(suite, False, 0, tmp_path)
    assert bench.left_right_swaps(config) == {"organs": [[2, 3]]}
    lengthwise = config.model_copy(
        update={
            "train": config.train.model_copy(
                update={
                    "augmentation": config.train.augmentation.model_copy(update={"flip_axes": [0]})
                }
            )
        }
    )
    assert bench.left_right_swaps(lengthwise) == {}
    derm = bench.bench_config(bench.SUITES["derm"], False, 0, tmp_path)
    assert bench.left_right_swaps(derm) == {}
    swapping = bench.config_digests(config)["training"]
    monkeypatch.setattr(bench, "left_right_swaps", lambda config: {})
    assert bench.config_digests(config)["training"] != swapping


def test_render_rewrites_the_sections_of_stored_results(tmp_path: Path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    main = _report() | {"quick": False, "file": "bench_federated.json"}
    ablation = main | {"file": "bench_federated_balanced.json", "ablation": "class-balanced"}
    for report in (main, ablation):
        (results / report["file"]).write_text(json.dumps(report))
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# B\n<!-- bench_federated:start -->\nold\n<!-- bench_federated:end -->\nend\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    assert bench.main(["--render", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith("# B\n<!-- bench_federated:start -->\nMode: full.") and "old" not in text
    assert "\nend\n" in text and text.count("| centralised-ctan | 2.00 | 4.00 | 0.800 |") == 2
    assert "<!-- bench_federated_balanced:start -->\nMode: full. Change: class-balanced" in text


def test_records_of_a_second_checkout_compare_equal(monkeypatch):
    suite = bench.SUITES["chest"]
    config = bench.bench_config(suite, False, 0, Path("/tmp/unused"))
    here = bench.suite_record(suite, config, [0], {})
    inside = config.data.root.relative_to(bench.ROOT)
    elsewhere = Path("/elsewhere/checkout")
    data = config.data.model_copy(update={"root": elsewhere / inside})
    monkeypatch.setattr(bench, "ROOT", elsewhere)
    there = bench.suite_record(suite, config.model_copy(update={"data": data}), [0], {})
    assert here["sizes"]["data_root"] == str(inside)
    assert all(here[k] == there[k] for k in bench.SETTINGS_KEYS)


def test_subset_of_missing_openkbp_data_names_the_source(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"no OpenKBP patients.*data\.root"):
        bench.subset_root(tmp_path / "nowhere", 12, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.fixture(scope="module")
def derm_settings() -> dict:
    """What a full derm run would record now (reads the config, trains nothing)."""
    return bench.current_settings("derm", None)


def test_a_record_of_the_current_settings_is_current(derm_settings):
    assert bench.settings_changes(json.loads(json.dumps(derm_settings)), derm_settings) == []


def test_settings_changes_name_each_field_with_its_old_and_new_value(derm_settings):
    stored = json.loads(json.dumps(derm_settings))
    stored["sizes"]["batch_size"] = 32
    stored["rounds"] = 4
    stored["tasks"][1]["spec"]["class_weights"] = "balanced"
    changes = bench.settings_changes(stored, derm_settings)
    now = derm_settings["sizes"]["batch_size"], derm_settings["rounds"]
    assert changes == [
        f"rounds 4 → {now[1]}",
        f"batch_size 32 → {now[0]}",
        "diagnosis.class_weights balanced → None",
    ]


def test_an_older_record_names_what_it_did_not_record(derm_settings):
    stored = json.loads(json.dumps(derm_settings))
    del stored["strategy"], stored["digests"], stored["tasks"][0]["spec"]
    assert bench.settings_changes(stored, derm_settings) == [
        "not recorded then: strategy, lesion task settings"
    ]


def test_a_change_only_the_digests_see_is_named_by_them(derm_settings):
    stored = json.loads(json.dumps(derm_settings))
    stored["digests"]["training"] = "0" * 64
    assert bench.settings_changes(stored, derm_settings) == ["other training settings (digest)"]


def test_stale_suites_say_why_and_how_to_measure_again(derm_settings):
    stored = json.loads(json.dumps(derm_settings)) | {"runs": []}
    older = stored | {"sizes": stored["sizes"] | {"batch_size": 32}}
    report = {"quick": False, "suites": {"derm": older, "chest": stored}}

    def settings_of(name: str, ablation: str | None) -> dict:
        assert ablation == "balanced"
        if name == "chest":
            raise bench.AblationInConfig("ablation 'balanced' changes nothing; it already has it")
        return derm_settings

    stale = bench.stale_suites(report, "balanced", settings_of)
    assert stale["derm"].startswith("measured with settings that ")
    assert f"(batch_size 32 → {derm_settings['sizes']['batch_size']})" in stale["derm"]
    assert stale["derm"].endswith("--suite derm --ablation balanced` measures it again")
    assert stale["chest"].endswith("it already has it, so the main results measure it")
    assert bench.stale_suites(report | {"quick": True}, "balanced", settings_of) == {}
    assert bench.stale_suites({"suites": {"derm": stored}}, None, lambda n, a: derm_settings) == {}


def test_an_ablation_the_config_already_has_is_refused(tmp_path: Path):
    with pytest.raises(bench.AblationInConfig, match="already has it"):
        bench.bench_config(bench.SUITES["derm"], False, 0, tmp_path, "logit-adjusted")


def test_a_stale_suite_is_marked_in_its_section():
    report = _report() | {"quick": False}
    section = bench.render_section(report, {"openkbp": "measured with settings that x no longer"})
    assert "\n**Not current:** measured with settings that x no longer.\n" in section
    assert "Not current" not in bench.render_section(report)
