"""The real `galgen` CLI with tiny configs: fit, validate, the run directory, and user mistakes."""

from __future__ import annotations

import json

import pytest
from support import CONFIGS, QUICK_DIFFUSION, TESTS_OFF, TINY_DIFFUSION, read_jsonl, run_cli

FAMILY = QUICK_DIFFUSION
TINY = [*TINY_DIFFUSION, "--trainer.fast_dev_run=true"]


def test_fit_fast_dev_run_writes_run_directory(tmp_path, tiny_source_args):
    run = tmp_path / "run"
    code = run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"])
    assert code == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    manifest = json.loads((run / "manifest.json").read_text())
    hashes = {s: set(manifest["subsets"][s]["sha1"]) for s in ("a", "b", "val")}
    assert len(hashes["a"]) == 8 and not (hashes["a"] & hashes["b"]) and not (hashes["val"] & (hashes["a"] | hashes["b"]))
    assert "DiffusionPair" in (run / "config.yaml").read_text()
    tests = {r["test"] for r in read_jsonl(run / "metrics.jsonl")}
    assert tests == {"two_models", "denoising"}
    assert (run / "eval" / "two_models" / "epoch_0000.png").stat().st_size > 1000
    assert (run / "eval" / "two_models" / "epoch_0000_grid.png").exists()
    assert (run / "eval" / "denoising" / "epoch_0000.npz").exists()


def test_existing_run_directory_is_not_overwritten(tmp_path, tiny_source_args, capsys):
    run = tmp_path / "run"
    assert run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]) == 0
    before = (run / "status.json").read_text()
    capsys.readouterr()  # the first run's output (progress bars) is not the second's
    code = run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("galgen: error:") and str(run) in err[-1]
    assert (run / "status.json").read_text() == before


