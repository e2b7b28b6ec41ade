"""vitkit leaves the process alone: importing it or calling cli.main changes no environment variable and no warning
hook; only vitkit's own errors become one-line `vitkit: error:` messages."""

import os
import subprocess
import sys
import warnings

import pytest

from vitkit.errors import UserError


def test_import_changes_neither_environment_nor_warning_hooks():
    code = ("import os, warnings; env = dict(os.environ); fmt, show = warnings.formatwarning, warnings.showwarning\n"
            "import vitkit, vitkit.cli; vitkit.create_model('ViT-testing/4', num_classes=2, image_size=8)\n"
            "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
            "assert warnings.formatwarning is fmt and warnings.showwarning is show\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_main_leaves_warnings_as_it_found_them_and_formats_only_its_own(monkeypatch, capsys):
    from vitkit import cli

    fmt, show = warnings.formatwarning, warnings.showwarning
    shown = []

    def run(args):
        warnings.warn_explicit("ours", UserWarning, os.path.join(os.path.dirname(cli.__file__), "x.py"), 1)
        warnings.warn_explicit("torch's", UserWarning, "/somewhere/torch/nn/functional.py", 1)
        return 0

    monkeypatch.setattr(cli, "build_parser", _parser_running(run))
    monkeypatch.setattr(warnings, "showwarning", lambda *a, **k: shown.append(str(a[0])))
    assert cli.main(["models"]) == 0
    assert "vitkit: warning: ours" in capsys.readouterr().err and shown == ["torch's"]
    assert warnings.formatwarning is fmt
    monkeypatch.undo()
    assert warnings.showwarning is show


def _parser_running(run):
    import argparse

    def build(command=None):
        p = argparse.ArgumentParser(prog="vitkit")
        p.add_argument("command")
        p.set_defaults(_run=run)
        return p
    return build


def test_an_internal_value_error_is_a_bug_not_bad_input(monkeypatch, capsys):
    from vitkit import cli

    def bug(args):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(cli, "build_parser", _parser_running(bug))
    with pytest.raises(ValueError, match="internal invariant"):  # a traceback (exit 1), not "vitkit: error:"
        cli.main(["models"])
    assert "vitkit: error" not in capsys.readouterr().err


def test_a_user_error_stays_one_line_exit_2(monkeypatch, capsys):
    from vitkit import cli

    def bad(args):
        raise UserError("--flag must be positive, got -1")

    monkeypatch.setattr(cli, "build_parser", _parser_running(bad))
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == "vitkit: error: --flag must be positive, got -1\n"


def test_the_executable_runs_a_bug_as_a_traceback_with_exit_1(tmp_path):
    code = ("import sys, vitkit.cli as c\n"
            "c.COMMANDS['models'] = ('x', 'vitkit_bug_module')\n"
            "sys.argv = ['vitkit', 'models']\n"
            "c.console()\n")
    (tmp_path / "vitkit_bug_module.py").write_text("def add_arguments(p): pass\n"
                                                  "def run(args): raise ValueError('internal')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "Traceback" in out.stderr and "ValueError: internal" in out.stderr
