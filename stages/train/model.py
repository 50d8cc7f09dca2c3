"""A DeepSeek-style Mixture-of-Experts decoder, readable top to bottom.

    tokens -> embedding -> n_layers x [RMSNorm -> causal attention (RoPE, SDPA) -> residual,
                                       RMSNorm -> FFN -> residual] -> RMSNorm -> LM head

The first `n_dense_layers` use a dense SwiGLU FFN; every later layer uses a DeepSeekMoE block:
`n_shared` shared experts that every token passes through, plus `n_routed` fine-grained routed
experts of which each token picks `top_k`. Routing follows DeepSeek-V3: fp32 scores (softmax or
sigmoid, sigmoid weights renormalised), an auxiliary-loss-free balancing bias that steers only
*which* experts are picked (never their weights), and an optional small sequence-wise balance loss.
No token is ever dropped. Routed expert weights are stacked `[n_experts, d_in, d_out]`, tokens are
sorted by expert and run through one grouped GEMM (`grouped_mm`) where the device and dtype allow,
with a plain per-expert loop as the reference and the fallback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

ScoreFunc = Literal["softmax", "sigmoid"]
ExpertImpl = Literal["auto", "grouped", "loop"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 32_000
    max_seq_len: int = 1024
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_dense_layers: int = 1
    d_ff: int = 512  # hidden size of the dense FFN layers
    d_expert: int = 128  # hidden size of one fine-grained expert
    n_shared: int = 1
    n_routed: int = 8
    top_k: int = 2
    score_func: ScoreFunc = "softmax"
    route_scale: float = 1.0
    balance_bias: bool = True  # aux-loss-free balancing on/off (the bias is still there, frozen at 0 when off)
    seq_aux_loss_weight: float = 1e-4  # 0 turns the sequence-wise balance loss off
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    expert_impl: ExpertImpl = "auto"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size (RoPE rotates pairs)")
        if not 0 < self.top_k <= self.n_routed:
            raise ValueError(f"top_k={self.top_k} must be in 1..n_routed={self.n_routed}")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ValueError("n_dense_layers must be in 0..n_layers")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers


PRESETS: dict[str, ModelConfig] = {
    # CPU tests: a few million parameters, most of them in the embedding.
    "tiny": ModelConfig(n_layers=3, d_model=128, n_heads=4, n_dense_layers=1, d_ff=512, d_expert=128,
                        n_shared=1, n_routed=8, top_k=2),
    # ~100M total at a 32k vocabulary, ~40M active.
    "small": ModelConfig(n_layers=8, d_model=512, n_heads=8, n_dense_layers=1, d_ff=2048, d_expert=256,
                         n_shared=1, n_routed=24, top_k=4),
    # About DeepSeekMoE-2B: 9 layers, d_model 1280, 10 heads of 128, 1 shared + 64 routed experts of a
    # quarter FFN each, top-7; ~1.9B total and ~0.3B active at a 32k vocabulary. (DeepSeekMoE-2B has 63
    # routed experts; 64 splits evenly over 2, 4 or 8 expert-parallel ranks.)
    "base": ModelConfig(n_layers=9, d_model=1280, n_heads=10, n_dense_layers=1, d_ff=5120, d_expert=896,
                        n_shared=1, n_routed=64, top_k=7),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset with some fields replaced (vocab size, sequence length, routing options...)."""
    return replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the autocast dtype: the variance of bf16 activations is lossy.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).type_as(x)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # [T, head_dim], the rotate-half layout
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate query/key pairs (x[..., i], x[..., i + d/2]) by position-dependent angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """The dense FFN, and the shared experts (n_shared experts fused into one wider SwiGLU)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# ----------------------------------------------------------------------------------------------
# Mixture of experts


class Routing(NamedTuple):
    weights: Tensor  # [N, top_k] fp32, the gate values that scale each chosen expert's output
    experts: Tensor  # [N, top_k] int64, the chosen experts
    aux_loss: Tensor  # scalar, the weighted sequence-wise balance loss (0 when off or in eval)


def expert_counts(experts: Tensor, n_experts: int) -> Tensor:
    """Rows routed to each expert. A scatter, not `bincount`, which syncs with the host on CUDA."""
    flat = experts.flatten()
    return torch.zeros(n_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


class Router(nn.Module):
    """The DeepSeek-V3 gate: fp32 scores, a selection-only balancing bias, optional seq-wise loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed, cfg.d_model))
        # Aux-loss-free balancing state: fp32 buffers, not parameters; the optimizer never sees them.
        self.register_buffer("expert_bias", torch.zeros(cfg.n_routed, dtype=torch.float32))
        # Tokens routed to each expert since the last bias update (counted on this rank only).
        self.register_buffer("load", torch.zeros(cfg.n_routed, dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Routing:
        cfg = self.cfg
        b, t, _ = x.shape
        with torch.autocast(x.device.type, enabled=False):  # autocast would run this linear in bf16
            logits = F.linear(x.float(), self.weight.float())  # [B, T, E]
        scores = logits.softmax(-1) if cfg.score_func == "softmax" else logits.sigmoid()
        experts = (scores + self.expert_bias).topk(cfg.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
        if cfg.score_func == "sigmoid":
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * cfg.route_scale
        experts = experts.view(b * t, cfg.top_k)

        aux = scores.new_zeros(())
        if self.training:
            with torch.no_grad():
                self.load += expert_counts(experts, cfg.n_routed)
            if cfg.seq_aux_loss_weight > 0:
                aux = cfg.seq_aux_loss_weight * self.sequence_balance_loss(scores, experts.view(b, t, -1))
        return Routing(weights.view(b * t, cfg.top_k), experts, aux)

    def sequence_balance_loss(self, scores: Tensor, experts: Tensor) -> Tensor:
        """DeepSeek-V3's sequence-wise loss: sum_i f_i * P_i per sequence, averaged over the batch."""
        cfg = self.cfg
        b, t, e = scores.shape
        picked = torch.zeros(b, e, device=scores.device).scatter_add_(
            1, experts.reshape(b, -1), torch.ones(b, t * cfg.top_k, device=scores.device))
        frac = picked * (e / (cfg.top_k * t))  # f_i: 1.0 everywhere when perfectly balanced
        prob = (scores / scores.sum(-1, keepdim=True)).mean(1)  # P_i
        return (frac * prob).sum(-1).mean()


_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, *dims: int) -> bool:
    """Whether `grouped_mm` runs here: bf16 on CUDA sm80+, fp32/bf16 on CPU; rows 16-byte aligned.

    Under torch.compile only bf16 is accepted (its shape function rejects fp32, even on CPU).
    """
    if _grouped_mm is None or (torch.compiler.is_compiling() and dtype != torch.bfloat16):
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    if any((d * itemsize) % 16 for d in dims):
        return False
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)


class RoutedExperts(nn.Module):
    """`n_routed` SwiGLU experts with stacked weights, applied to tokens already sorted by expert."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, d, h = cfg.n_routed, cfg.d_model, cfg.d_expert
        self.impl = cfg.expert_impl
        self.w_gate = nn.Parameter(torch.empty(e, d, h))
        self.w_up = nn.Parameter(torch.empty(e, d, h))
        self.w_down = nn.Parameter(torch.empty(e, h, d))

    def forward(self, x: Tensor, counts: Tensor) -> Tensor:
        """x: [M, d] rows grouped by expert, `counts[e]` rows for expert e, in expert order."""
        return self.compute(x, counts, self.w_gate, self.w_up, self.w_down)

    def compute(self, x: Tensor, counts: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
        """The experts whose stacked weights are given, on their rows. Apart from `forward` so that
        expert parallelism (stages/train/parallel.py) can run it on a rank's own slice of experts."""
        dtype = compute_dtype(x)
        impl = self.impl
        if impl == "auto":
            impl = "grouped" if grouped_mm_supported(x.device, dtype, w_gate.shape[1], w_gate.shape[2]) else "loop"
        fn = self.grouped if impl == "grouped" else self.loop
        return fn(x.to(dtype), counts, w_gate.to(dtype), w_up.to(dtype), w_down.to(dtype))

    @staticmethod
    def grouped(x: Tensor, counts: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
        """One grouped GEMM per projection, no host sync: the offsets stay on the device."""
        offs = counts.cumsum(0).to(torch.int32)
        h = F.silu(_grouped_mm(x, w_gate, offs=offs)) * _grouped_mm(x, w_up, offs=offs)
        return _grouped_mm(h, w_down, offs=offs)

    @staticmethod
    def loop(x: Tensor, counts: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
        """The reference: one plain matmul chain per expert."""
        outs = [F.silu(xe @ w_gate[e]) * (xe @ w_up[e]) @ w_down[e]
                for e, xe in enumerate(x.split(counts.tolist()))]
        return torch.cat(outs)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.router = Router(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared = SwiGLU(cfg.d_model, cfg.n_shared * cfg.d_expert) if cfg.n_shared else None
        self.n_routed = cfg.n_routed

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = x.shape
        route = self.router(x)
        flat = x.reshape(b * t, d)
        # Sort the (token, choice) pairs by expert so that each expert's rows are contiguous.
        chosen = route.experts.flatten()
        order = chosen.argsort(stable=True)
        token = order // route.experts.shape[1]
        counts = expert_counts(chosen, self.n_routed)
        y = self.experts(flat[token], counts)
        y = y.float() * route.weights.flatten()[order].unsqueeze(-1)
        out = torch.zeros(b * t, d, device=x.device, dtype=torch.float32).index_add_(0, token, y)
        out = out.to(x.dtype).view(b, t, d)
        if self.shared is not None:
            out = out + self.shared(x)
        return out, route.aux_loss


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.is_moe = moe
        self.ffn = MoE(cfg) if moe else SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and this layer's balance loss (0 for a dense layer)."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if self.is_moe:
            h, aux = self.ffn(self.ffn_norm(x))
        else:
            h, aux = self.ffn(self.ffn_norm(x)), x.new_zeros((), dtype=torch.float32)
        return x + h, aux


class Output(NamedTuple):
    logits: Tensor
    loss: Tensor | None  # what to backpropagate: cross-entropy plus the balance loss
    lm_loss: Tensor | None  # cross-entropy alone, the number to compare between runs


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, moe=i >= cfg.n_dense_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, std) everywhere; residual output projections scaled down by depth (GPT-2)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("out.weight", "down.weight", "w_down")):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layers))
            else:
                p.normal_(0.0, std)
        for router in self.routers():
            router.expert_bias.zero_()
            router.load.zero_()

    def routers(self) -> list[Router]:
        return [m for m in self.modules() if isinstance(m, Router)]

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Output:
        t = idx.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(idx)
        aux = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, layer_aux = layer(x, cos, sin)
            aux = aux + layer_aux
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return Output(logits, None, None)
        lm_loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return Output(logits, lm_loss + aux, lm_loss)


