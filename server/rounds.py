"""The coordinator's resumable round loop on top of the task-aware strategies.

Flower's ``Strategy.start`` always counts from round 1, so this loop is ours; it calls the
strategy's ``configure_*``/``aggregate_*`` steps and never re-implements them. Per round it logs
every site's metrics, labelled examples, bytes and wall time, and saves the global groups, the
round number, the strategy state and the seed atomically, so :func:`run_federation` with
``resume=True`` continues after the last completed round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.console import Console

from ctan.checkpoint import atomic_write_bytes, save_checkpoint
from ctan.config import Config
from ctan.models import build_model, parameter_groups
from ctan.report import RunLog, write_federated_report
from ctan.site import model_signature, signature_difference, signature_digest
from ctan.training import new_folder, validation_score
from server.aggregation import split_groups, travelling_groups
from server.strategy import QuorumTimeoutError, build_strategy, groups_to_arrayrecord

logger = logging.getLogger(__name__)

STATE_NAME = "server-state.pt"
#: the shared groups of the round with the lowest validation loss over the sites
BEST_MODEL_NAME = "best_global_model.pt"
#: the message telling a refused site why (``@app.query("refused")`` in the client app)
REFUSAL_NOTICE = f"{MessageType.QUERY}.refused"
#: the config entry naming the run (its folder, which a resume keeps), so that a site can tell
#: its states of this run from those an earlier run of the federation left
RUN_KEY = "federation-run"
#: how a refusal for a site name another connected node holds begins
NAME_TAKEN = "another node already joined as site"
#: seconds the server waits for refused sites to acknowledge the notice of their refusal
REFUSAL_NOTICE_TIMEOUT = 30.0


class FederationError(RuntimeError):
    """The federation cannot go on (quorum lost, no usable site); the message says why."""


@dataclass
class SiteInfo:
    """A site as it answered the ``query``."""

    node_id: int
    name: str
    tasks: list[str]
    labelled: dict[str, int]
    code_version: str
    train_cases: int | None = None


@dataclass
class FederationResult:
    """What a federated run produced."""

    folder: Path
    rounds: int
    arrays: dict[str, np.ndarray]
    sites: list[SiteInfo] = field(default_factory=list)


class AdmittedGrid:
    """A view of a Grid that only shows the nodes admitted after the ``query``.

    Attributes:
        names: the site name of each admitted node (its keys are the admitted node ids).
    """

    def __init__(self, grid: Grid, names: Mapping[int, str]) -> None:
        self._grid = grid
        self.names = dict(names)

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n in self.names]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _save_state(path: Path, payload: Mapping[str, Any]) -> None:
    def tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}

    data = {
        "round": payload["round"],
        "seed": payload["seed"],
        "settings": dict(payload["settings"]),
        "folder": str(payload["folder"]),
        "arrays": tensors(payload["arrays"]),
        "strategy": tensors(payload["strategy"]),
        "best": dict(payload["best"]),
        "sites": list(payload["sites"]),
    }
    atomic_write_bytes(path, lambda f: torch.save(data, f))


def load_state(path: Path) -> dict[str, Any]:
    """A saved server state: round, seed, run folder, global arrays, strategy state and the
    best round so far (by validation loss)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FederationError(f"server state {path} cannot be read: {err}") from err
    needed = {"round", "seed", "folder", "arrays", "strategy"}
    if not isinstance(data, dict) or not needed <= data.keys():
        raise FederationError(
            f"{path} is not a server state of this project (it needs {sorted(needed)}); "
            "start a new run without --resume, or point the output dir at the right federation"
        )
    data["arrays"] = {k: v.numpy() for k, v in data["arrays"].items()}
    data["strategy"] = {k: v.numpy() for k, v in data["strategy"].items()}
    data["folder"] = Path(data["folder"])
    return data


