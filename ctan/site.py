"""One federated site's work, without Flower: what it holds, a training round, an evaluation.

The ClientApp converts Flower records to plain arrays and calls :class:`SiteRunner`; everything
a site must remember between rounds (its heads, optimiser and weighting state) lives on its own
disk under ``<state dir>/<federation id>/<site>/``, versioned by server round, because Flower
keeps ``context.state`` in memory only and gives every run a new run id. A resumed or repeated
run of the same federation finds it. The ClientApp appends every payload the site sends to
``payloads.jsonl`` there (:meth:`SiteRunner.log_payload`), so the hospital can see what left it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctan import __version__
from ctan.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from ctan.config import Config, DataConfig, PrivacyConfig
from ctan.data.base import Case
from ctan.engine import (
    ProximalTerm,
    TaskTrainer,
    derive_seed,
    make_loader,
    resolve_device,
    seed_everything,
)
from ctan.losses import class_weights_from_cases, logit_adjustments_from_cases
from ctan.models import build_model, parameter_groups, trainable_groups
from ctan.models.groups import ENCODER_GROUP, group_of
from ctan.report import json_safe
from ctan.training import companions, validation_score

logger = logging.getLogger(__name__)

STATE_FILE = re.compile(r"^round-(\d+)\.pt$")
KEEP_ROUNDS = 3
#: where a site keeps the states of the run before the current one (see ``_join_run``)
PREVIOUS_RUN = "previous-run"
#: the digests of a site's splits in the current run (see ``_hold_splits``)
SPLITS_FILE = "splits.json"


def site_split_seed(config: Config, site_name: str) -> int:
    """The seed a site splits its cases with: ``data.split.seed`` when set, else one derived
    from the experiment seed and the site name."""
    split = config.data.split
    if split.seed is not None:
        return split.seed
    return derive_seed(config.experiment.seed, "split", site_name)


def split_digest(cases: Sequence[Case]) -> str:
    """SHA-256 of a split's sorted case ids: checks a split again without storing its ids."""
    return hashlib.sha256("\n".join(sorted(c.case_id for c in cases)).encode()).hexdigest()


def recorded_site_splits(
    config: Config, record: Mapping[str, Any], source: Path
) -> dict[str, list[Case]]:
    """The train/validation/test cases of the site whose checkpoint ``record`` (its ``extra``)
    describes, split again from ``config.data`` as the site split them.

    Raises:
        ValueError: the data no longer splits into the recorded splits (changed or another data
            set); the message names the checkpoint ``source`` and the data.
    """
    from ctan.data.dataset import build_cases, split_cases
    from ctan.federation import simulated_site_cases

    site, split = record["site"], record["split"]
    cases = simulated_site_cases(config, site) if split["simulated"] else build_cases(config)
    splits = split_cases(list(cases), config.data.split, int(split["seed"]))
    changed = [p for p, digest in split["digests"].items() if split_digest(splits[p]) != digest]
    if changed:
        raise ValueError(
            f"{str(source)!r} is site {site!r}'s model, but the data at {config.data.root} no "
            f"longer splits into the {'/'.join(changed)} cases that site held: the data has "
            "changed since. Score it on another data set with --data."
        )
    return splits


@dataclass(frozen=True)
class SiteSettings:
    """What a site owns and decides itself (node config in deployment, ``federation.sites`` in
    simulation).

    Attributes:
        name: the site's name.
        tasks: the tasks whose labels it holds.
        state_dir: base folder of site state.
        data: its own data (deployment); ``None`` in simulation, where the site's share of
            ``config.data`` comes from ``federation.partition``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        privacy: its differential-privacy budget, if any.
    """

    name: str
    tasks: tuple[str, ...]
    state_dir: Path
    data: DataConfig | None = None
    device: str = "auto"
    privacy: PrivacyConfig | None = None


@dataclass
class RoundOutput:
    """What a site sends back after training.

    Attributes:
        arrays: the trained groups' arrays by ``state_dict`` key.
        counts: labelled examples per group sent (0 for groups it did not train).
        metrics: training metrics (``<task>.loss``, ``train-seconds``, ...).
        groups: the groups trained.
    """

    arrays: dict[str, np.ndarray]
    counts: dict[str, int]
    metrics: dict[str, float]
    groups: list[str] = field(default_factory=list)