def test_a_run_is_kept_from_what_is_not_its_own(tmp_path, tiny_source_args, capsys):
    """A folder of the user's files, another run's checkpoint, other training subsets on resume or
    validate, validate without a checkpoint: one line each, and nothing already there changes."""
    first = tmp_path / "first"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY]
    assert run_cli([*args, f"--trainer.default_root_dir={first}"]) == 0
    ckpt = next((first / "checkpoints").glob("*.ckpt"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my notes\n")
    second = tmp_path / "second"
    assert run_cli([*args, f"--trainer.default_root_dir={second}"]) == 0
    capsys.readouterr()
    kept = (mine / "config.yaml", first / "manifest.json", first / "status.json", second / "status.json")
    before = {p: p.read_bytes() for p in kept}
    cases = [
        ([*args, f"--trainer.default_root_dir={mine}"], f"default_root_dir {mine} is not empty and holds no galgen run"),
        ([*args, f"--trainer.default_root_dir={second}", f"--ckpt_path={ckpt}"], "is not a checkpoint of the run in"),
        (
            [*args, "--data.seed=5", f"--trainer.default_root_dir={first}", f"--ckpt_path={ckpt}"],
            f"other training subsets A and B than the run in {first} was trained on (seed 0 -> 5)",
        ),
        (["validate", f"--config={first / 'config.yaml'}", f"--ckpt_path={ckpt}", "--data.n=6"], "(n 8 -> 6)"),
    ]
    for command, expected in cases:
        assert run_cli(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("galgen: error:") and expected in err[-1], (command, err[-3:])
    assert all(p.read_bytes() == content for p, content in before.items())
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"] and not list(first.glob("validate-*"))
    untrained = tmp_path / "untrained"  # validate without a checkpoint: an untrained baseline, said and recorded
    assert run_cli(["validate", f"--config={first / 'config.yaml'}", f"--trainer.default_root_dir={untrained}"]) == 0
    assert "validating the freshly initialised pair (an untrained baseline)" in capsys.readouterr().err
    (folder,) = untrained.glob("validate-*")
    assert json.loads((folder / "status.json").read_text())["checkpoint"] is None


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00\xa6\xff", "is not a text (UTF-8) YAML file"),
        (b"data:\n  n: 4\n\tn_val: 8\n", "not valid YAML at line 3, column 1"),
        (b"- a\n- b\n", "holds a list, not options"),
        (b"", "is empty"),
    ],
)
def test_a_bad_config_file_is_one_line_that_names_it(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad config.yaml"
    bad.write_bytes(content)
    for command in (["fit", *FAMILY, f"--config={bad}"], ["sweep", "--config", str(bad)]):
        assert run_cli(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"galgen: error: --config {bad}") and expected in err[0], err


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["--data.n=200"], "2 * n + n_val"),
        (["--data.n=0"], "data.n"),
        (["--data.source=galgen_lightning.data.ArrayFile", "--data.source.path=/nonexistent/x.npy"], "/nonexistent/x.npy"),
        (["--model.init_args.blocks=0"], "model.blocks must be at least 1, got 0"),
        (["--model.init_args.beta=1.5"], "beta must be in (0, 1], got 1.5"),
        (
            ["--trainer.callbacks+=galgen_lightning.evaluation.InversionTest"],
            "InversionTest needs a family with latent_shapes (normalizing flows such as Glow); DiffusionPair has none",
        ),
        (["--two_models.every_n_epochs=0"], "TwoModelsTest.every_n_epochs must be positive, got 0"),
        (
            ["--trainer.callbacks+=galgen_lightning.evaluation.TwoModelsTest"],
            "two_models: TwoModelsTest is also in trainer.callbacks; give it once",
        ),
        (
            ["--inversion=galgen_lightning.evaluation.InversionTest"],
            "InversionTest needs a family with latent_shapes (normalizing flows such as Glow); DiffusionPair has none",
        ),
        (["--two_models.n_samples=0"], "TwoModelsTest.n_samples must be positive, got 0"),
        (["--two_models.quantile=1.5"], "TwoModelsTest.quantile must be in (0, 1), got 1.5"),
        (["--model.init_args.channels=3"], "--model.init_args.channels is 3, but galgen's data have 1 channel"),
        (["--trainer.accumulate_grad_batches=0"], "--trainer.accumulate_grad_batches must be at least 1, got 0"),
        (["--trainer.devices=-2"], "Lightning refused the trainer options: `devices` selected with `CPUAccelerator`"),
        (["--trainer.accelerator=tpu"], "Lightning refused the trainer options: Requirement 'torch_xla"),
        (["--seed_everything=-1"], "--seed_everything must be from 0 to 4294967295 (or true: a random seed), got -1"),
        (["--trainer.num_nodes=2"], "--trainer.num_nodes 2: no multi-node launch found"),
        (["--trainer.check_val_every_n_epoch=0"], "--trainer.check_val_every_n_epoch must be at least 1 (or null), got 0"),
        (["--trainer.val_check_interval=0"], "--trainer.val_check_interval must be positive"),
        # a fit that would train or evaluate nothing (and end "complete" with no numbers)
        (["--trainer.fast_dev_run=false", "--trainer.max_epochs=0"], "--trainer.max_epochs 0: this fit would train nothing"),
        (["--trainer.fast_dev_run=false", "--trainer.limit_train_batches=0"], "--trainer.limit_train_batches 0: this fit"),
        (["--trainer.fast_dev_run=false", "--trainer.limit_val_batches=0.0"], "--trainer.limit_val_batches 0 turns validation"),
        (
            ["--trainer.fast_dev_run=false", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=3"],
            "--trainer.check_val_every_n_epoch 3 is above --trainer.max_epochs 2",
        ),
    ],
)
def test_bad_options_give_one_line(tmp_path, tiny_source_args, capsys, bad, expected):
    code = run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={tmp_path / 'r'}", *bad])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error:") and expected in err[0]
    assert not (tmp_path / "r").exists()  # nothing written: no folder left behind


