"""How much device memory each parallel strategy needs per device, computed from a model config.

    python -m stages.train.sizing [--seq-len 2048] [--micro-batch 8]    # the table in the README

An estimate for planning, not a measurement. Its assumptions:
- training state, 16 bytes per parameter a device holds: fp32 master weights (4), fp32 gradients (4),
  AdamW's two fp32 moments (8). DDP adds its fp32 gradient buckets (4 more per replicated parameter);
- FSDP2 shards that state over the workers and gathers one block at a time in bf16, with the next
  block prefetched: 2 blocks of bf16 weights and 1 of fp32 gradients are whole at once;
- expert parallelism keeps n_routed / N routed experts per device (replicated per expert group when N is
  below the worker count; here N = the devices); everything else follows DDP or FSDP;
- activations kept for backward, in bf16 without activation checkpointing, per token and layer:
  attention ~7 d (norm in/out, q, k, v, attention out, RoPE'd q/k share storage with q/k) and the
  SDPA log-sum-exp; a dense FFN 2 d + 3 d_ff; an MoE layer 2 d + fp32 router scores + shared experts
  3 d_shared + per chosen expert (top_k, balanced load) 2 d + 3 d_expert; then the LM head's bf16
  logits and their fp32 copy for the loss (6 bytes x vocab). Activations do not shrink with FSDP or
  EP (each device still holds its own micro-batch); they shrink with a smaller micro-batch (grad_accum);
- no allocator fragmentation, CUDA context (~0.5 GiB) or communication buffers.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from stages.train.model import PRESETS, ModelConfig, count_params

GIB = 2**30
H200_GIB = 141e9 / GIB  # 141 GB of HBM3e
STRATEGIES = ("ddp", "fsdp", "ep", "fsdp+ep")


@dataclass(frozen=True)
class Memory:
    state_gib: float  # weights, gradients and optimizer moments held by one device
    transient_gib: float  # FSDP's gathered blocks, DDP's buckets
    activation_gib: float
    total_gib: float


def expert_params(cfg: ModelConfig) -> int:
    """Routed-expert parameters: the part expert parallelism splits."""
    return cfg.n_moe_layers * cfg.n_routed * 3 * cfg.d_model * cfg.d_expert


def block_params(cfg: ModelConfig) -> int:
    """The largest transformer block: what FSDP gathers at once (routed experts left to EP or not)."""
    d = cfg.d_model
    attn = 4 * d * d + 2 * d
    moe = cfg.n_routed * d + (cfg.n_shared + cfg.n_routed) * 3 * d * cfg.d_expert
    return attn + max(3 * d * cfg.d_ff if cfg.n_dense_layers else 0, moe if cfg.n_moe_layers else 0)


def activation_bytes_per_token(cfg: ModelConfig) -> float:
    d = cfg.d_model
    attn = 7 * d + 2 * cfg.n_heads  # values, plus the fp32 log-sum-exp per head
    dense = 2 * d + 3 * cfg.d_ff
    moe = 2 * d + 2 * cfg.n_routed + 3 * cfg.n_shared * cfg.d_expert + cfg.top_k * (2 * d + 3 * cfg.d_expert)
    values = cfg.n_layers * attn + cfg.n_dense_layers * dense + cfg.n_moe_layers * moe + d
    return 2 * values + 6 * cfg.vocab_size


def memory_per_device(cfg: ModelConfig, strategy: str, devices: int, seq_len: int, micro_batch: int) -> Memory:
    """The memory one of `devices` devices needs to train `cfg` under `strategy` (see the module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    total, experts = count_params(cfg)["total"], expert_params(cfg)
    expert_parallel = strategy.endswith("ep")
    if expert_parallel and cfg.n_routed % devices:
        raise ValueError(f"{devices} devices do not divide {cfg.n_routed} routed experts")
    held_experts = experts / devices if expert_parallel else experts
    rest = total - experts  # attention, dense and shared FFNs, routers, embeddings: DDP or FSDP
    if strategy.startswith("fsdp"):
        state = 16 * (rest + (0 if expert_parallel else experts)) / devices + (16 * held_experts if expert_parallel else 0)
        # EP's experts are never gathered: FSDP leaves them out of its blocks.
        gathered = block_params(cfg) - (experts // max(1, cfg.n_moe_layers) if expert_parallel else 0)
        transient = (2 * 2 + 4) * gathered if devices > 1 else 0.0
    else:
        state = 16 * (rest + held_experts)
        transient = 4 * (rest + held_experts) if devices > 1 else 0.0
    activations = activation_bytes_per_token(cfg) * seq_len * micro_batch
    return Memory(state / GIB, transient / GIB, activations / GIB, (state + transient + activations) / GIB)


def table(seq_len: int = 2048, micro_batch: int = 8, vocab_size: int = 32_000) -> str:
    """A markdown table: every preset, on 1 H200 and on 8 (each strategy), with whether it fits."""
    lines = [(f"Per device, seq_len {seq_len}, micro-batch {micro_batch} sequences, vocabulary {vocab_size:,}; "
              f"an H200 has {H200_GIB:.0f} GiB."), "",
             ("| preset | params total / active | devices | strategy | state GiB | transient GiB | activations GiB "
              "| total GiB | fits |"), "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for name, base in PRESETS.items():
        cfg = replace(base, vocab_size=vocab_size, max_seq_len=seq_len)
        params = count_params(cfg)
        size = f"{params['total'] / 1e6:,.1f}M / {params['active'] / 1e6:,.1f}M"
        for devices, strategies in ((1, ("ddp",)), (8, STRATEGIES)):
            for strategy in strategies:
                m = memory_per_device(cfg, strategy, devices, seq_len, micro_batch)
                label = "one device" if devices == 1 else strategy
                lines.append(f"| {name} | {size} | {devices} | {label} | {m.state_gib:.2f} | {m.transient_gib:.2f} | "
                             f"{m.activation_gib:.2f} | {m.total_gib:.2f} | {'yes' if m.total_gib < H200_GIB else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args()
    print(table(args.seq_len, args.micro_batch))


if __name__ == "__main__":
    main()
