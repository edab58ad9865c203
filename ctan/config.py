"""The typed experiment configuration: one YAML file, validated once, passed everywhere.

Sections follow the design: ``experiment``, ``model``, ``tasks``, ``data``, ``train`` and
``federation``. Unknown keys and wrong values are refused with a :class:`ConfigError` that names
the field path, the value received and what is allowed. Relative paths resolve against the YAML
file's folder (or the working directory when the config is given as a dict).

Example:
    >>> cfg = load_config({
    ...     "model": {"arch": "ctan", "spatial_dims": 2, "in_channels": 3, "image_size": [64, 64]},
    ...     "tasks": [{"name": "lesion", "kind": "segmentation", "classes": 1}],
    ... })
    >>> cfg.model.widths
    [16, 32, 64, 128]
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ctan.tasks import TaskSpec

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "ModelConfig",
    "PartitionConfig",
    "PhantomConfig",
    "PrivacyConfig",
    "SiteConfig",
    "SplitConfig",
    "TrainConfig",
    "load_config",
]


#: a site name or federation id, which also names its state folder: no separators, no leading dot
FOLDER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: a training device
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem found."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the
    last silently, so ``train: {epochs: 5}`` and a later ``train: {epochs: 1}`` give 1 epoch."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if not isinstance(key, typing.Hashable):
            continue
        if key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (lines {lines[key]} and {line})"
            )
        lines[key] = line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Make ``value`` absolute against the config file's folder (``context['base_dir']``)."""
    value = value.expanduser()
    if value.is_absolute():
        return value
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return (Path(base) / value).resolve()


