"""Importing a config's handler modules (``custom_handler: module.attribute``): from the
config file's folder first, as if run from there, then as a normal import. A module
loaded from one config's folder is replaced, never shadowed, when another folder has one
of the same name."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ImportFailure", "import_handler_module", "loaded_from"]

logger = logging.getLogger("gateway.config")


class ImportFailure(Exception):
    pass


# Top-level module name -> the config folder we loaded it from, so a config in another
# folder with a module of the same name (custom_handler.py) replaces ours, never a
# module someone else imported.
loaded_from: dict[str, str] = {}


def _local_file(module_name: str, base_dir: str) -> str | None:
    parts = module_name.split(".")
    for candidate in (
        os.path.join(base_dir, *parts) + ".py",
        os.path.join(base_dir, *parts, "__init__.py"),
    ):
        if os.path.isfile(candidate):
            return candidate
    return None


def _is_under(module: Any, folder: str) -> bool:
    locations = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or ())]
    folder = os.path.realpath(folder)
    for location in locations:
        if location and os.path.realpath(location).startswith(folder + os.sep):
            return True
    return False


@contextmanager
def _path_first(folder: str) -> Iterator[None]:
    # Like running a script from that folder: its siblings import first. Only for
    # the import itself; afterwards sys.path is as it was.
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


def _where(exc: BaseException, folder: str | None) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({os.path.basename(exc.filename)} line {exc.lineno})"
    tb, found = exc.__traceback__, ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if folder is None or os.path.realpath(filename).startswith(os.path.realpath(folder)):
            if "importlib" not in filename:
                found = f" ({os.path.basename(filename)} line {tb.tb_lineno})"
        tb = tb.tb_next
    return found


def import_handler_module(module_name: str, base_dir: str | None) -> Any:
    local = _local_file(module_name, base_dir) if base_dir else None
    top = module_name.partition(".")[0]
    if local is not None and base_dir is not None:
        existing = sys.modules.get(top)
        if existing is not None and not _is_under(existing, base_dir):
            if top not in loaded_from:
                raise ImportFailure(
                    f"handler module {local} is named like the already imported module "
                    f"{top!r} ({getattr(existing, '__file__', None) or 'built-in'}); rename it"
                )
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]
        try:
            with _path_first(base_dir):
                importlib.invalidate_caches()
                module = importlib.import_module(module_name)
        except Exception as exc:
            logger.debug("importing handler module %s failed", local, exc_info=True)
            raise ImportFailure(
                f"importing handler module {local} failed: "
                f"{type(exc).__name__}: {exc}{_where(exc, base_dir)}"
            ) from None
        if not _is_under(module, base_dir):
            raise ImportFailure(
                f"handler module {module_name!r} resolved to "
                f"{getattr(module, '__file__', None)}, not {local}"
            )
        loaded_from[top] = base_dir
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        if exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            looked = f"no {os.path.join(*parts)}.py in {base_dir}, and " if base_dir else ""
            raise ImportFailure(
                f"handler module {module_name!r} not found ({looked}not importable)"
            ) from None
        raise ImportFailure(
            f"importing handler module {module_name!r} failed: ModuleNotFoundError: {exc}"
        ) from None
    except Exception as exc:
        logger.debug("importing handler module %s failed", module_name, exc_info=True)
        raise ImportFailure(
            f"importing handler module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}{_where(exc, None)}"
        ) from None
