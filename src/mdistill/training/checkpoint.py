"""What a training checkpoint holds, in formats that run no code when read back.

A checkpoint folder (written by rank 0, plus DeepSpeed's per-rank partitions):

- ``model.safetensors``: the trained parameters (``TopStudent``: ``layers.*``, ``dense.*``;
  ``FullStudent``: ``bert.*``, ``dense.*``), gathered in full also under ZeRO-3;
- ``state.json``: the micro-batch reached, whether training finished, the training logs;
- ``optimizer.pt`` (DDP): the torch optimizer and LR-scheduler state dicts, read back with
  ``torch.load(weights_only=True)``;
- ``deepspeed/`` (DeepSpeed): each rank's optimizer partition, read back through
  ``WeightsOnlyCheckpointEngine`` (``weights_only=True`` with DeepSpeed's three plain data
  classes allow-listed), never through DeepSpeed's default loader, which unpickles anything;
- ``dev_vectors.parquet`` (final checkpoint): the trained student's vector of every dev row.

A run folder is shared storage on a cluster: whoever can write there must not be able to run
code on the workers, so nothing here is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from mdistill.report.schema import TrainLogs

WEIGHTS = "model.safetensors"
STATE = "state.json"
OPTIMIZER = "optimizer.pt"
DEV_VECTORS = "dev_vectors.parquet"
DS_TAG = "deepspeed"


class TrainState(BaseModel):
    micro: int  # micro-batches done
    final: bool
    logs: TrainLogs


def write_weights(d: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(Path(d) / WEIGHTS))


def read_weights(d: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(d) / WEIGHTS))


def write_state(d: str | Path, state: TrainState) -> None:
    (Path(d) / STATE).write_text(state.model_dump_json())


def read_state(d: str | Path) -> TrainState:
    return TrainState.model_validate_json((Path(d) / STATE).read_text())


def write_optimizer(d: str | Path, optimizer, scheduler) -> None:
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, Path(d) / OPTIMIZER)


def read_optimizer(d: str | Path, optimizer, scheduler) -> None:
    saved = torch.load(Path(d) / OPTIMIZER, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])


def save_linear(path: str | Path, lin: torch.nn.Linear) -> None:
    save_file({"weight": lin.weight.detach().contiguous(), "bias": lin.bias.detach().contiguous()}, str(path))


def load_linear(path: str | Path) -> torch.nn.Linear:
    t = load_file(str(path))
    lin = torch.nn.Linear(t["weight"].shape[1], t["weight"].shape[0])
    lin.load_state_dict(t)
    return lin


def weights_only_deepspeed(engine) -> None:
    """Make ``engine.load_checkpoint`` read with ``weights_only=True``."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        # The only non-tensor types in ZeRO 1-3 checkpoints (checked on deepspeed 0.19): a loss
        # scale holder, an enum and a named tuple of offsets.
        SAFE = [LossScaler, ZeroStageEnum, fragment_address]

        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(self.SAFE):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
