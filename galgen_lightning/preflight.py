"""The checks of a parsed ``galgen fit`` / ``galgen validate`` configuration, before anything is
built or written.

LightningCLI takes some values that can only fail later: a checkpoint that is not there, a test
the family cannot run, ``--trainer.accumulate_grad_batches 0`` (a division by zero in the first
step), a model with more channels than the data, a fit that would train or evaluate nothing, a
second node that never comes. Each is a one-line :class:`~galgen_lightning.errors.GalgenError`
here, naming the option, before the run directory exists.
"""

from __future__ import annotations

import importlib
import os
import sys

from galgen_lightning.errors import GalgenError
from galgen_lightning.evaluation import TESTS
from galgen_lightning.evaluation.base import EvalCallback
from galgen_lightning.faults.writes import check_lightning_checkpoint

CKPT_KEYWORDS = {"best", "last", "hpc", "registry"}
"""Lightning's ``ckpt_path`` keywords (not files)."""

SEED_RANGE = (0, 2**32 - 1)
"""The seeds ``seed_everything`` takes (numpy's)."""


def entries(value) -> list:
    """A config value that is one object, a list of them, or none, as a list."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def import_path(class_path: str):
    """The class a config's ``class_path`` names, or None when it cannot be imported (LightningCLI reports it)."""
    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def is_file_path(ckpt: str | None) -> bool:
    """A ``--ckpt_path`` naming a local file (not Lightning's keywords, a registry or a URL)."""
    return bool(ckpt) and ckpt not in CKPT_KEYWORDS and not ckpt.startswith("registry:") and "://" not in ckpt


def check_config(cfg, subcommand: str | None) -> None:
    """Every check of this module on the configuration of ``subcommand`` (``fit``, ``validate``, ...)."""
    check_ckpt_path(getattr(cfg, "ckpt_path", None), subcommand, getattr(cfg.model, "class_path", None))
    check_tests_fit_family(cfg)
    check_trainer(cfg.trainer)
    check_channels(cfg)
    check_work(cfg, subcommand)


def check_seed(seed) -> None:
    """``--seed_everything``: true (a random seed), false (none) or a whole number numpy takes."""
    if isinstance(seed, bool) or seed is None:
        return
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise GalgenError(f"--seed_everything must be from {low} to {high} (or true: a random seed), got {seed}")


def check_ckpt_path(ckpt: str | None, subcommand: str | None = None, model: str | None = None) -> None:
    """A ``--ckpt_path`` that names a local file must exist (Lightning would raise a traceback
    later); Lightning's keywords and remote URLs are left to Lightning, except that ``validate``
    needs a file: with a keyword and no checkpoint at hand, Lightning validates an untrained model
    with a warning only, and the results would be passed off as the run's."""
    if subcommand == "validate" and ckpt in CKPT_KEYWORDS:
        raise GalgenError(f"--ckpt_path {ckpt}: galgen validate needs a checkpoint file, e.g. runs/<run>/checkpoints/last.ckpt")
    if subcommand == "validate" and not ckpt and getattr(import_path(model) if model else None, "learns", True):
        print(  # a baseline on purpose, or a forgotten option: said, and status.json's checkpoint is null
            "galgen: note: no --ckpt_path: validating the freshly initialised pair (an untrained baseline), not a trained run",
            file=sys.stderr,
        )
    if is_file_path(ckpt):
        check_lightning_checkpoint(ckpt)


def check_tests_fit_family(cfg) -> None:
    """A test that does not fit the family is a one-line error before anything is built or written."""
    model = import_path(cfg.model.class_path) if getattr(cfg.model, "class_path", None) else None
    if model is None:
        return
    listed = [str(getattr(callback, "class_path", "")) for callback in entries(cfg.trainer.callbacks)]
    for test in TESTS:  # a test under its key and in trainer.callbacks would write the same files twice
        if cfg.get(test.name) is not None and any(path.rsplit(".", 1)[-1] == test.__name__ for path in listed):
            raise GalgenError(
                f"{test.name}: {test.__name__} is also in trainer.callbacks; give it once "
                f"(under {test.name}:, or in trainer.callbacks with {test.name}: null)"
            )
    for callback in [*entries(cfg.trainer.callbacks), *(cfg.get(test.name) for test in TESTS)]:
        cls = import_path(getattr(callback, "class_path", "")) if getattr(callback, "class_path", None) else None
        if isinstance(cls, type) and issubclass(cls, EvalCallback):
            cls.check_family(model)


