"""Parallel strategies under Ray Train on CPU (gloo, 2 workers): they train the same model.

`benchmarks/parallel_check.py` runs the comparison (single, FSDP2, expert parallel 2, gradient
accumulation 2; the one-worker runs in this process); these tests hold it, then kill a run and resume
it from its sharded checkpoint, on the same worker count (bit-equal) and on another one (within the
stated tolerance). Four Ray Train fits in all, one of them restarted.
"""
from __future__ import annotations

import json
from itertools import pairwise

import pytest

from benchmarks.parallel_check import TOLERANCE, compare, max_rel_diff, run_losses, write_shards
from pipeline.config import ConfigError, parse_config
from stages.train.loop import read_metrics
from stages.train.model import preset
from stages.train.parallel import check_layout
from stages.train.sizing import H200_GIB, memory_per_device, table


@pytest.fixture(scope="module")
def comparison(ray_cluster, tmp_path_factory) -> tuple[dict, object]:
    work = tmp_path_factory.mktemp("parallel")
    return compare(work), work


@pytest.mark.slow
def test_every_strategy_reaches_the_same_losses(comparison):
    """Within 1e-4 relative at each of 10 steps (measured ~2e-7). Step 1, before any update, differs
    only by the order of the loss average (<1e-6); the loss falls, so the steps compared are training."""
    result, _ = comparison
    runs = result["runs"]
    assert set(runs) == {"single", "fsdp2", "ep2", "accum2"} and all(len(r) == 10 for r in runs.values())
    assert result["max_rel_diff"] == max_rel_diff(runs) <= TOLERANCE
    assert max_rel_diff({name: r[:1] for name, r in runs.items()}) < 1e-6
    assert runs["single"][-1] < runs["single"][0] - 0.2


@pytest.mark.slow
def test_killed_expert_parallel_run_resumes_bit_equal(comparison, tmp_path):
    """The last worker dies at step 7; Ray Train restarts both from the step-5 sharded checkpoint (the
    expert slices and optimizer state of each rank) and the losses match the run that never stopped."""
    result, work = comparison
    losses = run_losses("ep2", work / "shards", tmp_path, fault_at_step=7)
    assert losses == result["runs"]["ep2"]


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_another_worker_count(comparison, tmp_path):
    """A 2-worker FSDP2 run dies at step 8 (no retries), leaving its step-5 sharded checkpoint; the same
    run continues on 1 worker without FSDP to step 10. Its steps before the kill equal the FSDP2 run's,
    and the whole curve stays within the tolerance of the single-worker run."""
    import ray.train

    result, work = comparison
    with pytest.raises(ray.train.TrainingFailedError):
        run_losses("fsdp2", work / "shards", tmp_path, fault_at_step=8, max_failures=0)
    killed = [row["loss"] for row in read_metrics(tmp_path / "train" / "metrics.jsonl")]
    assert killed == result["runs"]["fsdp2"][:len(killed)] and len(killed) >= 5
    resumed = run_losses("fsdp2", work / "shards", tmp_path, num_workers=1, batch_size=8, fsdp=False)
    assert json.loads((tmp_path / "train" / "final.json").read_text())["resumed_from"] == [5]
    assert max_rel_diff({"single": result["runs"]["single"], "resumed": resumed}) <= TOLERANCE


def test_expert_parallel_must_divide_workers_and_experts(tmp_path):
    with pytest.raises(ConfigError, match="expert_parallel=2 must divide num_workers=3"):
        parse_config({"train": {"num_workers": 3, "expert_parallel": 2}})
    cfg = parse_config({"train": {"num_workers": 3, "expert_parallel": 3}}).train
    with pytest.raises(ValueError, match="must divide the 8 routed experts"):
        check_layout(cfg, preset("tiny"))
    check_layout(parse_config({"train": {"num_workers": 8, "expert_parallel": 8}}).train, preset("base"))


def test_synthetic_shards_are_learnable_token_streams(tmp_path):
    """The comparison's data: real shard files whose documents are progressions (a loss can fall)."""
    from stages.train.data import TokenStream

    stream = TokenStream(write_shards(tmp_path))
    head = stream.read(0, 5).astype(int)
    assert stream.total >= 60_000 and len({(b - a) % 512 for a, b in pairwise(head)}) == 1


def test_memory_table_shrinks_per_device_state_with_sharding():
    """base on 8 devices: FSDP and EP each cut the per-device training state well below DDP's, both
    together the most; activations do not depend on the strategy; one H200 holds base unsharded."""
    cfg = preset("base")
    m = {s: memory_per_device(cfg, s, 8, seq_len=2048, micro_batch=8) for s in ("ddp", "fsdp", "ep", "fsdp+ep")}
    assert m["fsdp+ep"].state_gib <= m["fsdp"].state_gib < m["ep"].state_gib < m["ddp"].state_gib / 4
    assert len({round(x.activation_gib, 6) for x in m.values()}) == 1
    assert memory_per_device(cfg, "ddp", 1, 2048, 8).total_gib < H200_GIB
    with pytest.raises(ValueError, match="do not divide"):
        memory_per_device(preset("tiny"), "ep", 3, 2048, 8)
    assert table().count("| base |") == 5
