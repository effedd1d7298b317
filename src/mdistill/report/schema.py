"""The report schema: what ``mdistill run`` / ``tune`` / ``eval`` write as JSON, and what the
markdown report, the plots, the model card, the registry and the CLI read back.

``report.json`` is ``RunReport.model_dump_json()``; ``load_report(path)`` validates it, so a
reader gets typed fields or a clear error naming the file, never a ``KeyError`` deep inside.
Metric tables are ``{lang: LanguageRow}``; a row holds ``n`` and one ``Metrics`` per model.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

METRIC_NAMES = ("teacher_space_top1", "translation_top1_xx2en", "translation_top1_en2xx", "mse100", "bitext_f1")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metrics(_Model):
    """One model on one language's pairs (``None``: undefined, e.g. the dimension differs from the teacher's)."""

    teacher_space_top1: float | None = None  # model(xx) -> nearest teacher(en) among the set's English sources
    translation_top1_xx2en: float | None = None  # model(xx) -> nearest model(en)
    translation_top1_en2xx: float | None = None  # model(en) -> nearest model(xx)
    mse100: float | None = None  # MSE x 100 of model(xx) to teacher(en); lower is better
    bitext_f1: float | None = None  # margin-based bitext mining F1 on a pool with distractors


class LanguageRow(_Model):
    n: int  # pairs of this language in the set
    models: dict[str, Metrics]


MetricsTable = dict[str, LanguageRow]


class CachePass(_Model):
    """What one pass over a content-addressed cache did (teacher vectors, student states)."""

    fingerprint: str
    distinct_texts: int
    cache_hits: int
    computed: int
    seconds: float
    corrupt_shards: list[str] = []
    computed_by_node: dict[str, int] = {}  # Ray node id -> rows computed there ("": outside Ray)
    written_on: list[str] = []  # the node(s) whose tasks wrote the shards: the driver's


class Counts(_Model):
    rows_in: int
    kept: int
    rejected: dict[str, int] = {}
    kept_by_split: dict[str, int] = {}


class CorpusSummary(Counts):
    """The corpus manifest without its per-file detail (that stays in ``<corpus>/manifest.json``)."""

    fingerprint: str | None = None
    buckets: int | None = None
    units: int | None = None
    rows_read: int | None = None
    english_sentences: dict[str, int] | None = None
    licences: dict[str, str] = {}  # source -> licence(s), where the input names them (Debian copyright files)
    languages: dict[str, Counts] = {}
    sources: dict[str, Counts] = {}


class DataCounts(_Model):
    train_pairs: dict[str, int]  # per language
    train_english: int  # distinct English sources of the training pairs
    dev_pairs: dict[str, int]  # in-domain evaluation sample
    heldout_pairs: dict[str, int] = {}  # out-of-domain sample (corpus.heldout_sources)
    student_rows: int  # sentences the student learns from: every English source once + every translation


class StepRecord(_Model):
    step: int
    epoch: int
    loss: float
    lr: float


class DevRecord(_Model):
    """The dev metric during training: every language's dev rows pooled, one index of all dev English sources."""

    step: int
    pooled_teacher_space_top1: float
    pooled_mse100: float
    heldout_pooled_teacher_space_top1: float | None = None  # the same on the out-of-domain rows, when held out
    heldout_pooled_mse100: float | None = None


class EpochRecord(_Model):
    epoch: int
    step: int
    loss: float
    elapsed_s: float
    samples_per_s: float
    first_batch_s: float
    loss_fn: str


class TrainLogs(_Model):
    history: list[EpochRecord] = []
    steps: list[StepRecord] = []
    dev: list[DevRecord] = []
    resumed_at: list[int] = []  # the optimizer step a restarted worker group or a re-run resumed at
    worker_nodes: list[str] = []  # the Ray node of each rank (by rank) in the last worker group
    dev_accuracy: list[tuple[int, float]] = []  # classifiers: (step, pooled dev accuracy) when a dev set is given


