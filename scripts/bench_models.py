"""Training-step time and peak memory of STL, HPS, MTAN and CTAN, side by side.

For the default 2D (64x64 RGB, batch 32) and 3D (32^3 CT, batch 8) sizes and the default widths,
each architecture runs the same training steps on the same input (Adam, Dice-free BCE + CE
losses), timed interleaved so drift in machine load hits every architecture alike. Peak memory
is measured in a fresh process per architecture (CPU: peak resident set size above the
resident size after building the model; CUDA: ``torch.cuda.max_memory_allocated``).

Prints each figure with its ratio to HPS and writes ``docs/results/bench_models.json``.

    python scripts/bench_models.py            # full run (a few minutes on 2 cores)
    python scripts/bench_models.py --quick    # fewer steps, smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import code_revision

from ctan.config import Config, load_config
from ctan.models import ARCHITECTURES, build_model

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench_models.json"

SETTINGS = {
    "2d": {"spatial_dims": 2, "in_channels": 3, "image_size": [64, 64], "batch": 32},
    "3d": {"spatial_dims": 3, "in_channels": 1, "image_size": [32, 32, 32], "batch": 8},
}


def make_config(setting: str, arch: str) -> Config:
    s = SETTINGS[setting]
    return load_config(
        {
            "model": {
                "arch": arch,
                "spatial_dims": s["spatial_dims"],
                "in_channels": s["in_channels"],
                "image_size": s["image_size"],
            },
            "tasks": [
                {"name": "lesion", "kind": "segmentation", "classes": 1},
                {"name": "diagnosis", "kind": "classification", "classes": 7},
            ],
        }
    )


class Trainer:
    """One architecture's model, optimiser and fixed batch on ``device``."""

    def __init__(self, setting: str, arch: str, device: torch.device) -> None:
        s = SETTINGS[setting]
        generator = torch.Generator().manual_seed(0)
        shape = (s["batch"], s["in_channels"], *s["image_size"])
        self.device = device
        self.model = build_model(make_config(setting, arch)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(shape, generator=generator).to(device)
        self.mask = torch.rand((s["batch"], 1, *s["image_size"]), generator=generator) > 0.5
        self.mask = self.mask.float().to(device)
        self.label = torch.randint(0, 7, (s["batch"],), generator=generator).to(device)

    def step(self) -> None:
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.model(self.x)
            loss = F.binary_cross_entropy_with_logits(out["lesion"].float(), self.mask)
            loss = loss + F.cross_entropy(out["diagnosis"].float(), self.label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed_step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def time_steps(setting: str, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Median step seconds per architecture, steps interleaved across architectures."""
    trainers = {arch: Trainer(setting, arch, device) for arch in ARCHITECTURES}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    times: dict[str, list[float]] = {arch: [] for arch in trainers}
    for _ in range(steps):
        for arch, trainer in trainers.items():
            times[arch].append(trainer.timed_step())
    return {arch: statistics.median(t) for arch, t in times.items()}


def _status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` in MiB (``VmRSS`` now, ``VmHWM`` peak).

    ``VmHWM`` belongs to this process image, unlike ``ru_maxrss``, which Linux carries over
    from the parent across ``exec``.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(setting: str, arch: str, device_name: str) -> float:
    """Run in a fresh process: peak memory (MiB) of two training steps above the start."""
    device = torch.device(device_name)
    trainer = Trainer(setting, arch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.step()
        trainer.step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _status_mib("VmRSS")
    trainer.step()
    trainer.step()
    return _status_mib("VmHWM") - base


def peak_memory(setting: str, arch: str, device: torch.device) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", setting, arch, str(device)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for smoke checks")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("SETTING", "ARCH", "DEVICE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    if args.memory_child:
        print(peak_memory_child(*args.memory_child))
        return 0

    device = torch.device(args.device)
    steps, warmup = (3, 1) if args.quick else (10, 2)
    results: dict[str, dict] = {}
    for setting, s in SETTINGS.items():
        seconds = time_steps(setting, device, steps, warmup)
        memory = {arch: peak_memory(setting, arch, device) for arch in ARCHITECTURES}
        rows = {}
        print(f"\n{setting.upper()} {s['image_size']} batch {s['batch']} on {device}")
        print(f"{'arch':6} {'step s':>8} {'/HPS':>6} {'img/s':>7} {'peak MiB':>9} {'/HPS':>6}")
        for arch in ARCHITECTURES:
            rows[arch] = {
                "step_seconds": seconds[arch],
                "step_ratio_to_hps": seconds[arch] / seconds["hps"],
                "images_per_second": s["batch"] / seconds[arch],
                "peak_memory_mib": memory[arch],
                "memory_ratio_to_hps": memory[arch] / memory["hps"],
            }
            r = rows[arch]
            print(
                f"{arch:6} {r['step_seconds']:8.3f} {r['step_ratio_to_hps']:6.2f} "
                f"{r['images_per_second']:7.1f} {r['peak_memory_mib']:9.0f} "
                f"{r['memory_ratio_to_hps']:6.2f}"
            )
        results[setting] = {"batch": s["batch"], "image_size": s["image_size"], "archs": rows}

    report = {
        "benchmark": "models",
        "quick": args.quick,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": code_revision(),
        "steps": steps,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