# ----------------------------------------------------------------------------------------------
# Balancing and accounting


@torch.no_grad()
def update_expert_bias(model: nn.Module, gamma: float) -> Tensor:
    """After an optimizer step: move each router's bias by gamma * sign(mean_load - load).

    Loads are summed across data-parallel ranks first, so every rank applies the same update and
    the biases stay identical without being broadcast. Returns the global loads, [n_moe_layers,
    n_routed], for metrics, and resets the counters. A gamma of 0 only measures.
    """
    routers = [m for m in model.modules() if isinstance(m, Router)]
    if not routers:
        return torch.empty(0, 0)
    loads = torch.stack([r.load for r in routers])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loads)
    for router, load in zip(routers, loads):
        if gamma > 0 and router.cfg.balance_bias:
            router.expert_bias += gamma * torch.sign(load.mean() - load)
        router.load.zero_()
    return loads.cpu()


def load_stats(loads: Tensor) -> dict[str, list[float]]:
    """Per MoE layer: max/mean load (1.0 is perfect balance) and the coefficient of variation."""
    mean = loads.mean(-1).clamp_min(1e-9)
    return {"load_max_over_mean": (loads.max(-1).values / mean).tolist(),
            "load_cv": (loads.std(-1, correction=0) / mean).tolist()}


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Total and active (per token) parameter counts, without building the model."""
    d, v = cfg.d_model, cfg.vocab_size
    attn = 4 * d * d + 2 * d  # qkv + out, two norms
    dense_ffn = 3 * d * cfg.d_ff
    expert = 3 * d * cfg.d_expert
    router = cfg.n_routed * d
    moe_total = router + (cfg.n_shared + cfg.n_routed) * expert
    moe_active = router + (cfg.n_shared + cfg.top_k) * expert
    embed = v * d
    head = 0 if cfg.tie_embeddings else v * d
    body_total = cfg.n_layers * attn + cfg.n_dense_layers * dense_ffn + cfg.n_moe_layers * moe_total + d
    body_active = cfg.n_layers * attn + cfg.n_dense_layers * dense_ffn + cfg.n_moe_layers * moe_active + d
    return {"total": embed + head + body_total, "active": embed + head + body_active,
            "active_matmul": body_active + v * d}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the active matmul parameters (the embedding lookup is free, the
    LM head is not) + causal-attention score/value FLOPs, 12 * n_layers * d_model * seq_len / 2."""
    return 6 * count_params(cfg)["active_matmul"] + 6 * cfg.n_layers * cfg.d_model * seq_len


# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                   "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12, "B200": 2250e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's bf16 peak, or None where it is unknown (CPUs), so MFU is reported as missing."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)
