"""``--config`` files: where the bundled configs are, a name resolved to one, and a file checked
before jsonargparse reads it (one line naming a file that is binary, not YAML, a list or empty)."""

from __future__ import annotations

import sys
from pathlib import Path

from galgen_lightning.errors import GalgenError


def default_configs() -> Path:
    """galgen's configs folder for commands that take one (``demo``, ``sweep``): ``./configs`` when
    it holds galgen's configs, else the bundled ones (:func:`config_folders`), so they work from
    any folder and after a wheel install."""
    if Path("configs", "diffusion.yaml").is_file():
        return Path("configs")
    found = config_folders()
    return found[0] if found else Path("configs")


def config_folders() -> list[Path]:
    """Where bundled configs are looked up: the checkout's ``configs/`` (galgen run from a
    checkout or an editable install), else ``<prefix>/share/galgen/configs`` where a wheel puts
    them (pyproject ``[tool.setuptools.data-files]``; ``pip install --user``: the user base)."""
    import site

    candidates = [Path(__file__).resolve().parent.parent / "configs"]
    for prefix in (sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None)):
        if prefix:
            candidates.append(Path(prefix) / "share" / "galgen" / "configs")
    out: list[Path] = []
    for path in candidates:
        if path.is_dir() and path not in out and (path / "diffusion.yaml").is_file():
            out.append(path)
    return out


def resolve_config(value: str) -> str:
    """A ``--config`` value that is not a file but names a bundled config (``diffusion.yaml``,
    ``quick/diffusion.yaml``, ``configs/quick/gan.yaml``) becomes that config's path."""
    if not value or Path(value).expanduser().exists() or not value.endswith((".yaml", ".yml")):
        return value
    name = value[len("configs/") :] if value.startswith("configs/") else value
    for folder in config_folders():
        path = folder / name
        if path.is_file():
            return str(path)
    return value


def resolve_configs(argv: list[str]) -> list[str]:
    """The command line with each ``--config`` value resolved (:func:`resolve_config`)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
    return out


def check_config_file(value: str) -> None:
    """A ``--config`` file must be UTF-8 YAML holding a mapping: otherwise one line that names the
    file (jsonargparse's own messages name none, or fail with a traceback on binary files).
    Values that are not files are left to jsonargparse (it reads a YAML string too)."""
    import yaml

    path = Path(value).expanduser()
    if not path.is_file():
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise GalgenError(f"--config {value} is not a text (UTF-8) YAML file") from None
    except OSError as e:
        raise GalgenError(f"--config {value} cannot be read: {e.strerror or e}") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GalgenError(f"--config {value}: not valid YAML{where}: {problem}") from None
    if content is None:
        raise GalgenError(f"--config {value} is empty: give it options (key: value lines) or leave it out")
    if not isinstance(content, dict):
        raise GalgenError(f"--config {value} holds a {type(content).__name__}, not options (key: value lines)")


def check_config_files(argv: list[str]) -> None:
    """:func:`check_config_file` for each ``--config`` of a command line."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            check_config_file(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(argv):
            check_config_file(argv[i + 1])
