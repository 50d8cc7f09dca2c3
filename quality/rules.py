"""Named heuristic quality rules with their published defaults: Gopher quality and repetition
(Rae et al. 2021), C4 (Raffel et al. 2020) and FineWeb's extra rules (Penedo et al. 2024).

Every rule is computed for a whole batch at once with polars (lines and words are exploded into
long frames and aggregated per document), never with a Python loop per document. A document is
rejected by the first failing rule in `RULES` order, which mirrors the FineWeb pipeline: Gopher
repetition, Gopher quality, C4, FineWeb. C4's line rules do not reject: they remove lines, and the
document is then judged on what is left (C4's `min_sentences`; FineWeb's rules see the cleaned text).

Words are whitespace tokens with surrounding punctuation stripped (punctuation-only tokens are not
words), which keeps the rules language-agnostic but means Gopher's word rules reject unsegmented
scripts (Chinese, Japanese, Thai): disable them for such corpora.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

import polars as pl
import pyarrow as pa

from pipeline.config import ConfigError, RulesConfig

PUNCTUATION = string.punctuation + "…«»“”‘’–—·•¡¿。、，！？：；（）【】「」"
STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLET_START = r"^[•‣◦▪●○■□\-\*·]"
ELLIPSIS_END = r"(\.\.\.|…)$"
C4_TERMINAL = r"""[.?!"']$"""
FINEWEB_TERMINAL = r"""[.?!"'”’。！？…)\]»」]$"""
CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
POLICY = r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies"
SENTENCE_END = r"""[.?!]+["'”’)\]]*(\s|$)"""
SHORT_LINE_CHARS = 30
PARAGRAPH_BREAK = "\x00"
# Odd 64-bit multiplier (the golden ratio's) folding a document number into an n-gram hash: two
# (document, n-gram) pairs then share a group only if their 64-bit hashes collide, the same odds
# as two n-grams of one document, which the n-gram keys already take.
DOC_MIX = pl.lit(0x9E3779B97F4A7C15, pl.UInt64)


@dataclass(frozen=True)
class Rule:
    """A document is rejected when its value is below `min` or above `max`.

    A `line` rule instead removes each line that fails it (C4); its value is the share of lines removed.
    """

    name: str
    doc: str
    min: float | None = None
    max: float | None = None
    line: bool = False

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def bounds(self) -> list[str]:
        return [b for b in ("min", "max") if getattr(self, b) is not None]


def _rep(name: str, limit: float, doc: str) -> Rule:
    return Rule(f"gopher_rep.{name}", doc, max=limit)


RULES: tuple[Rule, ...] = (
    _rep("dup_line_frac", 0.30, "share of lines that repeat an earlier line"),
    _rep("dup_para_frac", 0.30, "share of paragraphs that repeat an earlier paragraph"),
    _rep("dup_line_char_frac", 0.20, "share of characters in repeated lines"),
    _rep("dup_para_char_frac", 0.20, "share of characters in repeated paragraphs"),
    *(_rep(f"top_{n}gram", limit, f"character share of the most frequent repeated {n}-gram")
      for n, limit in ((2, 0.20), (3, 0.18), (4, 0.16))),
    *(_rep(f"dup_{n}gram", limit, f"character share of words inside repeated {n}-grams")
      for n, limit in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))),
    Rule("gopher.word_count", "number of words", min=50, max=100_000),
    Rule("gopher.mean_word_length", "mean characters per word", min=3, max=10),
    Rule("gopher.symbol_word_ratio", "('#' + ellipses) per word", max=0.1),
    Rule("gopher.bullet_lines", "share of lines starting with a bullet", max=0.9),
    Rule("gopher.ellipsis_lines", "share of lines ending with an ellipsis", max=0.3),
    Rule("gopher.alpha_words", "share of tokens with at least one letter", min=0.8),
    Rule("gopher.stop_words", "English stop words present (the, be, to, of, and, that, have, with)", min=2),
    Rule("c4.max_word_length", "remove lines with a word longer than this", max=1000, line=True),
    Rule("c4.citations", "strip Wikipedia citation markers like [1], [edit]", line=True),
    Rule("c4.terminal_punct", "remove lines not ending in . ? ! or a quote (or ending in ...)", line=True),
    Rule("c4.min_words_per_line", "remove lines with fewer words than this", min=3, line=True),
    Rule("c4.lorem_ipsum", "'lorem ipsum' anywhere", max=0),
    Rule("c4.javascript", "remove lines mentioning javascript", line=True),
    Rule("c4.curly_bracket", "a '{' anywhere (code, not prose)", max=0),
    Rule("c4.policy", "remove privacy/cookie/terms-of-use lines", line=True),
    Rule("c4.min_sentences", "sentences left after line removal", min=5),
    Rule("fineweb.line_punct_ratio", "share of lines ending in terminal punctuation", min=0.12),
    Rule("fineweb.short_line_ratio", f"share of lines of at most {SHORT_LINE_CHARS} characters", max=0.67),
    Rule("fineweb.dup_line_char_ratio", "share of characters in repeated lines", max=0.01),
    Rule("fineweb.list_ratio", "newlines per word", max=0.3),
)
RULES_BY_NAME = {r.name: r for r in RULES}
ALL_LINES_REMOVED = "c4.all_lines_removed"  # a consequence of the line rules, not a rule of its own
SIGNAL_PREFIX = "signal."


