"""Federation plumbing that needs no Flower: run settings, site settings, simulated partitions.

Flower's run config is flat TOML that only points at the coordinator's YAML (plus a few
overrides); a hospital's own settings arrive as node config. Both are plain mappings here, so
the ClientApp and ServerApp stay thin and this logic is tested without Flower.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctan.config import (
    DEVICE_PATTERN,
    FOLDER_NAME_PATTERN,
    Config,
    DataConfig,
    PrivacyConfig,
    load_config,
)
from ctan.data.base import Case
from ctan.site import SiteSettings, site_split_seed

#: run config keys (``[tool.flwr.app.config]``); empty strings and zeros mean "not set"
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "config": "configs/demo.yaml",
    "data-root": "",
    "output-dir": "",
    "state-dir": "",
    "rounds": 0,
    "resume": False,
}

#: the node config keys of a site's differential-privacy budget
PRIVACY_KEYS = ("target-epsilon", "delta", "max-grad-norm")
#: node config keys a hospital sets when it joins (``flower-supernode --node-config``)
NODE_CONFIG_KEYS = (
    "site",
    "tasks",
    "data-format",
    "data-root",
    "device",
    "state-dir",
    "cache-dir",
    "skip-bad",
    *PRIVACY_KEYS,
)


def config_from_run_config(run_config: Mapping[str, Any], app_root: Path) -> Config:
    """The experiment config a run points at, with the run's overrides applied.

    Args:
        run_config: Flower's run config (see :data:`RUN_CONFIG_DEFAULTS`).
        app_root: the folder the app runs from; a relative ``config`` path starts there.

    Raises:
        ValueError: unknown run config keys, or the YAML has no federation section.
        FileNotFoundError: the YAML does not exist.
    """
    unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown run config keys {unknown}; allowed: {sorted(RUN_CONFIG_DEFAULTS)}"
        )
    settings = {**RUN_CONFIG_DEFAULTS, **run_config}
    path = Path(str(settings["config"]))
    config = load_config(path if path.is_absolute() else app_root / path)
    if config.federation is None:
        raise ValueError(f"{path} has no federation section; a federated run needs one")
    updates: dict[str, Any] = {}
    if settings["data-root"] and config.data is not None:
        updates["data"] = config.data.model_copy(update={"root": Path(settings["data-root"])})
    if settings["output-dir"]:
        updates["experiment"] = config.experiment.model_copy(
            update={"output_dir": Path(settings["output-dir"])}
        )
    rounds = settings["rounds"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(
            f"run config key 'rounds' must be a whole number >= 1 (0: the config's "
            f"federation.rounds), got {rounds!r}"
        )
    if rounds > 0:
        updates["federation"] = config.federation.model_copy(update={"rounds": rounds})
    return config.model_copy(update=updates) if updates else config


def resume_from_run_config(run_config: Mapping[str, Any]) -> bool:
    """The run config's ``resume``, which must be a boolean: ``-c 'resume="false"'`` gives the
    string ``"false"``, which ``bool()`` would read as true.

    Raises:
        ValueError: ``resume`` is not a boolean.
    """
    resume = run_config.get("resume", RUN_CONFIG_DEFAULTS["resume"])
    if not isinstance(resume, bool):
        raise ValueError(f"run config key 'resume' must be true or false, got {resume!r}")
    return resume


def simulation_state_dir(run_config: Mapping[str, Any], config: Config) -> Path:
    """Where simulated sites keep their state: ``state-dir`` or ``<output_dir>/site-state``."""
    state = str(run_config.get("state-dir", ""))
    return Path(state) if state else config.experiment.output_dir / "site-state"


def simulated_site(config: Config, partition_id: int, state_dir: Path) -> SiteSettings:
    """The settings of the simulated site for Flower's ``partition-id``.

    Raises:
        ValueError: the partition id does not name one of ``federation.sites``.
    """
    sites = config.federation.sites if config.federation else []
    if not 0 <= partition_id < len(sites):
        raise ValueError(
            f"partition-id {partition_id} has no site: federation.sites lists {len(sites)} "
            "sites; run the simulation with num-supernodes equal to that number"
        )
    site = sites[partition_id]
    return SiteSettings(
        site.name, tuple(site.tasks), state_dir, privacy=site.privacy, device=config.train.device
    )


def simulated_site_cases(config: Config, site_name: str) -> list[Case]:
    """This site's share of ``config.data``: partitioned, with unheld task labels removed."""
    from ctan.data.dataset import build_cases
    from ctan.data.partition import apply_task_availability, partition_cases

    federation = config.federation
    partition_config = federation.partition
    label_key = None
    if partition_config.label is not None:
        label_key = config.task(partition_config.label).label
    partition = partition_cases(
        list(build_cases(config)),
        partition_config,
        seed=config.experiment.seed,
        label_key=label_key,
        site_names=[s.name for s in federation.sites],
    )
    held = apply_task_availability(
        partition,
        {s.name: s.tasks for s in federation.sites},
        {t.name: t.label for t in config.tasks},
    )
    return held[site_name]