def resume_settings(config: Config) -> dict[str, Any]:
    """What a resumed run must share with the run it continues to end where that run would
    have, besides the seed (which the state keeps on its own): the local epochs and every
    aggregation setting (``rounds`` may change)."""
    federation = config.federation.model_dump(
        mode="json",
        include={
            "local_epochs",
            "strategy",
            "proximal_mu",
            "server_optimizer",
            "server_sgd",
            "robust",
            "heads",
        },
    )
    return {
        f"federation.{key}": json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        for key, value in federation.items()
    }


def require_same_settings(saved: Mapping[str, Any], config: Config, path: Path) -> None:
    """Refuse to resume a run under other settings than it ran with (:func:`resume_settings`;
    a state written before they were recorded is checked on its seed alone).

    Raises:
        FederationError: names each setting, its value then and now.
    """
    current = {"experiment.seed": config.experiment.seed, **resume_settings(config)}
    recorded = {"experiment.seed": saved["seed"], **(saved.get("settings") or {})}
    changed = [
        f"{key} {recorded[key]!r} -> {value!r}"
        for key, value in current.items()
        if key in recorded and recorded[key] != value
    ]
    if changed:
        raise FederationError(
            f"{path} was written by a run with other settings: {'; '.join(changed)}. Restore "
            "them to resume that run, or start a new run without --resume"
        )


def gather_sites(grid: Grid, config: Config) -> tuple[list[SiteInfo], dict[int, str]]:
    """The sites a run starts with: once enough nodes are connected to make up
    ``federation.min_sites`` with the sites admitted so far, the new ones are queried, until
    ``min_sites`` are admitted, for at most ``federation.round_timeout`` seconds. A refused node
    does not end the wait: a valid site may still connect.

    The admitted sites come in site-name order, whatever order the replies arrived in, so the
    console, the report and the model card list them alike from run to run. A site refused for
    what it answered is told why (a ``query.refused`` message carrying the reason, which its app
    logs), so the hospital learns it from its own SuperNode log.

    Returns:
        The admitted sites and the refusals (node id: reason).

    Raises:
        FederationError: fewer than ``min_sites`` sites admitted in time (each refusal named).
    """
    federation = config.federation
    deadline = time.monotonic() + federation.round_timeout
    sites: list[SiteInfo] = []
    refused: dict[int, str] = {}
    asked: set[int] = set()
    while True:
        connected = set(grid.get_node_ids())
        fresh = sorted(connected - asked)
        if fresh and len(sites) + len(fresh) >= federation.min_sites:
            admitted, turned_away = admit_sites(grid, config, fresh, [s.name for s in sites])
            sites = sorted([*sites, *admitted], key=lambda site: site.name)
            refused |= turned_away
            asked |= set(fresh)
        if len(sites) >= federation.min_sites:
            return sites, refused
        if time.monotonic() >= deadline:
            raise FederationError(
                f"only {len(connected)} sites connected and {len(sites)} admitted within "
                f"{federation.round_timeout:.0f} s (federation.round_timeout); "
                f"federation.min_sites is {federation.min_sites}; refused: {refused or 'none'}"
            )
        time.sleep(1.0)


def for_good(refused: Mapping[int, str]) -> set[int]:
    """The refused nodes not to ask again in this run: all but those refused for a site name
    that was taken, which frees up when the node holding it disconnects."""
    return {node for node, reason in refused.items() if not reason.startswith(NAME_TAKEN)}


