"""Does Sluice's curation make a better model? A labelled raw mix, `sluice run` on it, and the `tiny`
MoE trained on raw vs curated shards at the same token budget, scored on held-out clean text.

    .venv/bin/python benchmarks/curation_bench.py [--quick] [--json OUT.json] [--work DIR] [--data DIR]
        [--steps N] [--seeds K] [--curate-only] [--no-rules]

A rerun with the same --work reuses what is finished (`sluice run` skips finished stages, a
finished training run is not retrained), so `--seeds 2` after `--quick` trains only the new seed.

1. The mix (from ../shared/data, every document labelled by how it was made, in `label`, which the
   reader keeps in `meta`): clean documents are reference-quality English the shipped classifier never
   trained on (the calibration and test groups of `quality/default_model.py`'s positives); junk kinds
   in fixed proportions: exact and near duplicates of clean documents (ids after their originals,
   as a later crawl would number them), boilerplate and navigation (menu runs of Common Crawl pages,
   full-page text of boilerplate-heavy news pages), spam pages (SMS and YouTube spam), garbled
   encodings (non-English pages as UTF-8 bytes read as cp1252), lorem ipsum, SEO keyword lists.
2. Held out of both arms: WikiText-2 `test.txt` and Frankenstein (`pg84.txt`), which nothing in
   Sluice trains on.
3. `sluice run` (the CLI) curates the mix with the defaults (plus `langid.allow: [en]`: this is an
   English corpus); a second `sluice run` with every filter off makes the raw arm. Both use one BPE
   tokenizer trained here on the whole mix (`tokenize.tokenizer`).
4. Per junk kind: removal recall, and precision against clean (see quality/report.py `label_removal`);
   the noise share of the kept set (target < 5 %) and the share of clean documents kept (>= 90 %).
5. Per rule alone, over the mix: what it removes from clean and from each junk kind (the evidence
   for the rule defaults in the README).
6. `sluice train` runs the tiny MoE on each arm's shards, same steps x batch x seq_len tokens and
   seed, for each seed; the held-out loss is the mean next-token cross-entropy over fixed windows of
   the held-out texts, from each run's final weights.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.democorpus import near_duplicate
from quality import default_model
from quality.classifier import DEFAULT_MODEL
from quality.report import CLEAN_LABEL, label_removal, load_run
from quality.rules import RULES, evaluate

DATA = ROOT.parent / "shared" / "data"
# Share of each junk kind in the mix, as a fraction of the clean documents' count.
JUNK_SHARE = {"exact_duplicate": 0.10, "near_duplicate": 0.10, "boilerplate": 0.10, "spam": 0.10,
              "garbled": 0.06, "lorem_ipsum": 0.05, "keyword_list": 0.05}
SEQ_LEN, BATCH = 128, 8
VOCAB = 8192
EVAL_WINDOWS = 96  # windows of SEQ_LEN + 1 tokens per held-out text
EVAL_BATCH = 16  # windows per forward pass (divides EVAL_WINDOWS)
KEYWORD_HEADS = ["cheap flights", "car insurance", "best vpn", "wedding dresses", "payday loans", "weight loss",
                 "online casino", "phone repair", "hotel deals", "free movies", "crypto trading", "dog food"]
KEYWORD_MODIFIERS = ["near me", "2024", "online", "cheap", "best", "free", "reviews", "deals", "uk", "usa",
                     "discount", "top 10", "for sale", "coupon", "today", "fast", "official site", "login"]


# ---------------------------------------------------------------------------------------------
# the labelled mix


def nav_runs(text: str) -> str | None:
    """A page's navigation: its lines without terminal punctuation, when there are at least 5."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip() and not re.search(r"[.?!\"']$", ln.strip())]
    return "\n".join(lines) if len(lines) >= 5 else None


def lorem(rng: random.Random) -> str:
    from faker.providers.lorem.la import Provider

    words = Provider.word_list
    paragraphs = []
    for _ in range(rng.randint(2, 6)):
        sentences = [" ".join(rng.choices(words, k=rng.randint(6, 16))).capitalize() + "."
                     for _ in range(rng.randint(3, 8))]
        paragraphs.append(" ".join(sentences))
    return "Lorem ipsum dolor sit amet. " + "\n\n".join(paragraphs) if rng.random() < 0.5 else "\n\n".join(paragraphs)


def keyword_list(rng: random.Random) -> str:
    heads = rng.sample(KEYWORD_HEADS, rng.randint(1, 3))
    items = [f"{rng.choice(KEYWORD_MODIFIERS)} {rng.choice(heads)} {rng.choice(KEYWORD_MODIFIERS)}"
             for _ in range(rng.randint(40, 120))]
    return (", " if rng.random() < 0.5 else "\n").join(items)


