"""TensorFlow's import notes stay out of every command's output (tests/test_pipelines.py reads a whole
`dvc repro` for them); anything else an import writes to stderr still shows."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_the_import_filter_passes_on_what_is_not_a_note(tmp_path):
    """A module that writes a note and a real message to file descriptor 2 while it is imported: the
    message comes out, the note does not, and the module is the real one."""
    (tmp_path / "noisy.py").write_text(
        "import os\nos.write(2, b'I0000 port.cc:153] a NOTE to drop\\n')\nos.write(2, b'a real warning\\n')\nVALUE = 7\n"
    )
    script = (
        "import re, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from boneage import _QuietImport\n"
        "sys.meta_path.insert(0, _QuietImport('noisy', re.compile('NOTE')))\n"
        "import noisy\n"
        "print(noisy.VALUE, type(noisy.__loader__).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7", "SourceFileLoader"]
    assert "a real warning" in proc.stderr and not re.search("NOTE", proc.stderr)