def admit_sites(
    grid: Grid, config: Config, nodes: list[int], taken: Iterable[str] = ()
) -> tuple[list[SiteInfo], dict[int, str]]:
    """Query ``nodes`` and sort them into admitted sites (in site-name order) and refusals
    (node id: reason), each refusal logged and, where the site answered, sent to it.

    A node is refused when its query fails or goes unanswered, when its reply lacks what the
    query asks for, when it builds another model, holds labels for none of the federation's
    tasks, or names itself like a site already admitted (``taken``) or another node.
    """
    federation = config.federation
    signature = model_signature(build_model(config))
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"federation": federation.id})}),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=federation.round_timeout))
    admitted: list[SiteInfo] = []
    refused: dict[int, str] = {}
    answered: set[int] = set()
    names = set(taken)
    for reply in sorted(replies, key=lambda r: r.metadata.src_node_id):
        node = reply.metadata.src_node_id
        if reply.has_error():
            refused[node] = f"query failed at the site: {reply.error.reason}"
            continue
        answered.add(node)
        try:
            site, reason = _site_of(reply, node, config, signature)
        except (KeyError, TypeError, ValueError) as err:
            refused[node] = f"its answer to the query is malformed ({type(err).__name__}: {err})"
            continue
        if reason is None and site.name in names:
            reason = f"{NAME_TAKEN} {site.name!r}; site names must be unique"
        if reason is not None:
            refused[node] = reason
            continue
        names.add(site.name)
        admitted.append(site)
    silent = sorted(set(nodes) - {r.metadata.src_node_id for r in replies})
    for node in silent:
        refused[node] = f"no answer to the query within {federation.round_timeout:.0f} s"
    for node, reason in refused.items():
        logger.error("node %d refused: %s", node, reason)
    notify_refused(grid, federation.id, {n: r for n, r in refused.items() if n in answered})
    return sorted(admitted, key=lambda site: site.name), refused


def _site_of(
    reply: Message, node: int, config: Config, signature: list[str]
) -> tuple[SiteInfo, str | None]:
    """A node's answer to the query as a site, and why it is refused (``None``: admitted)."""
    site = reply.content.config_records["site"]
    if not isinstance(site["tasks"], list):
        raise TypeError(f"tasks must be a list of task names, got {site['tasks']!r}")
    counts = reply.content.metric_records.get("counts", {})
    labelled = {
        k.removeprefix("labelled."): int(v) for k, v in counts.items() if k.startswith("labelled.")
    }
    info = SiteInfo(
        node,
        str(site["site"]),
        [str(t) for t in site["tasks"]],
        labelled,
        str(site["code-version"]),
        int(counts["train-cases"]) if "train-cases" in counts else None,
    )
    difference = signature_difference(signature, list(site["model-keys"]))
    if difference:
        return info, (
            f"site {info.name!r} builds a different model (signature {site['model-signature']} "
            f"vs {signature_digest(signature)}; site code {info.code_version}): {difference}"
        )
    if not info.tasks:
        return info, (
            f"site {info.name!r} holds labels for none of the federation's tasks "
            f"{[t.name for t in config.tasks]}"
        )
    return info, None


def admit_newcomers(
    grid: Grid,
    config: Config,
    admitted: AdmittedGrid,
    sites: list[SiteInfo],
    turned_away: set[int],
    server_round: int,
) -> list[SiteInfo]:
    """Admit the nodes that connected since the last admission, from ``server_round`` on.

    A hospital whose SuperNode comes up after the run started joins at the next round, as it
    would in Flower's own strategies, which sample from the nodes connected at each round. It
    goes through the same query as the first sites; refused nodes are not asked again (but for
    a taken site name, see :func:`for_good`). A site
    whose SuperNode came back under a new node id (a restart without SuperNode authentication)
    takes its place again; its name is taken only while its earlier node is connected.
    ``admitted``, ``sites`` and ``turned_away`` are updated in place.

    Returns:
        The sites admitted now.
    """
    connected = set(grid.get_node_ids())
    new = sorted(connected - admitted.names.keys() - turned_away)
    if not new:
        return []
    live = [s.name for s in sites if s.node_id in connected]
    joined, refused = admit_sites(grid, config, new, taken=live)
    turned_away.update(for_good(refused))
    names = {site.name for site in joined}
    for earlier in (s for s in sites if s.name in names):
        admitted.names.pop(earlier.node_id, None)
    for site in joined:
        logger.info("round %d: site %s (node %d) joined", server_round, site.name, site.node_id)
        admitted.names[site.node_id] = site.name
    sites[:] = sorted([*(s for s in sites if s.name not in names), *joined], key=lambda s: s.name)
    return joined


