"""The demo corpus: a realistic, messy web-like corpus generated in code, with known ground truth.

Why: `sluice demo`, the tests and the benchmarks need input that exercises every stage (readers,
cleaning, language id, quality rules, exact and fuzzy dedup) without shipping anyone's text. All
prose is synthesised here: English from sentence templates over a small vocabulary plus Faker's
names, places and companies (Faker's own English word lists carry almost no stop words, which the
Gopher rules require); other languages from Faker's per-locale word lists. Every injected defect is
counted, so a run's ledger can be checked against `CorpusInfo`.

Layout under OUT_DIR (`n_docs` records in all; the same seed gives byte-identical files):

    web/part-0000.jsonl.gz, web/part-0001.jsonl.gz   id, text, url, date, domain, label  (+ malformed lines)
    forum/posts.parquet                               post_id (int64), body, url, author, label
    crawl/crawl.warc.gz                               HTML responses, one empty response, one revisit
    truth.json                                        the CorpusInfo, paths relative to OUT_DIR

Every record that can carry one has a `label` field (`LABELS`: clean, duplicate, boilerplate, spam,
junk) saying how it was made; readers put it into `meta`, so the report can score removal per label.
Ids in the ground truth are the records' own ids as strings: `web-000123`, `100123` for forum posts,
and for crawl pages the WARC-Record-ID (`<urn:uuid:...>`; the WARC reader derives the document id
from path and offset and keeps this one as `meta.warc_record_id`).
"""
from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import math
import random
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from faker import Faker
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.rundir import atomic_write_bytes, atomic_write_json

# ---------------------------------------------------------------- English vocabulary (written here)
NOUNS = """plan team market city report policy project budget service system community school
company program network record region process model leader partner strategy question problem
result decision change goal effort approach feature standard price cost rule season agency
committee council office campaign product tool method source sample resource process story
event schedule contract investment review survey proposal factory neighborhood village island
bridge road station library museum garden kitchen window table story family friend student
worker teacher customer visitor driver farmer author reader player coach manager engineer""".split()

TOPICS = {
    "technology": """software platform device battery server chip app network update browser
        algorithm database robot sensor startup developer laptop screen camera cloud""",
    "health": """clinic doctor patient vaccine hospital diet treatment nurse therapy symptom
        medicine trial study habit sleep exercise condition test insurance virus""",
    "sports": """match league coach player season stadium goal fan championship tournament
        referee team contract injury record trainer race medal club athlete""",
    "economy": """market bank loan price wage tax budget investor export factory inflation
        rate debt fund profit supplier retailer currency stock salary""",
    "travel": """flight hotel beach museum tour airport route ticket guide island train cruise
        passport festival resort trail village harbor restaurant visa""",
    "science": """experiment telescope planet cell protein climate ocean fossil theory sample
        laboratory researcher molecule galaxy bird satellite gene volcano reef particle""",
    "food": """recipe kitchen bakery chef dish sauce harvest farmer market menu restaurant
        flavor ingredient oven spice dessert garden coffee bread cheese""",
    "education": """school teacher student course lesson exam library campus degree classroom
        curriculum tutor grade semester textbook scholarship lecture principal university skill""",
}
TOPICS = {k: v.split() for k, v in TOPICS.items()}

ADJECTIVES = """new local national small large recent early major public private simple complex
strong weak modern traditional popular rare common useful careful quiet busy cheap expensive
safe risky fair clear hidden open remote urban rural global digital careful honest ambitious
modest steady sudden gradual familiar unusual practical serious funny bright dark quick slow
fresh rich poor young old
reliable flexible efficient healthy important difficult successful independent regional""".split()

ADVERBS = """quite very rather increasingly surprisingly clearly largely mostly fairly
especially notably relatively generally hardly truly""".split()

VERBS = [v.split("/") for v in """build/built/built grow/grew/grown improve/improved/improved
change/changed/changed support/supported/supported reduce/reduced/reduced test/tested/tested
review/reviewed/reviewed launch/launched/launched share/shared/shared explain/explained/explained
protect/protected/protected measure/measured/measured replace/replaced/replaced design/designed/designed
plan/planned/planned choose/chose/chosen find/found/found keep/kept/kept leave/left/left
bring/brought/brought begin/began/begun sell/sold/sold buy/bought/bought write/wrote/written
read/read/read drive/drove/driven win/won/won lose/lost/lost pay/paid/paid lead/led/led
offer/offered/offered expand/expanded/expanded adopt/adopted/adopted question/questioned/questioned
finish/finished/finished open/opened/opened close/closed/closed visit/visited/visited
study/studied/studied prepare/prepared/prepared manage/managed/managed fix/fixed/fixed
track/tracked/tracked improve/improved/improved welcome/welcomed/welcomed approve/approved/approved
reject/rejected/rejected""".split()]

