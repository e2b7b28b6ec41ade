"""Command-line flags from typed settings: one source of truth for a flag's name, type, range, help and default.

A settings dataclass declares each field with `flag(...)`; `add_flags(parser, Settings)` turns the fields into
argparse options (`batch_size` -> `--batch-size`, help and range from the field) and `check(settings)` applies the
same ranges to a settings object however it was made (flags, a saved run, Python), so that a bad value is one line
naming the flag before any work starts. Subcommands without a settings class use the same value types
(`Number`, `Pair`, `device`) in their `add_argument` calls.

    @dataclass
    class Settings:
        batch_size: int = flag(128, "examples per step", type=Number(int, min=1))

Conventions every subcommand follows: `--limit N` / `--limit-train N` mean the *first* N examples; `--sample N`
(with `--seed`) a fixed *random* subset of N; `--batch-size` is the number of examples per forward pass; `--device`
is auto, cpu, cuda, cuda:N or mps (default auto); `--json` prints JSON to stdout and `--out` names what is written.

This module imports nothing from vitkit but errors, so that any settings class can use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from .errors import UserError


@dataclass(frozen=True)
class Number:
    """An int or float flag value within [min, max] (`above`/`below`: strict bounds). Always finite."""

    kind: type = int
    min: Optional[float] = None
    max: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.min is not None and self.max is not None:
            return f"{what} from {self.min:g} to {self.max:g}"
        low = f">= {self.min:g}" if self.min is not None else f"> {self.above:g}" if self.above is not None else None
        high = f"<= {self.max:g}" if self.max is not None else f"< {self.below:g}" if self.below is not None else None
        return " and ".join([f"{what} {low}" if low else what] + ([high] if high else []))

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.kind is int and v != int(v)):
            return False
        return (math.isfinite(v) and (self.min is None or v >= self.min) and (self.max is None or v <= self.max)
                and (self.above is None or v > self.above) and (self.below is None or v < self.below))

    def __call__(self, text: str):
        try:
            v = self.kind(text)
        except ValueError:
            v = None
        if v is None or not self.ok(v):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return v


@dataclass(frozen=True)
class Pair:
    """Two comma-separated numbers, e.g. RandAugment's N,M or Adam's B1,B2."""

    first: Number
    second: Number
    metavar: str = "A,B"

    def describe(self) -> str:
        a, b = self.metavar.split(",")
        return f"{self.metavar} with {a} {self.first.describe()} and {b} {self.second.describe()}"

    def ok(self, v) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and self.first.ok(v[0]) and self.second.ok(v[1])

    def __call__(self, text: str) -> tuple:
        parts = text.split(",")
        try:
            v = (self.first.kind(parts[0]), self.second.kind(parts[1])) if len(parts) == 2 else None
        except ValueError:
            v = None
        if v is None or not self.ok(v):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return v


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device(text: str) -> str:
    """A --device value: auto, cpu, cuda, cuda:N or mps (checked here; whether it exists is checked at use)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def flag(default: Any = None, help: str = "", *, type: Any = None, choices=None, metavar: Optional[str] = None,
         group: Optional[str] = None, deprecated: tuple = (), cli: bool = True, negatable: bool = True,
         resumable: bool = False) -> Any:
    """A settings field that is also a command-line flag.

    type: Number/Pair/callable parsing the flag's text (default: from the annotation); choices: the valid
    values; group: the --help section; deprecated: old spellings kept as hidden aliases (they warn);
    cli: False for fields that are not flags; negatable: a bool flag also gets --no-NAME; resumable: may differ
    from the saved settings on --resume (a setting of the run, not of the process)."""
    meta = dict(help=help, type=type, choices=tuple(choices) if choices else None, metavar=metavar, group=group,
                deprecated=tuple(deprecated), cli=cli, negatable=negatable, resumable=resumable)
    return dataclasses.field(default=default, metadata={"flag": meta})


