"""examples/: the notebook's code and the own-model project run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli, fresh_venv

NOTEBOOK = REPO / "examples" / "notebook.ipynb"
OWN = REPO / "examples" / "own_model"


def notebook_script(epochs: int) -> str:
    """The notebook's code cells as one script, its `parameters` cell followed by `epochs`
    (as papermill injects parameters): a few epochs instead of the course's 1,000."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    parts = []
    for cell in cells:
        if cell["cell_type"] == "code":
            parts.append("".join(cell["source"]))
            if "parameters" in cell["metadata"].get("tags", []):
                parts.append(f"epochs = {epochs}")
    return "\n\n".join(parts) + "\n"


def check_notebook_output(out: str) -> None:
    lines = out.splitlines()
    accuracy = next(line for line in lines if "test accuracy:" in line).split()[-1]
    assert 0 <= float(accuracy) <= 1
    predicted = next(line for line in lines if line.startswith("["))
    names = eval(predicted)  # the printed list of class names
    assert len(names) == 2 and set(names) <= {"setosa", "versicolor", "virginica"}
    rows = [line.split() for line in lines if "train acc" in line]
    assert sorted(r[0] for r in rows) == ["0.001", "0.01"]
    assert "dlexp.Sweep(" in out and "['completed', 'completed']" in out


def test_the_notebook_runs(env, tmp_path, monkeypatch, capsys):
    """The cells, in order, in one interpreter (as a kernel runs them), from a fresh folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(notebook_script(epochs=3), str(NOTEBOOK), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    check_notebook_output(out)
    assert len(list((Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir())) == 1
    assert len(list((Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir())) == 1


@pytest.mark.slow  # a virtual environment and an install (~15 s)
def test_the_notebook_runs_after_a_plain_install(tmp_path, data_root):
    """`pip install -e .` into a fresh venv runs the notebook's code from another folder."""
    python = fresh_venv(tmp_path, "-e", str(REPO))
    script = tmp_path / "notebook.py"
    script.write_text(notebook_script(epochs=3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLEXP")}
    result = subprocess.run(
        [str(python), str(script)],
        cwd=tmp_path,
        env={**env, "MPLBACKEND": "Agg", "DLEXP_OUTPUTS": str(tmp_path / "out")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    check_notebook_output(result.stdout)


def test_own_model_trains_through_its_config_dir(env, monkeypatch, capsys):
    monkeypatch.chdir(OWN)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (main adds this folder for my_models)
    monkeypatch.setenv("DLEXP_MODULES", "my_models")
    search = "hydra.searchpath=[file://configs]"  # the other way to add the folder
    code, out, err = cli(
        capsys, "train", "-cd", "configs", "experiment=residual_iris", "trainer.epochs=20"
    )
    assert code == 0, err
    run = next((Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir())
    assert run.name.startswith("residual_mlp_iris_")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.8  # 20 epochs of Adam 0.01 on Iris
    assert "ResidualMLP (" in out  # the model's name and size, as for dlexp's own

    code, out, _ = cli(
        capsys, "train", search, "experiment=residual_iris", "model.blocks=3", "--cfg", "job"
    )
    assert code == 0 and "_target_: my_models.ResidualMLP" in out and "blocks: 3" in out

    code, out, err = cli(capsys, "eval", f"run={run}")
    assert code == 0, err
    assert f"test/acc {metrics['test/acc']:.4f}" in out  # rebuilt from the stored config

    monkeypatch.delenv("DLEXP_MODULES")
    code, _, err = cli(capsys, "train", search, "experiment=residual_iris")
    assert code == 2 and "DLEXP_MODULES" in err and "my_models.ResidualMLP" in err


def test_a_model_without_the_contract_gets_one_paragraph(env, capsys):
    code, _, err = cli(capsys, "train", "model._target_=torch.nn.Linear")
    assert code == 2
    assert "cannot be a dlexp model" in err and "input_shape" in err and "num_outputs" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
