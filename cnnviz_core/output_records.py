"""Which run each file of an output folder belongs to, so that a second run
into the same folder never silently overwrites or mixes with another one.

File names carry what tells runs apart: ``{input}.{method}[.{target}]`` for
each item (the target when it is not the default top-1) and
``{method}[.{target}]`` for the run's stacked arrays and its JSON record (the
target when every item shares it). Each save writes a record listing its
files; before writing, :class:`OutputPlan` reads the records already in the
folder and refuses (:class:`InputError`) to replace the files of a run that
differs in model, parameters, inputs or targets, unless told to overwrite,
in which case that run is replaced whole (its record first, its left-over
files last). A rerun of the very same thing simply rewrites its files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

from .errors import InputError
from .targets import Target

RECORD_KINDS = ("attribution", "synthesis", "analysis")
# how the work is split, not what it computes: a rerun with another batch size is the same run
IGNORED_PARAMS = frozenset({"batch_size"})
MODEL_KEYS = ("name", "adapter", "path")
LARGEST_RECORD = 64 * 1024 * 1024  # bytes; a larger .json in the folder is not one of ours


def target_tag(target: Target, labels: Sequence[str] | None) -> str:
    """"" for the default top-1; else a file-name-safe name of the target
    ("class9_ostrich", "blocks.6-12-at-3-4"), as synthesis names its items."""
    if target.kind == "top1":
        return ""
    from .synthesis_inputs import slug  # imported here: synthesis_inputs imports the result modules

    return slug(target, labels)


def item_tag(name: str, target: Target, labels: Sequence[str] | None) -> str:
    """The tag an item's file names carry: none for the default target, nor
    for an item already named after its target (class_model's "class9_ostrich")."""
    tag = target_tag(target, labels)
    if not tag or name == tag or name.startswith(tag + "_"):
        return ""
    return tag


def item_stem(name: str, method: str, target: Target, labels: Sequence[str] | None) -> str:
    tag = item_tag(name, target, labels)
    return f"{name}.{method}.{tag}" if tag else f"{name}.{method}"


def run_stem(method: str, names: Sequence[str], targets: Sequence[Target], labels: Sequence[str] | None) -> str:
    """The stem of a run's arrays and record: tagged when every item carries
    the same tag, plain otherwise (one run of mixed targets)."""
    tags = {item_tag(n, t, labels) for n, t in zip(names, targets)}
    return f"{method}.{tags.pop()}" if len(tags) == 1 and "" not in tags else method


# -- what makes two runs the same ------------------------------------------------
def _canonical(value: Any) -> Any:
    """JSON's view of a value (what a record holds), so fresh and reloaded values compare equal."""
    from .atomic import json_default

    return json.loads(json.dumps(value, default=json_default))


def _canonical_input(value: Any) -> Any:
    if isinstance(value, str) and os.path.isdir(value):  # a dataset folder: the same however it was spelled
        return os.path.realpath(value)
    return value


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What a record says about the run that wrote it, in comparable form."""

    method: str
    model: dict[str, Any]
    params: dict[str, Any]
    inputs: tuple
    targets: tuple

    @classmethod
    def of(cls, method: str, model: dict[str, Any], params: dict[str, Any], inputs: Iterable = (),
           targets: Iterable = ()) -> "RunIdentity":
        params = {k: v for k, v in (_canonical(params) or {}).items() if k not in IGNORED_PARAMS}
        model = {k: model[k] for k in MODEL_KEYS if k in (model or {})}
        return cls(method, _canonical(model), params, tuple(_canonical_input(i) for i in _canonical(list(inputs))),
                   tuple(_canonical(list(targets))))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RunIdentity":
        kind = record.get("kind")
        if kind == "synthesis":
            items = [i for i in record.get("items") or [] if isinstance(i, dict)]
            inputs, targets = [i.get("name") for i in items], [i.get("target") for i in items]
        elif kind == "analysis":
            dataset = (record.get("metadata") or {}).get("dataset")
            inputs, targets = ([dataset] if dataset else []), []
        else:
            inputs, targets = record.get("inputs") or [], record.get("targets") or []
        return cls.of(str(record.get("method")), record.get("model") or {}, record.get("params") or {}, inputs, targets)

    def differences(self, other: "RunIdentity") -> list[str]:
        """What changes from ``self`` (the run on disk) to ``other``, one phrase each."""
        found = []
        if self.model != other.model:
            key = next((k for k in MODEL_KEYS if self.model.get(k) != other.model.get(k)), "name")
            found.append(f"model {key} {_short(self.model.get(key))} -> {_short(other.model.get(key))}")
        for key in sorted(set(self.params) | set(other.params)):
            if self.params.get(key, _MISSING) != other.params.get(key, _MISSING):
                found.append(f"{key} {_short(self.params.get(key, _MISSING))} -> {_short(other.params.get(key, _MISSING))}")
        if self.inputs != other.inputs:
            found.append(f"inputs {_brief(self.inputs)} -> {_brief(other.inputs)}")
        if self.targets != other.targets:
            found.append(f"targets {_brief(self.targets)} -> {_brief(other.targets)}")
        return found


class _Missing:
    def __repr__(self) -> str:
        return "unset"


_MISSING = _Missing()


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _brief(values: Sequence, shown: int = 3) -> str:
    if not values:
        return "none"
    text = ", ".join(_short(v, 30) for v in values[:shown])
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


# -- the records in a folder ---------------------------------------------------------
def read_records(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The cnnviz records in ``folder`` by file name (other JSON files are skipped)."""
    records = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return records
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file() or entry.stat().st_size > LARGEST_RECORD:
                continue
            with open(entry.path, encoding="utf-8") as stream:
                record = json.load(stream)
        except (OSError, ValueError):
            continue
        if (isinstance(record, dict) and record.get("kind") in RECORD_KINDS and isinstance(record.get("method"), str)
                and isinstance(record.get("files"), list)):
            records[entry.name] = record
    return records


def _owned(name: str, record: dict[str, Any]) -> set[str]:
    """The files a record speaks for (plain names in its folder only), itself included."""
    return {f for f in record.get("files") or [] if isinstance(f, str) and f and os.path.basename(f) == f} | {name}


class OutputPlan:
    """The files one run is about to write in ``folder`` (``record`` is its
    record's file name; ``files`` at least one file per item, as these are
    what another run's record would list) and the run's identity."""

    def __init__(self, folder: str | os.PathLike, record: str, files: Iterable[str], identity: RunIdentity):
        self.folder = os.fspath(folder)
        self.record = record
        self.files = {record, *files}
        self.identity = identity
        self.replaced: dict[str, dict[str, Any]] = {}
        self._claimed = False

    def check(self, overwrite: bool = False) -> "OutputPlan":
        """Refuse before anything is written when a different run owns a file
        this run would write; with ``overwrite`` remember that run for :meth:`claim`."""
        for name, record in sorted(read_records(self.folder).items()):
            if name in self.replaced or not _owned(name, record) & self.files:
                continue
            theirs = RunIdentity.from_record(record)
            if theirs == self.identity:
                continue  # the same run again: its files are rewritten
            if not overwrite:
                changes = theirs.differences(self.identity) or ["what it was run on"]
                raise InputError(
                    f"{os.path.join(self.folder, name)} records another {record.get('method')} run whose files this one "
                    f"would overwrite (it differs in: {'; '.join(changes)}); choose another output folder, "
                    "or replace that run with --overwrite (save(..., overwrite=True))"
                )
            self.replaced[name] = record
        return self

    def claim(self) -> None:
        """Just before the first write: remove the records of the runs being
        replaced, so no record ever speaks for files of this run."""
        if self._claimed:
            return
        self._claimed = True
        for name in self.replaced:
            if name != self.record:
                _remove(os.path.join(self.folder, name))

    def finish(self, written: Iterable[str]) -> None:
        """After this run's record is written: remove what is left of the
        replaced runs (files no remaining record speaks for and this run did
        not write), so the folder holds whole runs only."""
        if not self.replaced:
            return
        kept = {os.path.basename(f) for f in written}
        for name, record in read_records(self.folder).items():
            kept |= _owned(name, record)
        for name, record in self.replaced.items():
            for stale in sorted(_owned(name, record) - kept):
                _remove(os.path.join(self.folder, stale))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(path)
