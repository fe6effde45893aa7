"""``galgen``: a thin LightningCLI for the two-models test.

    galgen fit --config configs/diffusion.yaml
    galgen fit --config configs/diffusion.yaml --config configs/quick.yaml --data.n 10
    galgen validate --config runs/<run>/config.yaml --ckpt_path runs/<run>/checkpoints/last.ckpt

What it adds to LightningCLI: ``data.image_size`` is linked to the model; each run gets its own
directory (``--trainer.default_root_dir``, default ``runs/<family>-n<N>-seed<S>-<time>``) that
holds the resolved config, the data manifest, the status, checkpoints, logs and every
evaluation result; W&B runs offline unless you are logged in; a user mistake is one line.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from galgen_lightning.config_files import check_config_files, resolve_configs
from galgen_lightning.data import GalaxyPairDataModule
from galgen_lightning.errors import OPTIONAL_EXTRAS, GalgenError, OneLineParseErrors, install_hint, root_cause, weights_mismatch
from galgen_lightning.evaluation import TESTS
from galgen_lightning.evaluation.base import averaging_after_tests
from galgen_lightning.evaluation.progress import LineProgress, use_line_progress
from galgen_lightning.faults import (
    FaultTolerance,
    Interrupted,
    RunLock,
    install_signal_handlers,
    is_rank_zero_launch,
    restore_signal_handlers,
)
from galgen_lightning.faults.ddp import configure_ddp, rank_lost
from galgen_lightning.faults.writes import unreadable_checkpoint
from galgen_lightning.files import make_dir, write_error
from galgen_lightning.models.base import PairModule
from galgen_lightning.preflight import check_config, check_seed, entries, is_file_path, tests_on
from galgen_lightning.rundir import CHECKPOINTS, LAUNCH, WANDB, RunDir, RunDirectory, family_of


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist (see :func:`galgen_lightning.wandb_utils.logged_in`)."""
    from galgen_lightning.wandb_utils import logged_in

    return logged_in()