def notify_refused(grid: Grid, federation: str, refused: Mapping[int, str]) -> None:
    """Send each refused site the reason, waiting :data:`REFUSAL_NOTICE_TIMEOUT` at most."""
    if not refused:
        return
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"federation": federation, "reason": reason})}),
            message_type=REFUSAL_NOTICE,
            dst_node_id=node,
        )
        for node, reason in refused.items()
    ]
    acknowledged = {
        r.metadata.src_node_id
        for r in grid.send_and_receive(messages, timeout=REFUSAL_NOTICE_TIMEOUT)
        if not r.has_error()
    }
    for node in sorted(set(refused) - acknowledged):
        logger.warning("node %d did not acknowledge the notice of its refusal", node)


def _reply_metrics(reply: Message) -> dict[str, float]:
    records = reply.content.metric_records
    return {
        k: float(v)
        for record in records.values()
        for k, v in record.items()
        if isinstance(v, (int, float))
    }


def in_site_order(replies: Iterable[Message], names: Mapping[int, str]) -> list[Message]:
    """Replies sorted by site name, so that the round log lists the sites in one order.

    (The strategy aggregates in site order by itself, whatever order it is given.)
    """
    return sorted(
        replies,
        key=lambda r: (names.get(r.metadata.src_node_id, ""), r.metadata.src_node_id),
    )


def _ok(
    replies: list[Message],
    sent: set[int],
    min_sites: int,
    names: Mapping[int, str],
    phase: str,
    server_round: int,
) -> list[Message]:
    """Replies without error; raises when fewer than ``min_sites`` came back."""
    good = [r for r in replies if not r.has_error()]
    for reply in replies:
        if reply.has_error():
            logger.warning(
                "%s round %d: site %s failed: %s",
                phase,
                server_round,
                names.get(reply.metadata.src_node_id),
                reply.error.reason,
            )
    if len(good) < min_sites:
        answered = {r.metadata.src_node_id for r in good}
        missing = sorted(names.get(n, str(n)) for n in sent - answered)
        raise FederationError(
            f"{phase} round {server_round}: {len(good)} of {len(sent)} sites replied, "
            f"federation.min_sites is {min_sites}; missing or failed: {missing}"
        )
    return good


def declare(strategy: Any, site: SiteInfo) -> None:
    """Hold ``site``'s train replies to what it answered at the query (see
    :meth:`server.strategy.TaskAwareFedAvg.declare`)."""
    labelled = {t: site.labelled.get(t, 0) for t in site.tasks}
    strategy.declare(site.node_id, labelled, site.train_cases)


def require_same_arrays(
    saved: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], path: Path
) -> None:
    """Raise unless the arrays of a saved server state have the keys and shapes the config's
    model sends now: a resume after the model or ``federation.heads`` changed cannot continue.

    Raises:
        FederationError: names the missing, extra and reshaped arrays (a few of each).
    """
    missing = sorted(current.keys() - saved.keys())
    extra = sorted(saved.keys() - current.keys())
    reshaped = [
        f"{k} {tuple(saved[k].shape)} -> {tuple(current[k].shape)}"
        for k in sorted(current.keys() & saved.keys())
        if saved[k].shape != current[k].shape
    ]
    if missing or extra or reshaped:
        found = [
            f"{label} ({len(items)}): {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("extra", extra), ("reshaped", reshaped))
            if items
        ]
        raise FederationError(
            f"{path} does not fit the model this config builds: {'; '.join(found)}. The model "
            "settings or federation.heads changed since that run: restore them to resume it, "
            "or start a new run without --resume"
        )