def partition_problems(config: Config, partition: Mapping[str, list[Case]]) -> list[str]:
    """Why sites of a simulated partition could not train, one line each: a site without
    cases, or one whose cases cannot be split into train, validation and test (for example
    OpenKBP slices of a single patient)."""
    from ctan.data.dataset import split_cases

    problems = []
    for name, cases in partition.items():
        if not cases:
            problems.append(f"site {name!r} gets no cases from federation.partition")
            continue
        try:
            split_cases(cases, config.data.split, site_split_seed(config, name))
        except ValueError as err:
            problems.append(f"site {name!r} cannot split its {len(cases)} cases: {err}")
    return problems


def simulated_partition(config: Config) -> dict[str, list[Case]]:
    """Every simulated site's cases, for a printed table before a run."""
    return {site.name: simulated_site_cases(config, site.name) for site in config.federation.sites}


def site_from_node_config(node_config: Mapping[str, Any], config: Config) -> SiteSettings:
    """A hospital's settings from the node config it joined with.

    Keys (:data:`NODE_CONFIG_KEYS`): ``site``, ``tasks`` (comma-separated), ``data-format``,
    ``data-root`` (absolute), ``device`` (default ``auto``), ``state-dir`` (absolute), and
    optionally ``cache-dir`` (absolute), ``skip-bad`` (true: leave unreadable cases out),
    ``target-epsilon``, ``delta``, ``max-grad-norm``. The privacy budget
    always comes from here, never from the coordinator.

    Raises:
        ValueError: a required key is missing or a value is invalid (key named).
    """
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown node config keys {unknown}; allowed: {list(NODE_CONFIG_KEYS)}")
    missing = [
        k
        for k in ("site", "tasks", "data-format", "data-root", "state-dir")
        if not str(node_config.get(k, "")).strip()
    ]
    if missing:
        raise ValueError(
            f'node config lacks {missing}; join with --node-config \'site="..." tasks="a,b" '
            'data-format="..." data-root="/abs/path" state-dir="/abs/path"\''
        )
    name, device = str(node_config["site"]), str(node_config.get("device", "auto"))
    if not re.fullmatch(FOLDER_NAME_PATTERN, name):
        raise ValueError(
            f"node config site {name!r} is not a site name: letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise ValueError(f"node config device {device!r} must be auto, cpu, cuda or cuda:N")
    for key in ("data-root", "state-dir", "cache-dir"):
        if key in node_config and not Path(str(node_config[key])).is_absolute():
            raise ValueError(
                f"node config {key} {str(node_config[key])!r} must be an absolute path (the app "
                "runs from the SuperNode's app folder, not from where the site started it)"
            )
    section = _site_data(node_config, config)
    data = DataConfig.model_validate(section, context={"base_dir": Path("/")})
    tasks = tuple(t.strip() for t in str(node_config["tasks"]).split(",") if t.strip())
    return SiteSettings(
        name=name,
        tasks=tasks,
        state_dir=Path(str(node_config["state-dir"])),
        data=data,
        device=device,
        privacy=_site_privacy(node_config),
    )


def _site_data(node_config: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """A hospital's ``data`` section: format, root, cache folder and ``skip_bad`` are its own;
    from the coordinator's ``data`` it takes the split fractions, and the settings that name
    fields or channels of the coordinator's data format (``split.by``, ``laterality``) only
    when its data is in that format (each case's own group, a patient or a lesion, stays in one
    split in every format).

    Raises:
        ValueError: ``skip-bad`` is not true or false.
    """
    data_format = str(node_config["data-format"])
    skip_bad = node_config.get("skip-bad", False)
    if isinstance(skip_bad, str) and skip_bad.lower() in {"true", "false"}:
        skip_bad = skip_bad.lower() == "true"
    if not isinstance(skip_bad, bool):
        raise ValueError(f"node config skip-bad must be true or false, got {skip_bad!r}")
    section: dict[str, Any] = {
        "format": data_format,
        "root": str(node_config["data-root"]),
        "skip_bad": skip_bad,
    }
    if "cache-dir" in node_config:
        section["cache_dir"] = str(node_config["cache-dir"])
    coordinator = config.data
    if coordinator is None:
        return section
    same_format = data_format == coordinator.format
    split = coordinator.split
    if split.by is not None and not same_format:
        split = split.model_copy(update={"by": None})
    section["split"] = split.model_dump()
    if same_format and coordinator.laterality is not None:
        section["laterality"] = coordinator.laterality.model_dump()
    return section


def _site_privacy(node_config: Mapping[str, Any]) -> PrivacyConfig | None:
    """The site's differential-privacy budget from its node config (``None`` without
    ``target-epsilon``).

    Raises:
        ValueError: a value is not a number, or ``delta`` / ``max-grad-norm`` come without
            ``target-epsilon`` (key named).
    """
    given = [k for k in PRIVACY_KEYS if k in node_config]
    if not given:
        return None
    if "target-epsilon" not in given:
        raise ValueError(f"node config {given} need target-epsilon, the privacy budget they refine")
    values: dict[str, float] = {}
    for key in given:
        try:
            values[key.replace("-", "_")] = float(node_config[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"node config {key} must be a number, got {node_config[key]!r}"
            ) from None
    return PrivacyConfig(**values)