def model_arguments(argv: list[str]) -> list[str]:
    """The ``--model...`` options of a command line, each with its value (``--model.x=1`` or ``--model.x 1``)."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--model" or token.startswith(("--model.", "--model=")):
            out.append(token)
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append(argv[i + 1])
    return out


def _is_lr_monitor(callback) -> bool:
    return str(getattr(callback, "class_path", "")).rsplit(".", 1)[-1] == "LearningRateMonitor"


class GalgenParser(OneLineParseErrors, LightningArgumentParser):
    """The argument parser of ``galgen fit`` and ``galgen validate``: parse errors are one line."""


class GalgenCLI(LightningCLI):
    """LightningCLI with a run directory per run and the data/model links of galgen."""

    def __init__(self, *args, **kwargs) -> None:
        command = kwargs.get("args")
        self.run_directory = RunDirectory(command=["galgen", *command] if isinstance(command, list) else None)
        self.lock: RunLock | None = None
        kwargs.setdefault("trainer_defaults", {"callbacks": [self.run_directory, FaultTolerance()]})
        super().__init__(
            PairModule,
            GalaxyPairDataModule,
            *args,
            subclass_mode_model=True,
            save_config_callback=None,
            parser_class=GalgenParser,
            parser_kwargs={
                "prog": "galgen",
                "description": "galgen: the two-models test of generative models of galaxy images. "
                "Each subcommand has its own --help (galgen fit --help lists every option). "
                "--config also takes a bundled config by name (e.g. diffusion.yaml, quick/diffusion.yaml).",
            },
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` trains the pair and runs the tests; ``validate`` re-runs them on a checkpoint."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        """LightningCLI's ``fit`` and ``validate``, then galgen's own commands, so ``galgen --help``
        lists every subcommand with one line each (the others are dispatched by :func:`main`
        before LightningCLI parses anything; their entries here only document them)."""
        super()._add_subcommands(parser, **kwargs)
        from jsonargparse import ArgumentParser

        action = parser._subcommands_action
        for choice in action._choices_actions:
            choice.help = SUBCOMMANDS.get(choice.dest, choice.help)
        for name in EXTRA_COMMANDS:
            action.add_subcommand(name, ArgumentParser(description=SUBCOMMANDS[name]), help=SUBCOMMANDS[name])

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self.argv = list(args) if isinstance(args, list) else sys.argv[1:]
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the checkpoint's hyperparameters (``weights_only``) before anything
        else, and they replace the config's model options (the checkpoint's architecture is the
        one its weights fit). The model options given on the command line are applied again on
        top (``--model.init_args.sampler_graph=false`` for a GPU checkpoint on a CPU, a longer
        sampler), or they would be dropped without a word. A checkpoint that is not one, or holds
        pickled code, is one line here."""
        try:
            super()._parse_ckpt_path()
        except Exception as e:  # noqa: BLE001 (unpickling raises anything)
            raise unreadable_checkpoint(self.config[self.config.subcommand].get("ckpt_path"), e) from None
        given = model_arguments(self.argv)
        if given and self.config[self.config.subcommand].get("ckpt_path"):
            self.config = self.parser.parse_args([self.config.subcommand, *given], namespace=self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except ValueError as e:  # Lightning's checks once the data are known: one line
            if "val_check_interval" not in str(e):
                raise
            raise GalgenError(f"Lightning refused the trainer options: {' '.join(str(e).split())}") from None
        except RuntimeError as e:  # a checkpoint of another family or shape: one line
            lost = rank_lost(e, self.trainer)  # or a DDP collective that failed: one line naming the rank lost
            if lost is not None:
                raise lost from None
            if "state_dict" not in str(e):
                raise
            ckpt = getattr(self.config[subcommand], "ckpt_path", None)
            raise GalgenError(
                f"--ckpt_path {ckpt} does not fit {type(self.model).__name__} with these options: {_state_dict_summary(str(e))}"
            ) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The data/model link, and one key per test (``two_models:``, ..., ``morphology:``): a test
        given there joins ``trainer.callbacks``; ``null`` (the default) leaves it out. Overlays merge
        into a test's ``init_args`` instead of restating a callback list."""
        parser.link_arguments("data.image_size", "model.init_args.image_size")
        for test in TESTS:
            parser.add_lightning_class_args(test, test.name, subclass_mode=True, required=False)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        """The tests of the test keys join the trainer's callbacks; a test set to ``null`` is off.
        A trainer option Lightning refuses (``devices -2``, an accelerator whose package is
        missing) is one line."""
        try:
            return super()._instantiate_trainer(config, [c for c in callbacks if c is not None])
        except (TypeError, ValueError, ModuleNotFoundError) as e:
            if isinstance(e, ModuleNotFoundError) and missing_extra(e):
                raise
            raise GalgenError(f"Lightning refused the trainer options: {' '.join(str(root_cause(e)).split())}") from e

    def _set_seed(self) -> None:
        cfg = self.config[self.config["subcommand"]] if self.config.get("subcommand") else self.config
        check_seed(cfg.get("seed_everything"))
        super()._set_seed()

    def before_instantiate_classes(self) -> None:
        if self.subcommand in EXTRA_COMMANDS:  # e.g. galgen --config x.yaml report: options before the command
            raise GalgenError(f"galgen {self.subcommand} takes its own options after its name: galgen {self.subcommand} --help")
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        saved = cfg.clone()  # config.yaml: as given, before the run directory's paths are filled in
        check_config(cfg, self.subcommand)
        folder = self._choose_run_dir(cfg)
        cfg.trainer.default_root_dir = str(folder)
        self.run_directory.reference = self._reference_run(folder, getattr(cfg, "ckpt_path", None))
        for logger in entries(cfg.trainer.logger):
            args = getattr(logger, "init_args", None)
            if args is None:
                continue
            if getattr(args, "save_dir", "missing") in (None, ".", ""):
                args.save_dir = str(folder)
            if "WandbLogger" in str(getattr(logger, "class_path", "")) and getattr(args, "name", "missing") is None:
                args.name = folder.name
        for callback in entries(cfg.trainer.callbacks):
            args = getattr(callback, "init_args", None)
            if "ModelCheckpoint" in str(getattr(callback, "class_path", "")) and args is not None and args.dirpath is None:
                args.dirpath = str(folder / CHECKPOINTS)
        callbacks = entries(cfg.trainer.callbacks)
        if cfg.trainer.logger is False and any(_is_lr_monitor(c) for c in callbacks):  # it has nothing to write to
            cfg.trainer.callbacks = [c for c in callbacks if not _is_lr_monitor(c)]
            note = "trainer.logger is false, so LearningRateMonitor is left out (it writes to a logger)"
            print(f"galgen: note: {note}", file=sys.stderr)
        paths = [str(getattr(callback, "class_path", type(callback).__name__)) for callback in entries(cfg.trainer.callbacks)]
        if not tests_on(cfg):
            names = ", ".join(f"--{test.name}" for test in TESTS)
            print(f"galgen: note: no test is on ({names} all null): no numbers and no verdict", file=sys.stderr)
        if use_line_progress(cfg.trainer.enable_progress_bar, paths):  # a log, not a terminal: a line per epoch
            self.trainer_defaults["callbacks"] = [*self.trainer_defaults.get("callbacks", []), LineProgress()]
        parser = self._parser(self.subcommand)
        with warnings.catch_warnings():  # jsonargparse >= 4.49 deprecates skip_none (its new name is not in older ones)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.run_directory.config_text = parser.dump(rerunnable(saved, self.subcommand), skip_none=False)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as e:  # a constructor refused an option value: one line, not a traceback
            raise GalgenError(f"invalid option value: {root_cause(e)}") from e
        self.trainer.callbacks = averaging_after_tests(self.trainer.callbacks)
        configure_ddp(self.trainer)  # DDP: the collective timeout (GALGEN_DDP_TIMEOUT), a lost rank named
        from galgen_lightning import wandb_utils

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        wandb_utils.configure(self.trainer.loggers, Path(self.trainer.default_root_dir), cfg, self.subcommand or "fit")
        wandb_utils.connect(self.trainer.loggers)  # now: Lightning would start it where a failure is a traceback

    def _reference_run(self, folder: Path, ckpt: str | None) -> Path | None:
        """The run whose training subsets this command must use: a resumed fit's own folder, or
        the run a validated checkpoint belongs to (``<run>/checkpoints/<file>``); None otherwise."""
        if self.subcommand == "fit":
            return folder if ckpt else None
        if is_file_path(ckpt) and Path(ckpt).resolve().parent.name == CHECKPOINTS:
            return Path(ckpt).resolve().parent.parent
        return None

    def _choose_run_dir(self, cfg) -> Path:
        given = cfg.trainer.default_root_dir
        ckpt = getattr(cfg, "ckpt_path", None)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.subcommand != "fit":
            base = Path(given) if given else (Path(ckpt).resolve().parent.parent if ckpt else Path("runs"))
            name = f"{self.subcommand}-{stamp}"
            if not is_rank_zero_launch():
                return make_dir(base / name)
            # a new folder (-2 when another validate of this run started in the same second), locked,
            # one process per folder as for fit; removed again if the command fails before writing to it
            self.lock = RunLock.new(base, name)
            self.fresh_dir = self.lock.folder
            return self.lock.folder
        if not given:
            family = family_of(cfg.model.class_path)
            name = f"{family}-n{cfg.data.n}-seed{cfg.data.seed}-{stamp}"
            if not is_rank_zero_launch():
                return Path("runs") / name
            self.lock = RunLock.new(Path("runs"), name)  # -2 when another run started in the same second
            return self.lock.folder
        folder = Path(given)
        # checked before the lock, whose file would be left among the user's files
        foreign = [] if RunDir(folder).status() or not folder.is_dir() else sorted(p.name for p in folder.iterdir())
        foreign = [name for name in foreign if not _galgen_own(name)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise GalgenError(
                f"--trainer.default_root_dir {folder} is not empty and holds no galgen run ({shown}): "
                "a run would overwrite what is there; choose a new or empty directory"
            )
        if is_rank_zero_launch():  # one galgen fit per run directory (DDP's other ranks share it)
            self.lock = RunLock(folder).acquire()
        status = RunDir(folder).status()
        if status and not ckpt and status.get("state") == "failed" and not RunDir(folder).holds_work():
            print(  # a mistake found once fit had started (the data's setup, Lightning's own checks): nothing to lose
                f"galgen: note: {folder} holds a run that failed before any checkpoint or result; starting it afresh",
                file=sys.stderr,
            )
        elif status and not ckpt:
            raise GalgenError(
                f"--trainer.default_root_dir {folder} already holds a {status.get('state', 'previous')} run; "
                "choose another directory, or resume it with --ckpt_path"
            )
        if status and is_file_path(ckpt) and not Path(ckpt).resolve().is_relative_to(folder.resolve()):
            raise GalgenError(
                f"--ckpt_path {ckpt} is not a checkpoint of the run in --trainer.default_root_dir {folder}: "
                f"resume a run from its own {CHECKPOINTS}/, or start a new run in a new directory"
            )
        return folder


def _galgen_own(name: str) -> bool:
    """What galgen itself may have put in a run directory before its ``status.json``: the lock,
    the sweep's launch record and logs, the W&B identity and run of an attempt that stopped early."""
    return name in (".lock", LAUNCH, WANDB, "wandb", "sweep.log") or (name.startswith("sweep.rank") and name.endswith(".log"))


def rerunnable(cfg, subcommand: str | None):
    """The configuration as ``config.yaml`` keeps it: ``galgen fit --config <run>/config.yaml``
    reruns it as is into a new run directory. The run directory (``trainer.default_root_dir``) is
    left empty, and so are the paths the CLI derives from it (a logger's ``save_dir`` and
    ``WandbLogger.name``, ``ModelCheckpoint.dirpath``: ``cfg`` is the configuration before they
    were filled in); a fit's ``ckpt_path`` too (the checkpoint it resumed from is in
    ``status.json``'s command), so the rerun trains afresh."""
    out = cfg.clone()
    out.trainer.default_root_dir = None
    if subcommand == "fit" and "ckpt_path" in out:
        out.ckpt_path = None
    return out


def _state_dict_summary(message: str) -> str:
    """``load_state_dict``'s many-line report as a short phrase."""
    import re

    missing = re.search(r"Missing key\(s\) in state_dict: (.*?)(?:\.\s|$)", message, re.S)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s|$)", message, re.S)
    sizes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape (torch.Size\([^)]*\)) from checkpoint, "
        r"the shape in current model is (torch.Size\([^)]*\))",
        message,
    )
    missing_keys = [k.strip() for k in missing.group(1).split(",")] if missing else []
    unexpected_keys = [k.strip() for k in unexpected.group(1).split(",")] if unexpected else []
    return weights_mismatch(missing_keys, unexpected_keys, sizes) or " ".join(message.split())[:300]


