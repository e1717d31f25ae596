"""The README's code is run, so that it cannot drift from the package."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n".join(f"{a} + {b} = {a + b}" for a in range(60) for b in range(60)))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_main_command_runs():
    cmd = re.search(r"pip install -e \. && (nanoseek [^\n]+)", README.read_text()).group(1).split()
    out = subprocess.run([sys.executable, "-m", "nanoseek", *cmd[1:]], capture_output=True, text=True, check=True)
    assert "70,272" in out.stdout and "671.0B" in out.stdout