@dataclass(frozen=True)
class ActiveRule:
    rule: Rule
    min: float | None
    max: float | None


def active_rules(cfg: RulesConfig) -> list[ActiveRule]:
    """The enabled rules with thresholds from `cfg.params` (`name.min`/`name.max`, or `name` when the
    rule has one bound); unknown names stop the run with a ConfigError."""
    unknown = [n for n in cfg.disable if n not in RULES_BY_NAME]
    param_keys = {r.name for r in RULES if len(r.bounds()) == 1}
    param_keys |= {f"{r.name}.{b}" for r in RULES for b in r.bounds()}
    unknown += [f"params.{k}" for k in cfg.params if k not in param_keys]
    if unknown:
        raise ConfigError(f"quality.rules: unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES_BY_NAME)}")
    out = []
    for rule in RULES:
        if rule.name in cfg.disable:
            continue
        single = cfg.params.get(rule.name)
        limits = {b: cfg.params.get(f"{rule.name}.{b}", single if single is not None else getattr(rule, b))
                  for b in ("min", "max") if getattr(rule, b) is not None}
        out.append(ActiveRule(rule, limits.get("min"), limits.get("max")))
    return out


@dataclass
class Evaluation:
    """Per-document rule values, the text after C4 line removal, and the first failing rule."""

    signals: pl.DataFrame  # one float64 column per active rule, named by the rule
    text: pl.Series
    reason: pl.Series  # rule name or null
    detail: pl.Series  # "value=2.1 < min 3" or null


