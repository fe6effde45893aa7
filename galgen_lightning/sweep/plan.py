"""The sweep's plan: a profile parsed by ``galgen fit``'s own parser, the N under the cap, and one
:class:`RunPlan` per (N, seed) with its ``galgen fit`` command line.

What to do with a run is decided from its run directory by :func:`decide`, the one resume rule
of every launcher: ``complete`` is skipped, ``diverged`` is left alone (it would diverge again),
a run with ``checkpoints/last.ckpt`` resumes from it (``--ckpt_path``), any other is trained from
the start. The local launcher applies it when it plans; a SLURM task applies it again when it
starts (a requeued task finds its own checkpoint).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galgen_lightning.errors import GalgenError
from galgen_lightning.rundir import CHECKPOINTS, LAST_CHECKPOINT, RunDir

DEFAULT_NS = (10, 100, 1000, 10000, 100000)
SWEEP_KEYS = ("base", "ns", "max_fraction")


# --- families and profiles ----------------------------------------------------------------------
def families(configs_dir: Path) -> list[str]:
    """The families that have a paper config ``<configs_dir>/<family>.yaml`` (docs/extending.md:
    a new family brings its config, and the sweep knows it)."""
    return sorted(p.stem for p in Path(configs_dir).glob("*.yaml"))


def detect_gpus() -> int:
    """How many CUDA GPUs this process can see (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 (no usable torch: no GPU)
        return 0


@dataclass
class Profile:
    """A resolved sweep profile.

    Attributes:
        name: ``small``, ``paper`` or the stem of a custom file.
        path: the profile file.
        configs: the ``--config`` files of every run, in order.
        ns: the N of the profile (before the cap).
        max_fraction: cap on N as a share of the usable images.
        fit: the ``galgen fit`` configuration these configs (and ``--fit_args``) parse to, as a
            dict, every default filled in by the parser.
        copy_text: the text of the profile's copy without its ``sweep:`` section (the last of
            ``configs``), which :meth:`write_copy` writes; None for a profile without one.
    """

    name: str
    path: Path
    configs: list[Path]
    ns: list[int]
    max_fraction: float
    fit: dict = field(default_factory=dict)
    copy_text: str | None = None

    def write_copy(self) -> None:
        """Write the profile's copy into the sweep folder, once the sweep's options are checked
        (a refused sweep writes nothing); a copy already there is the same text (named by it)."""
        from galgen_lightning.files import atomic_write

        if self.copy_text is not None and not self.configs[-1].is_file():
            atomic_write(self.configs[-1], self.copy_text.encode())


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GalgenError(f"sweep: cannot read {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GalgenError(f"sweep: {path} is not a YAML mapping")
    return data


class _Parsed(Exception):
    def __init__(self, config: Any) -> None:
        self.config = config


def _names_a_file(folder: Path, value: Any) -> bool:
    """Whether a top-level value of a profile is a relative path of a config file next to it (``trainer: trainer.yaml``)."""
    return isinstance(value, str) and value.endswith((".yaml", ".yml")) and (folder / value).is_file()


def parse_fit(configs: list[Path], extra: list[str], what: str) -> dict:
    """Parse ``galgen fit --config C1 --config C2 ... <extra>`` with galgen's own LightningCLI
    parser (nothing is instantiated, no seed is set, nothing is written) and return the
    configuration as a dict; a parse error is one line naming ``what``."""
    from galgen_lightning.cli import GalgenCLI
    from galgen_lightning.errors import concise_parse_error

    class ParseOnly(GalgenCLI):
        def init_parser(self, **kwargs: Any):
            return super().init_parser(**{**kwargs, "exit_on_error": False})

        def parse_arguments(self, parser: Any, args: Any) -> None:
            super().parse_arguments(parser, args)
            raise _Parsed(self.config)

    argv = ["fit", *(f"--config={c}" for c in configs), *extra]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            ParseOnly(args=argv)
    except _Parsed as parsed:
        return parsed.config["fit"].as_dict()
    except GalgenError:
        raise
    except Exception as e:  # noqa: BLE001 (jsonargparse's ArgumentError, a config that cannot be read)
        raise GalgenError(f"sweep: {what} is not a valid galgen fit config: {concise_parse_error(str(e))}") from None
    raise GalgenError(f"sweep: {what} could not be parsed")  # not reached: parse_arguments raises


def resolve_profile(
    family: str, profile: str, configs_dir: Path, out: Path, gpus: int | None = None, extra: list[str] | None = None
) -> Profile:
    """Find the profile's file, split it into ``galgen fit`` configs and sweep settings, and parse
    the configs (with ``extra``, the ``--fit_args``) as ``galgen fit`` will.

    Args:
        family: a family with a config ``<configs_dir>/<family>.yaml``.
        profile: ``auto`` (``paper`` where a CUDA GPU is visible, else ``small``), ``small``,
            ``paper``, another name looked up as ``configs/sweep/<family>-<name>.yaml``, or a
            path to a YAML file.
        configs_dir: galgen's ``configs`` folder.
        out: the sweep folder (a profile with a ``sweep:`` section is copied there without it, by
            :meth:`Profile.write_copy`).
        gpus: GPUs visible (default: detected), for ``auto``.
        extra: the extra ``galgen fit`` arguments of every run.
    """
    known = families(configs_dir)
    if family not in known:
        where = f"configs in {configs_dir}: {', '.join(known)}" if known else f"no <family>.yaml in {configs_dir}"
        raise GalgenError(f"sweep: --family must be one of the families with a config ({where}), got {family!r}")
    if profile == "auto":
        gpus = detect_gpus() if gpus is None else gpus
        profile = "paper" if gpus else "small"
        why = f"{gpus} CUDA GPU(s) found" if gpus else "no CUDA GPU found; --profile paper for the paper-size runs"
        print(f"[sweep] profile: {profile} ({why})", flush=True)
    if profile == "paper":
        path = configs_dir / f"{family}.yaml"
    elif profile.endswith((".yaml", ".yml")) or os.sep in profile:
        path = Path(profile)
        profile = path.stem
    else:
        path = configs_dir / "sweep" / f"{family}-{profile}.yaml"
    if not path.is_file():
        raise GalgenError(f"sweep: profile file {path} not found (run from the galgen repository or pass --configs_dir)")
    data = _load_yaml(path)
    has_section = "sweep" in data
    settings = data.pop("sweep", None) or {}
    if not isinstance(settings, dict):
        raise GalgenError(f"sweep: the 'sweep' section of {path} must be a mapping")
    unknown = set(settings) - set(SWEEP_KEYS)
    if unknown:
        raise GalgenError(f"sweep: unknown keys {sorted(unknown)} in the 'sweep' section of {path} ({', '.join(SWEEP_KEYS)})")
    given = settings.get("base") or []
    base = [(path.parent / b).resolve() for b in ([given] if isinstance(given, str) else given)]
    for b in base:
        if not b.is_file():
            raise GalgenError(f"sweep: base config {b} of {path} not found")
    fit_config, text = path, None
    if has_section:  # hand galgen fit the profile without its sweep section
        import yaml

        # config files the profile names by a relative path are found from the profile's folder, not the copy's
        data = {k: str((path.parent / v).resolve()) if _names_a_file(path.parent, v) else v for k, v in data.items()}
        text = f"# {path} without its 'sweep' section (written by galgen sweep; edit the original)\n"
        text += yaml.safe_dump(data, sort_keys=False)
        # named by its content: editing the profile writes a new copy, and the runs started (or
        # queued) with the old one keep reading it
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        fit_config = out / "configs" / f"{family}-{profile}-{digest}.yaml"
    configs = [*base, fit_config]
    with tempfile.TemporaryDirectory() as tmp:  # parsed from a scratch copy: the sweep folder is written once checked
        parsed = configs if text is None else [*base, Path(tmp) / fit_config.name]
        if text is not None:
            parsed[-1].write_text(text)
        fit = parse_fit(parsed, list(extra or []), f"profile {path}")
    try:
        ns = [int(n) for n in settings.get("ns") or DEFAULT_NS]
        fraction = float(settings.get("max_fraction", 0.5))
    except (TypeError, ValueError) as e:
        raise GalgenError(f"sweep: the 'sweep' section of {path}: ns must be integers and max_fraction a number ({e})") from None
    return Profile(profile, path, configs, ns, fraction, fit, text)


def usable_images(fit: dict) -> tuple[int | None, int, str]:
    """``(images in the source, n_val, note)`` of a parsed ``galgen fit`` config: the source
    class is instantiated with its parsed arguments and asked (None when it cannot say)."""
    import importlib

    data = fit.get("data") or {}
    n_val = int(data["n_val"])
    source = data.get("source")
    if source is None:  # GalaxyPairDataModule's default source
        class_path, init = "galgen_lightning.data.SyntheticGalaxies", {}
    elif isinstance(source, dict) and source.get("class_path"):
        class_path, init = str(source["class_path"]), dict(source.get("init_args") or {})
    else:
        return None, n_val, "unknown source"
    name = class_path.rsplit(".", 1)[-1]
    try:
        module, _ = class_path.rsplit(".", 1)
        size = int(getattr(importlib.import_module(module), name)(**init).available())
    except GalgenError:
        raise
    except Exception as e:  # noqa: BLE001 (the cap is then left to galgen fit)
        return None, n_val, f"cannot size {class_path} ({type(e).__name__}: {e})"
    what = "synthetic set" if name == "SyntheticGalaxies" else f"{name} with"
    return size, n_val, f"{what} {size:,}" + ("" if name == "SyntheticGalaxies" else " images")


def plan_ns(ns: list[int], max_n: int | None) -> tuple[list[int], list[int]]:
    """``(kept, dropped)``: the distinct positive N up to ``max_n``, in increasing order."""
    ns = sorted({int(n) for n in ns})
    if not ns:
        raise GalgenError("sweep: --ns is empty: give at least one N (e.g. --ns 10,100)")
    if any(n < 1 for n in ns):
        raise GalgenError(f"sweep: every N must be positive, got {ns}")
    if max_n is None:
        return ns, []
    return [n for n in ns if n <= max_n], [n for n in ns if n > max_n]


def parse_ints(value: list[int] | str | int, option: str, example: str = "10,100") -> list[int]:
    """The integers of a list option given as a list (``[10,100]``), one number (``10``) or
    numbers separated by commas (``10,100``); a one-line error naming ``option`` otherwise."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        parts = [p.strip() for p in value.strip().strip("[]").split(",") if p.strip()]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise GalgenError(f"sweep: {option} must be integers separated by commas (e.g. {example}), got {value!r}") from None
    return [int(v) for v in value]


def parse_seeds(seeds: list[int] | str | int) -> list[int]:
    """The distinct seeds of ``--seeds``, in the order given: a list, or ``"0,1,2"``."""
    out: list[int] = []
    for seed in parse_ints(seeds, "--seeds", "0,1,2"):
        if not 0 <= int(seed) < 2**32:
            raise GalgenError(f"sweep: every seed must be in [0, 2**32), got {seed}")
        if int(seed) not in out:
            out.append(int(seed))
    if not out:
        raise GalgenError("sweep: --seeds is empty")
    return out


def sweep_pool_size(ns: list[int], n_val: int, size: int | None) -> int:
    """The ``data.pool_size`` of every run: what the largest N needs (``2 max(N) + n_val``) plus
    the DataModule's margin for duplicates, at most the source's ``size``."""
    from galgen_lightning.data.datamodule import pool_with_margin

    pool = pool_with_margin(2 * max(ns) + n_val)
    return pool if size is None else min(pool, size)


def option(args: list[str], name: str) -> str | None:
    """The last value of ``--name=value`` or ``--name value`` in ``args`` (None when absent)."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def fingerprint(prof: Profile, extra: list[str]) -> str:
    """SHA-1 of the profile's config files' contents (its copy's text, written or not) and the
    extra arguments (to notice a changed profile)."""
    h = hashlib.sha1()
    for i, c in enumerate(prof.configs):
        last = i == len(prof.configs) - 1
        h.update(prof.copy_text.encode() if last and prof.copy_text is not None else Path(c).read_bytes())
    h.update("\0".join(extra).encode())
    return h.hexdigest()


# --- runs ----------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """One (N, seed) of the sweep.

    Attributes:
        n: images per model.
        folder: the run directory.
        action: ``skip`` (complete or diverged), ``resume`` (from ``checkpoints/last.ckpt``) or ``train``.
        args: the ``galgen`` arguments (``fit ...``), ``--ckpt_path`` included for a resume.
        state: the run directory's state when planned (empty when it has none).
        duration: seconds the run took (this invocation).
        returncode: the exit status of its ``galgen fit``.
        seed: the initialisation seed (``seed_everything``).
        data_seed: the split's seed (``data.seed``).
        warning: why this existing run is not like the others (another pool, diverged), or empty.
        base_args: the arguments before :func:`decide` (what a SLURM task decides from again).
        pool_size: the sweep's ``data.pool_size``.
        job_id: the SLURM job of the run (``<array>_<index>``), when submitted.
    """

    n: int
    folder: Path
    action: str
    args: list[str]
    state: str = ""
    duration: float | None = None
    returncode: int | None = None
    seed: int = 0
    data_seed: int = 0
    warning: str = ""
    base_args: list[str] = field(default_factory=list)
    pool_size: int | None = None
    job_id: str = ""


def run_name(family: str, profile: str, n: int, seed: int, data_seed: int | None = None) -> str:
    """The deterministic run directory name, ``<family>-<profile>-n<N>-seed<S>``, with
    ``-data<K>`` appended when the split's seed ``K`` is not ``S``."""
    name = f"{family}-{profile}-n{n}-seed{seed}"
    return name if data_seed is None or data_seed == seed else f"{name}-data{data_seed}"


def recorded_pool_size(folder: Path) -> tuple[bool, int | None]:
    """``(known, pool_size)`` of an existing run: from its ``manifest.json``, else the arguments
    the sweep recorded in its ``sweep.json`` (``known`` is False when neither says)."""
    manifest = RunDir(folder).manifest()
    if "pool_size" in manifest:
        value = manifest["pool_size"]
        return True, None if value is None else int(value)
    args = RunDir(folder).launch().get("args")
    if isinstance(args, list):
        value = option([str(a) for a in args], "data.pool_size")
        return True, None if value is None else int(value)
    return False, None


def decide(folder: Path, args: list[str], pool_size: int | None) -> tuple[str, list[str], str, str]:
    """What to do with the run in ``folder``, from its run directory: ``(action, args, state, warning)``.

    ``args`` is the run's ``galgen fit`` command line without ``--ckpt_path``; a resume gets
    ``--ckpt_path <folder>/checkpoints/last.ckpt``. A run started with another pool than
    ``pool_size`` keeps its own when it resumes (the data of a resumed run must not change); it
    and a complete one on another pool get a warning.
    """
    from galgen_lightning.faults.lock import LOCK, FolderLock

    status = RunDir(folder).status()
    state = str(status.get("state") or "")
    last = folder / CHECKPOINTS / LAST_CHECKPOINT
    args = list(args)
    warning = ""
    lock = FolderLock(folder, LOCK)
    if lock.held_elsewhere():  # a galgen fit still runs there (an earlier sweep's child that outlived it)
        return "skip", args, "running", f"is in use by another galgen process (pid {lock.holder()}): left alone"
    if state == "complete":
        action = "skip"
    elif state == "diverged":  # resuming would diverge again: left for the user to change and rerun
        action = "skip"
        warning = f"diverged ({status.get('error', 'see its status.json')}): not resumed; delete the folder to retrain"
    elif last.is_file():
        action = "resume"
        args.append(f"--ckpt_path={last}")
    else:
        action = "train"
    known, old_pool = recorded_pool_size(folder) if action != "train" else (False, None)
    if known and old_pool != pool_size and state != "diverged":
        old = "an N-dependent pool" if old_pool is None else f"data.pool_size {old_pool}"
        if action == "resume":
            args = [a for a in args if not a.startswith("--data.pool_size=")]
            if old_pool is not None:
                args.insert(args.index(f"--trainer.default_root_dir={folder}"), f"--data.pool_size={old_pool}")
            warning = f"resumes on its own {old}, not this sweep's {pool_size}"
        else:
            warning = f"was trained on {old}, not this sweep's {pool_size}"
        warning += ": its held-out set and subsets are not nested with the other runs'; delete it to retrain"
    return action, args, state, warning


def plan_runs(
    family: str,
    profile: Profile,
    ns: list[int],
    seeds: list[int] | int,
    out: Path,
    fit_args: list[str],
    pool_size: int | None = None,
    data_seed: int | None = None,
) -> list[RunPlan]:
    """Decide, per seed and N, whether to skip, resume or train (:func:`decide`), and build each
    ``galgen fit`` command.

    Runs are ordered seed by seed (every N of the first seed, then the next), so the first
    seed's curve over N is complete first. Seed ``s`` sets ``seed_everything`` and, unless
    ``data_seed`` pins the split, ``data.seed``. ``pool_size`` goes to every run as
    ``data.pool_size``.
    """
    plans = []
    for seed in [seeds] if isinstance(seeds, int) else seeds:
        split_seed = seed if data_seed is None else data_seed
        for n in ns:
            folder = out / run_name(family, profile.name, n, seed, data_seed)
            args = [
                "fit",
                *(f"--config={c}" for c in profile.configs),
                f"--data.n={n}",
                f"--data.seed={split_seed}",
                f"--seed_everything={seed}",
            ]
            if pool_size is not None:
                args.append(f"--data.pool_size={pool_size}")
            args += [f"--trainer.default_root_dir={folder}", *fit_args]
            action, run_args, state, warning = decide(folder, args, pool_size)
            plans.append(
                RunPlan(
                    n,
                    folder,
                    action,
                    run_args,
                    state,
                    seed=seed,
                    data_seed=split_seed,
                    warning=warning,
                    base_args=args,
                    pool_size=pool_size,
                )
            )
    return plans