class ExportCheck(_Model):
    path: str
    checked: int  # dev sentences encoded by SentenceTransformer(path).encode
    max_abs_diff: float  # against the vectors mdistill trained and evaluated


class StudentReport(_Model):
    model: str  # the built student's directory
    built_from: list[dict[str, Any]]  # builder steps: load, prune_layers, trim_vocab (with counts)
    params: int
    layers: int
    train_layers: int | str
    projection: str
    strategy: str
    loss: str
    logs: TrainLogs
    states_cache: CachePass | None  # the frozen pass; None: it did not run, the training set of an earlier run was reused
    training_set: str  # its content fingerprint (<cache>/training_sets/<fingerprint>)
    export: ExportCheck


class ModelSpeed(_Model):
    """One model's size and CPU/GPU encode speed, measured in the run on the same sentences."""

    path: str
    params: int
    disk_mb: float  # safetensors on disk
    sentences_per_s: float
    x_teacher: float  # sentences/s over the teacher's
    sentences: int
    batch_size: int
    threads: int  # torch threads (CPU)
    device: str


class TrialSummary(_Model):
    trial_id: str
    config: dict[str, Any]
    status: str
    error: str | None = None
    iterations: int
    stopped_early: bool
    final: float | None = None
    best: float | None = None
    time_s: float | None = None
    dev_every: int | None = None
    starts: int
    history: list[dict[str, float]]
    path: str


class TuneReport(_Model):
    metric: str
    mode: str
    search: str
    num_trials: int
    max_concurrent_trials: int
    max_t: int
    stopped_early: int
    experiment: str
    shapes: dict[str, dict[str, Any]]
    trials: list[TrialSummary]
    best: TrialSummary
    worst: TrialSummary
    gap: float
    best_config: str
    results_csv: str
    retrained: dict[str, Any] | None = None


class _RunBase(_Model):
    """What every recipe's report starts with: the config, when and how long, the corpus."""

    config: dict[str, Any]
    finished: str
    total_s: float
    timings_s: dict[str, float]
    driver_peak_rss_mb: dict[str, float] = {}  # the driver's peak RSS at the end of each stage
    corpus: CorpusSummary
    corpus_dir: str

    @classmethod
    def of_run(cls, config: dict[str, Any], t_start: float, timings, corpus, **fields: Any):
        """The report of a run that started at ``t_start`` (``time.time()``), finished now;
        ``timings``: its ``report.Timings``; ``corpus``: the ``stages.corpus`` result it read."""
        return cls(
            config=config,
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            total_s=round(time.time() - t_start, 1),
            timings_s=dict(timings),
            driver_peak_rss_mb=timings.peak_rss_mb,
            corpus=CorpusSummary.model_validate(
                {k: v for k, v in corpus.manifest.items() if k != "files"}
            ),  # per file: <corpus>/manifest.json
            corpus_dir=str(corpus.dir),
            **fields,
        )


class RunReport(_RunBase):
    """``mdistill run`` (students, metrics) or ``mdistill tune`` (tune)."""

    corpus_reused: bool
    data: DataCounts
    teacher_cache: CachePass
    students: dict[str, StudentReport] = {}
    metrics: MetricsTable = {}  # the dev split (in-domain: the same files as training), per language
    baselines: list[str] = []  # the rows of `metrics` that are baselines
    summary: dict[str, Metrics] = {}  # mean over languages
    beats_baselines: dict[str, dict[str, bool]] = {}  # student -> lang -> beats every one of its baselines
    # The held-out split (out-of-domain: corpus.heldout_sources, never trained on); empty when none is held out.
    heldout_metrics: MetricsTable = {}
    heldout_summary: dict[str, Metrics] = {}
    heldout_beats_baselines: dict[str, dict[str, bool]] = {}
    speed: dict[str, ModelSpeed] = {}  # compression: size and encode speed of the teacher and the student

    def headline(self) -> tuple[str, dict[str, Metrics]]:
        """The split the headline numbers and the registry gate use: held-out when there is one."""
        return ("heldout", self.heldout_summary) if self.heldout_summary else ("dev", self.summary)

    tune: TuneReport | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name", "?"))