def tests_on(cfg) -> bool:
    """Whether any evaluation test is on (under its key or in ``trainer.callbacks``)."""
    if any(cfg.get(test.name) is not None for test in TESTS):
        return True
    paths = [str(getattr(callback, "class_path", type(callback).__name__)) for callback in entries(cfg.trainer.callbacks)]
    return any(isinstance(import_path(path), type) and issubclass(import_path(path), EvalCallback) for path in paths)


def check_trainer(trainer) -> None:
    """Trainer values Lightning takes and then fails on in the middle of a run (or waits on)."""
    accumulate = trainer.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        raise GalgenError(f"--trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    every = trainer.get("check_val_every_n_epoch")
    if isinstance(every, int) and every < 1:
        raise GalgenError(f"--trainer.check_val_every_n_epoch must be at least 1 (or null), got {every}")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not interval > 0:
        raise GalgenError(f"--trainer.val_check_interval must be positive (batches, or a fraction of an epoch), got {interval}")
    nodes = trainer.get("num_nodes")
    if isinstance(nodes, int) and nodes < 1:
        raise GalgenError(f"--trainer.num_nodes must be at least 1, got {nodes}")
    if isinstance(nodes, int) and nodes > 1 and not cluster_detected():
        raise GalgenError(
            f"--trainer.num_nodes {nodes}: no multi-node launch found (SLURM, torchrun, or NODE_RANK and MASTER_ADDR "
            "set on every node); this process would wait for nodes that never come. "
            "Use galgen sweep --launcher slurm, or --trainer.num_nodes 1"
        )


def cluster_detected() -> bool:
    """Whether this process was started by a launcher that brings the other nodes (Lightning's
    environments that detect themselves), or with ``MASTER_ADDR`` and a rank (``NODE_RANK`` by
    hand on every node, ``RANK`` from Kubeflow, which Lightning cannot detect)."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if "MASTER_ADDR" in os.environ and ("NODE_RANK" in os.environ or "RANK" in os.environ):
        return True
    environments = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)
    return any(env.detect() for env in environments)


def check_channels(cfg) -> None:
    """The model's ``channels`` must be the data's: galgen's images have one band."""
    from galgen_lightning.data import GalaxyPairDataModule

    args = getattr(cfg.model, "init_args", None)
    channels = args.get("channels") if args is not None and hasattr(args, "get") else None
    if channels is not None and channels != GalaxyPairDataModule.channels:
        raise GalgenError(
            f"--model.init_args.channels is {channels}, but galgen's data have {GalaxyPairDataModule.channels} "
            f"channel per image (one band); set channels: {GalaxyPairDataModule.channels}"
        )


def check_work(cfg, subcommand: str | None) -> None:
    """A fit must train, and a run with a test on must evaluate: otherwise it would end
    ``complete`` with no numbers and no verdict."""
    trainer = cfg.trainer
    if trainer.get("fast_dev_run"):
        return  # one batch of each, whatever the limits say
    evaluates = tests_on(cfg)
    limit_val = trainer.get("limit_val_batches")
    if evaluates and limit_val is not None and limit_val == 0:
        raise GalgenError(
            "--trainer.limit_val_batches 0 turns validation off, and the tests run at the end of each validation: "
            "no numbers, no verdict; give at least 1 batch"
        )
    if subcommand != "fit":
        return
    for name in ("max_epochs", "max_steps", "limit_train_batches"):
        value = trainer.get(name)
        if value is not None and value == 0:
            raise GalgenError(f"--trainer.{name} 0: this fit would train nothing; give at least 1")
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    steps = trainer.get("max_steps")
    if evaluates and every and epochs and epochs > 0 and every > epochs and (steps is None or steps < 0):
        raise GalgenError(
            f"--trainer.check_val_every_n_epoch {every} is above --trainer.max_epochs {epochs}: "
            "no validation, so no test would run; lower it or train longer"
        )