# Slots: N noun, Ns plural, T/Ts topic noun, A adjective, ADV adverb, V/Vd/Vn verb base/past/participle,
# P person, PF first name, J job, C city, CO company, K country, D date, Y year, NUM number, PCT percent.
SENTENCES = """The {A} {T} in {C} has {Vn} the way {Ns} {V} their {N}.
{P}, a {J} based in {C}, said that the {T} would have to be {Vn} before {D}.
According to {CO}, about {PCT} percent of {Ts} are now {Vn} with {A} {Ns}.
It is {ADV} {A} to {V} a {T} without a {A} {N}.
Many {Ns} have {Vn} the {A} {N} of the {T}, and {Ns} in {C} agree.
"We have to {V} the {T} with {A} {Ns}," {P} told {CO} on {D}.
In {Y}, {CO} {Vd} a {A} {N} that {Vd} the {T} for {NUM} {Ns}.
This is why the {N} and the {T} are {ADV} {A} for {Ns} in {C}.
What does the {A} {T} mean for {Ns} who {V} a {N} every week?
Some {Ns} argue that the {T} should be {Vn} by {Ns}, not by {CO}.
The {N} of the {T} was {Vn} by {P} after {NUM} months of {A} work.
For {Ns} in {C}, the {A} {N} is to {V} the {T} and {V} the {N}.
There are at least {NUM} {A} {Ns} to {V} when you {V} a {T}.
{PF} wanted to {V} the {N}, but the {T} had already been {Vn}.
Analysts at {CO} expect that {A} {Ts} will {V} the {N} by {Y}.
As a {J}, {PF} has {Vn} {Ns} with the {T} for {NUM} years.
That {N} was {ADV} {A}, and most {Ns} did not {V} it.
If the {T} can {V} the {N}, {Ns} in {C} will have to {V} their {Ns}.
One {N} that is often {Vn} is the {A} {T} of {C}.
The {A} {Ns} were {Vn} with {Ns} from {K} and {K}.
On {D}, {Ns} from {NUM} {Ns} {Vd} in {C} to {V} the {T}.
It was not the {A} {N}; it was the {T} that {Vd} the {Ns}.
Most of the {Ns} we {Vd} want to be {A} with their {T}.
{PF} {Vd} the {N} and said that it should {V} the {T}.
By {Y}, the {T} could be worth {NUM} million dollars, {CO} {Vd} in a {A} {N}.
Be sure to {V} the {T} with a {A} {N} before you {V} it.
The {N} at {CO} has {Vn} {Ns} with {A} {Ts} since {Y}.
Why do so many {Ns} {V} the {T} when the {N} is so {A}?
Their {A} {T} has {Vn} {NUM} {Ns} and {Vd} a {N} in {C}.
With a {A} {N}, the {T} of {C} {Vd} {ADV} {A} {Ns}.""".splitlines()

TITLES = """{A} {Ts} in {C}: what {Ns} need to know
How {CO} {Vd} the {T}
{NUM} {A} ways to {V} your {T}
Why the {T} is {ADV} {A} this year
{PF} on the {A} {N} of the {T}
The {T} that {Vd} {C}
Inside the {A} {N} at {CO}""".splitlines()

LANG_SHARE = {  # non-English share of the articles, by Faker locale; the rest is English
    "de_DE": 0.05, "fr_FR": 0.05, "es_ES": 0.05, "it_IT": 0.03, "ru_RU": 0.03, "nl_NL": 0.02,
    "pl_PL": 0.02, "ja_JP": 0.02, "zh_CN": 0.02, "cs_CZ": 0.01,
}
NO_SPACE_LOCALES = {"ja_JP", "zh_CN"}

# --------------------------------------------------------------------- junk templates (written here)
BOILERPLATE = """We use cookies to improve your experience. By continuing to browse you accept our Cookie Policy.
Please enable JavaScript in your browser to view this site.
This site requires javascript to work properly.
Home | News | Sports | Business | Opinion | Contact
Menu
Skip to main content
Sign in | Register | Subscribe
Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.
Privacy Policy | Terms of Use | Accessibility | Sitemap
Accept all cookies
Share on Facebook | Share on Twitter | Email
Subscribe to our newsletter
Advertisement
Related posts
All rights reserved.""".splitlines()

