"""Bytes to text: UTF-8 first, then a byte-order mark, then statistical detection.

UTF-8 is validated exactly and covers nearly all modern text; a BOM is unambiguous; only then do we
guess (charset-normalizer). Detection ties between single-byte Latin code pages are common on
English text (cp1250 and cp1252 decode it equally well), and the web's legacy default is cp1252
(WHATWG), so a tie goes to cp1252. What was done is recorded in the document's meta.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Callable

import charset_normalizer

BOMS = (  # UTF-32-LE's BOM starts with UTF-16-LE's, so the longer marks come first
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
LEGACY_DEFAULT = "cp1252"


class UndecodableError(ValueError):
    """Bytes that no encoding decodes plausibly."""


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str
    method: str  # "utf-8" | "bom" | "detected"

    @property
    def meta(self) -> dict:
        """What to record in a document's meta: nothing for plain UTF-8."""
        return {} if self.method == "utf-8" else {"encoding": self.encoding, "decoded": self.method}


def bom_encoding(head: bytes) -> str | None:
    """The UTF-16/32 encoding announced by a byte-order mark, if any."""
    return next((enc for bom, enc in BOMS if head.startswith(bom)), None)


def detect(raw: bytes) -> str | None:
    results = charset_normalizer.from_bytes(raw)
    best = results.best()
    if best is None:
        return None
    ties = [r for r in results if (r.chaos, r.coherence) == (best.chaos, best.coherence)]
    if any(LEGACY_DEFAULT in r.could_be_from_charset for r in ties):
        return LEGACY_DEFAULT
    return codecs.lookup(best.encoding).name


def decode(raw: bytes, fallback: str | None = None) -> Decoded:
    """Decode bytes, raising `UndecodableError` only when even detection finds nothing that fits.

    `fallback` is an encoding detected on a larger sample of the same file, tried before detecting
    on `raw` alone: detection on one short record is unreliable (b"caf\\xe9" comes out as cp1006).
    """
    try:
        return Decoded(raw.decode("utf-8-sig"), "utf-8", "utf-8")
    except UnicodeDecodeError:
        pass
    encoding = bom_encoding(raw)
    if encoding:
        try:
            return Decoded(raw.decode(encoding), encoding, "bom")
        except UnicodeDecodeError as err:
            raise UndecodableError(f"invalid {encoding} after its byte-order mark: {err}") from None
    if fallback:
        try:
            return Decoded(raw.decode(fallback), fallback, "detected")
        except UnicodeDecodeError:
            pass
    encoding = detect(raw)
    if encoding is None:
        raise UndecodableError("not UTF-8, no byte-order mark, and no encoding detected")
    try:
        return Decoded(raw.decode(encoding), encoding, "detected")
    except UnicodeDecodeError as err:
        raise UndecodableError(f"detected {encoding} does not decode: {err}") from None


class FileDecoder:
    """Decodes the records of one file, detecting the file's fallback encoding once, on first need."""

    def __init__(self, sample: Callable[[], bytes]):
        self._sample = sample
        self._fallback: str | None = None
        self._detected = False

    def __call__(self, raw: bytes) -> Decoded:
        try:
            return Decoded(raw.decode("utf-8-sig"), "utf-8", "utf-8")
        except UnicodeDecodeError:
            pass
        if not self._detected:
            self._fallback, self._detected = detect(self._sample()), True
        return decode(raw, self._fallback)


def lossy(raw: bytes, limit: int = 1_000_000) -> str:
    """Raw bytes as text for a rejected row: never fails, capped so one bad record cannot bloat the ledger."""
    return raw[:limit].decode("utf-8", errors="replace")
