"""Checked-in kernels under generated/ must equal a fresh generation."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLES, GENERATED, ROOT

from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.emit import GENERATED_LINE
from dgcodegen.runtime import render_files

EXAMPLE_NAMES = sorted(path.stem for path in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_generated_is_up_to_date(name: str) -> None:
    problem = load_spec(EXAMPLES / f"{name}.py")
    fresh = render_files(problem)
    for file_name, text in fresh.items():
        path = GENERATED / name / file_name
        assert path.is_file(), f"{path} is missing; run `dgcodegen generate examples/{name}.py`"
        on_disk = path.read_text(encoding="utf-8")
        assert on_disk == text, (
            f"{path} differs from a fresh generation; run `dgcodegen generate examples/{name}.py`"
        )


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_generated_files_parse_with_header(name: str) -> None:
    for path in sorted((GENERATED / name).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        ast.parse(text)
        assert text.splitlines()[0] == f"# {GENERATED_LINE}"


def test_generation_ignores_hash_seed(tmp_path) -> None:
    outputs = []
    for seed in ("0", "12345"):
        out = tmp_path / seed
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-m", "dgcodegen", "-q", "generate", "examples/rosenbrock.py"]
        subprocess.run([*command, "--out", str(out)], check=True, cwd=ROOT, env=environment)
        outputs.append((out / "kernels.py").read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_generate_check_passes(name: str, capsys) -> None:
    arguments = ["generate", str(EXAMPLES / f"{name}.py"), "--out", str(GENERATED / name)]
    assert main([*arguments, "--check"]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_generate_check_reports_diff(tmp_path, capsys) -> None:
    copy = tmp_path / "rosenbrock"
    shutil.copytree(GENERATED / "rosenbrock", copy)
    kernels = copy / "kernels.py"
    kernels.write_text(kernels.read_text().replace("CHUNK = 256", "CHUNK = 255"))
    arguments = ["generate", str(EXAMPLES / "rosenbrock.py"), "--out", str(copy), "--check"]
    assert main(arguments) == 1
    output = capsys.readouterr().out
    assert "-CHUNK = 255" in output
    assert "+CHUNK = 256" in output
    assert "CHUNK = 255" in kernels.read_text()
