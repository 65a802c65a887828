"""colab_regular.ipynb: committed without outputs, and executed headless end to end on a tiny demo (a copy
of it: the repository's notebook is never written)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab_regular.ipynb"


def code_sources(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_the_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")


def test_the_notebook_has_every_step_and_mounts_drive_only_in_colab():
    sources = "\n".join(code_sources(nbformat.read(NOTEBOOK, as_version=4)))
    for step in ('"pip", "install"', '"--make-demo"', '"preprocessing.py", "--database"',
                 '"calculate_mean_and_std.py"', 'run("main.py"', "learning_curves.png", "traces.png"):
        assert step in sources, step
    mount = sources.index('drive.mount("/content/drive")')
    assert "if IN_COLAB and USE_DRIVE:" in sources[:mount]
    assert "os.environ.get(\"DEMO_SMALL\"" in sources


@pytest.mark.slow
def test_the_notebook_runs_headless_on_the_small_demo(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    copy = tmp_path / "colab_regular.ipynb"
    shutil.copy(NOTEBOOK, copy)
    monkeypatch.setenv("DEMO_SMALL", "1")
    monkeypatch.setenv("PROJECT_DIR", str(ROOT))
    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(copy, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    assert "small demo: True" in text
    assert "validation CCC: valence=" in text
    assert re.search(r"ABAW2_2d1d_vggish-mfcc_both_sh_fold0_demo: best epoch 0; arousal CCC -?\d\.\d{3}, "
                     r"valence CCC -?\d\.\d{3}", text), text[-2000:]
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 2  # learning curves and traces
    run = tmp_path / "work" / "runs" / "ABAW2_2d1d_vggish-mfcc_both_sh_fold0_demo"
    assert (run / "learning_curves.png").is_file() and (run / "traces.png").is_file()
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before  # the repository's notebook is untouched