def option(name: str) -> str:
    """The flag of field `name`: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def _meta(f: dataclasses.Field) -> dict:
    return f.metadata.get("flag", {})


def _base_type(cls, f: dataclasses.Field):
    t = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if typing.get_origin(t) is typing.Union and len(args) == 1 else t


def _parser_type(cls, f: dataclasses.Field):
    meta = _meta(f)
    if meta.get("type") is not None:
        return meta["type"]
    base = _base_type(cls, f)
    if base is int:
        return Number(int)
    if base is float:
        return Number(float)
    return str


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: sets the same value and says which flag to use instead."""

    def __init__(self, *args, new: str = "", **kw):
        self.new = new
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated; use {self.new}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_flags(parser: argparse.ArgumentParser, cls, *, absent=argparse.SUPPRESS, groups: Optional[dict] = None,
              skip: tuple = ()) -> None:
    """One option per flag field of dataclass `cls`. `absent`: the value of a flag not given (SUPPRESS: the
    attribute stays absent, so that other sources -- a recipe, saved settings -- fill it); groups: name -> parser
    or argument group to put a field's flag in (created in field order when missing)."""
    groups = {} if groups is None else groups
    for f in dataclasses.fields(cls):
        meta = _meta(f)
        if not meta.get("cli", True) or f.name in skip:
            continue
        name = meta.get("group")
        if name not in groups:
            groups[name] = parser if name is None else parser.add_argument_group(name)
        g = groups[name]
        help_ = meta.get("help") or None
        if _base_type(cls, f) is bool:
            action = argparse.BooleanOptionalAction if meta.get("negatable", True) else "store_true"
            g.add_argument(option(f.name), dest=f.name, action=action, default=absent, help=help_)
            continue
        kind = _parser_type(cls, f)
        metavar = meta.get("metavar") or getattr(kind, "metavar", None) or (
            ("N" if kind.kind is int else "X") if isinstance(kind, Number) else None)
        g.add_argument(option(f.name), dest=f.name, type=kind, choices=meta.get("choices"), default=absent,
                       metavar=metavar, help=help_)
        for old in meta.get("deprecated", ()):
            g.add_argument(old, dest=f.name, type=kind, choices=meta.get("choices"), default=absent,
                           help=argparse.SUPPRESS, action=_DeprecatedAlias, new=option(f.name))


def add_deprecated(parser, old: str, new: str, dest: Optional[str] = None, **kw) -> None:
    """A hidden old spelling `old` of the flag `new` (same dest, same type), for scripts written against it."""
    dest = dest or new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, action=_DeprecatedAlias, new=new,
                        default=argparse.SUPPRESS, **kw)


def check(settings) -> None:
    """Every flag field of `settings` within its type's range and choices; a UserError names the first that is
    not (e.g. "--batch-size must be an integer >= 1, got 0")."""
    cls = type(settings)
    for f in dataclasses.fields(cls):
        meta = _meta(f)
        v = getattr(settings, f.name)
        if v is None or not meta:
            continue
        choices = meta.get("choices")
        if choices and v not in choices:
            raise UserError(f"unknown {option(f.name)} {v!r}; valid: {', '.join(map(str, choices))}")
        kind = _parser_type(cls, f)
        if isinstance(kind, (Number, Pair)) and not kind.ok(v):
            shown = ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
            raise UserError(f"{option(f.name)} must be {kind.describe()}, got {shown}")
        if kind is device:
            try:
                device(v)
            except argparse.ArgumentTypeError as e:
                raise UserError(f"--device: {e}") from None


