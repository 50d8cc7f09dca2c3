"""The training data loader: memory-mapped token shards cut into (x, y) windows, resumable to the batch.

All shards of a manifest form one token stream (documents already end in EOD). Sample i is the window
stream[lo + i*seq_len : lo + i*seq_len + seq_len + 1], so consecutive samples share one token and every
token is a target once. Sample order is a pure function of (seed, epoch, index). Global batch `step` of
an epoch is order[step*W*B : (step+1)*W*B] and rank r takes its r-th slice of B, so every rank gets
the same number of batches and together they see each sample of the epoch once (the remainder that
does not fill a global batch is left out, a different one each epoch).

Validation holds out the tail of the stream (`val_fraction`): train and val never share a window.

The stream covers every shard of every manifest version. Appended shards come after the earlier
ones, so a new version changes the sample count and order: a saved state resumes only on the version
it was saved on (see `ShardLoader.load_state_dict` for continuing on a grown folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from pipeline.manifest import read_manifest
from pipeline.shardfile import Verify, open_shard, token_view


class NewShardVersion(ValueError):
    """A loader state saved on an earlier manifest version of the same shard folder."""


class TokenStream:
    """Every shard of a manifest as one logical token sequence, without copying (memory-mapped)."""

    def __init__(self, shard_dir: str | Path, verify: Verify = "size"):
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(self.shard_dir)
        self.pieces = [token_view(batch)[0] for entry in self.manifest.shards
                       for batch in open_shard(self.shard_dir, entry, verify)]
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.pieces], dtype=np.int64)])
        self.total = int(self.starts[-1])

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Windows [start, start + length) as one int64 array, copied slice by slice from the mapping."""
        out = np.empty((len(starts), length), np.int64)
        piece_of = np.searchsorted(self.starts, starts, side="right") - 1
        offsets = starts - self.starts[piece_of]
        for row, (p, offset) in enumerate(zip(piece_of.tolist(), offsets.tolist())):
            window = self.pieces[p][offset:offset + length]
            out[row] = window if len(window) == length else self.read(int(starts[row]), length)
        return out

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length): a view inside one shard, a copy across a boundary."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        offset = start - int(self.starts[i])
        piece = self.pieces[i]
        if offset + length <= len(piece):
            return piece[offset:offset + length]
        parts, need = [piece[offset:]], length - (len(piece) - offset)
        while need > 0:
            i += 1
            parts.append(self.pieces[i][:need])
            need -= len(parts[-1])
        return np.concatenate(parts)


class ShardLoader:
    """(x, y) batches of shape [batch_size, seq_len] for one data-parallel rank, over a token range."""

    def __init__(self, stream: TokenStream, seq_len: int, batch_size: int, *,
                 token_range: tuple[int, int] | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, as_torch: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.lo, self.hi = token_range or (0, stream.total)
        self.rank, self.world_size, self.seed, self.shuffle, self.as_torch = rank, world_size, seed, shuffle, as_torch
        self.num_samples = max(0, (self.hi - self.lo - 1) // seq_len)
        self.batches_per_epoch = self.num_samples // (batch_size * world_size)
        self.epoch, self.step = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order: the same on every rank, for every run with this seed."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def sample(self, index: int) -> np.ndarray:
        return self.stream.read(self.lo + index * self.seq_len, self.seq_len + 1)

    def batch_indices(self, order: np.ndarray, step: int) -> np.ndarray:
        first = (step * self.world_size + self.rank) * self.batch_size
        return order[first:first + self.batch_size]

    def make_batch(self, indices: np.ndarray):
        starts = self.lo + indices.astype(np.int64) * self.seq_len
        windows = self.stream.gather(starts, self.seq_len + 1)
        x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
        return (torch.from_numpy(x), torch.from_numpy(y)) if self.as_torch else (x, y)

    def epoch_batches(self, epoch: int = 0) -> Iterator:
        """One pass over an epoch without touching the resume state (evaluation)."""
        order = self.order(epoch)
        for step in range(self.batches_per_epoch):
            yield self.make_batch(self.batch_indices(order, step))

    def __iter__(self) -> Iterator:
        """Batches forever, epoch after epoch, from the resume state; the state moves as batches go out."""
        if not self.batches_per_epoch:
            raise ValueError(f"{self.num_samples} samples make no batch of {self.batch_size} x {self.world_size} ranks")
        while True:
            order = self.order(self.epoch)
            while self.step < self.batches_per_epoch:
                indices = self.batch_indices(order, self.step)
                self.step += 1
                yield self.make_batch(indices)
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Where the next batch comes from; rank-independent, so rank 0's state resumes every rank, and
        any world size with the same global batch."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "num_samples": self.num_samples,
                "fingerprint": self.stream.manifest.fingerprint, "version": self.stream.manifest.version}

    def load_state_dict(self, state: dict, on_new_version: Literal["error", "next_epoch"] = "error") -> None:
        """Resume exactly where `state` left off, on the same shards.

        A state saved on an earlier manifest version of this folder cannot resume mid-epoch: the epoch's
        sample order is a permutation of the old sample count. By default that raises `NewShardVersion`;
        with `on_new_version="next_epoch"` the loader starts the epoch after the saved one, over all
        shards, so training continues from a checkpoint on the grown data.
        """
        mine = self.state_dict()
        for key in ("seed", "seq_len"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state does not match this loader: {key} {state[key]!r} != {mine[key]!r}")
        # Steps count global batches, so another split of the same global batch resumes at the same step.
        if state["batch_size"] * state["world_size"] != self.batch_size * self.world_size:
            raise ValueError(f"loader state does not match this loader: global batch (batch_size x world_size) "
                             f"{state['batch_size']} x {state['world_size']} != {self.batch_size} x {self.world_size}")
        if state["fingerprint"] != mine["fingerprint"]:
            if not self.stream.manifest.has_ancestor(state.get("version"), state["fingerprint"]):
                raise ValueError(f"loader state belongs to other shards: manifest fingerprint {state['fingerprint']} "
                                 f"is not a version of {self.stream.shard_dir}")
            if on_new_version == "error":
                raise NewShardVersion(
                    f"loader state was saved on version {state['version']} of {self.stream.shard_dir}, which is now "
                    f"version {mine['version']}: it cannot resume mid-epoch on the grown data. Start a new run, or "
                    "load it with on_new_version='next_epoch' to continue with a fresh epoch over all shards")
            self.epoch, self.step = int(state["epoch"]) + 1, 0
            return
        if state["num_samples"] != mine["num_samples"]:
            raise ValueError(f"loader state does not match this loader: num_samples {state['num_samples']} != "
                             f"{mine['num_samples']} (another val_fraction or token range)")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def open_loaders(shard_dir: str | Path, seq_len: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, val_fraction: float = 0.05, verify: Verify = "size",
                 as_torch: bool = True) -> tuple[ShardLoader, ShardLoader]:
    """Train and validation loaders over one shard folder: val is the stream's last `val_fraction` tokens."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    stream = TokenStream(shard_dir, verify)
    cut = stream.total - int(stream.total * val_fraction)
    common = dict(rank=rank, world_size=world_size, seed=seed, as_torch=as_torch)
    train = ShardLoader(stream, seq_len, batch_size, token_range=(0, cut), shuffle=True, **common)
    val = ShardLoader(stream, seq_len, batch_size, token_range=(cut, stream.total), shuffle=False, **common)
    if not train.batches_per_epoch:
        raise ValueError(f"{shard_dir}: {train.num_samples} training windows of {seq_len + 1} tokens fill no batch "
                         f"of {batch_size} x {world_size} ranks; lower seq_len or batch_size, or add data")
    return train, val
