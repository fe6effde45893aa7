"""The one exception type for user mistakes (bad options, bad data, bad caches).

The CLI turns a :class:`GalgenError` into a single line ``galgen: error: ...`` on stderr and
exit status 2, instead of a traceback. Raise it with a message that names the option or file
and says what is wrong. :class:`OneLineParseErrors` does the same for the argument parsers of
``galgen fit/validate``, ``galgen report`` and ``galgen sweep``, :class:`OneLineArgparse` for
``galgen sample`` and ``galgen demo``.
"""

from __future__ import annotations

import argparse
import re
import sys


class GalgenError(Exception):
    """A user-facing error: the message is shown as one line, without a traceback."""


def require(ok: bool, option: str, rule: str, value: object) -> None:
    """Refuse an option value unless ``ok``: ``<option> must be <rule>, got <value>``.

    Args:
        ok: whether the value is acceptable.
        option: the option as the user writes it (``TwoModelsTest.quantile``).
        rule: what the value must be (``"in (0, 1)"``).
        value: the value given.

    Raises:
        GalgenError: the one-line message, unless ``ok``.
    """
    if not ok:
        raise GalgenError(f"{option} must be {rule}, got {value!r}")


OPTIONAL_EXTRAS = {
    "galsim": "simulation",
    "statmorph": "morphology",
    "photutils": "morphology",
    "h5py": "hdf5",
    "skimage": "hxdf",
}
"""Optional packages (their import names) and the extra of galgen that installs them (pyproject.toml)."""


def install_hint(*packages: str) -> str:
    """How to install optional ``packages``: ``pip install 'galgen[<extra>]'``."""
    extras = sorted({OPTIONAL_EXTRAS.get(p, p) for p in packages})
    return "pip install " + " ".join(f"'galgen[{extra}]'" for extra in extras)


def first_line(error: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """An exception in a few words for a one-line message: the first line of its text.

    Args:
        error: the exception.
        limit: most characters kept of that line.
        with_type: prefix the exception's type (``OSError: ...``); a message without text is
            always its type.
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]


_UNION = re.compile(
    r"""^(Parser key "[^"]+"): Does not validate against any of the Union subtypes .*?"""
    r"""Problem with given class_path '([^']+)': (.*?)(?: - Expected a <class 'NoneType'>.*)?$"""
)


def concise_parse_error(message: str) -> str:
    """jsonargparse's error message on one line; a ``class_path`` option's report cut to its reason."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    match = _UNION.match(text)
    if match:
        text = f"{match.group(1)}: {match.group(2)}: {match.group(3)}"
    return text if len(text) <= 600 else text[:600] + " ..."


class OneLineParseErrors:
    """Mixin for a jsonargparse ``ArgumentParser``: a parse error is one line and exit status 2.

    jsonargparse prints the whole usage (dozens of lines) before its message; the message is
    what the user needs, and ``galgen <command> --help`` lists the options::

        galgen: error: unrecognized arguments: --data.no_such=3 (galgen fit --help lists the options)
    """

    def error(self, message: str, ex: Exception | None = None):  # noqa: D102
        if not self.exit_on_error:  # a nested parse whose caller handles the error
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = parser.prog.replace(" [options]", "").split()
        command = " ".join(["galgen", *words[1:]])  # prog starts with the program's name
        print(f"galgen: error: {concise_parse_error(message)} ({command} --help lists the options)", file=sys.stderr)
        sys.exit(2)


class OneLineArgparse(argparse.ArgumentParser):
    """A standard-library ``ArgumentParser`` whose errors are a :class:`GalgenError` (one line,
    exit status 2 through the CLI), not its usage and message (``galgen sample``, ``galgen demo``)."""

    def error(self, message: str):  # noqa: D102
        raise GalgenError(f"{message} ({self.prog} --help lists the options)")


def one_line_argument_parser() -> type:
    """jsonargparse's ``ArgumentParser`` with :class:`OneLineParseErrors` (for ``auto_cli``'s
    ``parser_class``); jsonargparse is imported only when a command line is parsed."""
    from jsonargparse import ArgumentParser

    class GalgenArgumentParser(OneLineParseErrors, ArgumentParser):
        pass

    return GalgenArgumentParser


def root_cause(error: BaseException) -> BaseException:
    """The first exception of a chain (jsonargparse wraps a constructor's error in its own)."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return error


def weights_mismatch(missing: list[str], unexpected: list[str], shapes: list[tuple[str, object, object]]) -> str:
    """Checkpoint weights that do not fit a model, as one phrase ("" when they fit): how many
    parameters are missing, unexpected, and of another shape (``(name, in the checkpoint,
    here)``), each with an example."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        name, have, want = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {name}: {have} in the checkpoint, {want} here)")
    return "; ".join(parts)
