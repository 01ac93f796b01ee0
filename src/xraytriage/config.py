"""Validated run configuration.

Every stage (training, evaluation, scoring) reads one YAML file validated here, so that a typo in a
key or an out-of-range value is caught before hours of GPU time are spent, and reported as one line
naming the file, the key and what is allowed.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from xraytriage.utils.errors import UsageError


def _yaml_off(value: Any) -> Any:
    """YAML reads a bare ``off`` as false: ``train.amp=off`` (or ``amp: off``) means the "off" mode."""
    return "off" if value is False else value


AmpMode = Annotated[Literal["auto", "bf16", "fp16", "off"], BeforeValidator(_yaml_off)]


class ConfigError(UsageError):
    """A configuration problem the user must fix; the CLI prints it as one line and exits 2."""

    prefix = "config error: "


# model.weights values that are names, not files: torchvision's ImageNet weights, and chest-X-ray
# weights in their published layouts (xraytriage.models.pretrained: sources, layouts, input scaling).
TORCHVISION_WEIGHT_NAMES = frozenset({"IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"})
CXR_WEIGHT_NAMES = frozenset({"resnet50-res512-all", "radimagenet-resnet50"})


def is_weights_name(value: str) -> bool:
    """True for a named set of weights, False for what must be a file path."""
    return value.upper() in TORCHVISION_WEIGHT_NAMES or value.strip().lower() in CXR_WEIGHT_NAMES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the scans and labels are."""

    manifest: Path | None = Field(
        None, description="CSV manifest: path, patient_id, labels, split, subgroups"
    )
    root: Path | None = Field(
        None, description="base folder for relative paths (default: the manifest's folder)"
    )
    labels: list[str] = Field(default_factory=lambda: ["finding"], min_length=1)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = Field(2, ge=0, le=256)
    cache_dir: Path | None = Field(None, description="preprocessing cache folder (decode once)")
    cache_dtype: Literal["uint8", "uint16", "float32"] = Field(
        "uint16", description="stored pixel type of the preprocessing cache"
    )

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("label names must be unique")
        return value


