"""How the MoE is spread over the Ray Train workers, kept apart from the model (as torchtitan does).

    parallelize(model, cfg, device) -> Parallel
      1. expert parallelism (`expert_parallel: N`): each rank of an expert group of N keeps E/N of every
         MoE layer's routed experts (a DTensor sharded on the expert dimension, so checkpoints know the
         whole tensor); tokens travel to their experts' ranks and back through `all_to_all_single`
         with per-rank counts, no token dropped, and the grouped GEMM runs on the local experts.
      2. data parallelism for everything else (attention, dense and shared FFNs, router, embeddings):
         DDP (replicated) or, with `fsdp: true`, FSDP2 `fully_shard` per block and once at the root,
         with bf16 parameters and compute, fp32 gradient reduction and fp32 master weights on CUDA.

The expert weights are never handled by DDP or FSDP: their gradients already sum every rank's tokens of
the expert group (the all_to_all's backward brings them home), so `Parallel.finish_grads` only adds the
other expert groups' copies (when N < workers) and divides by the world size, as DDP's mean does for the
rest. The loss each rank backpropagates is the mean over its own tokens, so every strategy optimises the
same global mean.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import TrainConfig
from stages.train.model import Block, ModelConfig, RoutedExperts, compute_dtype


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_layout(cfg: TrainConfig, model_cfg: ModelConfig) -> None:
    """Fail before any worker starts when the experts cannot be split evenly over an expert group."""
    if model_cfg.n_routed % cfg.expert_parallel:
        raise ValueError(f"train.expert_parallel={cfg.expert_parallel} must divide the {model_cfg.n_routed} routed "
                         f"experts of preset {cfg.preset!r}")


# ----------------------------------------------------------------------------------------------
# Expert parallelism


class _AllToAll(torch.autograd.Function):
    """`all_to_all_single` with uneven splits whose backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group: dist.ProcessGroup) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class ExpertParallelExperts(RoutedExperts):
    """`RoutedExperts` holding only this rank's E/N experts; same parameter names, so checkpoints move
    between strategies. Takes and returns rows exactly as the full module does (sorted by global expert)."""

    group: dist.ProcessGroup

    def forward(self, x: Tensor, counts: Tensor) -> Tensor:
        n = dist.get_world_size(self.group)
        x = x.to(compute_dtype(x))  # send bf16 on CUDA, not the fp32 residual stream
        # received[s, e]: rows rank s sends to local expert e. One small exchange, then the sizes
        # on the host (all_to_all_single needs them there).
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.group)
        received = received.view(n, -1)
        send, recv = counts.view(n, -1).sum(1).tolist(), received.sum(1).tolist()
        rows = _AllToAll.apply(x, recv, send, self.group)  # ordered by source rank, then local expert
        # Regroup by local expert for the grouped GEMM; the stable sort keeps source order inside an
        # expert, which is the row order a single rank holding the whole batch would have.
        local = received.shape[1]
        expert_of_row = torch.arange(local, device=x.device).repeat(n).repeat_interleave(received.flatten())
        order = expert_of_row.argsort(stable=True)
        weights = (w.to_local() for w in (self.w_gate, self.w_up, self.w_down))
        y = self.compute(rows[order], received.sum(0), *weights)
        return _AllToAll.apply(y[order.argsort()], send, recv, self.group)


def apply_expert_parallel(model: nn.Module, mesh: DeviceMesh) -> list[nn.Parameter]:
    """Keep this rank's slice of every MoE layer's experts; returns the expert parameters."""
    rank, n = mesh.get_local_rank(), mesh.size()
    params = []
    for experts in (m for m in model.modules() if isinstance(m, RoutedExperts)):
        for name, p in list(experts.named_parameters(recurse=False)):
            local = p.detach().chunk(n)[rank].clone()
            shard = nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)], run_check=False))
            setattr(experts, name, shard)
            params.append(shard)
        experts.__class__ = ExpertParallelExperts
        experts.group = mesh.get_group()
    return params


# ----------------------------------------------------------------------------------------------
# Data parallelism and the strategy object the trainer drives


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, device: torch.device, ignored: set[nn.Parameter]) -> None:
    """FSDP2 per transformer block, then the root (embeddings, final norm, head: tied weights stay
    together). Mixed precision on CUDA only: CPU runs stay fp32 so they compare with one worker."""
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    for block in (m for m in model.modules() if isinstance(m, Block)):
        fully_shard(block, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=ignored)


