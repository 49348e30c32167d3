"""The README's Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_the_readme_asyncio_example_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(code.strip().splitlines()) <= 12
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'value': 'Hello'" in out.stdout
    assert "pip install ./python" in section