def test_a_data_error_inside_fit_leaves_no_folder_and_the_same_command_runs_once_fixed(tmp_path, tiny_source_args, capsys):
    """The data's setup runs inside Lightning's fit, before the run directory is written: a mistake
    found there (too few distinct images) leaves nothing that would block the corrected rerun."""
    import numpy as np

    dups = tmp_path / "dups.npy"
    np.save(dups, np.tile(np.random.default_rng(0).random((10, 16, 16), dtype=np.float32), (20, 1, 1)))
    run = tmp_path / "r"
    bad = ["--data.source=galgen_lightning.data.ArrayFile", f"--data.source.path={dups}", "--data.image_size=16"]
    assert run_cli(["fit", *FAMILY, *bad, *TINY, f"--trainer.default_root_dir={run}"]) == 2
    assert "only 10 usable" in capsys.readouterr().err and not run.exists()
    assert run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]) == 0


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["--data.no_such_option=3"], "unrecognized arguments: --data.no_such_option=3"),
        (["--config=no/such/file.yaml"], "no/such/file.yaml"),
        (["--model.init_args.width=abc"], "DiffusionPair: Parser key \"width\": Expected a <class 'int'>. Got value: abc"),
        (["--model.class_path=nowhere.Pair"], "nowhere.Pair: No module named 'nowhere'"),
    ],
)
def test_parse_errors_are_one_line_without_the_usage(tmp_path, capsys, bad, expected):
    code = run_cli(["fit", *FAMILY, *bad, f"--trainer.default_root_dir={tmp_path / 'r'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error:") and expected in err[0], err
    assert err[0].endswith("(galgen fit --help lists the options)")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, tiny_source_args):
    """DDP over 2 CPU processes (gloo): same split on both ranks (checked by the DataModule), callbacks log once."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "galgen_lightning.cli", "fit", *FAMILY, *tiny_source_args, *TINY]
    cmd += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(run / "metrics.jsonl")
    assert sorted(r["test"] for r in records) == ["denoising", "two_models"]
    assert json.loads((run / "status.json").read_text())["state"] == "complete"


def test_bf16_mixed_precision_and_validate_on_checkpoint(tmp_path, tiny_source_args):
    run = tmp_path / "run"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, "--trainer.fast_dev_run=false", "--trainer.max_epochs=1"]
    args += ["--data.samples_per_epoch=16", "--trainer.precision=bf16-mixed", f"--trainer.default_root_dir={run}"]
    assert run_cli(args) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    assert run_cli(["validate", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}"]) == 0
    assert run_cli(["validate", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}"]) == 0  # a second, maybe the same second
    validations = sorted(p for p in run.iterdir() if p.name.startswith("validate-"))
    assert len(validations) == 2 and not any((v / ".lock").exists() and len(list(v.iterdir())) == 1 for v in validations)
    fit_status = json.loads((run / "status.json").read_text())
    assert fit_status["state"] == "complete"  # the fit run is untouched
    for folder in validations:
        assert {r["test"] for r in read_jsonl(folder / "metrics.jsonl")} == {"two_models", "denoising"}
        status = json.loads((folder / "status.json").read_text())  # where the validated checkpoint's training stood
        last_epoch = max(r["epoch"] for r in read_jsonl(run / "metrics.jsonl"))  # the epoch as records number it
        assert status["state"] == "complete" and status["checkpoint"]["path"] == str(ckpt)
        assert (status["checkpoint"]["epoch"], status["checkpoint"]["global_step"]) == (last_epoch, fit_status["global_step"])
        assert fit_status["global_step"] > 0


def test_weight_averaging_runs_after_the_tests_whatever_the_config_order(tmp_path, tiny_source_args):
    """EMA listed before the tests: the CLI moves it after them, so they evaluate the EMA weights."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    from galgen_lightning.evaluation import DenoisingTest, TwoModelsTest
    from galgen_lightning.evaluation.base import averaging_after_tests

    ema, ckpt, two, den = EMAWeightAveraging(), ModelCheckpoint(), TwoModelsTest(), DenoisingTest()
    assert averaging_after_tests([ema, two, ckpt, den]) == [two, ckpt, den, ema]
    assert averaging_after_tests([two, den, ema, ckpt]) == [two, den, ema, ckpt]
    assert averaging_after_tests([ema, ckpt]) == [ema, ckpt]  # no tests: untouched

    config = tmp_path / "ema_first.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n      init_args:\n        decay: 0.9\n"
        "two_models:\n  init_args:\n    n_samples: 8\ndenoising: null\n"  # the tests join after trainer.callbacks
    )
    run = tmp_path / "run"
    args = ["fit", *FAMILY, f"--config={config}", *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]
    assert run_cli(args) == 0
    assert [r["test"] for r in read_jsonl(run / "metrics.jsonl")] == ["two_models"]


