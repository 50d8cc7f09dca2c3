"""HTML to main text. Default: trafilatura's standard settings (neither favor_precision nor favor_recall)
without comments: favor_precision wins by 0.006 F1 on the one public set here and loses by 0.021 on a
second one, so no variant wins on more than one set (README, benchmarks/extraction_bench.py).
resiliparse is about 3x faster with clearly lower precision; it is used when
`ingest.html_extractor: resiliparse` and installed (the `bench` extra).
"""
from __future__ import annotations

import logging
from typing import Callable

from pipeline.readers.base import InputError

Extractor = Callable[[bytes, "str | None"], "str | None"]


def trafilatura_text(html: bytes, url: str | None = None, favor_precision: bool = False,
                     favor_recall: bool = False) -> str | None:
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)  # it warns on every odd page
    # deduplicate=False: trafilatura's duplicate filter is a process-wide cache, so output would
    # depend on which pages a worker saw before.
    return trafilatura.extract(html, url=url, include_comments=False, deduplicate=False,
                               favor_precision=favor_precision, favor_recall=favor_recall)


def resiliparse_text(html: bytes, url: str | None = None) -> str | None:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import detect_encoding
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse_from_bytes(html, detect_encoding(html))
    return extract_plain_text(tree, main_content=True)


EXTRACTORS: dict[str, tuple[Extractor, str]] = {
    "trafilatura": (trafilatura_text, "trafilatura"),
    "resiliparse": (resiliparse_text, "resiliparse.extract"),
}


def get_extractor(name: str) -> Extractor:
    """The named extractor, checked importable (call on the driver to fail before any Ray work)."""
    if name not in EXTRACTORS:
        raise InputError(f"unknown HTML extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    fn, module = EXTRACTORS[name]
    try:
        __import__(module)
    except ImportError as err:
        raise InputError(f"HTML extractor {name!r} is not installed ({err}); pip install 'sluice[bench]'") from None
    return fn