class ModelSpec(_Model):
    spec: str
    path: str
    dim: int


class EvalReport(_Model):
    """``mdistill eval``: any models on a pairs file, the teacher as a baseline."""

    finished: str
    data: str
    split: str | None
    teacher: str
    models: dict[str, ModelSpec]
    baselines: list[str]
    metrics: MetricsTable
    summary: dict[str, Metrics]
    sts: dict[str, Any] | None = None


class ClassMetrics(_Model):
    """A classifier on one language's evaluation rows (``ClassificationEvaluator``)."""

    accuracy: float
    macro_f1: float
    n: int


ClassifyTable = dict[str, dict[str, ClassMetrics]]  # lang -> model -> metrics


class ClassifierReport(_Model):
    """One trained classifier of the classify recipe (the teacher, a baseline or a distilled student)."""

    role: str  # teacher, zero_shot, translate_train, soft, hard, online
    mode: str  # supervised, soft, hard, online
    base: str  # the encoder it started from
    train_rows: int
    languages: list[str]  # of its training rows
    epochs: int
    train_layers: int | str
    params: int
    export: str | None  # the Hugging Face directory (AutoModelForSequenceClassification), with a model card
    logs: TrainLogs
    # the export's logits from text vs the logits evaluated (from cached states), on a sample of evaluation rows
    export_max_abs_diff: float | None = None


class ClassifyReport(_RunBase):
    """``mdistill run`` with a ``classify:`` section: cross-lingual classifier transfer."""

    task: str
    labels: list[str]
    balance: dict[str, dict[str, int]]  # English paragraphs used, per split per label
    available: dict[str, dict[str, int]]  # every usable English paragraph, per split per label
    dropped: dict[str, int]  # English paragraphs removed (ambiguous label, repeated in a later split)
    rows: dict[str, dict[str, int]]  # train / eval rows per language
    teacher: str  # the teacher classifier's directory or id
    teacher_cache: CachePass
    states_cache: CachePass | None = None  # the student's frozen pass (None: train_layers all, trained from text)
    classifiers: dict[str, ClassifierReport]  # by role (the teacher too, when mdistill trained it)
    test: ClassifyTable  # the test files: the headline numbers
    dev: ClassifyTable = {}
    confusion: dict[str, list[list[int]]] = {}  # model -> [true][predicted] on every non-English test row
    checks: dict[str, dict[str, bool]] = {}  # check -> lang -> holds (soft vs zero-shot + 3 points, vs 95% of the teacher's English)

    @property
    def name(self) -> str:
        return str(self.config.get("name", "?"))


class ReportError(ValueError):
    pass


def load_report(path: str | Path, kind: type[BaseModel] = RunReport) -> Any:
    """A report file (or a run folder holding ``report.json``), validated against ``kind``."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ReportError(f"{p}: no report (is this a finished run folder?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{p}: cannot read the report: {e}") from None
    try:
        return kind.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top level)"
        raise ReportError(f"{p}: not a valid {kind.__name__} ({len(e.errors())} error(s); first at {where}: {first['msg']})") from None


__all__ = [
    "METRIC_NAMES",
    "CachePass",
    "ClassMetrics",
    "ClassifierReport",
    "ClassifyReport",
    "ClassifyTable",
    "CorpusSummary",
    "Counts",
    "DataCounts",
    "DevRecord",
    "EpochRecord",
    "EvalReport",
    "ExportCheck",
    "LanguageRow",
    "Metrics",
    "MetricsTable",
    "ModelSpec",
    "ReportError",
    "RunReport",
    "StepRecord",
    "StudentReport",
    "TrainLogs",
    "TrialSummary",
    "TuneReport",
    "load_report",
]