ResolvedPath = Annotated[Path, AfterValidator(_resolve_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``epochs: true`` is a slip, not one epoch: pydantic would read a boolean as 1."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            numeric = {int, float}
            if annotation in numeric or set(typing.get_args(annotation)) & numeric:
                raise ValueError(f"a number is needed, not the boolean {value}")
        return value


class ExperimentConfig(_Section):
    """Names the run and fixes its randomness and output folder."""

    name: Annotated[str, Field(pattern=FOLDER_NAME_PATTERN)] = "ctan"
    seed: int = Field(default=0, ge=0)
    output_dir: ResolvedPath = Path("runs")


class ModelConfig(_Section):
    """The network: architecture, dimensionality, input and encoder shape.

    The input is ``(B, in_channels, *image_size)``. Every side of ``image_size`` must be divisible
    by ``2 ** (len(widths) - 1)`` because each encoder stage after the first halves it.
    """

    arch: Literal["stl", "hps", "mtan", "ctan"]
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(ge=1)
    image_size: list[int]
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    blocks: int = Field(default=1, ge=1, description="residual blocks per encoder stage")
    norm: Literal["group", "instance"] = "group"
    norm_groups: int = Field(default=8, ge=1, description="groups of GroupNorm")
    act: Literal["relu", "leakyrelu", "gelu", "silu", "elu"] = "relu"
    attention_heads: int = Field(default=4, ge=1, description="heads of the CTAB attention")
    attention_from_stage: int = Field(
        default=1, ge=0, description="first encoder stage with task attention masks"
    )
    head_hidden: int = Field(default=128, ge=1, description="hidden units of image-level heads")
    image_head_stages: Literal["all", "last"] = Field(
        default="all",
        description="encoder stages the image-level heads pool: every stage, or the deepest only",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("norm", mode="before")
    @classmethod
    def _refuse_batch_norm(cls, norm: Any) -> Any:
        if isinstance(norm, str) and norm.lower() in ("batch", "batchnorm", "batch_norm"):
            raise ValueError(
                f"norm {norm!r} is refused: BatchNorm's running statistics break per-sample "
                "gradients (differential privacy) and small federated batches; allowed: "
                "'group', 'instance'"
            )
        return norm

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if len(self.image_size) != self.spatial_dims:
            raise ValueError(
                f"image_size {self.image_size} has {len(self.image_size)} sides but spatial_dims "
                f"is {self.spatial_dims}; give {self.spatial_dims} sizes"
            )
        if any(s < 1 for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be positive on every side")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths {self.widths} must all be positive")
        factor = 2 ** (len(self.widths) - 1)
        bad = [s for s in self.image_size if s % factor or s < factor]
        if bad:
            fixed = [max(factor, round(s / factor) * factor) for s in self.image_size]
            raise ValueError(
                f"image_size {self.image_size} cannot be divided by the encoder: "
                f"{len(self.widths)} stages halve each side {len(self.widths) - 1} times, so every "
                f"side must be a multiple of {factor}; for example image_size {fixed}, or fewer "
                "widths"
            )
        if self.norm == "group":
            bad_w = [w for w in self.widths if w % self.norm_groups]
            if bad_w:
                raise ValueError(
                    f"widths {bad_w} are not divisible by norm_groups {self.norm_groups}; "
                    "choose widths that are multiples of norm_groups, or another norm_groups"
                )
        if self.attention_from_stage >= len(self.widths):
            raise ValueError(
                f"attention_from_stage {self.attention_from_stage} must name an encoder stage: "
                f"0 to {len(self.widths) - 1}"
            )
        if self.arch == "ctan" and self.widths[-1] % self.attention_heads:
            raise ValueError(
                f"the bottleneck width {self.widths[-1]} is not divisible by attention_heads "
                f"{self.attention_heads}"
            )
        return self

    def fingerprint(self, tasks: list[TaskSpec]) -> str:
        """A short hash of everything that fixes parameter names and shapes.

        Two parties whose fingerprints agree build models with identical ``state_dict`` keys and
        shapes.
        """
        payload = {
            "model": self.model_dump(mode="json"),
            "tasks": [
                {"name": t.name, "kind": t.kind, "classes": t.classes, "exclusive": t.exclusive}
                for t in tasks
            ],
        }
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class SplitConfig(_Section):
    """How cases are split into train/validation/test, never splitting a group (``by``)."""

    validation: float = Field(default=0.2, ge=0.0, lt=1.0)
    test: float = Field(default=0.2, ge=0.0, lt=1.0)
    by: str | None = Field(
        default=None,
        description="field whose values never straddle splits, on top of each case's own group "
        "(a patient's slices, a lesion's images), which stays whole whatever it is",
    )
    seed: int | None = Field(default=None, description="defaults to experiment.seed")

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation ({self.validation}) + test ({self.test}) leave no training cases; "
                "their sum must be below 1"
            )
        return self


class PhantomConfig(_Section):
    """Phantom data written into ``data.root`` in the data format's layout when it is missing."""

    cases: int = Field(default=200, ge=1)
    sites: int = Field(default=4, ge=1)
    seed: int = Field(default=0, ge=0)


class LateralityConfig(_Section):
    """Where the patient's right and left lie in a manifest's images, and which label channels
    are the right and left of one structure: a training mirror across that axis exchanges them,
    so that a mirrored left parotid is labelled as the right one."""

    axis: int = Field(
        ge=0, description="spatial axis running between the patient's right and left, from 0"
    )
    pairs: dict[str, list[tuple[int, int]]] = Field(
        default_factory=dict,
        description="per pixel label (its manifest column), channel pairs a mirror exchanges",
    )


class DataConfig(_Section):
    """Where the cases are and how they are read."""

    format: Literal["ham10000", "openkbp", "stoic", "manifest"]
    root: ResolvedPath
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache_dir: ResolvedPath | None = None
    skip_bad: bool = False
    phantom: PhantomConfig | None = None
    laterality: LateralityConfig | None = Field(
        default=None,
        description="manifest only (the other formats declare their own); default: no "
        "left-right axis, so mirrors exchange no channels",
    )

    @model_validator(mode="after")
    def _check_phantom(self) -> DataConfig:
        if self.phantom is not None and self.format == "manifest":
            raise ValueError(
                "phantom applies to formats 'ham10000', 'openkbp' and 'stoic' (phantoms are "
                "written in one of those layouts); a manifest names real files"
            )
        return self

    @model_validator(mode="after")
    def _check_laterality(self) -> DataConfig:
        if self.laterality is not None and self.format != "manifest":
            raise ValueError(
                f"laterality applies to format 'manifest' only; format {self.format!r} "
                "declares its own left-right axis and paired labels"
            )
        return self


class AugmentationConfig(_Section):
    """Random training augmentation (MONAI transforms, drawn per sample)."""

    flip_axes: list[int] | None = Field(
        default=None,
        description="spatial axes mirrored with probability 0.5 each, 0 being the first "
        "spatial axis; default every axis, [] none. Where the data format knows the patient's "
        "left-right axis, mirroring it also exchanges lateralised label channels (OpenKBP: left "
        "and right parotid)",
    )
    affine: bool = Field(default=True, description="rotation up to 0.2 rad and scaling by 10 %")
    intensity: bool = Field(default=True, description="intensity scale and shift jitter of 10 %")

    @field_validator("flip_axes")
    @classmethod
    def _distinct_axes(cls, axes: list[int] | None) -> list[int] | None:
        if axes is not None and (len(set(axes)) != len(axes) or any(a < 0 for a in axes)):
            raise ValueError(f"flip_axes {axes} must be distinct spatial axes counted from 0")
        return axes


class TrainConfig(_Section):
    """Optimisation settings shared by centralised and federated (local) training."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1.0e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    weighting: Literal["equal", "dwa", "uncertainty"] = "equal"
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    amp: bool = Field(default=True, description="mixed precision where the device supports it")
    num_workers: int = Field(default=0, ge=0)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)


class PrivacyConfig(_Section):
    """A site's differential-privacy budget (Opacus DP-SGD). Owned by the site."""

    target_epsilon: float = Field(gt=0.0)
    delta: float = Field(default=1.0e-5, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)


class SiteConfig(_Section):
    """One simulated site and what it holds (stands in for a hospital's own settings)."""

    name: Annotated[str, Field(pattern=FOLDER_NAME_PATTERN)]
    tasks: list[str] = Field(min_length=1)
    privacy: PrivacyConfig | None = None


class PartitionConfig(_Section):
    """How one data set is split into simulated sites."""

    method: Literal["site", "iid", "dirichlet"] = "site"
    num_sites: int | None = Field(default=None, ge=1, description="for iid and dirichlet")
    alpha: float = Field(default=0.5, gt=0.0, description="Dirichlet concentration")
    label: str | None = Field(default=None, description="task whose label Dirichlet skews")
    stratum: str | None = Field(
        default=None,
        description=(
            "case metadata field Dirichlet skews instead of a task's label, for data whose "
            "tasks carry no per-case class (OpenKBP: dose_levels)"
        ),
    )
    min_cases: int = Field(default=1, ge=1, description="a smaller site is an error")
    seed: int | None = Field(default=None, description="defaults to experiment.seed")

    @model_validator(mode="after")
    def _check_method(self) -> PartitionConfig:
        if self.method in ("iid", "dirichlet") and self.num_sites is None:
            raise ValueError(f"partition method {self.method!r} needs num_sites")
        if self.label is not None and self.stratum is not None:
            raise ValueError("partition takes label or stratum, not both")
        if self.method == "dirichlet" and self.label is None and self.stratum is None:
            raise ValueError(
                "partition method 'dirichlet' needs label (the task to skew) or stratum (a case "
                "metadata field to skew)"
            )
        return self


#: strategies with a server optimiser (``federation.server_optimizer``)
ADAPTIVE_STRATEGIES = ("fedadam", "fedyogi")


class ServerOptimizerConfig(_Section):
    """The server's adaptive optimiser of FedAdam/FedYogi (Reddi et al. 2021, arXiv:2003.00295).

    Each round moves a travelling array by about ``lr * m / (sqrt(v) + tau)`` per element, where
    ``m`` and ``v`` are the moments of the averaged site updates: ``lr`` is roughly the largest
    step per element and round, whatever the size of the sites' updates, so it must suit the
    weights' scale (Flower's own default, 0.1, is larger than most weights of these networks).
    """

    lr: float = Field(default=1.0e-2, gt=0.0, description="server learning rate (Flower's eta)")
    beta_1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(default=0.99, ge=0.0, lt=1.0)
    tau: float = Field(default=1.0e-3, gt=0.0, description="adaptivity: added to sqrt(v)")


class ServerSGDConfig(_Section):
    """The server's SGD step of FedAvgM (Hsu et al. 2019, arXiv:1909.06335).

    The averaged site update ``d`` (new minus old weights) is applied as ``lr * (d + momentum *
    previous)``, where ``previous`` is the last round's bracket: ``lr`` 1 without momentum is
    FedAvg, ``lr`` above 1 extrapolates along the averaged update.
    """

    lr: float = Field(default=1.0, gt=0.0, description="server learning rate")
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0, description="server momentum")


class RobustConfig(_Section):
    """Limits on how far one site's update moves a round (both off by default): against a
    faulty or poisoned site, at the cost of some accuracy when the sites' data differ."""

    norm_bound: float | None = Field(
        default=None, gt=0.0, description="clip each site's update of a group to this L2 norm"
    )
    trim_beta: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="fraction of the sites cut at each end, per coordinate, before an unweighted "
        "mean (0: the weighted mean)",
    )


