"""Checks on where the CLI will write, made before any work: an output folder
that is a file, lies under a file, or cannot be written is refused at once
instead of after minutes of computation. Nothing is created by the checks
(a probe file is made and removed again)."""

from __future__ import annotations

import os
import tempfile

from .errors import InputError


def _nearest_existing(path: str) -> str:
    """``path`` itself or its closest ancestor that exists (what the run
    would create its folders under)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _probe_writable(folder: str, what: str) -> None:
    """Create and remove a file in ``folder``: the only test that holds for
    root (who ignores permission bits) and for read-only file systems."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".cnnviz-probe-", dir=folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(f"{what}: cannot write in {folder} ({reason}); choose a folder you can write to") from None
    os.close(handle)
    os.unlink(probe)


def check_output_folder(path, flag: str = "--out") -> None:
    """A folder the run can create (or reuse) and write files in."""
    path = os.fspath(path)
    what = f"{flag} {path}"
    if not path:
        raise InputError(f"{flag} is empty; give an output folder")
    existing = _nearest_existing(path)
    if existing == os.path.abspath(path) and not os.path.isdir(existing):
        raise InputError(f"{what} is a file, not a folder; give a folder (new or existing)")
    _check_base(existing, what)


def check_output_file(path, flag: str = "output") -> None:
    """A file path the run can write: not a folder, in a folder that exists or
    can be created, and writable."""
    path = os.fspath(path)
    what = f"{flag} {path}"
    if os.path.isdir(path):
        raise InputError(f"{what} is a folder; give a file path")
    _check_base(_nearest_existing(os.path.dirname(os.path.abspath(path))), what)


def _check_base(existing: str, what: str) -> None:
    """The closest existing ancestor of an output must be a writable folder."""
    if not os.path.isdir(existing):
        raise InputError(f"{what} lies under {existing}, which is a file, not a folder")
    _probe_writable(existing, what)