@pytest.mark.parametrize("family", ["diffusion", "glow", "gan"])
def test_overlays_change_tests_by_name_without_restating_lists(family, capsys):
    """The paper config of each family turns on the two-models test, the family's own test and the
    morphology test (the report's Figures 7, 8, 15), each under its own key. The quick overlay
    only turns morphology off (``morphology: null``), and the CPU profile changes a few options of
    the tests it keeps: everything else, the callback list included, is the paper config's."""
    import yaml

    def config(*configs: str, extra: tuple[str, ...] = ()) -> dict:
        assert run_cli(["fit", *(f"--config={CONFIGS / c}" for c in configs), *extra, "--print_config"]) == 0
        return yaml.safe_load(capsys.readouterr().out)

    from galgen_lightning.evaluation import TESTS

    assert TESTS_OFF == "".join(f"{test.name}: null\n" for test in TESTS)  # the tests' helper knows every key
    own = {"diffusion": "denoising", "glow": "inversion", "gan": "discriminator"}[family]
    paper = config(f"{family}.yaml")
    on = {test.name for test in TESTS if paper[test.name] is not None}
    assert on == {"two_models", own, "morphology"}
    assert paper["morphology"]["class_path"] == "galgen_lightning.evaluation.MorphologyTest"
    quick = config(f"{family}.yaml", f"quick/{family}.yaml")
    assert quick["morphology"] is None
    assert quick["trainer"]["callbacks"] == paper["trainer"]["callbacks"]
    assert all(quick[name] == paper[name] for name in on - {"morphology"})
    cpu = config(f"{family}.yaml", f"cpu/{family}.yaml")
    assert cpu["morphology"] is None and cpu["two_models"]["init_args"]["n_samples"] == 64
    paper_callbacks = paper["trainer"]["callbacks"]
    assert cpu["trainer"]["callbacks"][: len(paper_callbacks)] == paper_callbacks  # kept; diffusion's EMA appended
    assert cpu["two_models"]["init_args"]["quantile"] == paper["two_models"]["init_args"]["quantile"]  # merged, not replaced
    # one option of one test from the command line; a test turned back on by its class name
    again = config(f"{family}.yaml", f"quick/{family}.yaml", extra=("--two_models.n_samples=32", "--morphology=MorphologyTest"))
    assert again["two_models"]["init_args"]["n_samples"] == 32
    assert again["morphology"]["class_path"] == "galgen_lightning.evaluation.MorphologyTest"


def test_status_reports_progress_after_each_training_epoch(tmp_path):
    """status.json says how far a running fit has got (epochs done, global step)."""
    from types import SimpleNamespace

    from galgen_lightning.rundir import RunDir, RunDirectory

    trainer = SimpleNamespace(
        is_global_zero=True,
        default_root_dir=str(tmp_path),
        state=SimpleNamespace(fn="fit"),
        current_epoch=2,
        global_step=600,
        max_epochs=10,
    )
    RunDirectory(command=["galgen", "fit"]).on_train_epoch_end(trainer, None)
    status = RunDir(tmp_path).status()
    assert (
        status["state"] == "running"
        and status["epochs_done"] == 3
        and status["max_epochs"] == 10
        and status["global_step"] == 600
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--bogus=1"], "unrecognized arguments: --bogus=1 (galgen sweep --help lists the options)"),
        (["sweep", "--ns=abc"], "--ns must be integers separated by commas (e.g. 10,100), got 'abc'"),
        (["report"], "the following arguments are required: path (galgen report --help lists the options)"),
        (["demo", "--small-n=x"], "argument --small-n: invalid int value: 'x' (galgen demo --help lists the options)"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus (galgen demo --help lists the options)"),
        (["demo", "--epochs=0"], "galgen demo --epochs must be at least 1, got 0"),
        (["demo", "--large-n=4"], "--small-n and --large-n are both 4; the demo compares two N"),
        (["demo", "--configs=/no/such"], "config /no/such/diffusion.yaml not found"),
    ],
)
def test_report_sweep_and_demo_parse_errors_are_one_line(capsys, argv, expected):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error:") and expected in err[0], err


