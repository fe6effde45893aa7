"""``galgen sweep``: train pairs of one family over N, skip what is finished, resume what is not.

    galgen sweep                                   # diffusion; paper profile on a GPU, small on a CPU
    galgen sweep --family glow --profile small --ns '[1, 10, 100]'
    galgen sweep --family diffusion --profile paper --per_gpu true     # one run per GPU
    galgen sweep --family diffusion --profile small --seeds 0,1,2      # three pairs per N
    galgen sweep --family diffusion --profile paper --launcher slurm --slurm.partition gpu --slurm.gpus 1
    galgen sweep --status runs/sweep               # each run's state

A *profile* is a ``galgen fit`` config: ``paper`` is ``configs/<family>.yaml`` (64 px, the
paper's models, a GPU), ``small`` is ``configs/sweep/<family>-small.yaml`` (small images and
models for a CPU), and any other YAML path works too. A profile may carry a ``sweep:`` section
(``base`` configs, ``ns``, ``max_fraction``), which the sweep removes before handing the rest to
``galgen fit``; the rest is parsed by ``galgen fit``'s own parser (the cap on N is read from it).

Each N and seed trains one pair with ``galgen fit`` in its own run directory
``<out>/<family>-<profile>-n<N>-seed<S>``; rerunning the same command skips complete runs and
resumes interrupted ones from ``checkpoints/last.ckpt``. docs/sweep.md and docs/slurm.md.

The package: :mod:`~galgen_lightning.sweep.plan` (profiles, N, seeds, the resume rule),
:mod:`~galgen_lightning.sweep.runs` (starting a run, ``sweep.json``, the folder lock),
:mod:`~galgen_lightning.sweep.local` and :mod:`~galgen_lightning.sweep.slurm` (the launchers),
:mod:`~galgen_lightning.sweep.status` (``--status``), :mod:`~galgen_lightning.sweep.cost`
(``--plan``), :mod:`~galgen_lightning.sweep.command` (the options).
"""

from galgen_lightning.sweep.command import main, sweep
from galgen_lightning.sweep.runs import sweep_lock

__all__ = ["main", "sweep", "sweep_lock"]
