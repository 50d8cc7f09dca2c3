"""Sluice end to end as a user runs it, against the one-process floors of its parts and against peers.

For each corpus size this script
  1. builds a real-text corpus from ../shared/data (WikiText-2, Gutenberg, Common Crawl documents, news,
     inaugural addresses, Shakespeare, the UDHR in many languages): seeded, each document 1-10 KB of
     paragraphs from one source (median about 2.5 KB), 20 % of them with 1-30 edited near copies,
     shuffled, JSONL with `id` and `text`;
  2. runs `sluice dedup CORPUS --threshold T` and `sluice run --input CORPUS` (the defaults: curate,
     BPE training, tokenize and shard) in a fresh process each, Ray and Prefect start-up included, and
     samples every 0.2 s the resident memory of every process of the run (the CLI and its descendants:
     the embedded Ray cluster's GCS, raylet and workers are children of the CLI, the workers of the
     raylet; anything that left the tree but kept the session is counted too, and said so). RSS
     summed counts a shared page once per process that maps it (libraries, Ray's shared-memory object
     store), so the proportional set size summed (each page once) is printed beside it, every 1 s,
     and so is each process's RSS at the tree's peak (where the memory lies);
  3. times the one-process floor of each row-local stage's core on a sample of the corpus: fastText
     predict, `quality.rules.evaluate` and MinHash signatures in a fresh process on one thread (one
     core, as each Ray task gets), read right before and right after `sluice run` and averaged (the
     machine's speed drifts within minutes), `Tokenizer.encode_batch` right after it in this process
     on every core, and divides each stage's rate (its documents in over its time, from the run's run_info.json) by it:
     a row-local stage's time is its share of the fused pass's wall time (the rate a user sees on all
     cores), and its rate per worker is printed beside it;
  4. runs rensa + its LSH and datasketch `MinHash.bulk` + `MinHashLSH` on the same corpus, each in a
     fresh process measured the same way, at the (bands, rows) Sluice uses, and prints Sluice's ratio to each.

    .venv/bin/python benchmarks/pipeline_bench.py                     # 25k, 100k, 400k docs: hours on 2 cores
    .venv/bin/python benchmarks/pipeline_bench.py --sizes 2000        # a quick check
    .venv/bin/python benchmarks/pipeline_bench.py --sizes 100000 --json bench.json

RAY_ADDRESS is removed from the runs' environment: the figures are for the embedded cluster, whose
workers this script can see. Needs psutil (the `dev` extra) and rensa (the `bench` extra); a missing
peer is skipped with a note.
"""
from __future__ import annotations

import argparse
import bz2
import contextlib
import gzip
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CORPUS_VERSION = 1  # bump when the generator changes, so cached corpora are rebuilt
SAMPLE_S = 0.2
PSS_EVERY = 5  # samples
FLOOR_SAMPLE = 2000
WORD = re.compile(r"\w+")
# The fused row-local pass records work seconds per stage and for its segment files' reads and writes
# (pipeline.stage.SEGMENT_IO), and one wall time (flows.curate.ROW_LOCAL_WALL). Not imported: the
# peers' runs of this script would then load Prefect and Ray and be measured with them.
ROW_LOCAL = ("ingest", "clean", "langid", "rules", "quality", "segment io")
ROW_LOCAL_WALL = "row-local pass"
ROW_LOCAL_FLOORS = {"langid": "fastText predict", "rules": "rules evaluate", "fuzzy_dedup": "MinHash signatures",
                    "tokenize": "encode_batch"}


# --- the corpus ---------------------------------------------------------------------------------

