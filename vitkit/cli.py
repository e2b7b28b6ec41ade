"""`vitkit` command line: a table of subcommands. Each row names the module that owns the command; that module
defines `add_arguments(parser)` and `run(args) -> int`. Only the chosen command's module is imported, so
`vitkit --help` is instant and one command's dependencies never slow another.

Errors meant for the user (vitkit's UserError, missing or unreadable files) print as one line `vitkit: error: ...`
with exit code 2; `--debug` shows the traceback instead. Any other exception is a bug and keeps its traceback.
`main()` leaves the process as it found it (warnings are formatted only while it runs, and only vitkit's own);
`console()`, the `vitkit` executable, also sets what must be set before torch starts.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .version import __version__
from .errors import UserError, missing_package_error

# command -> (one-line help, owning module)
COMMANDS = {
    "train": ("train or fine-tune a ViT (recipes: pretrain, finetune)", "vitkit.train.cli"),
    "eval": ("evaluate a checkpoint on a dataset: top-1, top-5, loss, per-class accuracy", "vitkit.eval.cli"),
    "predict": ("classify image files with a checkpoint", "vitkit.eval.predict"),
    "models": ("list the variants with parameter count and GFLOPs", "vitkit.cli_models"),
    "convert": ("convert a checkpoint (official .npz, Hugging Face, timm) to another format",
                "vitkit.checkpoint.cli_convert"),
    "export": ("export a checkpoint to ONNX, TorchScript or an ExportedProgram", "vitkit.checkpoint.cli_export"),
    "analyze": ("the paper's figures for a checkpoint: filters, position embeddings, attention",
                "vitkit.analysis.cli_analyze"),
    "fewshot": ("few-shot linear evaluation on frozen features (paper section 4.1)", "vitkit.eval.cli_fewshot"),
    "features": ("export frozen pre-logits features to .npy", "vitkit.eval.cli_features"),
    "study": ("the paper's scaling studies at laptop scale: data-scale (Fig. 3/4), compute (Fig. 5)",
              "vitkit.study.cli"),
    "bench": ("throughput, memory and MFU, side by side with Hugging Face", "vitkit.bench.cli"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError: one line `vitkit: error: argument --batch-size: ...`, exit 2."""

    def error(self, message: str):
        raise UserError(message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="vitkit", description="The Vision Transformer (arXiv 2010.11929), "
                                     "trained, evaluated, converted and analysed.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        if name == command:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name and e.name.startswith("vitkit"):
                    raise UserError(f"command {name!r} is not available in this version") from None
                raise missing_package_error(e.name or "?", f"command {name!r}") from None
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _one_line_warnings(show):
    """warnings.showwarning that prints vitkit's own warnings as one line `vitkit: warning: ...` and passes every
    other warning (torch's, numpy's, ...) to `show` unchanged."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            print(f"vitkit: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv or os.environ.get("VITKIT_DEBUG") == "1"
    with warnings.catch_warnings():  # restores warnings.showwarning on the way out
        if not debug:
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            args = build_parser(command if command in COMMANDS else None).parse_args(argv)
            if not getattr(args, "_run", None):
                build_parser().print_help()
                return 0 if args.command is None else 2
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            print("vitkit: interrupted", file=sys.stderr)
            return 130
        except ModuleNotFoundError as e:  # an optional package imported where it is first needed
            if debug or not e.name or e.name.startswith("vitkit"):
                raise
            print(f"vitkit: error: {missing_package_error(e.name, f'vitkit {command}')}", file=sys.stderr)
            return 2
        except (UserError, FileNotFoundError, PermissionError, NotADirectoryError) as e:
            if debug:
                raise
            msg = " ".join(str(e).split()) or type(e).__name__
            print(f"vitkit: error: {msg}", file=sys.stderr)
            return 2


def console() -> None:
    """The `vitkit` executable: the process is ours, so set what must be set before torch loads, then run main.

    OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which on a CPU shared with other
    processes gives the cores to the threads that work (measurements: benchmarks/README.md). Set the variable
    yourself to override it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `vitkit models | head`: the reader left; no traceback (Python docs, "SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not fail again
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    console()
