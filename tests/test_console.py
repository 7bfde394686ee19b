"""Stop errors end a bundle run with their message alone; GRATA_DEBUG=1 keeps the traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grata_monai.bundle.console import (
    BadSetting,
    InputsSkipped,
    NotFound,
    OutputsExist,
    RunStopped,
    stop_reason,
)

SCRIPT = """
import sys
from grata_monai.bundle.console import setup, {kind}
setup()
try:
    raise {kind}({message!r})
except Exception as e:
    raise RuntimeError("Failed to evaluate ConfigExpression") from e
"""


def _run(kind: str, message: str, debug: str = "") -> subprocess.CompletedProcess:
    code = SCRIPT.format(kind=kind, message=message)
    env = {"GRATA_DEBUG": debug, "PATH": ""} if debug else {"PATH": ""}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
    )


def test_stop_error_in_a_chain_ends_the_output_with_its_message():
    r = _run("OutputsExist", "1 output(s) already exist.")
    assert r.returncode == 1 and r.stderr == "error: 1 output(s) already exist.\n"


def test_skipped_inputs_print_the_summary_as_it_is():
    r = _run("InputsSkipped", "done: 1 of 2 input(s) segmented, 1 skipped:\n  skipped x: why")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "done: 1 of 2 input(s) segmented, 1 skipped:",
        "  skipped x: why",
    ]


def test_debug_switch_keeps_the_traceback():
    r = _run("NotFound", "no input", debug="1")
    assert (
        r.returncode == 1
        and "Traceback" in r.stderr
        and "RuntimeError: Failed to evaluate" in r.stderr
    )


def test_other_errors_keep_their_traceback():
    r = subprocess.run(
        [sys.executable, "-c", "from grata_monai.bundle.console import setup; setup(); 1/0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


@pytest.mark.parametrize(
    "kind,base",
    [
        (NotFound, FileNotFoundError),
        (OutputsExist, FileExistsError),
        (BadSetting, ValueError),
        (InputsSkipped, RuntimeError),
    ],
)
def test_stop_errors_are_the_builtin_kinds(kind, base):
    error = kind("x")
    assert isinstance(error, base) and stop_reason(error) is error
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = error
    assert stop_reason(wrapped) is error and stop_reason(RuntimeError("plain")) is None
    assert isinstance(error, RunStopped)


NOTICE = (
    'parsing config_file c.json: any `"_target_"` value in it is resolved to an importable callable and '
    "invoked with no allow list"
)


@pytest.mark.parametrize("trusted", [False, True])
def test_config_notice_is_silenced_for_trusted_configs_only(trusted):
    code = (
        f"import warnings; from grata_monai.bundle.console import setup; setup(trusted_configs={trusted}); "
        f"warnings.warn({NOTICE!r}); warnings.warn('another warning')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "another warning" in r.stderr
    assert ("parsing config_file" in r.stderr) != trusted
