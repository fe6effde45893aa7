"""Plain helpers shared by the tests (fixtures live in conftest.py): paths, the in-process CLI
runner, the tiny diffusion arguments, a quiet Lightning trainer, and a JSON-lines reader for files other than a run's
``metrics.jsonl`` (read that one through ``RunDir(run).records()``)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

QUICK_DIFFUSION = [f"--config={CONFIGS / 'diffusion.yaml'}", f"--config={CONFIGS / 'quick' / 'diffusion.yaml'}"]
"""The diffusion family on its quick CPU overlay."""

TINY_DIFFUSION = [
    "--data.n=8",
    "--data.n_val=32",
    "--data.batch_size=8",
    "--model.init_args.blocks=2",
    "--model.init_args.width=8",
    "--model.init_args.max_steps=20",
]
"""A diffusion pair small enough for a test: add ``--trainer.fast_dev_run=true`` or an epoch count."""

TESTS_OFF = "".join(f"{name}: null\n" for name in ("two_models", "denoising", "inversion", "discriminator", "morphology"))
"""Config lines that turn every test of ``evaluation.TESTS`` off (a config of callbacks only)."""


def run_cli(args: list[str]) -> int:
    """Run ``galgen`` in-process; return its exit status (0 when it returned normally)."""
    from galgen_lightning.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def quiet_trainer(**kwargs: Any):
    """A Lightning ``Trainer`` for an in-process test: on the CPU, with no logger, checkpointing,
    progress bar or model summary; a keyword sets any of them back, or anything else."""
    import lightning as L

    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**quiet, **kwargs})


def declared_options(cls: type, base: type) -> dict[str, type]:
    """The options of ``cls`` (what ``galgen fit --help`` lists: its own and those of its bases
    down to ``base``), each with the class whose ``__init__`` declares it first in the MRO."""
    found: dict[str, type] = {}
    for owner in cls.__mro__:
        if "__init__" in vars(owner) and issubclass(owner, base):
            for p in inspect.signature(owner.__init__).parameters.values():
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    found.setdefault(p.name, owner)
    return found
