"""``galgen sync``: upload the offline W&B runs of a run directory or a whole sweep.

    galgen sync runs/diffusion-n10-seed0-20261128-101500     # one run (and its validate-* runs)
    galgen sync runs/sweep-diffusion                          # every run of a sweep, and its report's sweep run
    galgen sync runs/sweep-diffusion --dry-run                # list what would be uploaded

A run that could not reach W&B (no credentials, or a compute node without network) logs offline
into ``<run>/wandb/offline-run-*``; the sweep's table and charts (``galgen report``) go to
``<report>/wandb/offline-run-*``. This command finds every such folder below the path that W&B
has not marked as synced (its ``run-<id>.wandb.synced``) and hands them to ``wandb sync`` (the
wandb package's own command, in a subprocess). A resumed run's several offline folders share one
W&B run id and are uploaded into that one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from galgen_lightning.errors import GalgenError

MAX_DEPTH = 8
"""How deep below the given path offline runs are looked for (a sweep's runs, their validate-*
folders, the report)."""


def offline_runs(path: Path) -> tuple[list[Path], list[Path]]:
    """``(to_sync, synced)``: the ``wandb/offline-run-*`` folders below ``path`` (``path`` itself
    may be one), split by whether W&B marked them synced; each list in time order."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if folder.name.startswith("offline-run-") and folder.parent.name == "wandb":
            found.append(folder)
            return
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if child.name not in ("checkpoints", "eval", "__pycache__") and not child.name.startswith("."):
                walk(child, depth + 1)

    walk(path, 0)
    found.sort(key=lambda p: (p.name.split("-", 2)[-1], str(p)))  # offline-run-<YYYYmmdd_HHMMSS>-<id>
    synced = [p for p in found if any(p.glob("run-*.wandb.synced"))]
    return [p for p in found if p not in synced], synced


def sync(path: str, dry_run: bool = False) -> None:
    """Upload the offline W&B runs of a run directory or a sweep with ``wandb sync``.

    Args:
        path: a run directory, a sweep folder, or one ``wandb/offline-run-*`` folder.
        dry_run: list the offline runs that would be uploaded, and upload nothing.

    Raises:
        GalgenError: when ``path`` does not exist, no W&B credentials exist (``wandb login``), or
            ``wandb sync`` fails.
    """
    from galgen_lightning.wandb_utils import logged_in

    root = Path(path).expanduser()
    if not root.exists():
        raise GalgenError(f"sync: {path} does not exist")
    if not root.is_dir():
        raise GalgenError(f"sync: {path} is not a directory (give a run directory or a sweep folder)")
    pending, synced = offline_runs(root)
    note = f" ({len(synced)} already synced)" if synced else ""
    if not pending:
        print(f"galgen sync: no offline W&B run to upload in {root}{note}")
        return
    if dry_run:
        for run in pending:
            print(run)
        print(f"galgen sync: would upload {len(pending)} offline W&B run(s) from {root}{note}")
        return
    if not logged_in():
        raise GalgenError(
            f"sync: not logged in to W&B, so the {len(pending)} offline run(s) in {root} cannot be uploaded: "
            "run 'wandb login' (or set WANDB_API_KEY, and WANDB_BASE_URL for a self-hosted server) first"
        )
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # WANDB_MODE is about logging, not uploading
    print(f"galgen sync: uploading {len(pending)} offline W&B run(s) from {root}{note}", flush=True)
    try:
        done = subprocess.run([sys.executable, "-m", "wandb", "sync", *map(str, pending)], env=env)
    except OSError as e:
        raise GalgenError(f"sync: could not start 'wandb sync': {e}") from None
    if done.returncode != 0:
        raise GalgenError(f"sync: 'wandb sync' failed (exit status {done.returncode}); its messages are above")


def main(argv: list[str]) -> None:
    """``galgen sync PATH [--dry-run]`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    from galgen_lightning.errors import one_line_argument_parser

    description = "Upload the offline W&B runs of a run directory or a sweep (with wandb sync); --dry-run lists them."
    parser = one_line_argument_parser()(prog="galgen sync", description=description)
    parser.add_argument("path", help="a run directory, a sweep folder, or one wandb/offline-run-* folder")
    parser.add_argument(
        "--dry-run", "--dry_run", dest="dry_run", action="store_true", help="list what would be uploaded; upload nothing"
    )
    cfg = parser.parse_args(argv)
    sync(cfg.path, cfg.dry_run)
