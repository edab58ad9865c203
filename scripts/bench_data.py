"""Data benchmarks: OpenKBP CSV parse time, cached vs uncached epoch, phantom generation rate.

Writes ``docs/results/bench_data.json``. Real OpenKBP data is read from ``../shared/data/openkbp``
when present; the part that needs it is skipped (with the reason) otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import code_revision

from ctan.config import load_config
from ctan.data.dataset import CaseDataset, build_cases
from ctan.data.openkbp import read_patient
from ctan.data.phantoms import write_phantoms

REPO = Path(__file__).resolve().parents[1]
KBP = REPO.parent / "shared" / "data" / "openkbp"
PATIENTS = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "results" / "bench_data.json",
        help="JSON file written (default docs/results/bench_data.json)",
    )
    out = parser.parse_args().out
    results: dict[str, object] = {
        "machine": {
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "code": code_revision(),
        }
    }
    if (KBP / "train-pats").is_dir():
        folders = sorted((KBP / "train-pats").glob("pt_*"))[:PATIENTS]
        start = time.perf_counter()
        for folder in folders:
            read_patient(folder)
        per = (time.perf_counter() - start) / len(folders)
        results["openkbp_parse_s_per_patient"] = {"value": per, "target": 0.5, "n": len(folders)}
        with tempfile.TemporaryDirectory() as cache:
            config = load_config(
                {
                    "model": {
                        "arch": "ctan",
                        "spatial_dims": 2,
                        "in_channels": 4,
                        "image_size": [64, 64],
                    },
                    "tasks": [
                        {"name": "dose", "kind": "regression", "classes": 1},
                        {
                            "name": "organs",
                            "kind": "segmentation",
                            "classes": 7,
                            "exclusive": False,
                        },
                    ],
                    "data": {"format": "openkbp", "root": str(KBP), "cache_dir": cache},
                }
            )
            cases = [c for c in build_cases(config) if c.group in {f.name for f in folders}]
            times = {}
            for name, cached in (("uncached", False), ("cold_cache", True), ("cached", True)):
                dataset = CaseDataset(cases, config, train=False, cache=cached)
                start = time.perf_counter()
                for i in range(len(dataset)):
                    dataset[i]
                times[name] = time.perf_counter() - start
            results["epoch_s"] = {
                **times,
                "samples": len(cases),
                "ratio_uncached_over_cached": times["uncached"] / times["cached"],
                "target_ratio": 10,
            }
    else:
        results["openkbp"] = f"skipped: {KBP} is absent"
    rates = {}
    for layout, n in (("ham10000", 40), ("openkbp", 4), ("stoic", 4)):
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            write_phantoms(layout, Path(scratch) / layout, cases=n, sites=2, seed=0)
            rates[layout] = n / (time.perf_counter() - start)
    results["phantom_cases_per_s"] = rates
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
