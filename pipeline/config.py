"""The run configuration: one YAML file, validated in full before any work starts.

Every model forbids unknown keys, so a typo stops the run with the key's dotted path and the reason.
Sections map one-to-one onto stages; `train` is consumed by `stages/train/`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that must stop the run before any work; the message names key and reason."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _safe_name(name: str) -> str:
    """A name the code joins onto a folder (a run name, a source name) must stay one plain entry in it:
    no separator or `..` to climb out, no NUL to cut the path short, no leading dot to hide it."""
    if not name or len(name.encode()) > 255:
        raise ValueError("a name must be 1 to 255 bytes long")
    found = [what for what, hit in (("'/'", "/" in name), ("'\\'", "\\" in name), ("'..'", ".." in name),
                                    ("NUL or another control character", any(ord(c) < 32 for c in name)),
                                    ("a leading '.'", name.startswith("."))) if hit]
    if found:
        raise ValueError(f"unsafe name {name!r}: it becomes part of a path, so it may not have {', '.join(found)}")
    return name


SafeName = Annotated[str, AfterValidator(_safe_name)]


InputFormat = Literal["auto", "jsonl", "parquet", "csv", "tsv", "text", "warc", "wet"]


class InputSpec(Section):
    """One input: a file, a glob, or a folder (text files become one document each)."""

    path: str
    format: InputFormat = "auto"
    source: SafeName | None = Field(None, description="source name; default: the file or folder name")
    text_field: str = "text"
    id_field: str | None = "id"
    url_field: str | None = "url"

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str) -> str:
        import glob

        if not (Path(v).exists() or glob.glob(v)):
            raise ValueError(f"input path does not exist: {v}")
        return v


class RayConfig(Section):
    """Where Ray runs. Token auth is always asked for (see pipeline/runtime.py); the token comes from
    ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH."""

    address: str | None = Field(None, description="join an existing cluster; RAY_ADDRESS also works")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the embedded local cluster")
    dashboard: bool = Field(False, description="start Ray's dashboard (127.0.0.1) to watch a run: ten more "
                            "processes, so off unless asked for")
    dashboard_port: int | None = Field(
        None, ge=0, le=65535, description="null: 8265, or the next free port when another Ray holds it")
    allow_unauthenticated: bool = Field(
        False, description="accept Ray without token auth (RAY_AUTH_MODE=disabled, or a cluster with no token to send)")


class IngestConfig(Section):
    max_chars: int = Field(1_000_000, ge=1, description="longer documents are rejected as too_long")
    html_extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    piece_bytes: int = Field(8 << 20, ge=1, description="an uncompressed input file larger than this is read "
                             "as several pieces in parallel (line starts, WARC records or Parquet row groups)")


class CleanConfig(Section):
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    strip_control: bool = True
    collapse_whitespace: bool = True


class ExactDedupConfig(Section):
    enabled: bool = True
    against: str | None = Field(None, description="an earlier run dir whose kept texts new docs are checked against")


class FuzzyDedupConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="exact Jaccard of the documents' shingle sets")
    num_perm: int = Field(128, ge=2, le=1024)
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    ngram: int = Field(5, ge=1)
    char_ngrams: bool = False
    lowercase: bool = True
    seed: int = 1
    backend: Literal["numpy", "torch"] = "numpy"
    verify: bool = Field(True, description="keep only candidate pairs whose exact shingle-set Jaccard reaches the threshold")
    clustering: Literal["auto", "distributed", "union_find"] = "auto"
    against: str | None = Field(None, description="an earlier run dir whose band index new docs are checked against")

    @model_validator(mode="after")
    def _bands_rows(self) -> "FuzzyDedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


KeepPolicy = Literal["first", "longest", "quality"]


class DedupConfig(Section):
    keep: KeepPolicy = Field(
        "first", description="which copy a duplicate group keeps: smallest (source, id), most characters, "
                             "or highest quality_score (ties by (source, id); no score sorts last)")
    exact: ExactDedupConfig = ExactDedupConfig()
    fuzzy: FuzzyDedupConfig = FuzzyDedupConfig()


class LangIdConfig(Section):
    enabled: bool = True
    model: str | None = Field(None, description="fastText LID model; default: the installed lid.176.ftz")
    allow: list[str] | None = Field(None, description="language codes to keep; null keeps all")
    min_score: float = Field(0.0, ge=0.0, le=1.0)


# C4's terminal-punctuation line pass cuts 18 % of clean text (every paragraph ending in a name, a
# caption, a curly quote) and, with it, `c4.min_sentences` rejects 6 % of clean documents that no other
# rule does; FineWeb dropped the line pass for the same reason. Evidence: README, "Quality".
DEFAULT_DISABLED_RULES = ("c4.terminal_punct", "c4.min_sentences")


class RulesConfig(Section):
    enabled: bool = True
    signals_only: bool = False
    disable: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DISABLED_RULES),
        description="rule names to switch off; the default list is what the curation benchmark found costly")
    params: dict[str, float] = Field(default_factory=dict, description="override a rule's threshold by name")
    languages: list[str] | None = Field(["en"], description="apply to documents of these `lang`s; null: all")


class ClassifierConfig(Section):
    enabled: bool = True
    model: str | None = Field(None, description="fastText model; default: the shipped quality/models/sluice-quality-en.ftz")
    label: str = "__label__hq"
    threshold: float = Field(0.8, ge=0.0, le=1.0, description="calibrated probability of `label` to keep a document")
    languages: list[str] | None = Field(["en"], description="score documents of these `lang`s; others pass unscored; null: all")


class QualityConfig(Section):
    langid: LangIdConfig = LangIdConfig()
    rules: RulesConfig = RulesConfig()
    classifier: ClassifierConfig = ClassifierConfig()


class TokenizeConfig(Section):
    enabled: bool = True
    tokenizer: str | None = Field(None, description="a tokenizer.json; default: train a byte-level BPE")
    vocab_size: int = Field(32_000, ge=256, description="vocabulary of the trained BPE")
    train_sample_docs: int = Field(20_000, ge=1, description="documents in the seeded BPE training sample")
    eod_token: str | None = Field(
        "auto", description="appended to every document; 'auto': the tokenizer's own end token; null: none")
    seed: int = 0


class ShardConfig(Section):
    tokens_per_shard: int = Field(50_000_000, ge=1, le=1_000_000_000,
                                  description="shard window: a document goes to shard floor(its first token's "
                                              "stream offset / this), so shards hold about this many tokens")
    shuffle: bool = Field(True, description="seeded global shuffle of documents; off: the curated run's order")
    seed: int = 0


class TrainConfig(Section):
    """The MoE training job (`stages/train/`); model shape comes from `preset`, routing from the rest."""

    enabled: bool = False
    preset: Literal["tiny", "small", "base"] = "tiny"
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(8, ge=1, description="sequences per worker per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step: a global batch of "
                            "batch_size x num_workers x grad_accum sequences")
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs per Train worker; leave room for anything else")
    fsdp: bool = Field(False, description="shard parameters, gradients and optimizer state over the workers "
                       "(FSDP2, per block) instead of replicating them (DDP)")
    expert_parallel: int = Field(1, ge=1, description="ranks per expert group: each holds n_routed / this many "
                                 "routed experts; must divide num_workers (the preset's n_routed is checked at launch)")
    use_gpu: bool = False
    compile: bool = False
    seed: int = 0
    score_func: Literal["softmax", "sigmoid"] = "sigmoid"
    balance: bool = Field(True, description="auxiliary-loss-free balancing through the per-expert bias")
    bias_update_rate: float = Field(1e-3, ge=0, description="gamma: bias step per optimizer step")
    seq_aux_loss_weight: float = Field(1e-4, ge=0, description="sequence-wise balance loss; 0 turns it off")
    tie_embeddings: bool = True
    expert_impl: Literal["auto", "grouped", "loop"] = "auto"
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    report_every: int = Field(10, ge=1, description="steps between ray.train.report calls (~1 s each)")
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(4, ge=1)
    val_fraction: float = Field(0.05, ge=0, lt=1, description="tail of the token stream held out for val_loss")
    max_failures: int = Field(1, ge=0)
    run_name: SafeName = Field("train", description="Ray Train run name (a folder under RUN/train/ray); reusing it resumes that run")
    fault_at_step: int | None = Field(
        None, ge=1, description="chaos testing: the last worker kills its own process at this step, first attempt only")

    @model_validator(mode="after")
    def _expert_groups(self) -> "TrainConfig":
        if self.num_workers % self.expert_parallel:
            raise ValueError(f"expert_parallel={self.expert_parallel} must divide num_workers={self.num_workers}")
        return self


class SluiceConfig(Section):
    """The whole run."""

    out: str = "runs/latest"
    inputs: list[InputSpec] = Field(default_factory=list)
    ray: RayConfig = RayConfig()
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    quality: QualityConfig = QualityConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()

    def section_hash(self, *paths: str) -> str:
        """A stable hash of the named sections (dotted paths), used to tell whether finished work is still valid."""
        data = {}
        for path in paths:
            node = self
            for part in path.split("."):
                node = getattr(node, part)
            data[path] = [i.model_dump(mode="json") for i in node] if isinstance(node, list) else node.model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, origin: str = "<dict>") -> SluiceConfig:
    try:
        return SluiceConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def load_config(path: str | Path | None, overrides: dict | None = None) -> SluiceConfig:
    """Load a YAML config (or the defaults when `path` is None) and apply top-level overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_config(data, str(path) if path else "<defaults>")