# ---------------------------------------------------------------------------------------------
# building blocks: exploded frames and per-document aggregates


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num/den as float, null when there is nothing to divide by (a rule that does not apply passes)."""
    return pl.when(den > 0).then(num.cast(pl.Float64) / den).otherwise(None)


def _non_blank_lines(text: pl.Expr) -> pl.Expr:
    return text.str.split("\n").list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != ""))


def _duplicates(docs: pl.DataFrame, parts: pl.Expr, prefix: str) -> pl.DataFrame:
    """Per doc: number of parts, parts repeating an earlier part, and characters in those repeats."""
    long = docs.select("doc", parts.alias("p")).explode("p").drop_nulls("p")
    long = long.with_columns(dup=~pl.col("p").is_first_distinct().over("doc"))
    agg = long.group_by("doc").agg(
        pl.len().alias(f"{prefix}_n"),
        pl.col("dup").sum().alias(f"{prefix}_dups"),
        pl.col("p").str.len_chars().filter(pl.col("dup")).sum().alias(f"{prefix}_dup_chars"),
    )
    return docs.select("doc").join(agg, on="doc", how="left").fill_null(0)


def _word_frame(docs: pl.DataFrame) -> pl.DataFrame:
    """One row per word (doc, pos, hash, length), in document order."""
    words = docs.select("doc", w=pl.col("words")).explode("w").drop_nulls("w")
    return words.with_columns(
        pos=pl.int_range(pl.len()).over("doc"),
        n=pl.len().over("doc"),
        wlen=pl.col("w").str.len_chars(),
        word=pl.col("w").hash(7),
    ).drop("w").with_columns(key=pl.col("word"))


def _ngram_repetition(docs: pl.DataFrame) -> pl.DataFrame:
    """Gopher's n-gram signals. n-gram keys are built incrementally (key_n = hash(key_n-1, word_n))
    over the whole batch; keys that would cross a document boundary are nulled out."""
    w = _word_frame(docs)
    total = w.group_by("doc").agg(total=pl.col("wlen").sum())
    out = docs.select("doc").join(total, on="doc", how="left")
    for n in range(2, 11):
        w = w.with_columns(
            key=pl.struct(pl.col("key"), pl.col("word").shift(-(n - 1))).hash(11),
            chars=pl.col("wlen").rolling_sum(n).shift(-(n - 1)),
        )
        valid = w.with_columns(key=pl.when(pl.col("pos") + n <= pl.col("n")).then(pl.col("key")))
        if n <= 4:  # grouped on one column, (doc, key) folded into 64 bits: 3x faster than on two
            top = (valid.drop_nulls("key").group_by(pl.col("key") ^ (pl.col("doc").cast(pl.UInt64) * DOC_MIX))
                   .agg(doc=pl.col("doc").first(), c=pl.len(), ch=pl.col("chars").first())
                   .filter(pl.col("c") > 1)
                   .group_by("doc").agg((pl.col("c") * pl.col("ch")).max().alias(f"top_{n}gram")))
            out = out.join(top, on="doc", how="left")
        else:
            starts = valid.with_columns(
                start=(pl.col("key").is_not_null() & ~pl.col("key").is_first_distinct().over("doc")).cast(pl.Int8))
            covered = starts.with_columns(cov=pl.col("start").rolling_max(n, min_samples=1))
            dup = covered.group_by("doc").agg((pl.col("wlen") * pl.col("cov")).sum().alias(f"dup_{n}gram"))
            out = out.join(dup, on="doc", how="left")
    return out.with_columns([
        _ratio(pl.col(c).fill_null(0), pl.col("total")).alias(f"gopher_rep.{c}")
        for c in out.columns if c not in ("doc", "total")
    ]).select("doc", pl.col("^gopher_rep\\..*$"))


def _gopher_signals(docs: pl.DataFrame) -> pl.DataFrame:
    lines = docs.select("doc", "text", "words", lines=_non_blank_lines(pl.col("text")))
    tokens = pl.col("text").str.count_matches(r"\S+")
    n_words = pl.col("words").list.len()
    n_lines = pl.col("lines").list.len()
    line_share = lambda pattern: _ratio(  # noqa: E731
        pl.col("lines").list.eval(pl.element().str.contains(pattern)).list.sum(), n_lines)
    paragraphs = pl.col("text").str.strip_chars().str.replace_all(r"\n[ \t\r]*\n\s*", PARAGRAPH_BREAK) \
        .str.split(PARAGRAPH_BREAK).list.eval(pl.element().str.strip_chars()) \
        .list.eval(pl.element().filter(pl.element() != ""))
    dup_lines = _duplicates(docs, _non_blank_lines(pl.col("text")), "line")
    dup_paras = _duplicates(docs, paragraphs, "para")
    chars = pl.col("text").str.len_chars()
    base = lines.join(dup_lines, on="doc").join(dup_paras, on="doc")
    return base.select(
        "doc",
        _ratio(pl.col("line_dups"), pl.col("line_n")).alias("gopher_rep.dup_line_frac"),
        _ratio(pl.col("para_dups"), pl.col("para_n")).alias("gopher_rep.dup_para_frac"),
        _ratio(pl.col("line_dup_chars"), chars).alias("gopher_rep.dup_line_char_frac"),
        _ratio(pl.col("para_dup_chars"), chars).alias("gopher_rep.dup_para_char_frac"),
        n_words.cast(pl.Float64).alias("gopher.word_count"),
        pl.col("words").list.eval(pl.element().str.len_chars()).list.mean().alias("gopher.mean_word_length"),
        _ratio(pl.col("text").str.count_matches("#") + pl.col("text").str.count_matches(r"\.\.\.|…"),
               n_words).alias("gopher.symbol_word_ratio"),
        line_share(BULLET_START).alias("gopher.bullet_lines"),
        line_share(ELLIPSIS_END).alias("gopher.ellipsis_lines"),
        _ratio(pl.col("text").str.count_matches(r"\S*\p{L}\S*"), tokens).alias("gopher.alpha_words"),
        pl.col("words").list.eval(pl.element().str.to_lowercase().is_in(STOP_WORDS)).list.sum()
        .cast(pl.Float64).alias("gopher.stop_words"),
    )


C4_LINE_ORDER = ("c4.max_word_length", "c4.citations", "c4.terminal_punct", "c4.min_words_per_line",
                 "c4.lorem_ipsum", "c4.javascript", "c4.curly_bracket", "c4.policy")


def _c4(docs: pl.DataFrame, rules: dict[str, ActiveRule]) -> pl.DataFrame:
    """C4's line pass, in its published order: each line is dropped by the first line rule it fails;
    `lorem ipsum` and `{` only count on lines that survived the rules before them."""
    lines = docs.select("doc", line=pl.col("text").str.split("\n")).explode("line") \
        .with_columns(line=pl.col("line").str.strip_chars()).filter(pl.col("line") != "")
    if "c4.citations" in rules:
        lines = lines.with_columns(cited=pl.col("line").str.contains(CITATION),
                                   line=pl.col("line").str.replace_all(CITATION, "").str.strip_chars())
    lower = pl.col("line").str.to_lowercase()
    fails = {
        "c4.max_word_length": lambda r: pl.col("line").str.contains(rf"\S{{{int(r.max) + 1},}}"),
        "c4.citations": lambda r: pl.col("cited"),
        "c4.terminal_punct": lambda r: ~pl.col("line").str.contains(C4_TERMINAL)
        | pl.col("line").str.ends_with("..."),
        "c4.min_words_per_line": lambda r: pl.col("line").str.count_matches(r"\S+") < r.min,
        "c4.lorem_ipsum": lambda r: lower.str.contains("lorem ipsum", literal=True),
        "c4.javascript": lambda r: lower.str.contains("javascript", literal=True),
        "c4.curly_bracket": lambda r: pl.col("line").str.contains("{", literal=True),
        "c4.policy": lambda r: lower.str.contains(POLICY),
    }
    # `alive` is a column, rewritten after each rule: as one expression it nests the previous rules'
    # twice per rule, and polars evaluated it so (7x slower at 8 rules)
    lines = lines.with_columns(alive=pl.lit(True))
    flags = []
    for name in C4_LINE_ORDER:
        if name not in rules:
            continue
        lines = lines.with_columns(**{f"f:{name}": pl.col("alive") & fails[name](rules[name])})
        flags.append(name)
        if RULES_BY_NAME[name].line and name != "c4.citations":  # citations edit a line, never drop it
            lines = lines.with_columns(alive=pl.col("alive") & ~pl.col(f"f:{name}"))
    sentences = pl.max_horizontal(pl.col("line").str.count_matches(SENTENCE_END), pl.lit(1))
    agg = lines.group_by("doc").agg(
        pl.col("line").filter(pl.col("alive")).str.join("\n").alias("c4_text"),
        sentences.filter(pl.col("alive")).sum().alias("sentences"),
        pl.len().alias("lines"),
        *[pl.col(f"f:{k}").sum().alias(k) for k in flags],
    )
    out = docs.select("doc").join(agg, on="doc", how="left").with_columns(
        pl.col("c4_text").fill_null(""), pl.col("sentences").fill_null(0))
    signals = []
    for name in flags:
        if RULES_BY_NAME[name].line:
            signals.append(_ratio(pl.col(name), pl.col("lines")).alias(name))
        else:
            signals.append((pl.col(name).fill_null(0) > 0).cast(pl.Float64).alias(name))
    if "c4.min_sentences" in rules:
        signals.append(pl.col("sentences").cast(pl.Float64).alias("c4.min_sentences"))
    return out.select("doc", "c4_text", *signals)


def _fineweb_signals(docs: pl.DataFrame) -> pl.DataFrame:
    lines = _non_blank_lines(pl.col("text"))
    share = lambda cond: _ratio(lines.list.eval(cond).list.sum(), lines.list.len())  # noqa: E731
    dups = _duplicates(docs, lines, "line")
    return docs.join(dups, on="doc").select(
        "doc",
        share(pl.element().str.contains(FINEWEB_TERMINAL)).alias("fineweb.line_punct_ratio"),
        share(pl.element().str.len_chars() <= SHORT_LINE_CHARS).alias("fineweb.short_line_ratio"),
        _ratio(pl.col("line_dup_chars"), pl.col("text").str.replace_all("\n", "", literal=True).str.len_chars())
        .alias("fineweb.dup_line_char_ratio"),
        _ratio(pl.col("text").str.count_matches("\n", literal=True), pl.col("text").str.count_matches(r"\S+"))
        .alias("fineweb.list_ratio"),
    )


def _words(text: pl.Expr) -> pl.Expr:
    return text.str.extract_all(r"\S+").list.eval(pl.element().str.strip_chars(PUNCTUATION)) \
        .list.eval(pl.element().filter(pl.element() != ""))


def _fail_expr(a: ActiveRule) -> tuple[pl.Expr, pl.Expr]:
    """(fails, detail) for one doc-level rule; a null value (rule not applicable) passes."""
    v = pl.col(a.rule.name)
    fails, detail = pl.lit(False), pl.lit(None, pl.String)
    if a.max is not None:
        fails = fails | (v > a.max).fill_null(False)
        detail = pl.when(v > a.max).then(pl.format("value={} > max {}", v.round(4), pl.lit(a.max))).otherwise(detail)
    if a.min is not None:
        fails = fails | (v < a.min).fill_null(False)
        detail = pl.when(v < a.min).then(pl.format("value={} < min {}", v.round(4), pl.lit(a.min))).otherwise(detail)
    return fails, detail


def evaluate(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, cfg: RulesConfig) -> Evaluation:
    """Compute every active rule over a batch of texts, C4's line removal, and each document's verdict."""
    rules = active_rules(cfg)
    by_name = {a.rule.name: a for a in rules}
    series = pl.Series("text", texts, dtype=pl.String) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) \
        else pl.Series("text", pa.chunked_array(texts).cast(pa.large_string()))
    docs = pl.DataFrame({"text": series.fill_null("").cast(pl.String)}).with_row_index("doc")
    families = {a.rule.family for a in rules}
    frames = []
    if families & {"gopher", "gopher_rep"}:
        docs = docs.with_columns(words=_words(pl.col("text")))
        frames.append(_gopher_signals(docs))
        if any(name.endswith("gram") for name in by_name):
            frames.append(_ngram_repetition(docs))
    text = docs["text"]
    if "c4" in families:
        c4 = _c4(docs, by_name)
        frames.append(c4.drop("c4_text"))
        if any(a.rule.line for a in rules):
            text = c4["c4_text"].alias("text")
    if "fineweb" in families:
        frames.append(_fineweb_signals(pl.DataFrame({"text": text}).with_row_index("doc")))
    signals = docs.select("doc")
    for f in frames:
        signals = signals.join(f, on="doc", how="left")
    signals = signals.select("doc", *[pl.col(a.rule.name).cast(pl.Float64) for a in rules])
    checks = [(a.rule.name, *_fail_expr(a)) for a in rules if not a.rule.line]
    if any(a.rule.line for a in rules):  # a document C4 emptied is never kept, even with its doc rules off
        checks.append((ALL_LINES_REMOVED, pl.col("_emptied"), pl.lit("the C4 line rules removed every line")))
    nothing = pl.repeat(None, pl.len(), dtype=pl.String)
    verdict = signals.with_columns(_emptied=(text.str.len_chars() == 0) & (docs["text"].str.len_chars() > 0)).select(
        reason=pl.coalesce([pl.when(f).then(pl.lit(n)) for n, f, _ in checks] + [nothing]),
        detail=pl.coalesce([pl.when(f).then(d) for _, f, d in checks] + [nothing]),
    )
    return Evaluation(signals=signals.drop("doc"), text=text, reason=verdict["reason"], detail=verdict["detail"])
