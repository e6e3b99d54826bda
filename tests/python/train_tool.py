"""Locates tests/tools/train_oracle_tool in the build tree for the trainer oracle tests."""
import os
import pathlib
import subprocess

import pytest


def tool_path() -> pathlib.Path:
    build = os.environ.get("KDAE_BUILD")
    if not build:
        pytest.skip("KDAE_BUILD is not set (run through ctest)")
    path = pathlib.Path(build) / "tests" / "train_oracle_tool"
    if not path.exists():
        pytest.fail(f"{path} is missing: build the train_oracle_tool target")
    return path


def run_tool(*args, stdin: str | None = None) -> str:
    done = subprocess.run([str(tool_path()), *map(str, args)], input=stdin, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout
