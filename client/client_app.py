"""The hospital side: a Flower ClientApp running :class:`ctan.site.SiteRunner` on local data.

Each handler converts records at the edge, calls one ``SiteRunner`` method and packs the reply
(record layout: :mod:`server.strategy`). Nothing is kept at module level: in simulation one
worker process serves several sites, and in deployment every message runs in a fresh process;
site state lives on the site's disk.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ctan.federation import (
    config_from_run_config,
    simulated_site,
    simulated_site_cases,
    simulation_state_dir,
    site_from_node_config,
)
from ctan.site import SiteRunner

logger = logging.getLogger(__name__)

APP_ROOT = Path(__file__).resolve().parents[1]
WEIGHT_KEY = "num-examples"

app = ClientApp()


def site_runner(context: Context) -> SiteRunner:
    """The site this node is: simulated (``partition-id``) or a hospital (its node config)."""
    config = config_from_run_config(context.run_config, APP_ROOT)
    node_config = dict(context.node_config)
    if "partition-id" in node_config:
        site = simulated_site(
            config,
            int(node_config["partition-id"]),
            simulation_state_dir(context.run_config, config),
        )
        return SiteRunner(config, site, simulated_site_cases(config, site.name))
    return SiteRunner(config, site_from_node_config(node_config, config))


def _sent(
    runner: SiteRunner, kind: str, message: Message, reply: RecordDict, run: str = ""
) -> Message:
    """``reply`` as the answer to ``message``, first logged in the site's ``payloads.jsonl``
    in full (arrays by group and size), so that the hospital can see everything that left it."""
    config = message.content.config_records.get("config", ConfigRecord())
    server_round = config.get("server-round")
    runner.log_payload(
        kind,
        int(server_round) if server_round is not None else None,
        {
            key: np.dtype(array.dtype).itemsize * math.prod(array.shape)
            for record in reply.array_records.values()
            for key, array in record.items()
        },
        {
            name: dict(record)
            for name, record in [*reply.metric_records.items(), *reply.config_records.items()]
        },
        run,
    )
    return Message(reply, reply_to=message)


def _arrays(message: Message) -> dict[str, np.ndarray]:
    record = message.content.array_records.get("arrays", ArrayRecord())
    return {key: array.numpy() for key, array in record.items()}


@app.query()
def query(message: Message, context: Context) -> Message:
    """Tell the server what this site holds and which model it builds."""
    runner = site_runner(context)
    description = runner.describe()
    labelled = description.pop("labelled")
    cases = int(description.pop("train-cases"))
    reply = ConfigRecord({k: v for k, v in description.items() if v is not None})
    counts = MetricRecord({f"labelled.{task}": int(n) for task, n in labelled.items()})
    counts["train-cases"] = cases
    return _sent(runner, "query", message, RecordDict({"site": reply, "counts": counts}))


@app.query("refused")
def refused(message: Message, context: Context) -> Message:
    """The server's notice (``query.refused``) that it turned this site away, and why (another
    model, no labels for the federation's tasks): logged here, where the hospital can act on
    it, and acknowledged with an empty reply."""
    reason = message.content.config_records["config"]["reason"]
    logger.error("the server refused this site: %s", reason)
    return Message(RecordDict(), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the groups this site may train and send exactly those back."""
    runner = site_runner(context)
    config = message.content.config_records.get("config", ConfigRecord())
    run = str(config.get("federation-run", ""))
    output = runner.train_round(
        int(config["server-round"]),
        _arrays(message),
        float(config.get("proximal-mu", 0.0)),
        run=run,
    )
    metrics = {f"{WEIGHT_KEY}.{group}": count for group, count in output.counts.items()}
    metrics[WEIGHT_KEY] = int(output.counts.get("encoder", max(output.counts.values(), default=0)))
    metrics |= output.metrics
    reply = RecordDict(
        {
            "arrays": ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in output.arrays.items()}
            ),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord({"tasks": runner.held_tasks(), "site": runner.site.name}),
        }
    )
    return _sent(runner, "train", message, reply, run)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Score the site's personalised model on its validation (or test) split."""
    runner = site_runner(context)
    config = message.content.config_records.get("config", ConfigRecord())
    split = str(config.get("split", "validation"))
    run = str(config.get("federation-run", ""))
    metrics, counts = runner.evaluate_round(
        int(config["server-round"]), _arrays(message), split, run=run
    )
    record = {f"{WEIGHT_KEY}.task.{task}": n for task, n in counts.items()}
    record[WEIGHT_KEY] = max(counts.values(), default=0)
    record |= metrics
    reply = RecordDict(
        {
            "metrics": MetricRecord(record),
            "config": ConfigRecord({"site": runner.site.name}),
        }
    )
    return _sent(runner, "evaluate", message, reply, run)