@dataclass
class Parallel:
    """One rank's view of the strategy: what to call forward on and how to finish a step's gradients."""

    model: nn.Module  # the module itself (FSDP-sharded in place), for state dicts and the optimizer
    forward: nn.Module  # what a training step calls: the model, compiled and/or wrapped in DDP
    kind: str  # "single", "ddp" or "fsdp"
    expert_params: list[nn.Parameter] = field(default_factory=list)  # this rank's slice, when EP is on
    expert_dp_group: dist.ProcessGroup | None = None  # ranks holding the same slice (None: only this one)
    expert_copies: int = 1  # how many ranks hold each slice: workers / expert_parallel

    def sync_grads(self, sync: bool):
        """A context in which backward leaves gradients local (accumulation) unless `sync`."""
        if self.kind == "ddp" and not sync:
            return self.forward.no_sync()
        if self.kind == "fsdp":
            self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    @torch.no_grad()
    def finish_grads(self) -> None:
        """Expert gradients: add the other expert groups' copies, then the DDP-style mean."""
        for p in self.expert_params:
            if p.grad is None:
                continue
            g = p.grad.to_local()
            if self.expert_dp_group is not None:
                dist.all_reduce(g, group=self.expert_dp_group)
            g.div_(world_size())

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """The global gradient norm, and every gradient scaled to at most `max_norm`.

        One sum of squares for every strategy (a sharded gradient counts each element once, an expert
        slice once per expert group), so that runs compare across strategies.
        """
        expert = {id(p) for p in self.expert_params}
        grads = [(p, p.grad) for p in self.model.parameters() if p.grad is not None]
        local = torch.zeros((), dtype=torch.float32, device=grads[0][1].device if grads else None)
        shared = torch.zeros_like(local)  # summed across ranks
        for p, g in grads:
            if id(p) in expert:
                shared += g.to_local().float().pow(2).sum() / self.expert_copies
            elif isinstance(g, DTensor):
                shared += g.to_local().float().pow(2).sum()
            else:
                local += g.float().pow(2).sum()
        if world_size() > 1:
            dist.all_reduce(shared)
        norm = float((local + shared).sqrt())
        scale = min(1.0, max_norm / (norm + 1e-6))
        if scale < 1.0:
            for _, g in grads:
                (g.to_local() if isinstance(g, DTensor) else g).mul_(scale)
        return norm


def parallelize(model: nn.Module, cfg: TrainConfig, device: torch.device, *,
                expert_dispatch: bool = False) -> Parallel:
    """Apply the configured strategy to a freshly built model (identical on every rank).

    `expert_dispatch` runs the expert-parallel path even with one rank per group (a benchmark of its
    permutation and all_to_all overhead on one device).
    """
    world = world_size()
    expert_params, expert_dp_group, copies = [], None, 1
    if cfg.expert_parallel > 1 or expert_dispatch:
        ep = cfg.expert_parallel
        if world % ep:
            raise ValueError(f"expert_parallel={ep} must divide the {world} workers")
        mesh = init_device_mesh(device.type, (world // ep, ep), mesh_dim_names=("edp", "ep"))
        expert_params = apply_expert_parallel(model, mesh["ep"])
        copies = world // ep
        expert_dp_group = mesh["edp"].get_group() if copies > 1 else None

    kind = "single"
    if cfg.fsdp and dist.is_initialized():  # one rank too: its mixed precision is worth measuring
        apply_fsdp(model, init_device_mesh(device.type, (world,)), device, ignored=set(expert_params))
        kind = "fsdp"
    forward = torch.compile(model) if cfg.compile else model
    if world > 1 and kind != "fsdp":
        if expert_params:  # sharded, not replicated: DDP must leave them alone
            ids = {id(p) for p in expert_params}
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                forward, [n for n, p in forward.named_parameters() if id(p) in ids])
        # Buffers are not broadcast: expert biases move identically on every rank (global loads),
        # and each rank's load counters must stay its own until they are summed.
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)
        kind = "ddp"
    return Parallel(model, forward, kind, expert_params, expert_dp_group, copies)
