"""scripts/gpu_checks.py (the checks of scripts/gpu_smoke.sh) runs on a CPU too: its quick
checks pass here, so the script a GPU owner runs first is known to work up to the GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("check", ["precision", "rnn_dtype", "fp16_loss", "masked_rows"])
def test_quick_checks_pass_on_cpu(check: str, data_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_checks.py"),
            check,
            "--device",
            "cpu",
            "--data-dir",
            str(data_dir),
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"PASS {check}: "), line


def test_cuda_checks_skip_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_checks.py"),
            "precision",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.startswith("SKIP precision: no CUDA device")