EXTRA_COMMANDS = {
    "sample": "galgen_lightning.sample",
    "report": "galgen_lightning.report",
    "sweep": "galgen_lightning.sweep",
    "demo": "galgen_lightning.demo",
    "data": "galgen_lightning.data.command",
    "sync": "galgen_lightning.sync",
}
"""Subcommands outside LightningCLI (``galgen report --help``, ...): each module's ``main(argv)``."""

SUBCOMMANDS = {
    "fit": "train a pair (A and B on disjoint subsets) and run the tests",
    "validate": "re-run the tests on a checkpoint (into <run>/validate-<time>/)",
    "sample": "draw samples of a trained pair from shared noise (.npz, .fits or .png)",
    "report": "HTML report (figures with PDFs, tables, verdicts) of a run or a sweep",
    "sweep": "train pairs over N and seeds, then the report",
    "demo": "two N end to end on a CPU, with the judge's label for each",
    "data": "download, convert or inspect a data source",
    "sync": "upload the offline W&B runs of a run or a sweep",
}
"""Every ``galgen`` subcommand and its line in ``galgen --help``."""


def missing_extra(error: BaseException) -> str | None:
    """The one-line message for a missing optional package, or None when ``error`` is not one."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            top = error.name.split(".")[0]
            if top in OPTIONAL_EXTRAS:
                return f"this needs the optional package {top}, which is not installed: {install_hint(top)}"
        error = error.__cause__ or error.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``galgen`` command (``args`` for in-process use and tests)."""
    from galgen_lightning.wandb_utils import choose_mode

    # the seed is in the run's config.yaml; Lightning's "Seed set to N" line would stand before a one-line error
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No seed found, seed set to 0")
    # a machine with SLURM installed (a login node, the SLURM tests) but a run not started by srun:
    # Lightning's hint is noise there; under srun (galgen sweep --launcher slurm) it is not shown
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    if args is not None:  # in-process use: the argument list is the command
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    argv = resolve_configs(sys.argv[1:] if args is None else list(args))
    if args is not None:
        args = argv
    elif argv != sys.argv[1:]:
        args = argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli, handlers = None, {}
    try:
        choose_mode()  # WANDB_MODE wins (one W&B knows); offline without credentials
        check_config_files(argv)
        if argv and argv[0] in EXTRA_COMMANDS:  # galgen report / galgen sweep: their own small CLIs
            import importlib

            code = importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
            if code:  # a main that returns its exit status (galgen demo)
                sys.exit(int(code))
            return
        handlers = install_signal_handlers()  # SIGTERM, SIGINT, SIGUSR1: stop at a step boundary (galgen_lightning.faults)
        cli = GalgenCLI.__new__(GalgenCLI)
        cli.lock = None
        cli.__init__(args=args)
    except Interrupted as e:
        print(f"galgen: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:  # Ctrl-C in a command without galgen's signal handlers (sample, report, data ...)
        print("galgen: interrupted by SIGINT; what was written is whole (files are written all or nothing)", file=sys.stderr)
        sys.exit(130)
    except GalgenError as e:
        print(f"galgen: error: {e}", file=sys.stderr)
        sys.exit(2)
    except MisconfigurationException as e:  # Lightning's word for settings that cannot work together
        print(f"galgen: error: Lightning refused this configuration: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except ImportError as e:
        message = missing_extra(e)
        if message is None:
            raise
        print(f"galgen: error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a write that failed outside galgen's own writers (a full disk, a read-only folder)
        if e.errno is None or e.filename is None:
            raise
        print(f"galgen: error: {write_error(e.filename, e, 'write')}", file=sys.stderr)
        sys.exit(2)
    finally:
        if cli is not None and cli.lock is not None:
            cli.lock.release()
        fresh = getattr(cli, "fresh_dir", None)
        if fresh is not None and fresh.is_dir() and not any(fresh.iterdir()):  # a validate that wrote nothing leaves nothing
            fresh.rmdir()
        if args is not None:  # in-process use: the caller's handlers again
            restore_signal_handlers(handlers)
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()  # the next in-process run gets its own W&B run


if __name__ == "__main__":
    main()