SPAM_PRODUCTS = """replica watches|cheap pills|casino bonus|payday loans|crypto signals|weight loss tea
|free followers|essay writing|seo backlinks|diet pills|slot machines|forex robot""".replace("\n", "").split("|")

SHORT_JUNK = """Page not found.|404 Not Found|Loading...|Comments are closed.|Read more|Share this:
|Thank you for subscribing!|Error: access denied|Click to continue|Untitled|Coming soon|Test post please ignore
|Continue reading|No results found.""".replace("\n", "").split("|")

# How each kind of record was made, as the report's per-label removal precision/recall reads it
# (`meta.label`); the curation benchmark uses the same vocabulary.
LABELS = {"article": "clean", "bad_bytes": "clean", "exact_dup": "duplicate", "near_dup": "duplicate",
          "boilerplate": "boilerplate", "spam": "spam", "short": "junk", "empty": "junk", "malformed": "junk"}

INSERT_WORDS = ADVERBS + ["also", "still", "now", "then", "really", "just", "often"]


@dataclass
class Doc:
    id: str
    text: str
    kind: str  # article | exact_dup | near_dup | boilerplate | spam | short | bad_bytes
    lang: str  # ISO 639-1 code of the prose ("en" for junk)
    title: str = ""
    url: str = ""
    domain: str = ""
    date: str = ""
    author: str = ""
    pid: str = ""  # the id its record carries in the file, set when the doc is placed


@dataclass
class CorpusInfo:
    """Where the corpus is and what was injected into it.

    `inputs` holds absolute paths so it validates as the config's `inputs` from any working
    directory; `to_dict()` (written to truth.json) holds them relative to `root` so it is byte-stable.
    """

    root: Path
    inputs: list[dict]
    n_records: int  # records the readers see: JSONL lines + Parquet rows + WARC records
    n_articles: int  # distinct good documents (before duplication), all languages, all sources
    n_exact_dups: int  # extra copies: the exact-dedup stage should reject exactly these
    n_near_dups: int  # edited variants (originals not counted)
    n_boilerplate: int
    n_spam: int
    n_short: int
    n_malformed: int  # JSONL lines that cannot become a document: truncated JSON, no text field
    n_bad_bytes: int  # JSONL lines in cp1252 inside a UTF-8 file: decodable after detection
    n_empty: int  # an empty `text` in JSONL plus an HTML response with an empty body
    n_warc_revisit: int  # revisit records without a body
    n_warc_pages: int  # HTML responses with an article
    source_counts: dict[str, int]  # records per source
    lang_counts: dict[str, int]  # documents with prose, by language, duplicates included
    exact_dup_groups: list[list[str]]  # [original id, copy ids...]; dedup keeps the smallest (source, id)
    near_dup_clusters: list[list[str]]  # [original id, variant ids...]
    near_dup_jaccard: dict[str, float]  # variant id -> word-5-gram Jaccard against its original
    kinds: dict[str, str] = field(repr=False)  # id -> Doc.kind, or empty / malformed / revisit
    langs: dict[str, str] = field(repr=False)  # id -> language of its prose

    def to_dict(self) -> dict:
        data = asdict(self)
        data["root"] = "."
        data["inputs"] = [{**i, "path": str(Path(i["path"]).relative_to(self.root))} for i in self.inputs]
        return data


def word_ngram_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard of lower-cased whitespace-word n-gram sets: the similarity fuzzy dedup estimates."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.lower().split()
        return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga or gb else 1.0


def plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


class Pools:
    """Faker output drawn once and reused: a Faker call per word would make generation slow."""

    def __init__(self, seed: int):
        en = Faker("en_US")
        en.seed_instance(seed)
        self.people = [en.name() for _ in range(400)]
        self.first = [en.first_name() for _ in range(300)]
        self.cities = [en.city() for _ in range(300)]
        self.countries = [c for c in (en.country() for _ in range(200)) if "," not in c]
        self.companies = [en.company() for _ in range(300)]
        self.jobs = [en.job().split(",")[0].split("(")[0].strip().lower() for _ in range(300)]
        self.users = [en.user_name() for _ in range(300)]
        self.locales: dict[str, Faker] = {}
        self.domains: dict[str, list[str]] = {"en": [en.domain_name() for _ in range(120)]}
        for i, loc in enumerate(LANG_SHARE):
            fk = Faker(loc)
            fk.seed_instance(seed * 1000 + i + 1)
            self.locales[loc] = fk
            self.domains[lang_of(loc)] = [fk.domain_name() for _ in range(40)]


