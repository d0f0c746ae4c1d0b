"""The training checkpoint, ``MODEL_DIR/checkpoint/``: what a resumed run continues from.

It holds the current and best weights and the optimizer state as safetensors and the rest as JSON (no
pickle); ``state.json`` is written last and names the files, so an interrupted checkpoint is never half-read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qpbridge.atomic import atomic_write_bytes
from qpbridge.errors import ModelError
from qpbridge.models import state_dict_for_saving

__all__ = ["CHECKPOINT_DIR", "Checkpoint", "finite"]

CHECKPOINT_DIR = "checkpoint"


def finite(value: Any) -> Any:
    """The value with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_safetensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpoint:
    """``MODEL_DIR/checkpoint/``: weights and optimizer state in safetensors, the rest in ``state.json``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / CHECKPOINT_DIR

    @property
    def state_path(self) -> Path:
        """``checkpoint/state.json``, written last."""
        return self.dir / "state.json"

    def exists(self) -> bool:
        """Whether a complete checkpoint is there (its ``state.json``)."""
        return self.state_path.is_file()

    def save(
        self,
        state: dict[str, Any],
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        best_state: Mapping[str, torch.Tensor],
    ) -> None:
        """Write the network's, the optimizer's and the best weights, then ``state.json`` naming them."""
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        step = int(state["step"])
        names = {
            "model": f"model-{step:07d}.safetensors",
            "optimizer": f"optimizer-{step:07d}.safetensors",
            "best": f"best-{int(state['best_step']):07d}.safetensors",
        }
        opt_tensors, opt_meta = _optimizer_to_safetensors(optimizer)
        atomic_write_bytes(self.dir / names["model"], save(state_dict_for_saving(network)))
        atomic_write_bytes(self.dir / names["optimizer"], save(opt_tensors))
        if not (self.dir / names["best"]).is_file():
            atomic_write_bytes(self.dir / names["best"], save({k: v.contiguous() for k, v in best_state.items()}))
        full = finite(dict(state, files=names, optimizer_meta=opt_meta))
        atomic_write_bytes(self.state_path, (json.dumps(full, indent=1, allow_nan=False) + "\n").encode("utf-8"))
        for old in self.dir.glob("*.safetensors"):
            if old.name not in names.values():
                old.unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
        """``(state, model weights, optimizer state dict, best weights)``, or :class:`ModelError` if damaged."""
        from safetensors.torch import load_file

        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            files = state["files"]
            model = load_file(str(self.dir / files["model"]))
            optimizer = _optimizer_from_safetensors(
                load_file(str(self.dir / files["optimizer"])), state["optimizer_meta"]
            )
            best = load_file(str(self.dir / files["best"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"cannot resume from {self.dir}: the checkpoint is incomplete or damaged ({exc}); "
                "start again without --resume into a new -o"
            ) from None
        return state, model, optimizer, best
