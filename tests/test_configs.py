"""Every shipped YAML under configs/ and configs/federated/ loads with ``load_config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctan.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/federated/*.yaml")])
SHARED_DATA = ROOT.parent / "shared" / "data"


def _uses_shared_data(path: Path) -> bool:
    return "shared/data" in path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads(path: Path):
    if _uses_shared_data(path) and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads real data from {SHARED_DATA}, which is absent")
    config = load_config(path)
    if config.data is not None and config.data.phantom is None:
        assert config.data.root.exists(), f"{path.name}: data.root {config.data.root} is missing"


@pytest.mark.parametrize(
    "path",
    sorted(ROOT.glob("configs/federated/*.yaml")),
    ids=lambda p: p.name,
)
def test_federated_config_names_its_sites(path: Path):
    if _uses_shared_data(path) and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads real data from {SHARED_DATA}, which is absent")
    config = load_config(path)
    federation = config.federation
    assert federation is not None and federation.sites, f"{path.name} has no sites"
    assert federation.id == path.stem
    assert federation.min_sites == len(federation.sites)
    assert config.train.epochs == federation.rounds * federation.local_epochs
    if federation.partition.method != "site":
        assert federation.partition.num_sites == len(federation.sites)


def test_the_three_suites_have_their_partitions():
    names = {p.stem for p in ROOT.glob("configs/federated/*.yaml")}
    for suite in ("derm", "chest"):
        assert {f"{suite}-natural", f"{suite}-iid", f"{suite}-dirichlet"} <= names
    assert {"openkbp-iid", "openkbp-iid-6", "openkbp-dirichlet", "openkbp-phantom-natural"} <= names
