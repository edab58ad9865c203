"""Parameter groups: the contract between model, client and server.

Every ``state_dict()`` key belongs to exactly one group by its prefix:

========================  =================  ====================================================
prefix                    group              shared with
========================  =================  ====================================================
``encoder.``              ``encoder``        every site
``attention.<t>.``        ``task.<t>``       the sites holding task ``t``
``task_encoders.<t>.``    ``task.<t>``       the sites holding task ``t`` (STL)
``heads.<t>.``            ``heads.<t>``      nobody, or sites holding ``t`` with federated heads
========================  =================  ====================================================
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

ENCODER_GROUP = "encoder"
TASK_PREFIXES = ("attention", "task_encoders")
HEADS_PREFIX = "heads"


def group_of(key: str) -> str:
    """The group of one ``state_dict`` key.

    Raises:
        ValueError: the key's top-level module is not part of the contract.
    """
    parts = key.split(".")
    if parts[0] == ENCODER_GROUP:
        return ENCODER_GROUP
    if parts[0] in TASK_PREFIXES and len(parts) > 2:
        return f"task.{parts[1]}"
    if parts[0] == HEADS_PREFIX and len(parts) > 2:
        return f"heads.{parts[1]}"
    raise ValueError(
        f"state_dict key {key!r} belongs to no parameter group; top-level modules must be "
        f"{ENCODER_GROUP!r}, {TASK_PREFIXES[0]!r}.<task>, {TASK_PREFIXES[1]!r}.<task> or "
        f"{HEADS_PREFIX!r}.<task>"
    )


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{group: [state_dict keys]}`` for a model, in the order encoder, task.*, heads.*.

    Empty groups are absent. Keys are those of the unwrapped model (no ``_module.`` prefix).

    Raises:
        ValueError: a key belongs to no group.
    """
    groups: dict[str, list[str]] = {}
    for key in model.state_dict():
        groups.setdefault(group_of(key), []).append(key)
    order = {ENCODER_GROUP: 0, "task": 1, "heads": 2}
    return dict(sorted(groups.items(), key=lambda item: order[item[0].split(".")[0]]))


def groups_for_tasks(group_names: Iterable[str], site_tasks: Iterable[str]) -> list[str]:
    """The groups a site holding ``site_tasks`` trains: ``encoder`` and its tasks' groups."""
    tasks = set(site_tasks)
    return [g for g in group_names if g == ENCODER_GROUP or g.split(".", 1)[1] in tasks]


def trainable_groups(model: nn.Module, site_tasks: Iterable[str]) -> list[str]:
    """Freeze every group a site holding only ``site_tasks`` must not train.

    Sets ``requires_grad=False`` on the parameters of the other tasks' groups (their branches
    still run in the forward pass, frozen) and ``True`` on the rest. Call it before building the
    optimiser and before Opacus wraps the model.

    Args:
        model: the unwrapped model.
        site_tasks: names of the tasks whose labels the site holds.

    Returns:
        The groups the site trains, in :func:`parameter_groups` order.

    Raises:
        ValueError: a task in ``site_tasks`` is not one of the model's tasks, or it is empty.
    """
    tasks = list(site_tasks)
    known = list(getattr(model, "task_names", []))
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"site tasks {tasks} must be a non-empty subset of the model's {known}")
    trainable = groups_for_tasks(parameter_groups(model), tasks)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(group_of(name) in trainable)
    return trainable
