"""Faults a run must survive and say: signals, divergence, failed writes, concurrent runs, lost DDP ranks.

One module per concern; every public name is importable from here:

- :mod:`.state`: how a run ends (:class:`Interrupted`, :class:`Diverged`, :func:`run_state`);
- :mod:`.signals`: SIGTERM, SIGINT and SIGUSR1 become an orderly stop at a step boundary;
- :mod:`.callback`: :class:`FaultTolerance`, the Lightning callback of every run (signals,
  atomic checkpoints, DDP heartbeats);
- :mod:`.divergence`: :class:`UpdateGuard`, the skipped-update guard every family shares;
- :mod:`.writes`: atomic checkpoints (:class:`AtomicCheckpointIO`; files in general:
  :mod:`galgen_lightning.files`);
- :mod:`.lock`: :class:`FolderLock`, one process at a time in a folder (runs, sweeps, downloads,
  caches), and :class:`RunLock`, one ``galgen fit`` per run directory;
- :mod:`.ddp`: the collective timeout (``GALGEN_DDP_TIMEOUT``) and naming a rank that died or hung.
"""

from __future__ import annotations

from galgen_lightning.faults.callback import FaultTolerance, checkpoint_dir
from galgen_lightning.faults.ddp import RankLost, rank_lost
from galgen_lightning.faults.divergence import UpdateGuard, agree_on_all_ranks, last_checkpoint
from galgen_lightning.faults.lock import LOCK, FolderLock, RunLock, is_rank_zero_launch
from galgen_lightning.faults.signals import SIGNALS, install_signal_handlers, pending_signal, restore_signal_handlers
from galgen_lightning.faults.state import Diverged, Interrupted, run_state
from galgen_lightning.faults.writes import AtomicCheckpointIO

__all__ = [
    "LOCK",
    "SIGNALS",
    "AtomicCheckpointIO",
    "Diverged",
    "FaultTolerance",
    "FolderLock",
    "Interrupted",
    "RankLost",
    "RunLock",
    "UpdateGuard",
    "agree_on_all_ranks",
    "checkpoint_dir",
    "install_signal_handlers",
    "is_rank_zero_launch",
    "last_checkpoint",
    "pending_signal",
    "rank_lost",
    "restore_signal_handlers",
    "run_state",
]
