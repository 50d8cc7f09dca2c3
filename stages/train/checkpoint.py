"""Sharded training checkpoints with torch distributed checkpoint (DCP).

A checkpoint folder holds:
    .metadata, __R_0.distcp   DCP: model and optimizer tensors, each rank writing only its own shards
                              (FSDP shards, expert slices; a replicated tensor is written once)
    trainer.json              rank 0: step, scheduler, optimizer hyper-parameters, loader position
    rank-R.pt                 each rank: its RNG states (tensors and ints, read with weights_only=True)

DCP records every tensor's global shape, so a checkpoint written by N workers under one strategy loads
into M workers under another: each rank reads the pieces its own shards need. Only tensors go through
DCP, because DCP reads non-tensor values back with an unrestricted unpickler; everything else is JSON.
(DCP's `.metadata` index is itself a pickle of DCP's own classes: a checkpoint is trusted as the run's
own output, like any file under the run directory.)

Ray Train gathers each worker's folder into one checkpoint; the file names never collide.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from pipeline.rundir import atomic_write_json

if TYPE_CHECKING:
    from stages.train.loop import Trainer

TRAINER_STATE = "trainer.json"


def save_torch(obj, path: Path) -> None:
    """torch.save through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(trainer: Trainer) -> tuple[dict, list]:
    """The DCP-managed part (model and optimizer tensors) and the optimizer's param groups."""
    model, optim = get_state_dict(trainer.model, trainer.optimizer)
    return {"model": model, "optimizer": optim["state"]}, optim["param_groups"]


def save(directory: Path, trainer: Trainer, loader_state: dict, rank: int) -> None:
    """Every rank calls this (DCP is collective) with its own local folder."""
    directory = Path(directory)
    tensors, param_groups = _tensors(trainer)
    dcp.save(tensors, checkpoint_id=directory)
    if rank == 0:
        atomic_write_json(directory / TRAINER_STATE, {
            "step": trainer.step, "resumed_from": trainer.resumed_from, "world_size": trainer.world,
            "scheduler": trainer.scheduler.state_dict(), "param_groups": param_groups, "loader": loader_state})
    save_torch(rng_state(), directory / f"rank-{rank}.pt")


def load(directory: Path, trainer: Trainer, rank: int) -> dict:
    """Restore the trainer in place from a checkpoint written by any worker count and strategy; return
    the saved loader state. RNG states come back only when the worker count is unchanged (training
    itself draws no random numbers; they matter to anything added that does)."""
    directory = Path(directory)
    if not (directory / TRAINER_STATE).is_file():
        raise ValueError(f"{directory} is not a sharded Sluice checkpoint (no {TRAINER_STATE}); checkpoints "
                         "written before DCP (trainer.pt) cannot be resumed: start a new train.run_name")
    meta = json.loads((directory / TRAINER_STATE).read_text())
    tensors, _ = _tensors(trainer)  # the layout this run wants; DCP fills it from whatever was saved
    dcp.load(tensors, checkpoint_id=directory)
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=tensors["model"],
                   optim_state_dict={"state": tensors["optimizer"], "param_groups": meta["param_groups"]})
    trainer.scheduler.load_state_dict(meta["scheduler"])
    trainer.step = meta["step"]
    trainer.resumed_from = [*meta["resumed_from"], trainer.step]
    rng = directory / f"rank-{rank}.pt"
    if meta["world_size"] == trainer.world and rng.is_file():
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    return meta["loader"]


def full_model_state(trainer: Trainer) -> dict:
    """The whole model as a plain state dict on rank 0 (empty elsewhere); every rank must call it."""
    return get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