class FederationConfig(_Section):
    """Rounds, strategy and aggregation of a federated run."""

    id: Annotated[str, Field(pattern=FOLDER_NAME_PATTERN)]
    rounds: int = Field(default=20, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    strategy: Literal["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi"] = "fedavg"
    proximal_mu: float = Field(default=0.01, ge=0.0)
    server_optimizer: ServerOptimizerConfig | None = Field(
        default=None, description="fedadam | fedyogi only; defaults when left out"
    )
    server_sgd: ServerSGDConfig | None = Field(
        default=None, description="fedavgm only; defaults (lr 1, no momentum) when left out"
    )
    min_sites: int = Field(default=2, ge=1)
    robust: RobustConfig = Field(default_factory=RobustConfig)
    heads: Literal["local", "federated"] = "local"
    round_timeout: float = Field(default=600.0, gt=0.0)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    sites: list[SiteConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_server_options(self) -> FederationConfig:
        if self.server_optimizer is not None and self.strategy not in ADAPTIVE_STRATEGIES:
            raise ValueError(
                f"server_optimizer applies to strategy {' | '.join(ADAPTIVE_STRATEGIES)} only, "
                f"not {self.strategy!r}"
            )
        if self.server_sgd is not None and self.strategy != "fedavgm":
            raise ValueError(f"server_sgd applies to strategy fedavgm only, not {self.strategy!r}")
        return self


class Config(_Section):
    """The whole experiment. Build it with :func:`load_config`."""

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    model: ModelConfig
    tasks: list[TaskSpec] = Field(min_length=1)
    data: DataConfig | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig | None = None

    @model_validator(mode="after")
    def _check_tasks(self) -> Config:
        names = [t.name for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tasks {twice} are listed more than once; task names must be unique")
        axes = self.train.augmentation.flip_axes or []
        beyond = [a for a in axes if a >= self.model.spatial_dims]
        if beyond:
            raise ValueError(
                f"train.augmentation.flip_axes {beyond} do not exist for spatial_dims "
                f"{self.model.spatial_dims}; allowed: {list(range(self.model.spatial_dims))}"
            )
        if self.data is not None and self.data.laterality is not None:
            self._check_laterality(self.data.laterality)
        if self.federation is not None:
            for site in self.federation.sites:
                unknown = [t for t in site.tasks if t not in names]
                if unknown:
                    raise ValueError(
                        f"federation site {site.name!r} holds unknown tasks {unknown}; "
                        f"allowed: {names}"
                    )
            site_names = [s.name for s in self.federation.sites]
            if len(set(site_names)) != len(site_names):
                raise ValueError(f"federation sites {site_names} repeat a name")
        return self

    def _check_laterality(self, laterality: LateralityConfig) -> None:
        """The axis exists and every pair names two distinct channels of a pixel task's label."""
        dims = self.model.spatial_dims
        if laterality.axis >= dims:
            raise ValueError(
                f"data.laterality.axis {laterality.axis} does not exist for spatial_dims {dims}; "
                f"allowed: {list(range(dims))}"
            )
        pixel = {t.label: t.classes for t in self.tasks if t.is_pixel_task}
        for label, pairs in laterality.pairs.items():
            if label not in pixel:
                raise ValueError(
                    f"data.laterality.pairs names {label!r}, not the label of a pixel task; "
                    f"allowed: {sorted(pixel)}"
                )
            for pair in pairs:
                if pair[0] == pair[1] or not all(0 <= c < pixel[label] for c in pair):
                    raise ValueError(
                        f"data.laterality.pairs.{label} pair {list(pair)} must be two distinct "
                        f"channels 0..{pixel[label] - 1}"
                    )
            channels = [c for pair in pairs for c in pair]
            if len(set(channels)) != len(channels):
                raise ValueError(
                    f"data.laterality.pairs.{label} {[list(p) for p in pairs]} name a channel "
                    "twice; each channel has at most one mirror image"
                )

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; raises ``KeyError`` naming the known tasks."""
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise KeyError(f"no task {name!r}; tasks: {[t.name for t in self.tasks]}")


def load_config(source: str | Path | Mapping[str, Any]) -> Config:
    """Load and validate an experiment config.

    Args:
        source: a YAML file path, or a mapping with the same shape.

    Returns:
        The validated :class:`Config`.

    Raises:
        FileNotFoundError: the YAML file does not exist (its path is named).
        ConfigError: the YAML cannot be parsed or a field is wrong; the message names each field
            path, the value received and the allowed values.
    """
    if isinstance(source, Mapping):
        raw, base_dir, origin = dict(source), Path.cwd(), "config"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise ConfigError(f"{str(path)!r} is a folder; give the YAML file of the config")
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        base_dir, origin = path.resolve().parent, str(path)
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{path}: the top level must be a mapping with sections "
                f"{list(Config.model_fields)}, got {type(raw).__name__}"
            )
    try:
        return Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems)) from None


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _short(value: Any) -> str | None:
    """A printable form of a received value, or ``None`` when it is a whole section."""
    if isinstance(value, Mapping):
        return None
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    where = _format_loc(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = _hint(str(loc[-1]), allowed)
        return f"{where}: unknown key; allowed keys: {', '.join(allowed)}{hint}"
    if kind == "missing":
        return f"{where}: required field is missing"
    received = _short(error.get("input"))
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        choices = [a or b for a, b in re.findall(r"'([^']*)'|(\d+)", expected)]
        hint = _hint(str(error.get("input")), choices)
        return f"{where}: got {received}; allowed: {expected}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == (
        FOLDER_NAME_PATTERN
    ):
        message = (
            "it names a folder: letters, digits, '_', '.' and '-', starting with a letter or "
            "digit (no '/', no '..')"
        )
    text = f"{where}: {message}"
    if received is not None and received not in message:
        text += f" (got {received})"
    return text


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the config section at ``loc`` (walking list items and optionals)."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else Any
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field else Any
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Drop ``Optional``/``Annotated`` wrappers to reach the section type."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    return annotation