def require_usable_quorum(
    replies: list[Message],
    rejected: Iterable[int],
    sent: int,
    min_sites: int,
    names: Mapping[int, str],
    server_round: int,
) -> None:
    """Raise unless at least ``min_sites`` of the train ``replies`` survived validation: a
    round averaged over fewer sites than the quorum would pass one site's model off as the
    federation's.

    Raises:
        FederationError: too few usable updates; names the rejected sites.
    """
    rejected = set(rejected)
    usable = [r for r in replies if r.metadata.src_node_id not in rejected]
    if len(usable) < min_sites:
        refused = sorted(names.get(n, str(n)) for n in rejected)
        raise FederationError(
            f"train round {server_round}: {len(usable)} of {sent} sites sent a usable update, "
            f"federation.min_sites is {min_sites}; rejected: {refused} (reasons in the log)"
        )


def run_federation(grid: Grid, config: Config, resume: bool = False) -> FederationResult:
    """Run (or resume) the federated training a config describes.

    Args:
        grid: Flower's grid of connected sites.
        config: the coordinator's config; ``federation`` must be set.
        resume: continue from ``<output_dir>/<federation id>/server-state.pt``.

    Raises:
        FederationError: too few sites, a lost quorum, or nothing to resume.
    """
    federation = config.federation
    console = Console()
    base = config.experiment.output_dir / federation.id
    state_path = base / STATE_NAME
    model = build_model(config)
    strategy = build_strategy(federation, seed=config.experiment.seed)
    all_groups = parameter_groups(model)
    groups = travelling_groups(list(all_groups), federation.heads)
    state = model.state_dict()
    keys = [k for g, ks in all_groups.items() if g in groups for k in ks]
    arrays = {k: state[k].numpy() for k in keys}
    first, best = 1, {"round": 0, "validation-loss": math.inf}
    earlier: list[SiteInfo] = []
    if resume:
        if not state_path.is_file():
            raise FederationError(f"nothing to resume: {state_path} does not exist")
        saved = load_state(state_path)
        require_same_settings(saved, config, state_path)
        require_same_arrays(saved["arrays"], arrays, state_path)
        if federation.rounds < saved["round"]:
            raise FederationError(
                f"{state_path} has completed round {saved['round']} already, more than the "
                f"{federation.rounds} rounds asked for; resume with at least {saved['round']} "
                "rounds (that many rewrites its final model and report), or start a new run"
            )
        arrays, first, folder = saved["arrays"], saved["round"] + 1, base / saved["folder"]
        best = saved.get("best", best)
        earlier = [SiteInfo(**site) for site in saved.get("sites", [])]
        strategy.load_state_dict(saved["strategy"])
        console.print(f"resuming federation {federation.id} after round {saved['round']}")
    else:
        if state_path.is_file():
            console.print(
                f"[yellow]{state_path} holds an earlier run of federation {federation.id}; this "
                "new run replaces it after its first round (--resume continues that one)[/yellow]"
            )
        folder = new_folder(base, "run")
    sites, refused = gather_sites(grid, config)
    admitted = AdmittedGrid(grid, {s.node_id: s.name for s in sites})
    turned_away = for_good(refused)
    for site in sites:
        declare(strategy, site)
    console.print(
        f"[bold]federation {federation.id}[/bold]: {len(sites)} sites "
        + ", ".join(f"{s.name} {s.tasks}" for s in sites)
    )
    absent = sorted({s.name for s in federation.sites} - {s.name for s in sites})
    if absent:
        console.print(
            f"[yellow]federation.sites lists {absent}, which did not join; the run goes on "
            f"without them (a simulation needs num-supernodes {len(federation.sites)})[/yellow]"
        )
    log = RunLog(folder, tensorboard=True, keep_until=first - 1 if resume else None)
    try:
        for server_round in range(first, federation.rounds + 1):
            joined = admit_newcomers(grid, config, admitted, sites, turned_away, server_round)
            for site in joined:
                declare(strategy, site)
                console.print(f"round {server_round}: site {site.name} {site.tasks} joined")
            everyone = with_earlier(sites, earlier)
            arrays, validation = _one_round(
                server_round, arrays, strategy, admitted, config, admitted.names, log, console
            )
            losses = {t.name: validation.get(f"{t.name}.loss", math.nan) for t in config.tasks}
            candidate = {
                "round": server_round,
                "validation-loss": validation_score(losses),
                "tasks-scored": sum(math.isfinite(v) for v in losses.values()),
            }
            if better_round(candidate, best):
                best = candidate
                extra = best | {
                    "rounds": federation.rounds,
                    "tasks": held_tasks(everyone),
                }
                _save_global_model(folder / BEST_MODEL_NAME, model, arrays, config, extra)
            _save_state(
                state_path,
                {
                    "round": server_round,
                    "seed": config.experiment.seed,
                    "settings": resume_settings(config),
                    "folder": folder.relative_to(base) if folder.is_relative_to(base) else folder,
                    "arrays": arrays,
                    "strategy": strategy.state_dict(),
                    "best": best,
                    "sites": [asdict(s) for s in everyone],
                },
            )
    finally:
        log.close()
    everyone = with_earlier(sites, earlier)
    extra = {"rounds": federation.rounds, "tasks": held_tasks(everyone)}
    _save_global_model(folder / "global_model.pt", model, arrays, config, extra)
    write_federated_report(folder, config, [asdict(s) for s in everyone], best=best)
    console.print(f"run folder: {folder}")
    return FederationResult(folder, federation.rounds, arrays, sites)