def garble(text: str) -> str:
    """Mojibake: UTF-8 bytes decoded as cp1252 (what a wrong charset header does to a page)."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def build_mix(data: Path, seed: int = 0) -> list[dict]:
    """The labelled documents, clean first, then each junk kind; ids number them in that order."""
    from quality.langid import predict

    rng = random.Random(seed)
    docs = default_model.documents(data)
    clean = [d.text for d in docs if d.positive and d.split != "train"]
    n = {kind: round(share * len(clean)) for kind, share in JUNK_SHARE.items()}
    held = [d for d in docs if not d.positive and d.split != "train"]
    cc_all = default_model.cc_documents(data)
    boilerplate = [d.text for d in held if d.source == "full-pages"]
    boilerplate += [t for d in cc_all if d.split != "train" and (t := nav_runs(d.text))]
    spam = [d.text for d in held if d.source in ("sms-spam", "youtube-spam")]
    spam_pages = ["\n\n".join(spam[i:i + 4]) for i in range(0, len(spam), 4)]
    langs, _ = predict([d.text for d in cc_all], str(data / "fasttext-lid" / "lid.176.ftz"))
    foreign = [d.text for d, lang in zip(cc_all, langs) if lang not in ("en", "und")]
    long_clean = [t for t in clean if len(t.split()) >= 200]
    junk = {
        "exact_duplicate": [rng.choice(clean) for _ in range(n["exact_duplicate"])],
        "near_duplicate": [near_duplicate(rng, rng.choice(long_clean)) for _ in range(n["near_duplicate"])],
        "boilerplate": rng.sample(boilerplate, min(n["boilerplate"], len(boilerplate))),
        "spam": rng.sample(spam_pages, min(n["spam"], len(spam_pages))),
        "garbled": [garble(t) for t in rng.sample(foreign, min(n["garbled"], len(foreign)))],
        "lorem_ipsum": [lorem(rng) for _ in range(n["lorem_ipsum"])],
        "keyword_list": [keyword_list(rng) for _ in range(n["keyword_list"])],
    }
    labelled = [(CLEAN_LABEL, t) for t in clean] + [(kind, t) for kind, texts in junk.items() for t in texts]
    return [{"id": f"mix-{i:06d}", "text": text, "label": label} for i, (label, text) in enumerate(labelled)]


def held_out_texts(data: Path) -> dict[str, list[str]]:
    """Clean text in neither arm: WikiText-2 test articles and Frankenstein, as documents."""
    wiki = default_model.wikitext_articles(data / "wikitext-2" / "test.txt")
    return {"wikitext-2-test": ["\n\n".join(p) for p in wiki.values() if p],
            "frankenstein": default_model.chunks(default_model.gutenberg_paragraphs(data / "gutenberg" / "pg84.txt"))}


# ---------------------------------------------------------------------------------------------
# running Sluice


def sluice(*args: str, log: Path) -> None:
    """The CLI as a user runs it; output to a log file, which is printed if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "RAY_USAGE_STATS_ENABLED": "0"}
    exe = Path(sys.executable).with_name("sluice")
    with open(log, "w") as out:
        code = subprocess.call([str(exe), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code:
        sys.exit(f"sluice {' '.join(args)} failed ({code}):\n{log.read_text()[-4000:]}")


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def curate(work: Path, mix: Path, tokenizer: Path, name: str, quality: dict, dedup: dict) -> Path:
    run = work / name
    config = {"out": str(run), "inputs": [{"path": str(mix), "format": "jsonl", "source": "mix"}],
              "ray": {"num_cpus": 2, "dashboard": False}, "dedup": dedup, "quality": quality,
              "tokenize": {"tokenizer": str(tokenizer)}, "shard": {"seed": 0}, "train": {"enabled": False}}
    sluice("run", str(write_config(work / f"{name}.yaml", config)), log=work / f"{name}.log")
    return run


OFF = {"langid": {"enabled": False}, "rules": {"enabled": False}, "classifier": {"enabled": False}}
NO_DEDUP = {"exact": {"enabled": False}, "fuzzy": {"enabled": False}}


def train_tokenizer(texts: list[str], out: Path) -> Path:
    from stages.bpe import train_bpe
    from stages.tokenize import DEFAULT_EOD

    train_bpe(texts, VOCAB, [DEFAULT_EOD]).save(str(out))
    return out


def train_arm(work: Path, shards: Path, name: str, seed: int, steps: int) -> Path:
    run = work / "train" / f"{name}-seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    config = {"out": str(run), "ray": {"num_cpus": 2, "dashboard": False},
              "train": {"enabled": True, "preset": "tiny", "seq_len": SEQ_LEN, "batch_size": BATCH, "steps": steps,
                        "lr": 1e-3, "warmup_steps": max(1, steps // 10), "seed": seed, "val_fraction": 0.0,
                        "eval_every": steps, "checkpoint_every": steps, "report_every": max(10, steps // 4),
                        "cpus_per_worker": 1.0}}
    sluice("train", str(write_config(run / "train.yaml", config)), "--shards", str(shards), log=run / "train.log")
    return run / "train"


def held_out_loss(train_dir: Path, tokenizer: Path, texts: dict[str, list[str]]) -> dict[str, float]:
    """Mean next-token cross-entropy over the first EVAL_WINDOWS windows of each held-out text
    (documents joined with the end-of-text token), from the run's final weights."""
    import torch
    from tokenizers import Tokenizer

    from stages.tokenize import DEFAULT_EOD
    from stages.train.model import ModelConfig, MoETransformer

    model = MoETransformer(ModelConfig(**json.loads((train_dir / "model_config.json").read_text())))
    model.load_state_dict(torch.load(train_dir / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    tok = Tokenizer.from_file(str(tokenizer))
    eod = tok.token_to_id(DEFAULT_EOD)
    out = {}
    for name, docs in texts.items():
        ids = [i for e in tok.encode_batch(docs) for i in [*e.ids, eod]]
        windows = torch.tensor([ids[k * SEQ_LEN:(k + 1) * SEQ_LEN + 1] for k in range(EVAL_WINDOWS)])
        with torch.no_grad():  # equal-sized batches: the mean of batch means is the mean over tokens
            losses = [float(model(w[:, :-1], w[:, 1:]).lm_loss) for w in windows.split(EVAL_BATCH)]
        out[name] = float(np.mean(losses))
    out["mean"] = float(np.mean([out[k] for k in texts]))
    return out


# ---------------------------------------------------------------------------------------------
# measuring


def removal_table(run: Path) -> tuple[list, float, float]:
    data = load_run(run)
    removal = label_removal(data.kept, data.rejected)
    kept = data.kept.labels
    noise = 1 - kept[CLEAN_LABEL] / max(1, sum(kept.values()))
    clean = next(r for r in removal if r.label == CLEAN_LABEL)
    return removal, noise, 1 - clean.recall


def _visible(text: str | None) -> int:
    return len("".join((text or "").split()))


def rule_evidence(mix: list[dict], rules: dict) -> list[dict]:
    """Per rule, over the mix: `alone`, the share of each label's documents it rejects on its own
    (line rules: the documents it removes a line from) and, for line rules, the share of clean text
    it cuts (non-whitespace characters); `only`, the share it rejects that the configured rule set
    (`rules`) would keep without it: what the rule adds to the others."""
    from pipeline.config import RulesConfig

    labels = [d["label"] for d in mix]
    texts = [d["text"] for d in mix]
    per_label = Counter(labels)
    clean_chars = sum(_visible(t) for t, lab in zip(texts, labels) if lab == CLEAN_LABEL)
    base = RulesConfig(**{**rules, "languages": None})
    rejected = [r is not None for r in evaluate(texts, base).reason.to_list()]
    rows = []
    for rule in RULES:
        if rule.name in base.disable:
            only = {lab: 0.0 for lab in per_label}
        else:
            without = evaluate(texts, base.model_copy(update={"disable": [*base.disable, rule.name]})).reason.to_list()
            gained = Counter(lab for lab, r, w in zip(labels, rejected, without) if r and w is None)
            only = {lab: gained[lab] / per_label[lab] for lab in per_label}
        result = evaluate(texts, RulesConfig(disable=[r.name for r in RULES if r.name != rule.name], languages=None))
        if rule.line:
            hit = [(v or 0) > 0 or r is not None for v, r in zip(result.signals[rule.name].to_list(),
                                                                 result.reason.to_list())]
            cut = sum(_visible(b) - _visible(a) for b, a, lab in zip(texts, result.text.to_list(), labels)
                      if lab == CLEAN_LABEL)
            extra = {"clean_chars_cut": cut / clean_chars}
        else:
            hit = [r is not None for r in result.reason.to_list()]
            extra = {}
        by_label = Counter(lab for lab, h in zip(labels, hit) if h)
        rows.append({"rule": rule.name, "line": rule.line, "only": only,
                     "alone": {lab: by_label[lab] / per_label[lab] for lab in per_label}, **extra})
    return rows


def print_rule_evidence(mix: list[dict], kinds: Counter) -> None:
    from pipeline.config import RulesConfig

    labels = list(kinds)
    rules = RulesConfig().model_dump(include={"disable", "params"})
    print(f"\nrules over the mix: share of each label's documents a rule rejects alone (line rules: "
          f"shortens) / rejects that the default rule set ({rules}) keeps without it:")
    print("| rule | " + " | ".join(labels) + " | clean chars cut |\n|---|" + "---:|" * (len(labels) + 1))
    for row in rule_evidence(mix, rules):
        cut = f"{row['clean_chars_cut']:.1%}" if "clean_chars_cut" in row else ""
        print(f"| {row['rule']} | " + " | ".join(f"{row['alone'][lab]:.1%} / {row['only'][lab]:.1%}" for lab in labels)
              + f" | {cut} |")


def seeds_summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (under 10 minutes on 2 cores)")
    ap.add_argument("--json", type=Path, default=None, help="write the headline figures here")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "curation-bench")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 40 quick, 300 full)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (default 1 quick, 3 full)")
    ap.add_argument("--curate-only", action="store_true", help="stop after the curation figures (no training)")
    ap.add_argument("--no-rules", action="store_true", help="skip the per-rule evidence table (minutes on 2 cores)")
    args = ap.parse_args()
    steps = args.steps or (40 if args.quick else 300)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    mix = build_mix(args.data)
    mix_file = work / "mix.jsonl"
    mix_file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in mix))
    kinds = Counter(d["label"] for d in mix)
    print(f"mix: {len(mix):,} documents: " + ", ".join(f"{k} {v:,} ({v / len(mix):.1%})" for k, v in kinds.items()))
    tokenizer = train_tokenizer([d["text"] for d in mix], work / "tokenizer.json")

    # The shipped model, named explicitly: the same as `model: null` once the stage resolves null to it.
    defaults = {"langid": {"allow": ["en"]}, "classifier": {"model": str(DEFAULT_MODEL)}}
    curated = curate(work, mix_file, tokenizer, "curated", defaults, {})
    removal, noise, clean_kept = removal_table(curated)
    print(f"\ncuration ({time.perf_counter() - t0:.0f} s so far): noise share of kept {noise:.2%} (target < 5 %), "
          f"clean kept {clean_kept:.1%} (target >= 90 %)")
    print("| label | docs | removed | recall | precision vs clean | top reasons |\n|---|---:|---:|---:|---:|---|")
    for r in removal:
        precision = "-" if r.precision is None else f"{r.precision:.3f}"
        reasons = ", ".join(f"{reason} {n}" for reason, n in r.top_reasons)
        print(f"| {r.label} | {r.docs:,} | {r.removed:,} | {r.recall:.3f} | {precision} | {reasons} |")

    if not args.no_rules:
        print_rule_evidence(mix, kinds)

    if args.curate_only:
        return
    raw = curate(work, mix_file, tokenizer, "raw", OFF, NO_DEDUP)
    held = held_out_texts(args.data)
    results: dict[str, dict[int, dict]] = {"raw": {}, "curated": {}}
    for seed in seeds:
        for arm, run in (("raw", raw), ("curated", curated)):
            train_dir = train_arm(work, run / "shards", arm, seed, steps)
            results[arm][seed] = held_out_loss(train_dir, tokenizer, held)
    tokens = steps * BATCH * SEQ_LEN
    print(f"\ntiny MoE, {steps} steps x {BATCH} x {SEQ_LEN} = {tokens:,} tokens per run, seeds {seeds}; "
          f"held-out loss (mean over {', '.join(held)}):")
    print("| arm | val loss | spread (sd) | perplexity | per held-out set |\n|---|---:|---:|---:|---|")
    summary = {}
    for arm, by_seed in results.items():
        mean, sd = seeds_summary([r["mean"] for r in by_seed.values()])
        sets = ", ".join(f"{k} {statistics.mean(r[k] for r in by_seed.values()):.3f}" for k in held)
        print(f"| {arm} | {mean:.4f} | {sd:.4f} | {math.exp(mean):.1f} | {sets} |")
        summary[arm] = {"val_loss": mean, "val_loss_sd": sd, "perplexity": math.exp(mean),
                        "per_seed": {str(s): r for s, r in by_seed.items()}}
    gap = summary["raw"]["val_loss"] - summary["curated"]["val_loss"]
    spread = max(summary["raw"]["val_loss_sd"], summary["curated"]["val_loss_sd"])
    print(f"\ncurated below raw by {gap:.4f} (spread {spread:.4f}): "
          f"{'better beyond the spread' if gap > spread else 'NOT better beyond the spread'}"
          f"{' (one seed: no spread)' if len(seeds) == 1 else ''}; noise {noise:.2%} "
          f"{'<' if noise < 0.05 else '>='} 5 %, clean kept {clean_kept:.1%} {'>=' if clean_kept >= 0.9 else '<'} 90 %; "
          f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            **summary, "noise_share": noise, "clean_kept": clean_kept, "steps": steps, "tokens_per_run": tokens,
            "seeds": seeds, "mix": dict(kinds),
            "removal": {r.label: {"docs": r.docs, "removed": r.removed, "recall": r.recall, "precision": r.precision,
                                  "top_reasons": r.top_reasons} for r in removal}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