def lang_of(locale: str) -> str:
    return locale.split("_")[0]


class English:
    """Template English: real words and stop words, slots every few words so docs do not share 5-grams."""

    SLOT = re.compile(r"\{([A-Z]+s?|[A-Z]+[a-z])\}")
    AN = re.compile(r"\b([Aa]) ([aeiouAEIOU])")

    def __init__(self, rng: random.Random, pools: Pools):
        self.rng = r = rng
        self.topic: list[tuple[str, str]] = []  # (singular, plural) of the current article's topic
        nouns = [(n, plural(n)) for n in NOUNS]
        days = [f"{d:%B} {d.day}" for d in (date(2021, 1, 1) + timedelta(days=i) for i in range(365))]
        self.fillers = {
            "N": lambda: r.choice(nouns)[0], "Ns": lambda: r.choice(nouns)[1],
            "T": lambda: r.choice(self.topic)[0], "Ts": lambda: r.choice(self.topic)[1],
            "V": lambda: r.choice(VERBS)[0], "Vd": lambda: r.choice(VERBS)[1], "Vn": lambda: r.choice(VERBS)[2],
            "A": lambda: r.choice(ADJECTIVES), "ADV": lambda: r.choice(ADVERBS),
            "P": lambda: r.choice(pools.people), "PF": lambda: r.choice(pools.first),
            "J": lambda: r.choice(pools.jobs), "C": lambda: r.choice(pools.cities),
            "CO": lambda: r.choice(pools.companies), "K": lambda: r.choice(pools.countries),
            "D": lambda: r.choice(days), "Y": lambda: str(r.randint(2008, 2031)),
            "NUM": lambda: str(r.randint(2, 90)), "PCT": lambda: str(r.randint(5, 95)),
        }

    def use_topic(self, name: str) -> None:
        self.topic = [(n, plural(n)) for n in TOPICS[name]]

    def fill(self, template: str) -> str:
        text = self.AN.sub(r"\1n \2", self.SLOT.sub(lambda m: self.fillers[m.group(1)](), template))
        return text[0].upper() + text[1:]

    def paragraph(self) -> str:
        return " ".join(self.fill(self.rng.choice(SENTENCES)) for _ in range(self.rng.randint(3, 7)))

    def article(self, n_words: int) -> tuple[str, str]:
        self.use_topic(self.rng.choice(sorted(TOPICS)))
        title = self.fill(self.rng.choice(TITLES))
        paragraphs: list[str] = []
        words = 0
        while words < n_words:
            paragraphs.append(self.paragraph())
            words += paragraphs[-1].count(" ") + 1
        return title, "\n\n".join(paragraphs)


def random_date(rng: random.Random) -> date:
    return date(2015, 1, 1) + timedelta(days=rng.randrange(3650))


