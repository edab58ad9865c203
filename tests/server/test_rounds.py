"""Site admission: the server's ``query`` answered by the real client app, in this process.

A refused site that answered is sent the reason and logs it; one whose app failed is not.

The grid below hands messages to the client app (``client.client_app.app``, which routes them
by message type) directly instead of over a SuperLink (the end-to-end paths are in
``test_simulation.py`` and the deployment tests); what is under test is which sites the server
admits and what it says about the others.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml
from factories import derm_config
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app
from ctan.config import load_config
from server.rounds import (
    AdmittedGrid,
    FederationError,
    admit_newcomers,
    admit_sites,
    better_round,
    gather_sites,
)


@pytest.fixture(autouse=True)
def server_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take run and node ids from the task identity a ServerApp process sets."""
    for name, value in {"_task_id": 1, "_run_id": 1, "_node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, name, value)


class InProcessGrid:
    """Delivers each message to the client app of the node it is addressed to.

    ``sites`` maps a node id to (its partition id, the YAML that node's app reads); a node
    without an entry answers with an error, as a site whose app failed does.
    """

    def __init__(self, sites: Mapping[int, tuple[int, Path]], state: Path) -> None:
        self.sites, self.state = dict(sites), state

    def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in self.sites:
                replies.append(Message(Error(code=0, reason="the app crashed"), reply_to=message))
                continue
            partition, path = self.sites[node]
            context = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": partition, "num-partitions": 3},
                state=RecordDict(),
                run_config={"config": str(path), "state-dir": str(self.state)},
            )
            replies.append(app(message, context))
        return replies

    def get_node_ids(self) -> list[int]:
        return sorted(self.sites)


