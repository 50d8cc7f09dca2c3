"""The MoE model and the Ray-free training step, on real text (tinyshakespeare as bytes), no Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig
from stages.train.loop import Trainer, lr_factor
from stages.train.model import MoETransformer, RoutedExperts, count_params, grouped_mm_supported, preset

SEQ = 64


@pytest.fixture(scope="module")
def text_bytes(shared_data) -> np.ndarray:
    """Tinyshakespeare as byte ids: real text with a skewed symbol distribution, vocab 256."""
    return np.frombuffer((shared_data / "tinyshakespeare" / "input.txt").read_bytes(), dtype=np.uint8)


def batches(data: np.ndarray, n: int, batch_size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` (inputs, targets) pairs of random windows, the shape the shard loader yields."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - SEQ - 1, size=(n, batch_size))
    windows = [torch.from_numpy(np.stack([data[s:s + SEQ + 1] for s in row]).astype(np.int64)) for row in starts]
    return [(w[:, :-1], w[:, 1:]) for w in windows]


def train_cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", seq_len=SEQ, batch_size=8, steps=30, lr=3e-3, warmup_steps=3, seed=0)
    return TrainConfig(**(base | kw))


def set_impl(model: torch.nn.Module, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, RoutedExperts):
            m.impl = impl


# Stated tolerances: fp32 1e-5 relative / 1e-6 absolute; bf16 (one rounding step) 2e-2 / 1e-2.
# In practice both come out bit-equal on CPU.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}


@pytest.mark.parametrize("score_func,dtype", [("softmax", torch.float32), ("sigmoid", torch.float32),
                                              ("sigmoid", torch.bfloat16)])
def test_grouped_and_loop_experts_agree(text_bytes, score_func, dtype):
    """Same weights, same batch: grouped GEMM and the per-expert loop give equal logits and grads.

    The bf16 case runs under CPU autocast, the code path a CUDA run takes (router still in fp32).
    """
    assert grouped_mm_supported(torch.device("cpu"), dtype, 128, 128)
    torch.manual_seed(0)
    model = MoETransformer(preset("tiny", vocab_size=256, max_seq_len=SEQ, score_func=score_func))
    inputs, targets = batches(text_bytes, 1)[0]
    results = {}
    for impl in ("loop", "grouped"):
        set_impl(model, impl)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(inputs, targets)
            routing = model.layers[1].ffn.router(model.embed(inputs))
        assert out.logits.dtype == dtype and routing.weights.dtype == torch.float32
        out.loss.backward()
        results[impl] = (out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (logits_loop, grads_loop), (logits_grouped, grads_grouped) = results["loop"], results["grouped"]
    torch.testing.assert_close(logits_grouped, logits_loop, **TOLERANCE[dtype])
    assert grads_loop.keys() == grads_grouped.keys()
    for name in grads_loop:
        torch.testing.assert_close(grads_grouped[name], grads_loop[name], **TOLERANCE[dtype], msg=name)
    assert grads_loop["layers.1.ffn.experts.w_gate"].abs().sum() > 0


def test_presets_have_the_stated_sizes():
    """tiny: a few M parameters; small: ~100M total; base: DeepSeekMoE-2B's shape, ~0.3B active."""
    tiny, small, base = (count_params(preset(n)) for n in ("tiny", "small", "base"))
    assert 1e6 < tiny["total"] < 10e6
    assert 80e6 < small["total"] < 120e6
    assert 1.5e9 < base["total"] < 2.5e9 and 0.25e9 < base["active"] < 0.4e9
    model = MoETransformer(preset("tiny"))
    assert sum(p.numel() for p in model.parameters()) == tiny["total"]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = train_cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def run_steps(cfg: TrainConfig, data: list[torch.Tensor]) -> tuple[list[float], list[dict]]:
    trainer = Trainer(cfg, vocab_size=256, device=torch.device("cpu"))
    rows = [trainer.train_step(b) for b in data]
    return [r["loss"] for r in rows], rows


def test_bias_balancing_lowers_load_imbalance(text_bytes):
    """Same data and seed, sequence loss off in both: the selection bias alone evens the loads.

    gamma is raised to 1e-2 (default 1e-3) so the effect shows within 40 steps of a tiny model.
    """
    data = batches(text_bytes, 40)
    cv = {}
    for balance in (False, True):
        cfg = train_cfg(steps=40, balance=balance, bias_update_rate=1e-2, seq_aux_loss_weight=0.0)
        _, rows = run_steps(cfg, data)
        cv[balance] = np.mean([np.mean(r["load_cv"]) for r in rows[-10:]])
    assert cv[True] < 0.5 * cv[False], cv


def test_same_seed_same_loss_curve(text_bytes):
    """Deterministic on CPU: equal seeds give bit-equal loss curves, another seed a different one."""
    data = batches(text_bytes, 12)
    first, _ = run_steps(train_cfg(steps=12), data)
    again, _ = run_steps(train_cfg(steps=12), data)
    other, _ = run_steps(train_cfg(steps=12, seed=1), data)
    assert first == again
    assert first != other
    assert first[-1] < first[0] - 0.5  # and it learns: bytes of English fall fast from ln(256) = 5.5


def test_grad_accumulation_matches_one_big_batch(text_bytes):
    """The same 8 sequences a step, whole or as 2 micro-batches of 4: the same losses (within the
    1e-4 relative tolerance of benchmarks/parallel_check.py; only fp32 summation order differs) and the
    same expert-load statistics at step 1 (loads are counts, added over micro-batches)."""
    data = batches(text_bytes, 6)
    whole, whole_rows = run_steps(train_cfg(steps=6), data)
    accum, accum_rows = run_steps(train_cfg(steps=6, batch_size=4, grad_accum=2), data)
    assert max(abs(a - b) / b for a, b in zip(accum, whole)) < 1e-4
    assert accum_rows[0]["load_cv"] == whole_rows[0]["load_cv"]