class PreprocessConfig(_Section):
    """How a scan becomes a tensor; stored in the model bundle so scoring matches training exactly."""

    image_size: int = Field(224, ge=16, le=4096, description="square side length fed to the network")
    resize_mode: Literal["letterbox", "stretch"] = "letterbox"
    normalization: Literal["voi", "percentile", "minmax"] = "voi"
    percentile_low: float = Field(0.5, ge=0.0, lt=50.0)
    percentile_high: float = Field(99.5, gt=50.0, le=100.0)
    voi_window_index: int = Field(0, ge=0, description="which window to use when a DICOM has several")
    multiframe: Literal["first", "reject"] = "first"
    max_pixels: int = Field(80_000_000, ge=1, description="refuse images larger than this many pixels")
    reduce_jpeg2000: bool = Field(True, description="decode only the JPEG 2000 resolution level needed")
    jpeg2000_min_fraction: float = Field(
        0.85,
        gt=0.5,
        le=1.0,
        description="accept a JPEG 2000 level this fraction of the target size (then upsampled a little)",
    )
    gpu_decode: Literal["off", "auto"] = Field(
        "off", description="auto: JPEG 2000 on the GPU via nvImageCodec when installed and a GPU is seen"
    )
    resize_reducing_gap: float = Field(
        2.0,
        ge=1.0,
        le=16.0,
        description="a shrink by more than this factor starts with an exact integer box average; "
        "the area stage left after it is at most this factor",
    )
    mean: float = Field(0.5, ge=0.0, le=1.0)
    std: float = Field(0.25, gt=0.0, le=1.0)
    corrupt_pixel_data: Literal["fail", "accept"] = Field(
        "fail",
        description="a decoder that reports damaged data (e.g. 'Corrupt JPEG data') but still returns a "
        "picture: fail = the scan is refused as corrupt_pixel_data (default), accept = use the picture",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys(cls, values: Any) -> Any:
        # patient_id_salt (a fixed salt for PatientID hashes) was replaced by a per-site secret key
        # that is never written into a config or bundle; older configs and bundles still load.
        if isinstance(values, dict) and "patient_id_salt" in values:
            values = {k: v for k, v in values.items() if k != "patient_id_salt"}
        return values


class ModelConfig(_Section):
    arch: str = Field("resnet50", description="any torchvision classification model name")
    weights: str | None = Field(
        None,
        description="IMAGENET1K_V2 | IMAGENET1K_V1 | DEFAULT (torchvision, ImageNet) | resnet50-res512-all "
        "(torchxrayvision, chest X-rays) | radimagenet-resnet50 | path to a local weights file | null",
    )
    in_channels: Literal[1, 3] = 1
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    task: Literal["binary", "multilabel", "multiclass"] = "multilabel"


class AugmentConfig(_Section):
    enabled: bool = True
    backend: Literal["albumentations", "fast"] = Field(
        "albumentations",
        description="albumentations: the Compose pipeline (default); fast: the same ops fused with OpenCV, "
        "about 3x the samples/s per worker, tested op by op against it",
    )
    affine_degrees: float = Field(7.0, ge=0.0, le=45.0)
    affine_scale: float = Field(0.08, ge=0.0, le=0.5)
    affine_translate: float = Field(0.05, ge=0.0, le=0.3)
    brightness: float = Field(0.15, ge=0.0, le=1.0)
    contrast: float = Field(0.15, ge=0.0, le=1.0)
    gamma_low: float = Field(0.85, gt=0.0, le=1.0)
    gamma_high: float = Field(1.15, ge=1.0, le=3.0)
    clahe_p: float = Field(0.2, ge=0.0, le=1.0)
    hflip_p: float = Field(0.0, ge=0.0, le=1.0, description="off by default: laterality markers")
    probability: float = Field(0.8, ge=0.0, le=1.0, description="chance each photometric/affine op fires")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, le=10_000)
    freeze_epochs: int = Field(0, ge=0, description="head-only warm-up epochs with a frozen backbone")
    batch_size: int = Field(32, ge=1, le=65_536)
    grad_accum_steps: int = Field(1, ge=1, le=1024)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    backbone_lr_mult: float = Field(0.1, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    imbalance: Literal["none", "pos_weight", "sampler"] = "none"
    amp: AmpMode = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = Field(
        False,
        description="deterministic cuDNN/cuBLAS kernels: bit-for-bit GPU reruns and resumes, a little slower",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    early_stopping_patience: int = Field(0, ge=0, description="0 = off")
    max_steps_per_epoch: int = Field(0, ge=0, description="0 = whole epoch; small values for smoke tests")
    log_every_steps: int = Field(10, ge=1)
    histogram_every_epochs: int = Field(1, ge=0, description="0 = no weight/gradient histograms")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = library default")


class OperatingPointConfig(_Section):
    policy: Literal["target_sensitivity", "target_specificity", "youden", "fixed"] = "target_sensitivity"
    target: float = Field(
        0.9, gt=0.0, le=1.0, description="sensitivity/specificity goal for target_* policies"
    )
    rule: Literal["lower_bound", "point_estimate"] = Field(
        "lower_bound",
        description="target_* policies: lower_bound = the target is reached by the one-sided lower "
        "confidence bound of the validation figure (a guarantee); point_estimate = by the figure itself",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="level of the one-sided lower bound used by rule lower_bound"
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="used by the fixed policy, and as the fallback without cases"
    )


class FairnessGateConfig(_Section):
    max_miss_rate_gap: float | None = Field(
        None, ge=0.0, le=1.0, description="largest allowed |miss rate of a group - reference group's|"
    )
    max_worst_group_miss_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="largest allowed miss rate of any group"
    )
    reference_groups: dict[str, str] = Field(
        default_factory=dict,
        description="reference group per attribute, e.g. {sex: M}; default: the group with most patients",
    )
    include_unknown: bool = Field(
        False, description="compare groups with an unknown attribute value too (default: shown only)"
    )


class EvaluationConfig(_Section):
    operating_point: OperatingPointConfig = Field(default_factory=OperatingPointConfig)
    subgroups: list[str] = Field(default_factory=lambda: ["sex", "age_band", "view", "site"])
    intersections: list[list[str]] = Field(default_factory=list)
    age_bands: list[float] = Field(default_factory=lambda: [0, 40, 60, 80, 200])
    min_group_size: int = Field(10, ge=1)
    bootstrap_iterations: int = Field(1000, ge=0, le=100_000)
    bootstrap_seed: int = 0
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    fairness: FairnessGateConfig = Field(default_factory=FairnessGateConfig)
    calibration_bins: int = Field(10, ge=2, le=100, description="bins of the reliability diagram / ECE")
    min_group_patients: int = Field(
        2, ge=1, description="a group whose positives or negatives come from fewer patients is insufficient"
    )
    temperature_scaling: bool = Field(
        False, description="fit one calibration temperature per label on validation logits"
    )

    @field_validator("age_bands")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("age_bands must be finite numbers (no .nan or .inf)")
        if len(value) < 2 or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("age_bands must be at least two strictly increasing edges")
        return value

    @field_validator("subgroups")
    @classmethod
    def _no_identifier_subgroups(cls, value: list[str]) -> list[str]:
        from xraytriage.evaluation.identifiers import identifying_name

        for name in value:
            why = identifying_name(name)
            if why:
                raise ValueError(f"'{name}' {why}; subgroups are group attributes such as sex, view or site")
        return value

    @field_validator("intersections")
    @classmethod
    def _no_identifier_intersections(cls, value: list[list[str]]) -> list[list[str]]:
        cls._no_identifier_subgroups([name for combo in value for name in combo])
        return value


RuleValues = list[str] | Literal["any"] | None
RuleRange = tuple[float, float] | Literal["any"] | None


class ScopeConfig(_Section):
    """The validated scope (docs/scoring.md#validated-scope). Every rule defaults to what training
    recorded (``null``); a list or ``[min, max]`` replaces it (narrow or widen), ``any`` switches it off.
    Read by ``train`` (recorded into the bundle) and by ``score --config`` (applied on top of it)."""

    enabled: bool = Field(True, description="check every scored scan against the validated scope")
    modalities: RuleValues = Field(None, description="DICOM Modality values in scope, e.g. [CR, DX]")
    body_parts: RuleValues = Field(None, description="BodyPartExamined values in scope, e.g. [CHEST]")
    views: RuleValues = Field(None, description="ViewPosition values in scope, e.g. [AP, PA]")
    sexes: RuleValues = Field(None, description="PatientSex values in scope (F, M)")
    manufacturers: RuleValues = Field(None, description="Manufacturer values in scope")
    sites: RuleValues = Field(None, description="InstitutionName values in scope")
    photometric: RuleValues = Field(None, description="PhotometricInterpretation values in scope")
    age: RuleRange = Field(None, description="[min, max] age in years, inclusive")
    pixel_spacing: RuleRange = Field(None, description="[min, max] pixel spacing in mm, inclusive")
    rows: RuleRange = Field(None, description="[min, max] image rows, inclusive")
    columns: RuleRange = Field(None, description="[min, max] image columns, inclusive")
    reject_for_processing: bool = Field(
        True, description="PresentationIntentType FOR PROCESSING (raw detector data) is out of scope"
    )
    reject_derived_images: bool = Field(
        True, description="ImageType not ORIGINAL\\PRIMARY, or a Secondary Capture, is out of scope"
    )
    reject_burned_in_text: bool = Field(True, description="BurnedInAnnotation YES is out of scope")
    ood: bool = Field(True, description="image-based out-of-distribution check (Mahalanobis distance)")
    ood_quantile: float = Field(
        0.99, gt=0.5, le=1.0, description="OOD threshold: this quantile of the validation scans' distances"
    )
    ood_threshold: float | None = Field(
        None, gt=0.0, description="explicit OOD distance threshold (overrides ood_quantile)"
    )
    reference_max_scans: int = Field(
        20_000, ge=10, description="training scans whose features make the OOD reference (a seeded sample)"
    )

    @field_validator("modalities", "body_parts", "views", "sexes", "manufacturers", "sites", "photometric")
    @classmethod
    def _values(cls, value: RuleValues) -> RuleValues:
        if isinstance(value, list):
            value = [str(v).strip() for v in value]
            if not value or any(not v for v in value):
                raise ValueError("give at least one non-empty value, or 'any' to switch the rule off")
        return value

    @field_validator("age", "pixel_spacing", "rows", "columns")
    @classmethod
    def _range(cls, value: RuleRange) -> RuleRange:
        if isinstance(value, tuple) and not (0 <= value[0] <= value[1]):
            raise ValueError(f"[min, max] needs 0 <= min <= max, got {list(value)}")
        return value


class ScoreConfig(_Section):
    batch_size: int = Field(32, ge=1, le=65_536)
    num_workers: int = Field(2, ge=0, le=256)
    device: str = "auto"
    amp: AmpMode = "auto"
    compile: bool = Field(False, description="torch.compile the scoring model (same as --compile)")
    engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="forward pass: auto = ONNX Runtime on CPU (checked against PyTorch), PyTorch on GPU",
    )
    file_timeout_s: float = Field(
        120.0, ge=0.0, description="seconds one scan may take to decode in a worker (0 = no limit)"
    )
    worker_memory_mb: int = Field(
        4096, ge=0, description="MiB a decoding worker may allocate beyond what it starts with (0 = no cap)"
    )
    corrupt_pixel_data: Literal["bundle", "fail", "accept"] = Field(
        "bundle",
        description="damaged but decodable pixel data: the bundle's preprocess setting, fail or accept",
    )
    out_of_scope: Literal["flag", "skip"] = Field(
        "flag",
        description="a scan outside the validated scope: flag = scored and flagged for a human read; "
        "skip = not scored, listed in the errors file as out_of_scope",
    )


