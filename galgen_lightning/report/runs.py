"""The report's view of runs: parameter counts (runs are read by :mod:`galgen_lightning.rundir`)."""

from __future__ import annotations

import json

from galgen_lightning.rundir import Run

_PARAM_CACHE: dict[str, tuple[dict[str, int], str]] = {}


def count_parameters(run: Run) -> None:
    """Fill ``run.parameters``: trainable parameters of model A (a GAN: also its generator alone).

    Builds the model from ``config.yaml`` (on PyTorch's meta device where it can, so no memory
    is allocated), once per distinct model configuration. Leaves a note when it cannot.
    """
    if run.parameters:
        return
    model = run.config.get("model") or {}
    class_path = model.get("class_path")
    if not class_path:
        run.parameters_note = "no model in config.yaml"
        return
    init = dict(model.get("init_args") or {})
    if run.image_size:
        init["image_size"] = run.image_size
    key = json.dumps([class_path, init], sort_keys=True, default=str)
    if key not in _PARAM_CACHE:
        _PARAM_CACHE[key] = _build_and_count(class_path, init)
    run.parameters, run.parameters_note = _PARAM_CACHE[key]


def _build_and_count(class_path: str, init: dict) -> tuple[dict[str, int], str]:
    import importlib

    try:
        import torch

        from galgen_lightning.models.base import PairModule
        from galgen_lightning.models.base import count_parameters as trainable_parameters

        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 (any import problem becomes a note in the report)
        return {}, f"cannot import {class_path}: {type(e).__name__}: {e}"
    pair = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                pair = cls(**init)
            break
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
    if pair is None:
        return {}, f"cannot build {class_path} from config.yaml ({error})"

    counts = pair.parameter_counts() if isinstance(pair, PairModule) else {"model": trainable_parameters(pair)}
    return counts, "built from config.yaml"


def ratio_parameters(run: Run) -> int | None:
    """The parameters the pixel ratio is taken against: the generator of a GAN, else the model."""
    return run.parameters.get("generator") or run.parameters.get("model")
