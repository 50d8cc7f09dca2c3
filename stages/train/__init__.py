"""The MoE training stage: the model (`model`), the shard loader (`data`) and the Ray Train job (`loop`)."""
from stages.train.loop import Trainer, read_metrics, train
from stages.train.model import PRESETS, ModelConfig, MoETransformer, count_params, flops_per_token, preset

__all__ = ["PRESETS", "ModelConfig", "MoETransformer", "Trainer", "count_params", "flops_per_token", "preset",
           "read_metrics", "train"]