def federation_yaml(ham_phantom: Path, tmp: Path, name: str, min_sites: int, **model) -> Path:
    raw = derm_config(ham_phantom, tmp).model_dump(mode="json")
    raw["model"] |= model
    raw["federation"] = {
        "id": "admission",
        "min_sites": min_sites,
        "partition": {"method": "iid", "num_sites": 3},
        "sites": [
            {"name": "a", "tasks": ["lesion", "diagnosis"]},
            {"name": "b", "tasks": ["lesion"]},
            {"name": "c", "tasks": ["diagnosis"]},
        ],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sites_building_another_model_or_failing_are_refused_by_name(
    ham_phantom: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = federation_yaml(ham_phantom, tmp_path, "server", min_sites=1)
    wider = federation_yaml(ham_phantom, tmp_path, "wider", min_sites=1, widths=[8, 16, 48])
    grid = InProcessGrid({1: (0, server), 2: (1, wider)}, tmp_path / "state")
    with caplog.at_level(logging.ERROR, logger="server.rounds"):
        admitted, _ = admit_sites(grid, load_config(server), [1, 2, 3])
    assert [(s.node_id, s.name, s.tasks) for s in admitted] == [(1, "a", ["lesion", "diagnosis"])]
    assert admitted[0].labelled["lesion"] > 0
    assert "node 2 refused: site 'b' builds a different model" in caplog.text
    assert "node 3 refused: query failed at the site: the app crashed" in caplog.text
    site_b = [r for r in caplog.records if r.name == "client.client_app"]
    assert [r.getMessage().split(" (")[0] for r in site_b] == [
        "the server refused this site: site 'b' builds a different model"
    ]
    assert "did not acknowledge" not in caplog.text


def test_admitted_sites_come_in_name_order_whatever_the_reply_order(
    ham_phantom: Path, tmp_path: Path
) -> None:
    server = federation_yaml(ham_phantom, tmp_path, "server", min_sites=3)
    grid = InProcessGrid({1: (2, server), 2: (0, server), 3: (1, server)}, tmp_path / "state")
    admitted, _ = gather_sites(grid, load_config(server))
    assert [(s.name, s.node_id) for s in admitted] == [("a", 2), ("b", 3), ("c", 1)]


def test_a_refusal_does_not_end_the_wait_for_sites_but_the_timeout_does(
    ham_phantom: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load(federation_yaml(ham_phantom, tmp_path, "server", min_sites=2).read_text())
    raw["federation"]["round_timeout"] = 2
    server = tmp_path / "waiting.yaml"
    server.write_text(yaml.safe_dump(raw))
    wider = federation_yaml(ham_phantom, tmp_path, "wider", min_sites=2, widths=[8, 16, 48])

    class ThirdComesLater(InProcessGrid):
        """Node 3 connects once the server has looked twice."""

        looks = 0

        def get_node_ids(self) -> list[int]:
            self.looks += 1
            if self.looks == 3:
                self.sites[3] = (2, server)
            return super().get_node_ids()

    later = ThirdComesLater({1: (0, server), 2: (1, wider)}, tmp_path / "state")
    admitted, refused = gather_sites(later, load_config(server))
    assert [(s.name, s.node_id) for s in admitted] == [("a", 1), ("c", 3)]
    assert "site 'b' builds a different model" in refused[2]

    grid = InProcessGrid({1: (0, server), 2: (1, wider)}, tmp_path / "state")
    started = time.monotonic()
    with pytest.raises(
        FederationError,
        match=r"only 2 sites connected and 1 admitted within 2 s \(federation\.round_timeout\); "
        r"federation\.min_sites is 2; refused: .*site 'b' builds a different model",
    ):
        gather_sites(grid, load_config(server))
    assert time.monotonic() - started >= 2


def test_a_second_node_with_a_taken_site_name_or_a_malformed_answer_is_refused(
    ham_phantom: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = federation_yaml(ham_phantom, tmp_path, "server", min_sites=1)

    class WithABrokenNode(InProcessGrid):
        def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
            messages = list(messages)
            broken = [m for m in messages if m.metadata.dst_node_id == 9]
            spelt = [m for m in messages if m.metadata.dst_node_id == 8]
            rest = [m for m in messages if m.metadata.dst_node_id not in {8, 9}]
            empty = [Message(RecordDict(), reply_to=m) for m in broken]
            one_string = RecordDict({"site": ConfigRecord({"site": "d", "tasks": "lesion"})})
            string = [Message(one_string, reply_to=m) for m in spelt]
            return super().send_and_receive(rest, timeout) + empty + string

    grid = WithABrokenNode({1: (0, server), 2: (0, server)}, tmp_path / "state")
    with caplog.at_level(logging.ERROR, logger="server.rounds"):
        admitted, refused = admit_sites(grid, load_config(server), [1, 2, 8, 9])
    assert [(s.node_id, s.name) for s in admitted] == [(1, "a")]
    assert "another node already joined as site 'a'" in refused[2]
    assert refused[9].startswith("its answer to the query is malformed (KeyError")
    assert "tasks must be a list of task names, got 'lesion'" in refused[8]
    assert "node 9 refused" in caplog.text


def test_sites_that_connect_later_are_admitted_at_the_next_round(
    ham_phantom: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = federation_yaml(ham_phantom, tmp_path, "server", min_sites=1)
    wider = federation_yaml(ham_phantom, tmp_path, "wider", min_sites=1, widths=[8, 16, 48])
    grid = InProcessGrid({1: (0, server)}, tmp_path / "state")
    config = load_config(server)
    sites, _ = admit_sites(grid, config, [1])
    admitted = AdmittedGrid(grid, {s.node_id: s.name for s in sites})
    turned_away: set[int] = set()
    assert admit_newcomers(grid, config, admitted, sites, turned_away, 2) == []
    grid.sites |= {3: (1, server), 2: (2, wider)}
    with caplog.at_level(logging.INFO, logger="server.rounds"):
        joined = admit_newcomers(grid, config, admitted, sites, turned_away, 3)
    assert [(s.node_id, s.name) for s in joined] == [(3, "b")]
    assert [s.name for s in sites] == ["a", "b"] and admitted.get_node_ids() == [1, 3]
    assert admitted.names == {1: "a", 3: "b"} and turned_away == {2}
    assert "round 3: site b (node 3) joined" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="server.rounds"):
        assert admit_newcomers(grid, config, admitted, sites, turned_away, 4) == []
    assert "refused" not in caplog.text
    grid.sites[4] = (0, server)
    assert admit_newcomers(grid, config, admitted, sites, turned_away, 5) == []
    assert turned_away == {2}
    del grid.sites[1]
    joined = admit_newcomers(grid, config, admitted, sites, turned_away, 6)
    assert [(s.node_id, s.name) for s in joined] == [(4, "a")]
    assert [(s.node_id, s.name) for s in sites] == [(4, "a"), (3, "b")]
    assert admitted.names == {3: "b", 4: "a"}


def test_a_server_state_that_is_unreadable_or_of_another_kind_is_named(tmp_path: Path) -> None:
    import torch

    from server.rounds import FederationError, load_state

    torn = tmp_path / "torn" / "server-state.pt"
    torn.parent.mkdir()
    torn.write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(FederationError, match=r"torn/server-state\.pt cannot be read"):
        load_state(torn)
    other = tmp_path / "other" / "server-state.pt"
    other.parent.mkdir()
    torch.save({"format_version": 1, "state_dict": {}}, other)
    with pytest.raises(FederationError, match=r"other/server-state\.pt is not a server state"):
        load_state(other)


def test_a_global_model_records_only_the_tasks_some_site_held() -> None:
    from server.rounds import SiteInfo, held_tasks

    sites = [
        SiteInfo(1, "a", ["lesion"], {"lesion": 3}, "0.1.0"),
        SiteInfo(2, "b", ["lesion"], {"lesion": 5}, "0.1.0"),
    ]
    assert held_tasks(sites) == ["lesion"]


@pytest.fixture(scope="module")
def round_with_a_diverged_site(
    ham_phantom: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """One in-process round of sites a, b and c, c's update carrying NaN weights, as a site
    whose training diverged: (the run folder, the sites' state folder)."""
    import numpy as np
    from flwr.app import Array, MessageType

    from server.rounds import run_federation

    class DivergedSite(InProcessGrid):
        def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
            replies = super().send_and_receive(messages, timeout)
            for reply in replies:
                if reply.metadata.src_node_id == 3 and reply.metadata.message_type == (
                    MessageType.TRAIN
                ):
                    arrays = next(iter(reply.content.array_records.values()))
                    key = next(k for k in arrays if k.startswith("encoder."))
                    arrays[key] = Array(np.full(arrays[key].shape, np.nan, np.float32))
            return replies

    tmp = tmp_path_factory.mktemp("diverged")
    server = federation_yaml(ham_phantom, tmp, "server", min_sites=2)
    config = load_config(server)
    config = config.model_copy(
        update={"federation": config.federation.model_copy(update={"rounds": 1})}
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"_task_id": 1, "_run_id": 1, "_node_id": 0}.items():
            patch.setattr(TaskIdentity, name, value)
        grid = DivergedSite({1: (0, server), 2: (1, server), 3: (2, server)}, tmp / "state")
        folder = run_federation(grid, config).folder
    return folder, tmp / "state" / "admission"


def test_a_rejected_update_is_logged_as_such_and_named_in_the_report(
    round_with_a_diverged_site: tuple[Path, Path],
) -> None:
    import json

    folder, _ = round_with_a_diverged_site
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = {r["split"]: r for r in records if r["split"].startswith("train/")}
    assert {split: r["accepted"] for split, r in train.items()} == {
        "train/a": 1.0,
        "train/b": 1.0,
        "train/c": 0.0,
    }
    assert "rejected" not in train["train/a"]
    assert any("contains NaN or Inf" in reason for reason in train["train/c"]["rejected"])
    report = (folder / "report.md").read_text()
    assert "| c |" in report and "| 0 of 1 |" in report
    assert "Rejected updates, left out of their rounds: c (round 1)." in report


def test_a_site_logs_every_payload_it_sent(round_with_a_diverged_site: tuple[Path, Path]) -> None:
    import json

    _, state = round_with_a_diverged_site
    lines = (state / "b" / "payloads.jsonl").read_text().splitlines()
    query, train, evaluate = (json.loads(line) for line in lines)
    assert [query["kind"], train["kind"], evaluate["kind"]] == ["query", "train", "evaluate"]
    assert query["round"] is None and query["arrays"] == 0
    site, counts = query["values"]["site"], query["values"]["counts"]
    assert site["tasks"] == ["lesion"] and site["site"] == "b" and site["model-keys"]
    assert counts["labelled.lesion"] > 0 and counts["train-cases"] > 0
    assert train["round"] == 1 and train["run"] == evaluate["run"] != ""
    assert train["groups"] == ["encoder", "task.lesion"] and train["bytes"] > 0
    assert train["values"]["config"] == {"tasks": ["lesion"], "site": "b"}
    assert train["values"]["metrics"]["num-examples.task.lesion"] > 0
    assert "lesion.loss" in train["values"]["metrics"]
    assert evaluate["groups"] == [] and "lesion.dice" in evaluate["values"]["metrics"]


def test_a_run_resumes_only_under_the_settings_it_ran_with(ham_phantom: Path, tmp_path: Path):
    import torch

    from server.rounds import load_state, require_same_settings, resume_settings

    config = load_config(federation_yaml(ham_phantom, tmp_path, "server", min_sites=2))
    path = tmp_path / "server-state.pt"
    state = {"round": 1, "seed": 0, "folder": "run-1", "arrays": {}, "strategy": {}, "best": {}}
    torch.save(state | {"settings": resume_settings(config)}, path)
    saved = load_state(path)

    def changed(section: str, **update: object):
        return config.model_copy(
            update={section: getattr(config, section).model_copy(update=update)}
        )

    require_same_settings(saved, changed("federation", rounds=9, min_sites=3), path)
    with pytest.raises(FederationError, match=r"federation\.strategy 'fedavg' -> 'fedadam'"):
        require_same_settings(saved, changed("federation", strategy="fedadam"), path)
    with pytest.raises(FederationError, match=r"experiment\.seed 0 -> 5.*without --resume"):
        require_same_settings(saved, changed("experiment", seed=5), path)
    robust = config.federation.robust.model_copy(update={"trim_beta": 0.2})
    with pytest.raises(FederationError, match=r"federation\.robust"):
        require_same_settings(saved, changed("federation", robust=robust), path)
    older = {k: v for k, v in saved.items() if k != "settings"}
    require_same_settings(older, changed("federation", strategy="fedadam"), path)
    with pytest.raises(FederationError, match=r"experiment\.seed 0 -> 5"):
        require_same_settings(older, changed("experiment", seed=5), path)


def test_a_site_gone_between_rounds_ends_the_run_naming_it(ham_phantom: Path, tmp_path: Path):
    from flwr.app import MessageType

    from server.rounds import run_federation

    class LeavesAfterRoundOne(InProcessGrid):
        """Node 3 disconnects once it has answered round 1's evaluation."""

        def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
            replies = super().send_and_receive(messages, timeout)
            if any(m.metadata.message_type == MessageType.EVALUATE for m in messages):
                self.sites.pop(3, None)
            return replies

    raw = yaml.safe_load(federation_yaml(ham_phantom, tmp_path, "server", min_sites=3).read_text())
    raw["federation"] |= {"rounds": 2, "round_timeout": 1}
    server = tmp_path / "timeout.yaml"
    server.write_text(yaml.safe_dump(raw))
    grid = LeavesAfterRoundOne({1: (0, server), 2: (1, server), 3: (2, server)}, tmp_path / "s")
    with pytest.raises(
        FederationError,
        match=r"round 2: 2 nodes connected, 3 needed, after waiting 1 s: admitted sites not "
        r"connected: \['c'\]; federation\.min_sites is 3 and federation\.round_timeout 1 s",
    ):
        run_federation(grid, load_config(server))


def test_a_listed_site_that_does_not_join_is_named(
    ham_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.rounds import run_federation

    raw = yaml.safe_load(federation_yaml(ham_phantom, tmp_path, "server", min_sites=2).read_text())
    raw["federation"]["rounds"] = 1
    server = tmp_path / "two.yaml"
    server.write_text(yaml.safe_dump(raw))
    grid = InProcessGrid({1: (0, server), 2: (1, server)}, tmp_path / "state")
    run_federation(grid, load_config(server))
    out = " ".join(capsys.readouterr().out.split())
    assert "federation.sites lists ['c'], which did not join" in out
    assert "(a simulation needs num-supernodes 3)" in out


def test_the_best_round_is_not_chosen_over_fewer_tasks() -> None:
    """A round in which the only site holding diagnosis failed its evaluation scores lesion
    alone; its lower mean must not make it the best model."""
    start = {"round": 0, "validation-loss": math.inf}
    both = {"round": 1, "validation-loss": 1.63, "tasks-scored": 2}
    lesion_only = {"round": 2, "validation-loss": 1.45, "tasks-scored": 1}
    lower = {"round": 3, "validation-loss": 1.60, "tasks-scored": 2}
    assert better_round(lesion_only, start) and better_round(both, lesion_only)
    assert not better_round(lesion_only, both)
    assert better_round(lower, both) and not better_round(both, lower)
    assert not better_round({"round": 4, "validation-loss": math.inf, "tasks-scored": 0}, start)


def test_a_resume_asking_fewer_rounds_than_completed_is_refused(ham_phantom: Path, tmp_path: Path):
    import torch

    from ctan.models import build_model, parameter_groups
    from server.rounds import STATE_NAME, resume_settings, run_federation

    config = load_config(federation_yaml(ham_phantom, tmp_path, "server", min_sites=2))
    model = build_model(config)
    weights = model.state_dict()
    shared = [
        k for g, ks in parameter_groups(model).items() if not g.startswith("heads.") for k in ks
    ]
    state = config.experiment.output_dir / config.federation.id / STATE_NAME
    state.parent.mkdir(parents=True)
    torch.save(
        {
            "round": 3,
            "seed": config.experiment.seed,
            "settings": resume_settings(config),
            "folder": "run-1",
            "arrays": {k: weights[k] for k in shared},
            "strategy": {},
        },
        state,
    )
    fewer = config.model_copy(
        update={"federation": config.federation.model_copy(update={"rounds": 2})}
    )
    with pytest.raises(FederationError, match=r"completed round 3 already, more than the 2 rounds"):
        run_federation(None, fewer, resume=True)  # type: ignore[arg-type]