def value_problem(cls, name: str, value) -> Optional[str]:
    """What is wrong with `value` as the typed value of flag field `name` of `cls` (read from a config file or
    passed from Python rather than parsed from a flag's text), as "expected ..., got ..."; None where it is fine.
    None is fine for a field whose default is None (not set). Lists stand for Pair values (TOML has no tuples)."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        return "not a setting"
    meta, shown = _meta(f), (",".join(map(str, value)) if isinstance(value, (tuple, list)) else repr(value))
    if value is None:
        return None if f.default is None else "expected a value, got nothing (None)"
    base, kind, choices = _base_type(cls, f), _parser_type(cls, f), meta.get("choices")
    if base is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {shown}"
    if choices:
        return None if value in choices else f"expected one of {', '.join(map(str, choices))}, got {shown}"
    if isinstance(kind, (Number, Pair)):
        return None if kind.ok(value) else f"expected {kind.describe()}, got {shown}"
    if not isinstance(value, str):
        return f"expected a string, got {shown}"
    if kind is device and not _DEVICE.match(value):
        return f"expected auto, cpu, cuda, cuda:N or mps, got {shown}"
    return None


def resumable(cls) -> set:
    """Fields of `cls` that may change when a run is resumed."""
    return {f.name for f in dataclasses.fields(cls) if _meta(f).get("resumable")}


def check_writable(path, flag: str = "--out", directory: bool = False) -> None:
    """That `path` (a file, or a directory if `directory`) can be written, before the work that produces it:
    a UserError naming `flag` otherwise. Missing parent directories are fine where they can be created.

    Tried, not read off the permission bits (root ignores those, while /proc, a read-only file system or a name
    that is too long refuse even root): the missing directories are created, a file is created in the directory
    that will hold the output (the output's own name when it does not exist yet, else a temporary sibling, as an
    atomic replace needs), and all of it is removed again, so that nothing is left behind."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    home = p if directory else p.parent  # the directory that holds the output
    try:
        exists = p.exists()
        if exists and p.is_dir() != directory:
            raise UserError(f"{flag} {p}: is {'not ' if directory else ''}a directory")
        if exists and not os.access(p, os.W_OK):
            raise UserError(f"{flag} {p}: not writable")
        missing, d = [], home
        while not d.exists():
            missing.append(d)
            d = d.parent
        if not d.is_dir():
            raise UserError(f"{flag} {p}: {d} is not a directory")
    except OSError as e:  # e.g. a name too long to look up
        raise UserError(f"{flag} {p}: {e.strerror or e}") from None
    made, step = [], ""
    try:
        for m in reversed(missing):
            step = f"cannot create the directory {m}"
            m.mkdir()
            made.append(m)
        step = f"cannot write in {home}"
        if directory or exists:
            fd, probe = tempfile.mkstemp(prefix=".vitkit-write-test-", dir=home)
            os.close(fd)
            os.unlink(probe)
        else:
            step = f"cannot create {p}"
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            os.unlink(p)
    except FileExistsError:
        pass  # another process made it meanwhile: it can be written
    except OSError as e:
        raise UserError(f"{flag} {p}: {step} ({e.strerror or e})") from None
    finally:
        for m in reversed(made):
            try:
                m.rmdir()
            except OSError:
                pass  # something was put there meanwhile: not ours to remove


def partial_file(out) -> "Path":
    """A new, empty temporary file beside `out` (same folder, so that renaming it onto `out` is atomic; same
    suffix, which some writers read), with the permissions a plain open() would give `out`, not mkstemp's 0600.
    The one place outputs that appear only when complete (export, features, fewshot) get their temporary file."""
    import os
    import tempfile
    from pathlib import Path

    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".partial{out.suffix}", dir=out.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(tmp)


def write_atomic(path, write) -> "Path":
    """`write(f)` (f: a binary file open for writing) into a temporary file next to `path` (partial_file), renamed
    onto `path` once `write` returned: a reader, or an earlier file of that name, never sees a half-written one,
    and nothing is left behind when `write` or the rename fails. The file gets the permissions a plain open() would
    give it. The one writer of files that appear only when complete (features, fewshot, the weights manifest, a
    run's run.json, results rows, rendered pages)."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = partial_file(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
