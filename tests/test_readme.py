"""The README's front door as a new user meets it: its Python snippet runs as written, and every command line it
shows is one the installed CLI parses (names, options, values), with the measured time it states."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_snippet() -> str:
    section = README.split("\n## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_python_snippet_runs_as_written(tmp_path):
    code = _python_snippet()
    assert "load_encoder" in code and "info_nce" in code  # the two things it is there to show
    env = {**os.environ, "TSCL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code + "\nprint('loss', float(loss))\n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^loss \d+\.\d+", proc.stdout, flags=re.M), proc.stdout[-500:]
    assert (tmp_path / "runs" / "sim-pclr" / "encoder.safetensors").exists()


def _commands() -> list[list[str]]:
    """Every ``tscl ...`` line of the README's bash blocks (continuation lines joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("#"):  # a comment line, not a command
                continue
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words and (words[0] == "tscl" or words[0].endswith("/tscl")):
                    out.append(words[1:])
    return out


def test_every_readme_command_parses():
    from tscl.cli import build_parser

    commands = _commands()
    assert len(commands) >= 10
    parser = build_parser()
    for words in commands:
        try:
            args = parser.parse_args(words)
        except SystemExit as err:  # argparse refuses a name or an option
            raise AssertionError(f"tscl {' '.join(words)}: the CLI does not parse it ({err})") from None
        assert callable(args.func)


@pytest.mark.parametrize("section", ["## One command per modality"])
def test_each_command_block_states_its_measured_time(section):
    """Each pretraining and probing line of the per-modality block says how long it took (a comment with seconds)."""
    block = re.search(r"```bash\n(.*?)```", README.split(section, 1)[1], flags=re.S).group(1)
    timed = [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("tscl ")]
    assert timed and all(re.search(r"# \d+ s\b", line) for line in timed), [l for l in timed if "# " not in l]