def better_round(candidate: Mapping[str, Any], best: Mapping[str, Any]) -> bool:
    """Whether ``candidate`` replaces ``best`` as the round ``best_global_model.pt`` keeps: a
    round that scored more tasks wins (a round in which no site returned a validation loss for
    some task, a site having failed its evaluation, is not compared on fewer tasks), and among
    rounds that scored as many, the lower mean validation loss."""
    scored, before = candidate["tasks-scored"], best.get("tasks-scored", 0)
    if scored != before:
        return scored > before
    return candidate["validation-loss"] < best["validation-loss"]


def with_earlier(sites: list[SiteInfo], earlier: list[SiteInfo]) -> list[SiteInfo]:
    """The sites of this session and, for a resumed run, those of the sessions before it that
    did not rejoin (their rounds are in the log, the report and the model card), by name."""
    names = {s.name for s in sites}
    return sorted([*sites, *(s for s in earlier if s.name not in names)], key=lambda s: s.name)


def held_tasks(sites: Iterable[SiteInfo]) -> list[str]:
    """The tasks some admitted site holds: the only ones whose heads a federated-heads global
    model has trained (``ctan evaluate`` and ``ctan predict`` leave the others out)."""
    return sorted({task for site in sites for task in site.tasks})


def _save_global_model(
    path: Path,
    model: torch.nn.Module,
    arrays: Mapping[str, np.ndarray],
    config: Config,
    extra: Mapping[str, Any],
) -> None:
    """The travelling groups in ``arrays`` over ``model`` as a ctan checkpoint at ``path``."""
    weights = model.state_dict()
    for key, value in arrays.items():
        weights[key] = torch.from_numpy(np.array(value))
    model.load_state_dict(weights)
    heads = config.federation.heads
    note = (
        "federated heads"
        if heads == "federated"
        else (
            "heads are local to each site: this model's heads are untrained; each site's "
            "personalised model is <state dir>/<federation id>/<site>/model.pt (best.pt: its "
            "best round)"
        )
    )
    save_checkpoint(path, model, config, {}, {**extra, "heads": heads, "note": note})


def _configured(
    configure: Callable[[], Iterable[Message]], grid: AdmittedGrid, config: Config
) -> list[Message]:
    """The messages of a strategy's configure step; a quorum lost while waiting for sites ends
    the run naming the admitted sites that are gone and the settings that decide the wait.

    Raises:
        FederationError: too few admitted sites connected within ``federation.round_timeout``.
    """
    try:
        return list(configure())
    except QuorumTimeoutError as err:
        connected = set(grid.get_node_ids())
        gone = sorted(name for node, name in grid.names.items() if node not in connected)
        raise FederationError(
            f"{err}: admitted sites not connected: {gone}; federation.min_sites is "
            f"{config.federation.min_sites} and federation.round_timeout "
            f"{config.federation.round_timeout:.0f} s"
        ) from err