def model_signature(model: torch.nn.Module) -> list[str]:
    """What the weights are and what they mean, sorted.

    ``"<key>:<shape>:<dtype>"`` for every ``state_dict`` entry and
    ``"<module>.output_scale:<value>"`` for every scaled regression output: a head trained at
    another scale has the same shapes but predicts in other units.
    """
    entries = [
        f"{k}:{'x'.join(map(str, v.shape))}:{str(v.dtype).removeprefix('torch.')}"
        for k, v in model.state_dict().items()
    ]
    entries += [
        f"{name}.output_scale:{module.output_scale:g}"
        for name, module in model.named_modules()
        if getattr(module, "output_scale", 1.0) != 1.0
    ]
    return sorted(entries)


def signature_digest(signature: Sequence[str]) -> str:
    """A short hash of a :func:`model_signature`."""
    return hashlib.sha256("\n".join(signature).encode()).hexdigest()[:16]


def signature_difference(ours: Sequence[str], theirs: Sequence[str], limit: int = 3) -> str:
    """Human-readable difference of two model signatures (empty when equal)."""
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} entries differ or are missing at the site, e.g. {missing[:limit]}"
        )
    if extra:
        parts.append(f"the site has {len(extra)} entries the server lacks, e.g. {extra[:limit]}")
    return "; ".join(parts)