@pytest.mark.parametrize("ckpt, expected", [("no/such.ckpt", "no such file"), (".", "is a directory, not a checkpoint file")])
def test_missing_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys, ckpt, expected):
    run = tmp_path / "r"
    code = run_cli(["validate", *FAMILY, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={run}"])
    assert code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Seed set to" not in line]
    assert err == [f"galgen: error: --ckpt_path {ckpt}: {expected}"]
    assert not run.exists()


def test_help_lists_every_subcommand_with_one_line(capsys):
    from galgen_lightning.cli import EXTRA_COMMANDS, SUBCOMMANDS

    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    names = ["fit", "validate", *EXTRA_COMMANDS]
    assert set(names) == set(SUBCOMMANDS) >= {"fit", "validate", "sample", "report", "sweep", "demo", "data", "sync"}
    assert "{" + ",".join(names) + "}" in "".join(out.split())  # the usage line
    flat = " ".join(out.split())
    for name in names:
        assert f" {name} {SUBCOMMANDS[name]}" in flat, name


def test_a_run_config_yaml_reruns_into_a_new_run_directory(tmp_path, tiny_source_args, monkeypatch):
    """config.yaml keeps no path of its run directory (nor the checkpoint a fit resumed from), so
    ``galgen fit --config <run>/config.yaml`` trains again into a fresh folder; the first run is untouched."""
    import yaml

    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    assert run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={first}"]) == 0
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["trainer"]["default_root_dir"] is None and config["ckpt_path"] is None
    loggers = config["trainer"]["logger"]
    loggers = loggers if isinstance(loggers, list) else [loggers]
    assert loggers and all(str(first) not in json.dumps(logger) for logger in loggers)
    assert str(first) not in (first / "config.yaml").read_text()
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    assert run_cli(["fit", f"--config={first / 'config.yaml'}"]) == 0
    (second,) = (tmp_path / "runs").iterdir()
    assert second.name.startswith("diffusion-n8-seed0-")
    assert json.loads((second / "status.json").read_text())["state"] == "complete"
    assert {r["test"] for r in read_jsonl(second / "metrics.jsonl")} == {"two_models", "denoising"}
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_sync_lists_offline_runs_and_needs_a_login(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    pending = [
        sweep / "a" / "wandb" / "offline-run-20260101_000000-aaaa1111",
        sweep / "b" / "wandb" / "offline-run-20260102_000000-bbbb2222",
    ]
    done = sweep / "c" / "wandb" / "offline-run-20260103_000000-cccc3333"
    report = sweep / "report" / "wandb" / "offline-run-20260104_000000-dddd4444"
    for folder in (*pending, done, report):
        folder.mkdir(parents=True)
        (folder / f"run-{folder.name.rsplit('-', 1)[1]}.wandb").write_bytes(b":W&B")
    (done / "run-cccc3333.wandb.synced").touch()  # uploaded already (W&B's marker)
    (sweep / "a" / "checkpoints" / "wandb" / "offline-run-x").mkdir(parents=True)  # not where runs log

    assert run_cli(["sync", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[:-1] == [str(p) for p in (*pending, report)]
    assert out[-1] == f"galgen sync: would upload 3 offline W&B run(s) from {sweep} (1 already synced)"

    assert run_cli(["sync", str(sweep / "c"), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == f"galgen sync: no offline W&B run to upload in {sweep / 'c'} (1 already synced)"

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert run_cli(["sync", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error: sync: not logged in to W&B") and "wandb login" in err[0]
    assert run_cli(["sync", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"galgen: error: sync: {tmp_path / 'nowhere'} does not exist"


def test_a_log_gets_a_line_per_epoch_instead_of_a_bar(tmp_path, tiny_source_args, capsys):
    """stderr is not a terminal here (pytest captures it): the fit prints one line per epoch, with
    its batches, time and losses, and no carriage-return bar updates."""
    run = tmp_path / "run"
    args = ["fit", *QUICK_DIFFUSION, *tiny_source_args, *TINY_DIFFUSION, "--trainer.max_epochs=2"]
    args += ["--data.samples_per_epoch=16", "--two_models=null", "--denoising=null", f"--trainer.default_root_dir={run}"]
    assert run_cli(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], lines
    assert all(" 2 batches in " in line and "train/loss_a_epoch" in line for line in lines), lines


def test_trainer_settings_that_cannot_work_together_are_one_line(tmp_path, tiny_source_args, capsys):
    """Settings Lightning refuses (a progress bar callback with the bar switched off) are one line,
    exit 2. Without a logger the configs' LearningRateMonitor, which only writes to a logger, is
    left out with a note, and the run completes."""
    run = tmp_path / "run"
    args = ["fit", *QUICK_DIFFUSION, *tiny_source_args, *TINY_DIFFUSION, "--trainer.fast_dev_run=true"]
    bad = ["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.enable_progress_bar=false"]
    assert run_cli([*args, *bad, f"--trainer.default_root_dir={run}"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("galgen:")]
    assert len(err) == 1 and err[0].startswith("galgen: error: Lightning refused this configuration: "), err
    assert "enable_progress_bar=False" in err[0] and "TQDMProgressBar" in err[0]
    assert run_cli([*args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path / 'quiet'}"]) == 0
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("galgen:")]
    assert err == ["galgen: note: trainer.logger is false, so LearningRateMonitor is left out (it writes to a logger)"]
    assert json.loads((tmp_path / "quiet" / "status.json").read_text())["state"] == "complete"


def test_a_run_with_every_test_off_says_so(tmp_path, tiny_source_args, capsys):
    """No test on (every key null, none in trainer.callbacks): one note line, as no verdict will come."""
    args = ["fit", *QUICK_DIFFUSION, *tiny_source_args, *TINY_DIFFUSION, "--trainer.fast_dev_run=true"]
    args += ["--two_models=null", "--denoising=null", f"--trainer.default_root_dir={tmp_path / 'run'}"]
    assert run_cli(args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("galgen: note: no test is on")]
    assert len(notes) == 1 and "--two_models" in notes[0], notes
    assert not (tmp_path / "run" / "verdict.json").exists()


def test_a_manifest_without_subset_hashes_is_not_taken_for_other_subsets(tmp_path):
    from galgen_lightning.errors import GalgenError
    from galgen_lightning.rundir.callback import same_subsets

    run = tmp_path / "old"
    run.mkdir()
    new = {"n": 8, "seed": 0, "subsets": {"a": {"sha1": "x"}, "b": {"sha1": "y"}}}
    (run / "manifest.json").write_text(json.dumps({"n": 8, "seed": 0}))  # an older run's manifest
    same_subsets(run, new)
    (run / "manifest.json").write_text(json.dumps({**new, "seed": 3, "subsets": {"a": {"sha1": "z"}, "b": {"sha1": "y"}}}))
    with pytest.raises(GalgenError, match="seed 3 -> 0"):
        same_subsets(run, new)


@pytest.mark.parametrize(
    "family, bad, expected",
    [
        ("glow", "--model.init_args.lr=-1", "model.lr must be positive, got -1.0"),
        ("gan", "--model.init_args.lr=0", "model.lr must be positive, got 0.0"),
        ("gan", "--model.init_args.betas=[0.5,1.5]", "model.betas must be two numbers in [0, 1), got [0.5, 1.5]"),
        ("diffusion", "--model.init_args.lr=-1", "model.lr must be positive, got -1.0"),
    ],
)
def test_a_bad_learning_rate_is_one_line_before_anything_is_written(tmp_path, family, bad, expected, capsys):
    """torch's optimizer refuses it only once fit has started: each family checks it when built."""
    args = ["fit", f"--config={CONFIGS / f'{family}.yaml'}", f"--config={CONFIGS / 'quick' / f'{family}.yaml'}", bad]
    assert run_cli([*args, f"--trainer.default_root_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_multi_node_launch_is_recognised(monkeypatch):
    """--trainer.num_nodes above 1 needs a launcher that brings the other nodes: SLURM's srun,
    torchrun, or MASTER_ADDR with a rank set by hand (or by Kubeflow) on every node."""
    from galgen_lightning.preflight import cluster_detected

    for name in ("MASTER_ADDR", "NODE_RANK", "RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not cluster_detected()
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    assert not cluster_detected()  # an address alone says nothing of this node's rank
    monkeypatch.setenv("NODE_RANK", "1")
    assert cluster_detected()
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("RANK", "3")
    assert cluster_detected()
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "galgen")
    assert cluster_detected()


def test_a_fit_without_tests_may_skip_validation(tmp_path, tiny_source_args):
    """limit_val_batches 0 is refused only when a test would need the validation epoch."""
    args = [
        "fit",
        *QUICK_DIFFUSION,
        *tiny_source_args,
        *TINY_DIFFUSION,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
    ]
    args += [
        "--two_models=null",
        "--denoising=null",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    assert run_cli(args) == 0
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "complete"


def test_a_fit_refused_once_started_leaves_a_folder_the_corrected_command_reuses(tmp_path, tiny_source_args, capsys):
    """Lightning checks val_check_interval against the epoch's batches once the data are set up,
    after the run directory is written: one line, and the failed run, which holds no checkpoint
    and no result, does not block the corrected command in the same folder."""
    run = tmp_path / "r"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY_DIFFUSION, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    args += ["--denoising=null", "--two_models.n_samples=8", f"--trainer.default_root_dir={run}"]
    assert run_cli([*args, "--trainer.val_check_interval=100"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("galgen:")]
    assert len(err) == 1 and "Lightning refused the trainer options: `val_check_interval` (100)" in err[0], err
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    assert run_cli(args) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("galgen:")]
    assert f"galgen: note: {run} holds a run that failed before any checkpoint or result; starting it afresh" in err
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert run_cli(args) == 2  # a run with results is never started afresh over
    assert "already holds a complete run" in capsys.readouterr().err