def _one_round(
    server_round: int,
    arrays: dict[str, np.ndarray],
    strategy: Any,
    grid: AdmittedGrid,
    config: Config,
    names: Mapping[int, str],
    log: RunLog,
    console: Console,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train, aggregate and validate one round.

    Returns:
        ``(the new travelling arrays, validation metrics over the sites)``: the metrics are
        weighted by labelled cases per task (``{}`` when no evaluation reply was usable).
    """
    federation = config.federation
    start = time.perf_counter()
    record = groups_to_arrayrecord(split_groups(arrays))
    run = ConfigRecord({RUN_KEY: log.folder.name})
    messages = _configured(
        lambda: strategy.configure_train(server_round, record, run, grid), grid, config
    )
    sent = {m.metadata.dst_node_id for m in messages}
    sent_bytes = {
        m.metadata.dst_node_id: sum(r.count_bytes() for r in m.content.array_records.values())
        for m in messages
    }
    replies = in_site_order(
        grid.send_and_receive(messages, timeout=federation.round_timeout), names
    )
    good = _ok(replies, sent, federation.min_sites, names, "train", server_round)
    new_record, _ = strategy.aggregate_train(server_round, good)
    report = strategy.last_round
    train_seconds = 0.0
    for reply in good:
        node = reply.metadata.src_node_id
        site = names.get(node, str(node))
        metrics = _reply_metrics(reply)
        received = sum(r.count_bytes() for r in reply.content.array_records.values())
        train_seconds += metrics.get("train-seconds", 0.0)
        problems = [f"{p.key}: {p.reason}" for p in report.rejected.get(node, [])]
        if problems:
            console.print(
                f"[red]round {server_round}: reply of {site} rejected: {'; '.join(problems)}[/red]"
            )
        log.log(
            server_round,
            f"train/{site}",
            metrics
            | {
                "bytes-sent": float(sent_bytes.get(node, 0)),
                "bytes-received": float(received),
                "accepted": 0.0 if problems else 1.0,
            },
            **({"rejected": problems} if problems else {}),
        )
    require_usable_quorum(
        good, report.rejected, len(sent), federation.min_sites, names, server_round
    )
    arrays = _record_to_numpy(new_record)
    train_wall = time.perf_counter() - start
    validation_config = ConfigRecord({"split": "validation", **run})
    eval_messages = _configured(
        lambda: strategy.configure_evaluate(server_round, new_record, validation_config, grid),
        grid,
        config,
    )
    eval_sent = {m.metadata.dst_node_id for m in eval_messages}
    eval_replies = in_site_order(
        grid.send_and_receive(eval_messages, timeout=federation.round_timeout), names
    )
    eval_good = _ok(eval_replies, eval_sent, federation.min_sites, names, "evaluate", server_round)
    summary = []
    for reply in eval_good:
        site = names.get(reply.metadata.src_node_id, str(reply.metadata.src_node_id))
        metrics = _reply_metrics(reply)
        log.log(server_round, f"validation/{site}", metrics)
        primaries = [f"{t.name}.{t.primary_metric}" for t in config.tasks]
        shown = {k.split(".")[0]: round(metrics[k], 3) for k in primaries if k in metrics}
        summary.append(f"{site} {shown}")
    aggregated = strategy.aggregate_evaluate(server_round, eval_good)
    validation = (
        {}
        if aggregated is None
        else {k: float(v) for k, v in aggregated.items() if isinstance(v, (int, float))}
    )
    if validation:
        log.log(server_round, "validation/all", validation)
    log.log(
        server_round,
        "round",
        {
            "wall-seconds": time.perf_counter() - start,
            "train-wall-seconds": train_wall,
            "site-train-seconds": train_seconds,
        },
    )
    console.print(
        f"round {server_round}/{federation.rounds} "
        f"({time.perf_counter() - start:.1f} s): " + "; ".join(summary)
    )
    return arrays, validation