class SiteRunner:
    """Runs one site's rounds for a federation config.

    Args:
        config: the federation's experiment config (model, tasks, train, federation).
        site: this site's own settings.
        partition_cases: in simulation, this site's cases (already partitioned, with the labels
            of tasks it does not hold removed); ``None`` reads ``site.data``.

    Raises:
        ValueError: the site holds no task of the federation, or names unknown tasks, or has
            no data.
    """

    def __init__(
        self, config: Config, site: SiteSettings, partition_cases: list[Case] | None = None
    ) -> None:
        if config.federation is None:
            raise ValueError("the config has no federation section")
        known = [t.name for t in config.tasks]
        unknown = [t for t in site.tasks if t not in known]
        if unknown or not site.tasks:
            raise ValueError(
                f"site {site.name!r} holds tasks {list(site.tasks)}; the federation's tasks are "
                f"{known}: a site must hold at least one of them and no others"
            )
        if site.privacy is not None:
            raise ValueError(
                f"site {site.name!r} asks for differential privacy (target epsilon "
                f"{site.privacy.target_epsilon}), which this version cannot provide yet; it "
                "refuses to train rather than train without it. Remove the privacy budget to "
                "join without differential privacy."
            )
        self.config = config if site.data is None else config.model_copy(update={"data": site.data})
        if self.config.data is None:
            raise ValueError(f"site {site.name!r} has no data: set its data format and root")
        self.site = site
        self.federation = config.federation
        self.folder = Path(site.state_dir) / self.federation.id / site.name
        self._partition_cases = partition_cases
        self._splits: dict[str, list[Case]] | None = None

    # --- data ---------------------------------------------------------------------------

    def splits(self) -> dict[str, list[Case]]:
        """The site's train/validation/test cases (split by group, seeded by experiment seed).

        Labels of tasks the site does not hold are switched off, also when its data has them:
        a hospital that joins for lesion masks alone does not train (and so share) what its
        diagnoses would teach the encoder.
        """
        if self._splits is None:
            from ctan.data.dataset import build_cases, split_cases
            from ctan.data.partition import apply_task_availability

            cases = self._partition_cases
            if cases is None:
                name = self.site.name
                cases = apply_task_availability(
                    {name: list(build_cases(self.config))},
                    {name: list(self.site.tasks)},
                    {t.name: t.label for t in self.config.tasks},
                )[name]
            seed = site_split_seed(self.config, self.site.name)
            self._splits = split_cases(cases, self.config.data.split, seed)
        return self._splits

    def checkpoint_record(self) -> dict[str, Any]:
        """What the site's own checkpoints record besides weights: the site, the tasks its
        heads were trained for, and how its cases were split (seed and a digest of each split's
        case ids, no ids), so that ``ctan evaluate`` scores it on the split it held out."""
        return {
            "site": self.site.name,
            "tasks": self.held_tasks(),
            "split": {
                "seed": site_split_seed(self.config, self.site.name),
                "simulated": self._partition_cases is not None,
                "digests": {part: split_digest(cases) for part, cases in self.splits().items()},
            },
        }

    def labelled_counts(self) -> dict[str, int]:
        """Training cases with a label, per task this site holds."""
        train = self.splits()["train"]
        return {
            t.name: sum(c.has_label(t.label) for c in train)
            for t in self.config.tasks
            if t.name in self.site.tasks
        }

    def held_tasks(self) -> list[str]:
        """The site's tasks with training labels: those it trains, reports and scores. A task
        listed for the site but without labels in its training split is left out (``describe``
        says so), since an update for it would carry no labelled examples."""
        return self._held(self.labelled_counts())

    def _held(self, counts: dict[str, int]) -> list[str]:
        return [t for t in self.site.tasks if counts[t] > 0]

    def describe(self) -> dict[str, Any]:
        """What the site holds, for the server's ``query``: tasks, counts, versions, model."""
        model = build_model(self.config)
        signature = model_signature(model)
        counts = self.labelled_counts()
        held = self._held(counts)
        lacking = [t for t, n in counts.items() if n == 0]
        if lacking:
            logger.log(
                logging.ERROR if not held else logging.WARNING,
                "site %s: no labels for %s in %s; %s. Check the data with `ctan data check`.",
                self.site.name,
                lacking,
                self.site.data.root if self.site.data is not None else "its cases",
                "the server will refuse this site" if not held else "it trains only " + str(held),
            )
        return {
            "site": self.site.name,
            "tasks": held,
            "tasks-without-labels": lacking,
            "labelled": counts,
            "train-cases": len(self.splits()["train"]),
            "code-version": __version__,
            "model-signature": signature_digest(signature),
            "model-keys": signature,
            "privacy": self.site.privacy is not None,
        }

    # --- state --------------------------------------------------------------------------

    def _state_path(self, server_round: int) -> Path:
        return self.folder / f"round-{server_round:04d}.pt"

    def latest_state(self, before: int) -> tuple[int, dict[str, Any]] | None:
        """The newest saved state of a round strictly before ``before``."""
        if not self.folder.is_dir():
            return None
        rounds = sorted(
            int(m.group(1)) for p in self.folder.iterdir() if (m := STATE_FILE.match(p.name))
        )
        rounds = [r for r in rounds if r < before]
        if not rounds:
            return None
        path = self._state_path(rounds[-1])
        try:
            return rounds[-1], torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"site state {path} cannot be read: {err}") from err

    def _save_state(
        self,
        server_round: int,
        model: torch.nn.Module,
        trainer: TaskTrainer,
        tasks: Sequence[str],
    ) -> None:
        """Save this round's heads, optimiser state and the ``tasks`` it trained (the optimiser
        state fits their parameters only); keep the ``KEEP_ROUNDS`` newest rounds.

        States of later rounds are left by an earlier run of the federation (a new run counts
        from round 1 again) or by a round the server never completed before a resume; both
        are removed, so that no later round restores them.
        """
        groups = parameter_groups(model)
        local_keys = [k for g, ks in groups.items() if g.startswith("heads.") for k in ks]
        state = model.state_dict()
        payload = {
            "round": server_round,
            "tasks": list(tasks),
            "local": {k: state[k].detach().cpu() for k in local_keys},
            "trainer": trainer.state_dict(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._state_path(server_round), lambda f: torch.save(payload, f))
        saved = sorted(
            int(m.group(1)) for p in self.folder.iterdir() if (m := STATE_FILE.match(p.name))
        )
        earlier = [r for r in saved if r <= server_round]
        stale = earlier[:-KEEP_ROUNDS] + [r for r in saved if r > server_round]
        for old in stale:
            self._state_path(old).unlink(missing_ok=True)

    def log_payload(
        self,
        kind: str,
        server_round: int | None,
        array_bytes: Mapping[str, int],
        values: Mapping[str, Mapping[str, Any]],
        run: str = "",
    ) -> None:
        """Append one payload this site sent to ``payloads.jsonl``: its kind (query, train,
        evaluate), the server round and run it answered, the groups, number and raw bytes of its
        arrays (``array_bytes``: state dict key -> bytes), and every other value in full
        (``values``: record name -> its entries: counts, metrics, tasks, model keys)."""
        record = {
            "time": time.time(),
            "kind": kind,
            "run": run,
            "round": server_round,
            "groups": sorted({group_of(k) for k in array_bytes}),
            "arrays": len(array_bytes),
            "bytes": int(sum(array_bytes.values())),
            "values": {name: dict(entries) for name, entries in values.items()},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "payloads.jsonl").open("a") as log:
            log.write(json.dumps(json_safe(record)) + "\n")

    # --- rounds -------------------------------------------------------------------------

    def _prepared(
        self, server_round: int, global_arrays: Mapping[str, np.ndarray], newest: int
    ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
        """The model with the site's own state of the newest round ``< newest`` and the
        server's arrays on top."""
        model = build_model(self.config)
        previous = self.latest_state(newest)
        state = model.state_dict()
        unknown = [k for k in global_arrays if k not in state]
        if unknown:
            raise ValueError(f"the server sent arrays this model does not have: {unknown[:3]}")
        if previous is not None:
            self._require_fitting(previous, state)
            state.update(previous[1]["local"])
        for key, value in global_arrays.items():
            state[key] = torch.as_tensor(np.asarray(value)).to(state[key].dtype)
        model.load_state_dict(state)
        return model, previous[1] if previous is not None else None

    def _require_fitting(
        self, previous: tuple[int, dict[str, Any]], state: Mapping[str, torch.Tensor]
    ) -> None:
        """Refuse a saved state whose heads do not fit the model: the model config changed
        since it was written (possible only on a resume, since a new run sets states aside).

        Raises:
            ValueError: names the state file and the first heads that differ.
        """
        saved = previous[1]["local"]
        differences = [
            f"{key} {'x'.join(map(str, value.shape))} saved, "
            + (f"{'x'.join(map(str, state[key].shape))} now" if key in state else "absent now")
            for key, value in saved.items()
            if key not in state or state[key].shape != value.shape
        ]
        heads = {k for k in state if group_of(k).startswith("heads.")}
        differences += [f"{key} not saved" for key in sorted(heads - saved.keys())]
        if differences:
            raise ValueError(
                f"site state {self._state_path(previous[0])} was saved by a model with other "
                f"heads ({'; '.join(differences[:3])}"
                + (f"; {len(differences) - 3} more" if len(differences) > 3 else "")
                + "): the model config changed since that round. Resume with the config the "
                "run started with, or start a new run"
            )

    def _join_run(self, run: str) -> None:
        """Start keeping state for federation run ``run`` (named by the server; a resume keeps
        the name), so that no round of this run restores another run's states, also where the
        site first trains after round 1.

        The round states and best model of the run before are moved aside into
        ``previous-run/`` rather than deleted: the server keeps that run resumable until the
        new one completes its first round, so a new run started by mistake and stopped costs
        nothing; resuming that run moves its states back (and the other run's aside).
        """
        if not run:
            return
        marker = self.folder / "run"
        earlier = marker.read_text().strip() if marker.is_file() else None
        if earlier == run:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = self.folder / PREVIOUS_RUN
        back = previous / "run"
        restoring = back.is_file() and back.read_text().strip() == run
        aside = self.folder / f".{PREVIOUS_RUN}.moving"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for path in self._run_files(self.folder):
            path.rename(aside / path.name)
        if restoring:
            for path in self._run_files(previous):
                path.rename(self.folder / path.name)
        shutil.rmtree(previous, ignore_errors=True)
        if earlier is not None:
            marker.rename(aside / "run")
            aside.rename(previous)
            logger.info(
                "site %s: run %s %s run %s, whose states are kept in %s",
                self.site.name,
                run,
                "resumes after" if restoring else "replaces",
                earlier,
                previous,
            )
        else:
            shutil.rmtree(aside)
        atomic_write_bytes(marker, lambda f: f.write(f"{run}\n".encode()))

    def _hold_splits(self, run: str) -> None:
        """Keep the site's splits fixed for the whole of run ``run``: their digests are
        recorded at the run's first message and compared at every later one, so that data
        added or removed during a run cannot move held-out cases into training unnoticed.

        Raises:
            ValueError: a split no longer holds the cases it held earlier in the run.
        """
        if not run:
            return
        path = self.folder / SPLITS_FILE
        current = {part: split_digest(cases) for part, cases in self.splits().items()}
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        if recorded.get("run") != run:
            text = json.dumps({"run": run, "digests": current})
            atomic_write_bytes(path, lambda f: f.write(text.encode()))
            return
        held = recorded["digests"]
        moved = [part for part, digest in current.items() if held.get(part) != digest]
        if moved:
            raise ValueError(
                f"site {self.site.name!r}: the data changed during run {run}: its {moved} "
                f"split{'s' if len(moved) > 1 else ''} no longer hold the cases they held at the "
                "run's start, so held-out cases could move into training. Restore the data "
                "for this run, or start a new run"
            )

    @staticmethod
    def _run_files(folder: Path) -> list[Path]:
        """The files of one run in ``folder``: its round states and its best model."""
        return [p for p in folder.iterdir() if STATE_FILE.match(p.name) or p.name == "best.pt"]

    def train_round(
        self,
        server_round: int,
        global_arrays: Mapping[str, np.ndarray],
        proximal_mu: float = 0.0,
        run: str = "",
    ) -> RoundOutput:
        """Load the server's groups, train ``local_epochs`` on the site's labels, save state.

        Args:
            server_round: the round (1-based); site state of earlier rounds is restored.
            global_arrays: the travelling groups by ``state_dict`` key.
            proximal_mu: FedProx coefficient (0: none); applies to travelling groups trained.
            run: the federation run the round belongs to (``""``: not named); state left by
                another run is removed first.

        Returns:
            Exactly the groups trained, counts per group sent, metrics.
        """
        from ctan.data.dataset import CaseDataset

        self._join_run(run)
        self._hold_splits(run)
        model, previous = self._prepared(server_round, global_arrays, newest=server_round)
        tasks = self.held_tasks()
        trained = trainable_groups(model, tasks)
        device = resolve_device(self.site.device)
        train_cases = self.splits()["train"]
        trainer = TaskTrainer(
            model,
            self.config.tasks,
            self.config.train,
            device,
            companions=companions(self.config),
            class_weights=class_weights_from_cases(self.config.tasks, train_cases),
            logit_adjustments=logit_adjustments_from_cases(self.config.tasks, train_cases),
        )
        if previous is not None:
            before = previous.get("tasks", tasks)
            if before == tasks:
                try:
                    trainer.load_state_dict(previous["trainer"])
                except ValueError as err:
                    logger.warning(
                        "site %s: its optimiser state of round %d does not fit this version's "
                        "optimiser (%s); it starts afresh",
                        self.site.name,
                        previous["round"],
                        err,
                    )
            else:
                logger.warning(
                    "site %s: it trained %s until round %d and trains %s now; its optimiser "
                    "and loss weighting start afresh",
                    self.site.name,
                    before,
                    previous["round"],
                    tasks,
                )
        seed = derive_seed(self.config.experiment.seed, self.site.name, server_round)
        seed_everything(seed)
        loader = make_loader(
            CaseDataset(train_cases, self.config, train=True, augment_seed=seed),
            self.config.train.batch_size,
            shuffle=True,
            seed=seed,
            num_workers=self.config.train.num_workers,
        )
        groups = parameter_groups(model)
        reference = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in global_arrays.items()}
        proximal = ProximalTerm(proximal_mu, reference) if proximal_mu > 0 else None
        logs = [trainer.train_epoch(loader, proximal) for _ in range(self.federation.local_epochs)]
        self._save_state(server_round, model, trainer, tasks)
        state = model.state_dict()
        sent_groups = {group_of(k) for k in global_arrays}
        returned = [g for g in trained if g in sent_groups]
        arrays = {k: state[k].detach().cpu().numpy() for g in returned for k in groups[g]}
        labelled = {t: sum(log.labelled[t] for log in logs) // len(logs) for t in logs[0].labelled}
        counts = {
            g: _group_count(g, labelled, logs[-1].samples) if g in returned else 0
            for g in sorted(sent_groups)
        }
        metrics: dict[str, float] = {
            "train-seconds": float(sum(log.seconds for log in logs)),
            "samples": float(logs[-1].samples),
        }
        for task in tasks:
            metrics[f"{task}.loss"] = float(logs[-1].losses[task])
        return RoundOutput(arrays, counts, metrics, returned)

    def evaluate_round(
        self,
        server_round: int,
        global_arrays: Mapping[str, np.ndarray],
        split: str = "validation",
        run: str = "",
    ) -> tuple[dict[str, float], dict[str, int]]:
        """Score the site's personalised model (server groups + its own heads) on ``split``.

        Also writes the personalised model to ``<site state>/model.pt`` (a ctan checkpoint)
        and, on the validation split, keeps the best round's in ``best.pt``; not while its
        heads are local and untrained (no state of its own yet: its training failed, or it
        has not been sampled). ``run`` as in :meth:`train_round`.

        Returns:
            ``({"<task>.<metric>": value, "<task>.loss": value}, {task: labelled cases})`` for
            the tasks the site holds.
        """
        from ctan.prediction import evaluate_cases

        self._join_run(run)
        self._hold_splits(run)
        model, own = self._prepared(server_round, global_arrays, newest=server_round + 1)
        cases = self.splits()[split]
        if not cases:
            raise ValueError(f"site {self.site.name!r} has an empty {split} split")
        device = resolve_device(self.site.device)
        trainer = TaskTrainer(
            model, self.config.tasks, self.config.train, device, companions=companions(self.config)
        )
        evaluation = evaluate_cases(trainer, self.config, cases)
        tasks = self.held_tasks()
        metrics: dict[str, float] = {}
        for task in tasks:
            for name, value in evaluation.metrics[task].items():
                metrics[f"{task}.{name}"] = float(value)
            metrics[f"{task}.loss"] = float(evaluation.losses[task])
        counts = {t: evaluation.labelled[t] for t in tasks}
        if own is None and self.federation.heads == "local":
            logger.warning(
                "site %s: no trained state of its own before round %d, so its heads are "
                "untrained; its model is not saved this round",
                self.site.name,
                server_round,
            )
            return metrics, counts
        save_checkpoint(
            self.folder / "model.pt",
            model,
            self.config,
            {"round": server_round, split: metrics},
            {**self.checkpoint_record(), "round": server_round},
        )
        if split == "validation":
            losses = {t: evaluation.losses[t] for t in tasks}
            self._keep_best(server_round, model, metrics, validation_score(losses))
        return metrics, counts

    def _keep_best(
        self, server_round: int, model: torch.nn.Module, metrics: Mapping[str, float], score: float
    ) -> None:
        """``best.pt``: the personalised model of the round with the lowest validation loss
        (mean over the site's tasks), the rule centralised training keeps ``best.pt`` by.

        A best of this round or a later one is left from an interrupted or earlier run of the
        federation and is replaced.
        """
        path = self.folder / "best.pt"
        if path.is_file():
            try:
                kept = load_checkpoint(path).extra
            except ValueError as err:
                logger.warning("site %s: replacing unreadable %s: %s", self.site.name, path, err)
            else:
                if (
                    kept.get("round", server_round) < server_round
                    and kept.get("validation-loss", float("inf")) <= score
                ):
                    return
        save_checkpoint(
            path,
            model,
            self.config,
            {"round": server_round, "validation": dict(metrics)},
            {**self.checkpoint_record(), "round": server_round, "validation-loss": score},
        )


def _group_count(group: str, labelled: Mapping[str, int], samples: int) -> int:
    """Labelled examples behind a group's update: all samples for the encoder, else the task's."""
    if group == ENCODER_GROUP:
        return samples
    return int(labelled.get(group.split(".", 1)[1], 0))