def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, wrapped lines joined: the unit documents are built from."""
    blocks = (" ".join(b.split()) for b in re.split(r"\n\s*\n", text))
    return [b for b in blocks if len(b) >= 80]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # the Gutenberg files are cp1252


def source_paragraphs(data: Path) -> dict[str, list[str]]:
    """Paragraphs per source file, from every prose collection in ../shared/data."""
    sources: dict[str, list[str]] = {}
    for name in ("test.txt", "valid.txt"):  # one article per ` = Title = ` heading, one paragraph per line
        lines = (data / "wikitext-2" / name).read_text(encoding="utf-8").splitlines()
        sources[f"wikitext/{name}"] = [ln.strip() for ln in lines if len(ln.strip()) >= 80 and not ln.startswith(" =")]
    for path in sorted((data / "gutenberg").glob("*.txt")):
        if path.name != "pg1342_with_pg_header.txt":  # the same book as gitenberg_1342-0.txt
            sources[f"gutenberg/{path.name}"] = _paragraphs(_read_text(path))
    for path in sorted((data / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            sources[f"cc/{path.name}"] = [p for line in fh if line.strip()
                                          for p in _paragraphs(json.loads(line).get("text") or "")]
    for name in ("lee_background.cor", "lee.cor"):
        sources[f"lee/{name}"] = _paragraphs((data / "gensim-test-data" / name).read_text(encoding="utf-8",
                                                                                              errors="replace"))
    sources["inaugural"] = [p for f in sorted((data / "nltk-corpora" / "inaugural").glob("*.txt"))
                            for p in _paragraphs(_read_text(f))]
    sources["shakespeare"] = _paragraphs((data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    for path in sorted((data / "nltk-corpora" / "udhr2").glob("*.txt")):
        sources[f"udhr/{path.name}"] = _paragraphs(_read_text(path))
    with contextlib.suppress(OSError):
        wiki = bz2.open(next((data / "gensim-test-data").glob("enwiki-latest-pages-articles1*")), "rt").read()
        sources["enwiki-markup"] = _paragraphs(wiki)
    return {k: v for k, v in sources.items() if v}


class CorpusBuilder:
    """Seeded documents: each a run of paragraphs from one source file (chosen in proportion to its
    size), cut to a log-normal length of 1-10 KB; a near copy is its base with 1-15 % of words
    substituted, deleted or inserted. Every document comes from its own seed, so the corpus streams
    to disk in shuffled order without being held in memory."""

    def __init__(self, data: Path, seed: int) -> None:
        self.seed = seed
        self.sources = list(source_paragraphs(data).values())
        sizes = [sum(map(len, s)) for s in self.sources]
        self.cumulative = [sum(sizes[:i + 1]) for i in range(len(sizes))]

    def base(self, index: int) -> str:
        rng = random.Random(f"{self.seed}/base/{index}")
        paras = self.sources[_bisect(self.cumulative, rng.uniform(0, self.cumulative[-1]))]
        target = int(min(10_000, max(1_000, rng.lognormvariate(math.log(2_200), 0.6))))
        out, size = [], 0
        while size < target:
            out.append(paras[rng.randrange(len(paras))])
            size += len(out[-1]) + 2
        return "\n\n".join(out).encode()[:target].decode(errors="ignore")  # cut to bytes, never mid-character

    def near_copy(self, index: int, copy: int) -> str:
        rng = random.Random(f"{self.seed}/copy/{index}/{copy}")
        words = self.base(index).split(" ")
        for _ in range(max(1, int(len(words) * rng.uniform(0.01, 0.15)))):
            i, op = rng.randrange(len(words)), rng.randrange(3)
            if op == 0:
                words[i] = words[rng.randrange(len(words))]
            elif op == 1 and len(words) > 1:
                del words[i]
            else:
                words.insert(i, words[rng.randrange(len(words))])
        return " ".join(words)

    def plan(self, n_docs: int) -> list[tuple[int, int]]:
        """(base index, copy number or -1 for the base itself), shuffled, exactly n_docs long."""
        rng = random.Random(f"{self.seed}/plan")
        plan: list[tuple[int, int]] = []
        index = 0
        while len(plan) < n_docs:
            plan.append((index, -1))
            if rng.random() < 0.2:
                plan += [(index, c) for c in range(rng.randint(1, 30))]
            index += 1
        plan = plan[:n_docs]
        rng.shuffle(plan)
        return plan

    def write(self, n_docs: int, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for doc_id, (index, copy) in enumerate(self.plan(n_docs)):
                text = self.base(index) if copy < 0 else self.near_copy(index, copy)
                fh.write(json.dumps({"id": f"doc-{doc_id:08d}", "text": text}, ensure_ascii=False) + "\n")
        tmp.rename(path)


def _bisect(cumulative: list[int], x: float) -> int:
    import bisect

    return min(bisect.bisect_left(cumulative, x), len(cumulative) - 1)


def corpus(workdir: Path, n_docs: int, seed: int, data: Path) -> Path:
    """The corpus file for this size and seed, built once and reused."""
    path = workdir / f"corpus-{n_docs}-s{seed}-v{CORPUS_VERSION}.jsonl"
    if not path.exists():
        t0 = time.perf_counter()
        CorpusBuilder(data, seed).write(n_docs, path)
        print(f"built {path.name} ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# --- running a command as a user does, memory sampled over its whole process tree -----------------

@dataclass
class Measured:
    wall_s: float
    returncode: int
    peak_tree_mb: float = 0.0
    peak_tree_pss_mb: float = 0.0  # proportional set size: shared pages (libraries, Ray's object store) once
    peak_largest_mb: float = 0.0
    largest_name: str = ""
    peak_parts: dict[str, list[float]] = field(default_factory=dict)  # at the tree's peak: label -> each process's MB
    max_processes: int = 0
    session_only: list[str] = field(default_factory=list)  # found only through the session, not as descendants
    names: list[str] = field(default_factory=list)
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)


def _tree(root: psutil.Process) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """The root with its descendants, and the processes of its session that were re-parented away."""
    procs = {root.pid: root}
    with contextlib.suppress(psutil.NoSuchProcess):
        procs.update({p.pid: p for p in root.children(recursive=True)})
    extra = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if p.pid not in procs and os.getsid(p.pid) == root.pid:
                extra.append(p)
    return list(procs.values()) + extra, extra


def _pss(pid: int) -> int:
    """A process's proportional set size in bytes (Linux): its share of each page it maps."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _label(p: psutil.Process) -> str:
    """A process's name, or for a Python process the script or module it runs (Prefect's server, Ray's
    dashboard and monitors are all `python` by name)."""
    name = p.name()
    if not name.startswith("python"):
        return name
    args = p.cmdline()[1:]
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1]
    return next((Path(a).name for a in args if a.endswith(".py")), name)


