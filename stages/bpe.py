"""Byte-level BPE training, in a child process fed the sample through a pipe.

Why a child process: the trainer's word and pair counts (~200 MB at 12,000 documents, ~350 MB at
the default 20,000-document sample) would otherwise land on the driver, the one process that lives
through the whole run, and set its peak. In a child they leave with it, and the child imports only
`tokenizers`, not Ray. The child trains on every core, as the driver would, and writes the
tokenizer file itself, so its bytes are those `Tokenizer.save` writes in one process.

Run as `python -m stages.bpe VOCAB_SIZE OUT [SPECIAL ...]` with the texts on stdin, each an 8-byte
little-endian length and that many bytes of UTF-8.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

LENGTH_BYTES = 8


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE (GPT-2 style), trained in this process: every string is encodable and
    decodes back exactly."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_bpe_apart(texts: Iterable[str], vocab_size: int, special_tokens: list[str], out: Path) -> Tokenizer:
    """`train_bpe` in a child process, which writes the tokenizer to `out`; the texts stream to it."""
    cmd = [sys.executable, "-m", __name__, str(vocab_size), str(out), *special_tokens]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        try:
            for text in texts:
                data = text.encode()
                child.stdin.write(len(data).to_bytes(LENGTH_BYTES, "little"))
                child.stdin.write(data)
            child.stdin.close()
        except BrokenPipeError:  # the child died: its exit status and stderr say why, below
            pass
        errors = child.stderr.read().decode(errors="replace")
    if child.returncode:
        raise RuntimeError(f"BPE training in a child process ({' '.join(cmd)}) exited with "
                           f"{child.returncode}:\n{errors.strip()}")
    return Tokenizer.from_file(str(out))


def read_texts(stream: BinaryIO) -> Iterator[str]:
    """The texts `train_bpe_apart` writes, until the stream ends."""
    while header := stream.read(LENGTH_BYTES):
        yield stream.read(int.from_bytes(header, "little")).decode()


if __name__ == "__main__":
    vocab, target, *specials = sys.argv[1:]
    train_bpe(read_texts(sys.stdin.buffer), int(vocab), specials).save(target)