class MonitorConfig(_Section):
    """``xraytriage monitor``: how deployed scores are grouped and when a difference is an alert.

    An alert needs both: a test that says the difference is real (Benjamini-Hochberg across every
    group, window, label and measure at ``false_alert_rate``) and a difference beyond its limit."""

    window: Literal["day", "week"] = Field("week", description="time window by study date")
    by: list[str] = Field(
        default_factory=lambda: ["site", "manufacturer", "view"],
        description="scores.csv columns to group by (each on its own, besides all scans)",
    )
    false_alert_rate: float = Field(
        0.001,
        gt=0.0,
        lt=0.5,
        description="false-discovery rate over all tests of one run (BH); a run of in-distribution "
        "scores raises any alert with at most this chance",
    )
    min_scans: int = Field(30, ge=5, description="windows/groups with fewer scans are 'cannot tell'")
    psi_bins: int = Field(10, ge=2, le=100, description="PSI bins: quantiles of the validation scores")
    psi_limit: float = Field(0.2, gt=0.0, description="PSI at or above which a real shift is an alert")
    flag_rate_limit: float = Field(
        0.1, gt=0.0, le=1.0, description="absolute change of the flagged rate that is an alert"
    )
    out_of_scope_limit: float = Field(
        0.05, gt=0.0, le=1.0, description="rise of the out-of-scope rate over validation that is an alert"
    )
    miss_rate_margin: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="expected miss rate (CBPE) above the validation's by more than this is an alert",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of every interval shown")
    simulations: int = Field(2000, ge=200, le=200_000, description="draws for CBPE intervals")
    seed: int = 0

    @field_validator("by")
    @classmethod
    def _no_identifier_groups(cls, value: list[str]) -> list[str]:
        return EvaluationConfig._no_identifier_subgroups(value)