def _parts(sizes: list[tuple[psutil.Process, int]]) -> dict[str, list[float]]:
    """MB of each process by label, largest first: where a tree's peak lies."""
    parts: dict[str, list[float]] = {}
    for p, rss in sorted(sizes, key=lambda item: -item[1]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            parts.setdefault(_label(p), []).append(round(rss / 1e6))
    return parts


def measure(cmd: list[str], env: dict[str, str]) -> Measured:
    """Run `cmd` in a new session; sample RSS (and every 1 s PSS) of every process in it; timestamp each
    output line."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    m = Measured(wall_s=0.0, returncode=0)
    names: set[str] = set()
    session_only: set[str] = set()

    def read() -> None:
        for line in proc.stdout:
            m.lines.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    for sample in itertools.count():
        if proc.poll() is not None:
            break
        tree, extra = _tree(root)
        if sample % PSS_EVERY == 0:  # the kernel walks every mapping for it: sampled less often than RSS
            m.peak_tree_pss_mb = max(m.peak_tree_pss_mb, sum(_pss(p.pid) for p in tree) / 1e6)
        total, largest, largest_name, sizes = 0, 0, "", []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                rss, name = p.memory_info().rss, p.name()
                total += rss
                names.add(name)
                sizes.append((p, rss))
                if rss > largest:
                    largest, largest_name = rss, name
        if total / 1e6 > m.peak_tree_mb:
            m.peak_tree_mb, m.peak_parts = total / 1e6, _parts(sizes)
        if largest / 1e6 > m.peak_largest_mb:
            m.peak_largest_mb, m.largest_name = largest / 1e6, largest_name
        m.max_processes = max(m.max_processes, len(tree))
        for p in extra:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                session_only.add(p.name())
        time.sleep(SAMPLE_S)
    m.wall_s = time.monotonic() - start
    m.returncode = proc.returncode
    reader.join(timeout=10)
    m.names = sorted(names)
    m.session_only = sorted(session_only)
    return m


def run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def sluice_cmd() -> list[str]:
    """The installed `sluice` script next to this Python, as a user calls it; this checkout wins on PYTHONPATH."""
    script = Path(sys.executable).with_name("sluice")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def stage_times(out_dir: Path) -> dict[str, float]:
    """Seconds per stage as the run recorded them in run_info.json (row-local stages: work seconds
    summed over workers; the others: wall seconds)."""
    info = out_dir / "run_info.json"
    return json.loads(info.read_text()).get("stage_seconds", {}) if info.is_file() else {}


# --- one-process floors --------------------------------------------------------------------------

def _rate(fn, items: list, repeat: int) -> float:
    """Items per second of fn(items): warmed on a slice first, best of `repeat`."""
    fn(items[:50])
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def sample_texts(corpus_path: Path) -> list[str]:
    with open(corpus_path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in itertools.islice(fh, FLOOR_SAMPLE)]


def row_local_floors(corpus_path: Path, repeat: int) -> dict[str, float]:
    """Docs/s of each row-local stage's core component in this process (run on one core by `floors`)."""
    texts = sample_texts(corpus_path)
    out: dict[str, float] = {}
    for name, make in {"fastText predict": _langid, "rules evaluate": _rules_eval,
                       "MinHash signatures": _minhash}.items():
        try:
            out[name] = _rate(make(texts), texts, repeat)
        except ImportError as err:  # the core moved a module: say so rather than stop the benchmark
            print(f"note: floor {name!r} unavailable: {err}", file=sys.stderr)
    return out


def one_core_floors(corpus_path: Path, repeat: int) -> dict[str, float]:
    """The row-local floors, each its component on one core: a fresh process with the thread settings
    of a Ray task (`pipeline.runtime.WORKER_ENV`, and OpenMP at one thread as Ray sets it), so "1.6x
    its floor on 2 cores" reads as parallel scaling."""
    from pipeline.runtime import WORKER_ENV

    cmd = [sys.executable, __file__, "--floors", "--corpus", str(corpus_path), "--repeat", str(repeat)]
    one_core = {**os.environ, **WORKER_ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=one_core, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def encode_floor(corpus_path: Path, tokenizer: Path, repeat: int) -> dict[str, float]:
    """`encode_batch` in this process on every core, as a user calling it would run it."""
    from tokenizers import Tokenizer

    texts = sample_texts(corpus_path)
    tok = Tokenizer.from_file(str(tokenizer))
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    docs_per_s = _rate(tok.encode_batch, texts, repeat)
    return {"encode_batch": docs_per_s, "encode_batch tokens/s": docs_per_s * n_tokens / len(texts)}


def bracketing_floors(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Each floor as the mean of its readings right before and right after the run it is compared
    with: this machine's speed drifts by up to 2x within minutes (fastText's floor read 2,057 docs/s
    minutes after a run it ran at 1,335 docs/s per worker, and 1,150 when read again later), so a
    floor read once, long after, measures the moment rather than the code."""
    return {name: (before[name] + after[name]) / 2 for name in before.keys() & after.keys()}


def _langid(texts: list[str]):
    from quality.langid import predict

    return predict


def _rules_eval(texts: list[str]):
    """`evaluate` on the documents the stage judges (`rules.languages`, English by default: the others
    pass unjudged), so its rate per document in compares with the stage's."""
    from pipeline.config import RulesConfig
    from quality.langid import predict
    from quality.rules import evaluate

    cfg = RulesConfig()
    judged = [t for t, lang in zip(texts, predict(texts)[0]) if cfg.languages is None or lang in cfg.languages]
    return lambda _: evaluate(judged, cfg)


def _minhash(texts: list[str]):
    from stages.dedup.minhash import MinHashParams, signatures

    return lambda texts: signatures(texts, MinHashParams())


def sluice_lsh(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows) Sluice uses at this threshold, so the peers run at the same setting."""
    from stages.dedup.lsh import lsh_params

    return lsh_params(threshold, num_perm)


# --- peers, each run in a fresh process of its own by this same script ----------------------------

def shingles(text: str, n: int = 5) -> list[str]:
    """Lowercased word n-grams, as Sluice's default (`ngram: 5`, `lowercase: true`)."""
    words = WORD.findall(text.lower())
    return [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]


def peer_dedup(method: str, corpus_path: Path, threshold: float, num_perm: int, bands: int, rows: int) -> dict:
    """Stream the corpus; a document whose LSH candidates include one at estimated Jaccard >= threshold
    is a duplicate, otherwise it is indexed. The 40-line script a user would write."""
    with open(corpus_path, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    kept, duplicates = [], 0
    if method == "rensa":
        from rensa import RMinHash, RMinHashLSH

        lsh = RMinHashLSH(threshold, num_perm, bands)
        for text in texts:
            m = RMinHash(num_perm, 1)
            m.update(shingles(text))
            if any(kept[j].jaccard(m) >= threshold for j in lsh.query(m)):
                duplicates += 1
            else:
                lsh.insert(len(kept), m)
                kept.append(m)
    else:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
        for lo in range(0, len(texts), 1000):
            batch = MinHash.bulk([[s.encode() for s in shingles(t)] for t in texts[lo:lo + 1000]], num_perm=num_perm)
            for m in batch:
                if any(kept[j].jaccard(m) >= threshold for j in lsh.query(m)):
                    duplicates += 1
                else:
                    lsh.insert(len(kept), m)
                    kept.append(m)
    return {"docs": len(texts), "duplicates": duplicates}


def peer_bands(num_perm: int, bands: int) -> int:
    """rensa splits signatures into equal bands: the divisor of num_perm nearest Sluice's band count."""
    return min((b for b in range(1, num_perm + 1) if num_perm % b == 0), key=lambda b: (abs(b - bands), b))


# --- the report ----------------------------------------------------------------------------------

def run_size(n_docs: int, args) -> dict:
    corpus_path = corpus(args.workdir, n_docs, args.seed, args.data)
    mb = corpus_path.stat().st_size / 1e6
    env = run_env()
    result: dict = {"docs": n_docs, "mb": mb, "runs": {}}
    print(f"\n## {n_docs:,} documents, {mb:,.0f} MB ({corpus_path})", flush=True)

    def record(name: str, m: Measured, extra: dict | None = None) -> dict:
        log_file = args.workdir / f"{name.replace(' ', '-')}-{n_docs}.log"  # the output, timestamped
        log_file.write_text("".join(f"{t:8.2f} {line}\n" for t, line in m.lines))
        entry = asdict(m)
        entry.pop("lines")
        entry["log"] = str(log_file)
        entry |= {"docs_per_s": n_docs / m.wall_s, "mb_per_s": mb / m.wall_s} | (extra or {})
        result["runs"][name] = entry
        if m.returncode:
            print(f"{name} FAILED (exit {m.returncode}):\n" + "\n".join(line for _, line in m.lines[-30:]))
        return entry

    runs = {"sluice dedup": ["dedup", str(corpus_path), "--out", str(args.workdir / f"dedup-{n_docs}"),
                             "--threshold", str(args.threshold)],
            "sluice run": ["run", "--input", str(corpus_path), "--out", str(args.workdir / f"run-{n_docs}")]}
    summaries, readings = {}, {}
    for name, cli_args in runs.items():
        if name.split()[1] not in args.commands:
            continue
        out_dir = Path(cli_args[cli_args.index("--out") + 1])
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, never a resumed one
        if name == "sluice run":
            readings["before"] = one_core_floors(corpus_path, args.repeat)
        m = measure(sluice_cmd() + cli_args, env)
        if name == "sluice run":
            readings["after"] = one_core_floors(corpus_path, args.repeat)
            if (out_dir / "shards" / "tokenizer.json").exists():
                readings["after"] |= encode_floor(corpus_path, out_dir / "shards" / "tokenizer.json", args.repeat)
        summary = json.loads((out_dir / "summary.json").read_text()) if (out_dir / "summary.json").exists() else None
        summaries[name] = summary
        record(name, m, {"stage_seconds": stage_times(out_dir), "summary": summary})

    bands, rows = sluice_lsh(args.threshold, args.num_perm)
    for method in args.peers:
        b = peer_bands(args.num_perm, bands) if method == "rensa" else bands
        r = args.num_perm // b if method == "rensa" else rows
        cmd = [sys.executable, __file__, "--peer", method, "--corpus", str(corpus_path), "--threshold",
               str(args.threshold), "--num-perm", str(args.num_perm), "--bands", str(b), "--rows", str(r)]
        m = measure(cmd, env)
        found = json.loads(m.lines[-1][1]) if m.returncode == 0 and m.lines else {}
        record(method, m, {"bands": b, "rows": r, **found})

    shards = args.workdir / f"run-{n_docs}" / "shards"
    if (shards / "manifest.json").exists():
        result["tokens"] = json.loads((shards / "manifest.json").read_text())["tokens"]
    if readings:
        result["floor_readings"] = readings
        result["floors"] = bracketing_floors(readings["before"], readings["after"]) | {
            k: v for k, v in readings["after"].items() if k.startswith("encode_batch")}
    result["stages"] = stage_ratios(result, summaries.get("sluice run"))
    print_size(result, bands, rows)
    return result


def stage_ratios(result: dict, summary: dict | None) -> dict:
    """Per stage of `sluice run`: seconds, docs/s, and the ratio to its floor where it has one.

    The row-local stages run fused, so each has work seconds (summed over workers) but no wall time
    of its own: its wall share is its part of the work times the fused pass's wall time, which gives
    the rate a user sees on this machine's cores; the work-seconds rate is the rate per worker.
    """
    run = result["runs"].get("sluice run")
    if not run or "floors" not in result:
        return {}
    docs_in = {s["stage"]: s["in"] for s in (summary or {}).get("stages", [])}
    tokens = result.get("tokens")
    times = run["stage_seconds"]
    pass_wall = times.get(ROW_LOCAL_WALL)
    work = sum(times.get(stage, 0.0) for stage in ROW_LOCAL)
    stages = {}
    for stage, seconds in times.items():
        entry = {"seconds": seconds}
        if stage in ROW_LOCAL and pass_wall and work:
            entry["wall_share_s"] = seconds / work * pass_wall
        if stage == "tokenize" and tokens and seconds > 0:
            entry["tokens_per_s"] = tokens / seconds
            floor = result["floors"].get("encode_batch tokens/s")
            entry["ratio_to_floor"] = entry["tokens_per_s"] / floor if floor else None
        elif stage in docs_in and seconds > 0:
            floor = result["floors"].get(ROW_LOCAL_FLOORS.get(stage, ""))
            entry["docs_per_s"] = docs_in[stage] / entry.get("wall_share_s", seconds)
            entry["ratio_to_floor"] = entry["docs_per_s"] / floor if floor else None
            if "wall_share_s" in entry:
                entry["docs_per_s_per_worker"] = docs_in[stage] / seconds
                entry["ratio_per_worker"] = entry["docs_per_s_per_worker"] / floor if floor else None
        stages[stage] = entry
    return stages


def print_size(result: dict, bands: int, rows: int) -> None:
    print("\n| what | wall s | docs/s | MB/s | peak RSS tree MB | peak PSS tree MB | largest process MB | processes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result["runs"].items():
        note = f" ({r['duplicates']:,} duplicates)" if "duplicates" in r else ""
        print(f"| {name}{note} | {r['wall_s']:,.1f} | {r['docs_per_s']:,.0f} | {r['mb_per_s']:,.2f} | "
              f"{r['peak_tree_mb']:,.0f} | {r['peak_tree_pss_mb']:,.0f} | {r['peak_largest_mb']:,.0f} "
              f"({r['largest_name']}) | {r['max_processes']} |")
    for name, r in result["runs"].items():
        if len(r["peak_parts"]) > 1:
            parts = ", ".join(f"{label} {' + '.join(map(str, mbs))}" for label, mbs in r["peak_parts"].items())
            print(f"{name}: tree peak by process, MB RSS: {parts}")
    dedup = result["runs"].get("sluice dedup")
    for peer in ("rensa", "datasketch"):
        if dedup and peer in result["runs"]:
            print(f"sluice dedup vs {peer}: {dedup['docs_per_s'] / result['runs'][peer]['docs_per_s']:.2f}x docs/s, "
                  f"{dedup['peak_tree_mb'] / result['runs'][peer]['peak_tree_mb']:.2f}x tree RSS")
    print(f"peers at Sluice's LSH setting: {bands} bands x {rows} rows (rensa: nearest divisor of num_perm)")
    for name, r in result["runs"].items():
        workers = sum(n.startswith("ray::") for n in r["names"])
        if workers:
            core = [n for n in ("gcs_server", "raylet") if n in r["names"]]
            print(f"{name}: measured {', '.join(core)} and {workers} distinct ray:: worker titles; found only by "
                  f"session (re-parented): {', '.join(r['session_only']) or 'none'}")
    if result["stages"]:
        print("\n| stage of `sluice run` | seconds | rate | floor (one process) | ratio to floor | per worker |")
        print("|---|---:|---:|---:|---:|---:|")
        for stage, s in result["stages"].items():
            floor_name = ROW_LOCAL_FLOORS.get(stage, "")
            floor = result["floors"].get("encode_batch tokens/s" if stage == "tokenize" else floor_name)
            rate = (f"{s['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in s else
                    f"{s['docs_per_s']:,.0f} docs/s" if "docs_per_s" in s else "")
            ratio = f"{s['ratio_to_floor']:.2f}x" if s.get("ratio_to_floor") else ""
            per_worker = f"{s['ratio_per_worker']:.2f}x" if s.get("ratio_per_worker") else ""
            seconds = f"{s['wall_share_s']:,.1f} of wall ({s['seconds']:,.1f} work)" if "wall_share_s" in s \
                else f"{s['seconds']:,.1f}"
            print(f"| {stage} | {seconds} | {rate} | {f'{floor:,.0f} ({floor_name})' if floor else ''} | {ratio} "
                  f"| {per_worker} |")
        print(f"row-local stages: fused in one pass of {result['runs']['sluice run']['stage_seconds'].get(ROW_LOCAL_WALL, 0):,.1f} s "
              "wall; each stage's wall share is its part of the pass's work seconds")
        before, after = result["floor_readings"]["before"], result["floor_readings"]["after"]
        print("one-core floors read right before / right after `sluice run` (their mean is the floor above): "
              + ", ".join(f"{k} {before[k]:,.0f} / {after[k]:,.0f}" for k in before if k in after))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[25_000, 100_000, 400_000],
                    help="comma-separated corpus sizes in documents (default 25000,100000,400000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--commands", nargs="+", default=["dedup", "run"], choices=["dedup", "run"])
    ap.add_argument("--peers", nargs="*", default=["rensa", "datasketch"], choices=["rensa", "datasketch"])
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats of each floor (best kept)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-pipeline")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--peer", choices=["rensa", "datasketch"], help=argparse.SUPPRESS)
    ap.add_argument("--floors", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bands", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        print(json.dumps(peer_dedup(args.peer, args.corpus, args.threshold, args.num_perm, args.bands, args.rows)))
        return
    if args.floors:
        print(json.dumps(row_local_floors(args.corpus, args.repeat)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.peers = [p for p in args.peers if _installed(p)]
    results = [run_size(n, args) for n in args.sizes]
    if args.json:
        args.json.write_text(json.dumps({"threshold": args.threshold, "num_perm": args.num_perm, "seed": args.seed,
                                         "cpus": os.cpu_count(), "sizes": results}, indent=2))
        print(f"\nwrote {args.json}")


def _installed(peer: str) -> bool:
    import importlib.util

    if importlib.util.find_spec(peer) is None:
        print(f"note: {peer} is not installed (pip install -e '.[bench]'); skipped")
        return False
    return True


if __name__ == "__main__":
    main()