def foreign_article(fk: Faker, locale: str, n_words: int) -> tuple[str, str]:
    """Faker's locale word lists: word salad, but real words of the language, which is what language id sees."""
    title = fk.sentence(nb_words=6).rstrip(".。")
    measure = (lambda s: len(s) // 2) if locale in NO_SPACE_LOCALES else (lambda s: len(s.split()))
    paragraphs: list[str] = []
    words = 0
    while words < n_words:
        paragraphs.append(fk.paragraph(nb_sentences=fk.random_int(4, 8)))
        words += measure(paragraphs[-1])
    return title, "\n\n".join(paragraphs)


def article_length(rng: random.Random) -> int:
    """Words per article: log-normal around 400, clipped to the 150-1500 of typical web articles."""
    return int(min(1500, max(150, math.exp(rng.gauss(math.log(400), 0.55)))))


def boilerplate_page(rng: random.Random, en: English, pools: Pools) -> str:
    lines = rng.sample(BOILERPLATE, rng.randint(6, 11))
    en.use_topic("technology")
    lines.insert(rng.randint(0, len(lines)), en.fill(rng.choice(SENTENCES)))
    lines.append(f"© {rng.randint(2010, 2024)} {rng.choice(pools.companies)}. All rights reserved.")
    return "\n".join(lines)


def spam_page(rng: random.Random, pools: Pools) -> str:
    product = rng.choice(SPAM_PRODUCTS)
    domain = rng.choice(pools.domains["en"])
    slug = product.replace(" ", "-")
    styles = {
        "stuffing": lambda: " ".join(f"{w} {product}" for w in rng.choices(
            ["cheap", "best", "buy", "discount", "online", "top", "free", "official"], k=40)),
        "caps": lambda: "\n".join(f"BUY {product.upper()} NOW!!! {rng.randint(50, 90)}% OFF!!! LIMITED OFFER!!!"
                                  for _ in range(rng.randint(8, 20))),
        "links": lambda: "\n".join(f"click here >> http://{domain}/{slug}-{rng.randint(1, 999)}.html"
                                   for _ in range(rng.randint(15, 40))),
        "repeat": lambda: "\n".join([f"Best {product} deals, visit {domain} today!"] * rng.randint(15, 40)),
    }
    chosen = rng.sample(sorted(styles), rng.randint(1, 2))
    return "\n".join(styles[s]() for s in chosen)


def short_junk(rng: random.Random, pools: Pools) -> str:
    pieces = SHORT_JUNK + [f"{rng.randint(0, 500)} comments", f"Posted by {rng.choice(pools.users)}",
                           f"Page {rng.randint(2, 40)} of {rng.randint(41, 90)}"]
    return " ".join(rng.sample(pieces, rng.randint(1, 3)))


def near_duplicate(rng: random.Random, text: str) -> str:
    """A copy with a few word edits (about 1 in 100 words) and maybe a new footer: word-5-gram Jaccard ~0.85-0.96."""
    lines = [line.split(" ") for line in text.split("\n")]
    spots = [(i, j) for i, line in enumerate(lines) for j in range(len(line)) if line[j]]
    n_edits = max(2, round(len(spots) * rng.uniform(0.004, 0.012)))
    for i, j in sorted(rng.sample(spots, n_edits), reverse=True):  # right to left keeps indices valid
        line, op = lines[i], rng.choice(("swap", "insert", "delete", "replace"))
        if op == "swap" and j + 1 < len(line):
            line[j], line[j + 1] = line[j + 1], line[j]
        elif op == "insert":
            line.insert(j, rng.choice(INSERT_WORDS))
        elif op == "delete" and len(line) > 1:
            del line[j]
        else:
            line[j] = rng.choice(ADJECTIVES)
    out = "\n".join(" ".join(line) for line in lines)
    if rng.random() < 0.5:
        stamp = random_date(rng).strftime("%B %d, %Y")
        out += f"\n\n{rng.choice(('Updated on', 'Last modified', 'First published'))} {stamp}."
    return out


def cp1252_line(doc: Doc) -> bytes:
    """A JSON line written in cp1252 inside a UTF-8 file: what a mis-encoded upstream dump looks like."""
    text = doc.text + "\n\nThe café on the corner served a crème brûlée, and the naïve critic liked it."
    record = {"id": doc.pid, "text": text, "url": doc.url, "label": LABELS[doc.kind]}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("cp1252")


class Generator:
    """The seeded random state, the Faker pools and the id counter shared by every document."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.pools = Pools(seed)
        self.en = English(self.rng, self.pools)
        self.counter = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.counter:06d}"

    def doc(self, kind: str, lang: str, title: str, text: str) -> Doc:
        """A document with a fresh id and the metadata a crawl would attach (domain, url, date, author)."""
        r = self.rng
        doc_id = self.next_id()
        domain = r.choice(self.pools.domains[lang])
        day = random_date(r)
        slug = re.sub(r"\W+", "-", title.lower()).strip("-")[:60] or "post"
        return Doc(id=doc_id, text=text, kind=kind, lang=lang, title=title, domain=domain, date=day.isoformat(),
                   url=f"https://{domain}/{day:%Y/%m}/{slug}-{int(doc_id)}", author=r.choice(self.pools.users))

    def article(self, lang_locale: str | None) -> Doc:
        if lang_locale is None:
            title, text = self.en.article(article_length(self.rng))
        else:
            title, text = foreign_article(self.pools.locales[lang_locale], lang_locale, article_length(self.rng))
        lang = lang_of(lang_locale) if lang_locale else "en"
        return self.doc("article", lang, title, f"{title}\n\n{text}")

    def derived(self, base: Doc, kind: str, text: str) -> Doc:
        """A copy of `base` republished elsewhere: same title and language, new id, site and date."""
        return self.doc(kind, base.lang, base.title, text)

    def junk(self, kind: str, seen: set[str]) -> Doc:
        """A junk page whose text is new: accidental repeats would blur the exact-duplicate ground truth."""
        r = self.rng
        make = {"boilerplate": lambda: boilerplate_page(r, self.en, self.pools),
                "spam": lambda: spam_page(r, self.pools), "short": lambda: short_junk(r, self.pools)}[kind]
        for _ in range(100):
            text = make()
            if text not in seen:
                seen.add(text)
                return self.doc(kind, "en", text.split("\n")[0][:40], text)
        raise RuntimeError(f"could not draw a new {kind} text")


def plan_counts(n: int) -> dict[str, int]:
    """Shares of n records; the WARC file gets about one record in twelve."""
    counts = {"exact_dups": round(0.05 * n), "near_dups": round(0.08 * n), "boilerplate": round(0.03 * n),
              "spam": round(0.03 * n), "short": round(0.02 * n), "warc_pages": max(4, round(n / 12))}
    fixed = 2 + 1 + 1 + 2  # malformed, bad bytes, empty text, empty HTML response + revisit
    counts["flat_articles"] = n - sum(counts.values()) - fixed
    return counts


def choose_locales(rng: random.Random, k: int) -> list[str | None]:
    """Each article's locale (None for English), in the shares of LANG_SHARE."""
    shares = {**LANG_SHARE, None: 1 - sum(LANG_SHARE.values())}
    keys = list(shares)
    return rng.choices(keys, weights=[shares[x] for x in keys], k=k)


def build_flat_docs(g: Generator, counts: dict[str, int]) -> tuple[list[Doc], list[list[Doc]], list[list[Doc]]]:
    """Articles, junk and injected duplicates for the JSONL and Parquet sources, plus the dup groups.

    Duplicates are made only of good English articles, so the dedup stages see all of them (the
    earlier language and quality stages keep their originals); near duplicates only of long ones
    (>= 200 words), where a few edits leave a 5-gram Jaccard MinHash LSH at 0.8 can find.
    """
    r = g.rng
    articles = [g.article(loc) for loc in choose_locales(r, counts["flat_articles"])]
    english = [d for d in articles if d.lang == "en"]
    long_en = [d for d in english if len(d.text.split()) >= 200]
    originals = iter(r.sample(long_en, len(long_en)))
    clusters: list[list[Doc]] = []
    left = counts["near_dups"]
    while left:
        size = min(left, r.randint(1, 3))
        original = next(originals)
        clusters.append([original] + [g.derived(original, "near_dup", near_duplicate(r, original.text))
                                      for _ in range(size)])
        left -= size
    clustered = {d.id for c in clusters for d in c}
    n_copies = counts["exact_dups"]
    bases = r.sample([d for d in english if d.id not in clustered], max(1, round(n_copies * 0.7)))
    groups = [[b] for b in bases]
    for i in range(n_copies):  # every base gets a copy, the rest go to random bases
        group = groups[i] if i < len(groups) else r.choice(groups)
        group.append(g.derived(group[0], "exact_dup", group[0].text))
    groups = [grp for grp in groups if len(grp) > 1]
    seen: set[str] = set()
    junk = [g.junk(kind, seen) for kind in ("boilerplate", "spam", "short") for _ in range(counts[kind])]
    docs = articles + [d for c in clusters for d in c[1:]] + [d for grp in groups for d in grp[1:]] + junk
    texts = [d.text for c in clusters for d in c]
    assert len(set(texts)) == len(texts), "a near duplicate came out identical to another copy"
    return docs, groups, clusters


def jsonl_record(doc: Doc) -> bytes:
    rec = {"id": doc.pid, "text": doc.text, "url": doc.url, "date": doc.date, "domain": doc.domain,
           "label": LABELS[doc.kind]}
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode()


def gzip_bytes(lines: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.writelines(lines)
    return buf.getvalue()


def forum_table(docs: list[Doc]) -> pa.Table:
    return pa.table({
        "post_id": pa.array([int(d.pid) for d in docs], pa.int64()),
        "body": [d.text for d in docs],
        "url": [d.url.replace(f"https://{d.domain}/", f"https://forum.{d.domain}/t/") for d in docs],
        "author": [d.author for d in docs],
        "label": [LABELS[d.kind] for d in docs],
    })


def html_page(doc: Doc, related: list[str]) -> bytes:
    """A news-site page: the article inside nav, cookie banner, sidebar and footer boilerplate."""
    e = html.escape
    site = doc.domain.split(".")[0].title()
    body = "\n".join(f"<p>{e(p)}</p>" for p in doc.text.split("\n\n")[1:])
    nav = "".join(f'<li><a href="/{s.lower()}">{s}</a></li>' for s in ("News", "World", "Business", "Culture", "Sport"))
    aside = "".join(f'<li><a href="/r/{i}">{e(t)}</a></li>' for i, t in enumerate(related))
    return f"""<!DOCTYPE html>
<html lang="{doc.lang}"><head><meta charset="utf-8"><title>{e(doc.title)} | {e(site)}</title>
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}</script>
<link rel="stylesheet" href="/static/site.css"></head>
<body><header><a class="logo" href="/">{e(site)}</a><nav><ul>{nav}</ul></nav>
<form action="/search"><input name="q" placeholder="Search"></form></header>
<div class="cookie-banner">We use cookies to improve your experience. <a href="/privacy">Privacy Policy</a>
<button>Accept</button></div>
<main><article><h1>{e(doc.title)}</h1>
<p class="byline">By {e(doc.author)} | <time datetime="{doc.date}">{doc.date}</time></p>
{body}
</article><aside><h2>Related stories</h2><ul>{aside}</ul></aside></main>
<footer><p>&copy; {doc.date[:4]} {e(site)}. All rights reserved.</p>
<a href="/terms">Terms of Use</a> | <a href="/privacy">Privacy Policy</a> | <a href="/contact">Contact</a></footer>
<noscript>Please enable JavaScript to view the comments.</noscript></body></html>
""".encode()


def warc_bytes(g: Generator, pages: list[Doc]) -> tuple[bytes, list[str]]:
    """Response records for the pages, one empty HTML response, one revisit; returns the bytes and record ids."""
    r = g.rng
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)  # after every article date

    def headers(i: int) -> dict:
        when = start + timedelta(seconds=37 * i)
        return {"WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=r.getrandbits(128), version=4)}>",
                "WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def response(uri: str, payload: bytes, i: int) -> StatusAndHeaders:
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                           ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
        record = writer.create_warc_record(uri, "response", payload=io.BytesIO(payload), http_headers=http,
                                           warc_headers_dict=headers(i))
        writer.write_record(record)
        return record.rec_headers

    written = [response(d.url, html_page(d, [p.title for p in r.sample(pages, 3)]), i) for i, d in enumerate(pages)]
    written.append(response(f"https://{r.choice(g.pools.domains['en'])}/empty", b"", len(pages)))
    first = written[0]  # recrawled unchanged: a revisit pointing at the first page's payload digest
    revisit = writer.create_revisit_record(
        pages[0].url, first.get_header("WARC-Payload-Digest"), pages[0].url, first.get_header("WARC-Date"),
        warc_headers_dict=headers(len(pages) + 1))
    writer.write_record(revisit)
    return out.getvalue(), [h.get_header("WARC-Record-ID") for h in [*written, revisit.rec_headers]]


def special_lines(g: Generator) -> tuple[Doc, dict[str, str], list[bytes]]:
    """The JSONL lines that test the reader: cp1252 bytes, an empty text, a truncated object, no text field."""
    bad_bytes = g.article(None)
    bad_bytes.kind, bad_bytes.pid = "bad_bytes", f"web-{bad_bytes.id}"
    empty, truncated, no_text = (f"web-{g.next_id()}" for _ in range(3))
    kinds = {empty: "empty", truncated: "malformed", no_text: "malformed"}
    return bad_bytes, kinds, [
        cp1252_line(bad_bytes),
        json.dumps({"id": empty, "text": "", "url": None, "label": LABELS["empty"]}).encode() + b"\n",
        f'{{"id": "{truncated}", "text": "The report on the new plan was'.encode() + b"\n",
        json.dumps({"id": no_text, "url": "https://example.org/x", "title": "No body",
                    "label": LABELS["malformed"]}).encode() + b"\n",
    ]


def generate_corpus(out_dir: Path, n_docs: int = 3000, seed: int = 0) -> CorpusInfo:
    """Write the demo corpus (`n_docs` records in all) under `out_dir`; the same seed gives the same bytes."""
    if n_docs < 100:
        raise ValueError(f"n_docs must be at least 100 (got {n_docs}) to hold every injected case")
    out_dir = Path(out_dir).resolve()
    g = Generator(seed)
    r = g.rng
    counts = plan_counts(n_docs)
    flat, exact_groups, clusters = build_flat_docs(g, counts)
    pages = [g.article(loc) for loc in choose_locales(r, counts["warc_pages"])]
    r.shuffle(flat)
    cut = round(len(flat) * 0.6)
    web, forum = flat[:cut], flat[cut:]
    for d in web:
        d.pid = f"web-{d.id}"
    for d in forum:
        d.pid = str(100000 + int(d.id))
    bad_bytes, special_kinds, specials = special_lines(g)
    half = len(web) // 2
    parts = [[jsonl_record(d) for d in web[:half]], [jsonl_record(d) for d in web[half:]]]
    for line in specials:
        parts[1].insert(r.randint(0, len(parts[1])), line)

    files = {"web0": out_dir / "web" / "part-0000.jsonl.gz", "web1": out_dir / "web" / "part-0001.jsonl.gz",
             "forum": out_dir / "forum" / "posts.parquet", "crawl": out_dir / "crawl" / "crawl.warc.gz"}
    atomic_write_bytes(files["web0"], gzip_bytes(parts[0]))
    atomic_write_bytes(files["web1"], gzip_bytes(parts[1]))
    buf = io.BytesIO()
    pq.write_table(forum_table(forum), buf, compression="zstd")
    atomic_write_bytes(files["forum"], buf.getvalue())
    warc, warc_ids = warc_bytes(g, pages)
    atomic_write_bytes(files["crawl"], warc)
    for d, record_id in zip(pages, warc_ids):
        d.pid = record_id

    prose = [*flat, *pages, bad_bytes]
    lang_counts = Counter(d.lang for d in prose if d.kind in ("article", "exact_dup", "near_dup", "bad_bytes"))
    inputs = [
        {"path": str(files["web0"]), "format": "jsonl", "source": "web", "text_field": "text", "id_field": "id"},
        {"path": str(files["web1"]), "format": "jsonl", "source": "web", "text_field": "text", "id_field": "id"},
        {"path": str(files["forum"]), "format": "parquet", "source": "forum", "text_field": "body",
         "id_field": "post_id"},
        {"path": str(files["crawl"]), "format": "warc", "source": "crawl", "text_field": "text", "id_field": None},
    ]
    info = CorpusInfo(
        root=out_dir, inputs=inputs,
        n_records=len(web) + len(specials) + len(forum) + len(warc_ids),
        n_articles=counts["flat_articles"] + len(pages) + 1,
        n_exact_dups=sum(len(grp) - 1 for grp in exact_groups), n_near_dups=sum(len(c) - 1 for c in clusters),
        n_boilerplate=counts["boilerplate"], n_spam=counts["spam"], n_short=counts["short"],
        n_malformed=2, n_bad_bytes=1, n_empty=2, n_warc_revisit=1, n_warc_pages=len(pages),
        source_counts={"web": len(web) + len(specials), "forum": len(forum), "crawl": len(warc_ids)},
        lang_counts=dict(sorted(lang_counts.items())),
        exact_dup_groups=[[d.pid for d in grp] for grp in exact_groups],
        near_dup_clusters=[[d.pid for d in c] for c in clusters],
        near_dup_jaccard={v.pid: round(word_ngram_jaccard(c[0].text, v.text), 4) for c in clusters for v in c[1:]},
        kinds={d.pid: d.kind for d in prose} | special_kinds | dict(zip(warc_ids[-2:], ("empty", "revisit"))),
        langs={d.pid: d.lang for d in prose},
    )
    atomic_write_json(out_dir / "truth.json", info.to_dict())
    return info


def labelled_documents(out_dir: Path, n_docs: int = 3000, seed: int = 0) -> list[dict]:
    """Generate the corpus under `out_dir` and return its JSONL and Parquet documents as
    {id, text, label, lang}, read back from the files (the WARC pages carry no label)."""
    info = generate_corpus(out_dir, n_docs, seed)
    docs = []
    for part in sorted((info.root / "web").glob("*.jsonl.gz")):
        for line in gzip.decompress(part.read_bytes()).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # the truncated and the cp1252 lines
                continue
            if rec.get("text"):
                docs.append({"id": rec["id"], "text": rec["text"], "label": rec["label"]})
    forum = pq.read_table(info.root / "forum" / "posts.parquet")
    docs += [{"id": str(i), "text": t, "label": lab} for i, t, lab in
             zip(forum["post_id"].to_pylist(), forum["body"].to_pylist(), forum["label"].to_pylist())]
    return [{**d, "lang": info.langs.get(d["id"], "en")} for d in docs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.democorpus", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--docs", type=int, default=3000, help="records in all (at least 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = generate_corpus(args.out_dir, args.docs, args.seed)
    print(json.dumps({k: v for k, v in info.to_dict().items()
                      if k.startswith("n_") or k in ("source_counts", "lang_counts")}, indent=2))


if __name__ == "__main__":
    main()