class Config(_Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    scope: ScopeConfig = Field(default_factory=ScopeConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.train.freeze_epochs > self.train.epochs:
            raise ValueError("train.freeze_epochs must not exceed train.epochs")
        if self.model.task == "binary" and len(self.data.labels) != 1:
            raise ValueError("model.task 'binary' needs exactly one entry in data.labels")
        weights = (self.model.weights or "").strip().lower()
        if weights in CXR_WEIGHT_NAMES and self.model.arch != "resnet50":
            raise ValueError(f"model.weights '{weights}' is a ResNet-50: set model.arch=resnet50")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top level>"
    kind = first["type"]
    if kind == "extra_forbidden":
        section = _section_for(first["loc"][:-1])
        allowed = ", ".join(sorted(section.model_fields)) if section else "see configs/demo.yaml"
        return f"{source}: unknown key '{key}'. Allowed keys here: {allowed}"
    msg = first["msg"]
    given = first.get("input")
    given_txt = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{source}: key '{key}': {msg}{given_txt}"


def _section_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, for example train.epochs=5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.__class__.__name__})") from None
    return parts, value


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{text}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, merge overrides into, and validate a YAML config; raise ConfigError with one clear line."""
    tree: dict[str, Any] = {}
    source = "<defaults>"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(
                f"{p}: config file not found (pass an existing YAML file, e.g. configs/demo.yaml)"
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a UTF-8 text file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections (data:, model:, train:, ...)")
        tree = loaded
        base_dir = p.resolve().parent
    for text in overrides or []:
        parts, value = parse_override(text)
        _apply_override(tree, parts, value, text)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None
    _resolve_paths(cfg, base_dir, source)
    return cfg


def _resolve_paths(cfg: Config, base_dir: Path, source: str) -> None:
    """Relative paths in a config file are relative to that file, so configs work from any cwd."""
    data = cfg.data
    if data.manifest is not None:
        manifest = data.manifest if data.manifest.is_absolute() else base_dir / data.manifest
        if not manifest.is_file():
            raise ConfigError(f"{source}: key 'data.manifest': file not found: {manifest}")
        data.manifest = manifest.resolve()
    if data.root is not None and not data.root.is_absolute():
        data.root = (base_dir / data.root).resolve()
    if data.cache_dir is not None and not data.cache_dir.is_absolute():
        data.cache_dir = (base_dir / data.cache_dir).resolve()
    weights = cfg.model.weights
    if weights and not is_weights_name(weights):
        wpath = Path(weights)
        if not wpath.is_absolute():
            wpath = base_dir / wpath
        if not wpath.is_file():
            raise ConfigError(
                f"{source}: key 'model.weights': file not found: {wpath} (use IMAGENET1K_V2, "
                "IMAGENET1K_V1, resnet50-res512-all, radimagenet-resnet50, a local weights file, or null)"
            )
        cfg.model.weights = str(wpath.resolve())


def save_config(cfg: Config, path: str | Path) -> None:
    from xraytriage.utils.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
