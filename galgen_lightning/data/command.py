"""``galgen data``: download survey cutouts, convert a source into its cache, inspect a source.

    galgen data download sdss_positions.csv --out data/cutouts --first 1000
    galgen data convert --source galgen_lightning.data.FitsCutouts --source.directory data/cutouts --source.crop 256
    galgen data inspect --source galgen_lightning.data.FitsCutouts --source.directory data/cutouts --n 100 --nearest true

Each subcommand has its own ``--help``; ``--source.help CLASS`` lists a source's options.
See docs/real-data.md.
"""

from __future__ import annotations

import os
import re

COMMANDS = {
    "download": ("galgen_lightning.data.download", "download", True),
    "convert": ("galgen_lightning.data.inspect", "convert", False),
    "inspect": ("galgen_lightning.data.inspect", "inspect", False),
}
"""Subcommand: (module, function, whether required arguments are positional)."""


def _summary(function) -> str:
    return (function.__doc__ or "").strip().splitlines()[0]


def _description(function) -> str:
    """The docstring up to its ``Args:`` section (the options list the arguments)."""
    return (function.__doc__ or "").split("\n    Args:")[0].strip()


def build_parser():
    """The parser of ``galgen data``: one subcommand per function of :data:`COMMANDS`."""
    import importlib

    from galgen_lightning.errors import one_line_argument_parser

    parser_class = one_line_argument_parser()
    parser = parser_class(
        prog="galgen data",
        description="Data for galgen: 'download' FITS cutouts from a catalogue of positions, 'convert' a source into the cache "
        "galgen fit reads, 'inspect' a source (counts, rejections, duplicates, pixel statistics, image grids). "
        "See docs/real-data.md.",
    )
    commands = parser.add_subcommands(dest="command", required=True)
    for name, (module, attr, positional) in COMMANDS.items():
        function = getattr(importlib.import_module(module), attr)
        sub = parser_class(prog=f"galgen data {name}", description=_description(function))
        sub.add_function_arguments(function, as_positional=positional)
        commands.add_subcommand(name, sub, help=_summary(function))
    return parser


_OPTION = re.compile(r"\bdata\.(source\.init_args\.|source\.|source\b|n_val\b|n\b|image_size\b|dedup_threshold\b)")


def cli_names(message: str) -> str:
    """A message of the sources or the DataModule with their options named as ``galgen data``
    takes them: ``data.source.crop`` -> ``--source.crop``, ``data.image_size`` -> ``--image_size``."""

    def name(match: re.Match) -> str:
        key = match.group(1)
        return "--source." if key.startswith("source.") else f"--{key}"

    return _OPTION.sub(name, message)


def main(argv: list[str]) -> None:
    """``galgen data ...`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    import importlib

    from galgen_lightning.errors import GalgenError, root_cause

    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    cfg = parser.parse_args(argv)
    name = cfg.command
    try:
        try:
            init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
        except GalgenError:
            raise
        except (ValueError, TypeError) as e:  # a source's constructor refused an option (jsonargparse wraps it)
            cause = root_cause(e)
            if isinstance(cause, GalgenError):
                raise cause from None
            raise GalgenError(f"galgen data {name}: invalid option value: {cause}") from None
        module, attr, _ = COMMANDS[name]
        function = getattr(importlib.import_module(module), attr)
        kwargs = {k: v for k, v in vars(init[name]).items() if not k.startswith("__") and k != "config"}
        function(**kwargs)
    except GalgenError as e:
        raise GalgenError(cli_names(str(e))) from None
