#!/usr/bin/env python
"""The checks of scripts/gpu_smoke.sh, one per call: `python scripts/gpu_checks.py CHECK`.

Each check prints one line, `PASS|FAIL|SKIP <check>: <what was seen>`, and exits 0 (pass or
skip) or 1 (fail). `--device cpu` runs the same checks on a CPU (where some are skipped), so
the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nmt.config import config_from_dict  # noqa: E402
from nmt.optim import label_smoothed_nll  # noqa: E402
from nmt.precision import device_caps, training_precision  # noqa: E402
from nmt.specials import PAD_ID  # noqa: E402


class CheckFailed(Exception):
    pass


def tiny_config(data_dir: Path, run_dir: Path, device: str, arch: str, **train: object) -> dict:
    """A model small enough to train in seconds on a Multi30k slice (de -> en)."""
    model: dict[str, object] = {
        "arch": "transformer",
        "embed_dim": 64,
        "hidden_size": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "heads": 4,
        "ffn_size": 128,
        "max_positions": 128,
    }
    if arch == "transformer_local":
        model["self_attention_window"] = 4
    elif arch == "lstm_bahdanau":
        model.update(arch="rnn", cell="lstm", attention="bahdanau", bidirectional=True)
    return {
        "name": f"smoke_{arch}",
        "data": {
            "preset": "multi30k",
            "dir": str(data_dir),
            "src_lang": "de",
            "tgt_lang": "en",
            "train_limit": 4000,
            "max_len": 40,
        },
        "tokenizer": {"vocab_size": 1000},
        "model": model,
        "train": {
            "run_dir": str(run_dir),
            "device": device,
            "precision": "auto",
            "seed": 1,
            "lr": 0.002,
            "warmup_steps": 20,
            "batch_tokens": 4096,
            "max_steps": 60,
            "log_every": 10,
            "valid_every": 60,
            "valid_limit": 64,
            "keep_last": 1,
            "keep_best": 1,
            **train,
        },
        "decode": {"beam_size": 2, "max_len_a": 1.2, "max_len_b": 5},
    }


# --------------------------------------------------------------------------- checks


def precision(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    caps = device_caps(device)
    chosen = training_precision("auto", caps)
    if device.type != "cuda":
        return f"cpu native bf16 {caps.native_bf16}; auto -> {chosen}"
    emulating = torch.cuda.is_bf16_supported()
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    expected = "bf16" if native else "fp16"
    seen = (
        f"{torch.cuda.get_device_name(device)} capability {caps.capability}, "
        f"is_bf16_supported {emulating} (native {native}), cudnn "
        f"{torch.backends.cudnn.version()}; auto -> {chosen}"
    )
    if chosen != expected:
        raise CheckFailed(f"{seen}, expected {expected}")
    return seen


def rnn_dtype(args: argparse.Namespace) -> str:
    """Recurrent layers of our models under bf16 autocast: fp32 on CUDA (its cuDNN autocast
    wrapper would run them in fp16 without loss scaling)."""
    from nmt.model import build_model

    device = torch.device(args.device)
    raw = tiny_config(args.data_dir, args.work_dir / "unused", args.device, "lstm_bahdanau")
    model = build_model(config_from_dict(raw).model, 100, 100).to(device)
    seen: list[torch.dtype] = []

    def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        out = output[0] if isinstance(output, tuple) else output
        tensor = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
        assert isinstance(tensor, torch.Tensor)
        seen.append(tensor.dtype)

    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            module.register_forward_hook(record)
    src = torch.randint(4, 100, (3, 7), device=device)
    tgt = torch.randint(4, 100, (3, 5), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        model(src, src != PAD_ID, tgt)
    raw_torch = ""
    if device.type == "cuda":
        lstm = torch.nn.LSTM(8, 8).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            plain = lstm(torch.randn(2, 3, 8, device=device))[0].dtype
            raw_torch = f"; plain nn.LSTM under bf16 autocast: {plain}"
    kinds = sorted({str(d) for d in seen})
    if device.type == "cuda" and kinds != ["torch.float32"]:
        raise CheckFailed(f"recurrent outputs {kinds}, expected torch.float32{raw_torch}")
    return f"recurrent outputs {kinds}{raw_torch}"


def fp16_loss(args: argparse.Namespace) -> str:
    if args.device == "cpu":
        device = torch.device("cpu")  # fp16 storage works on CPU too; the math is the same
    else:
        device = torch.device(args.device)
    torch.manual_seed(0)
    rows, vocab = 4096, 8000
    logits = torch.randn(rows, vocab, device=device) * 0.5
    target = torch.randint(4, vocab, (rows,), device=device)
    tokens = rows
    ref = logits.clone().requires_grad_()
    (F.cross_entropy(ref, target, label_smoothing=0.1, reduction="sum") / tokens).backward()
    lines = []
    for loss_scale in (65536.0, 32768.0):
        ours = logits.half().requires_grad_()
        loss, _ = label_smoothed_nll(ours, target, 0.1, scale=1.0 / tokens)
        (loss * loss_scale).backward()
        grad, ref_grad = ours.grad, ref.grad
        assert grad is not None and ref_grad is not None
        finite = bool(torch.isfinite(grad).all())
        zeros = float((grad == 0).float().mean())
        error = float((grad.float() / loss_scale - ref_grad).norm() / ref_grad.norm())
        lines.append(
            f"scale {loss_scale:g}: finite {finite}, zeros {zeros:.1%}, rel.err {error:.1e}"
        )
        if not finite or zeros > 0.001 or error > 5e-3:
            raise CheckFailed("; ".join(lines))
    return "; ".join(lines)


def masked_rows(args: argparse.Namespace) -> str:
    """Torch's kernels on a fully masked query row (informative), then our windowed encoder on
    a padded batch (must stay finite)."""
    from nmt.model import build_model

    device = torch.device(args.device)
    report = []
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            q = torch.randn(1, 2, 4, 16, device=device, dtype=dtype)
            mask = torch.ones(4, 4, dtype=torch.bool, device=device)
            mask[3] = False
            for backend in (
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH,
            ):
                try:
                    with sdpa_kernel(backend):
                        out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
                    nan = bool(torch.isnan(out).any())
                    report.append(f"{backend.name}/{str(dtype)[6:]} nan={nan}")
                except RuntimeError:
                    report.append(f"{backend.name}/{str(dtype)[6:]} n/a")
    raw = tiny_config(args.data_dir, args.work_dir / "unused", args.device, "transformer_local")
    model = build_model(config_from_dict(raw).model, 100, 100).to(device).eval()
    src = torch.randint(4, 100, (2, 24), device=device)
    src[1, 3:] = PAD_ID  # 21 padding positions, far more than the window of 4
    tgt = torch.randint(4, 100, (2, 6), device=device)
    finite = True
    for dtype in (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.bfloat16,):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            logits, _ = model(src, src != PAD_ID, tgt)
        finite &= bool(torch.isfinite(logits).all())
    summary = f"our windowed encoder finite: {finite}" + (
        f"; torch: {', '.join(report)}" if report else ""
    )
    if not finite:
        raise CheckFailed(summary)
    return summary


def train_resume(args: argparse.Namespace) -> str:
    run_dir = args.work_dir / "resume"
    raw = tiny_config(
        args.data_dir, run_dir, args.device, "transformer", max_steps=4, valid_every=2, log_every=1
    )
    first = _nmt(args, "train", raw, run_dir / "a.yaml")
    raw["train"]["max_steps"] = 6
    second = _nmt(args, "train", raw, run_dir / "b.yaml", "--resume")
    summary = json.loads((run_dir / "summary.json").read_text())
    if first.returncode or second.returncode or summary["steps"] != 6:
        raise CheckFailed(
            f"exit codes {first.returncode}/{second.returncode}, steps "
            f"{summary.get('steps')}: {(first.stderr + second.stderr)[-800:]}"
        )
    return "trained 4 steps, resumed to 6"


def train_speed(args: argparse.Namespace) -> str:
    from nmt.train import train

    device = torch.device(args.device)
    lines = []
    for arch in ("transformer", "lstm_bahdanau"):
        run_dir = args.work_dir / f"speed_{arch}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        summary = train(config_from_dict(tiny_config(args.data_dir, run_dir, args.device, arch)))
        metrics = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        speed = [m["tokens_per_s"] for m in metrics if m["kind"] == "train"][-1]
        losses = [m["loss"] for m in metrics if m["kind"] == "train"]
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
        lines.append(
            f"{arch}: {summary['steps']} steps, {speed:,.0f} tok/s, loss "
            f"{losses[0]:.2f}->{losses[-1]:.2f}, peak {peak:,.0f} MiB"
        )
        if summary["steps"] != 60 or not losses[-1] < losses[0]:
            raise CheckFailed("; ".join(lines))
    return "; ".join(lines)


def serve(args: argparse.Namespace) -> str:
    checkpoint = args.work_dir / "speed_transformer" / "best.pt"
    if not checkpoint.is_file():
        raise CheckFailed(f"{checkpoint} missing: run the train_speed check first")
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    lines = []
    for precision in ("fp32", "bf16"):
        port = 8765
        command = [
            sys.executable,
            "-m",
            "nmt.cli",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--accelerator",
            accelerator,
            "--devices",
            "1",
            "--precision",
            precision,
        ]
        with _server(command, port) as base:
            body = json.dumps({"text": "Ein Hund rennt durch den Schnee.", "alignment": True})
            request = urllib.request.Request(
                f"{base}/translate",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                result = json.loads(response.read())
        translation = result["translations"][0]
        if not translation.get("alignment"):
            raise CheckFailed(f"{precision}: no alignment in {str(result)[:300]}")
        lines.append(f"{precision}: {translation['translation']!r} with alignment")
    return "; ".join(lines)


def ddp(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda") and torch.cuda.device_count() < 2:
        return "SKIP: fewer than two GPUs"
    run_dir = args.work_dir / "ddp"
    raw = tiny_config(
        args.data_dir,
        run_dir,
        "cuda" if args.device.startswith("cuda") else "cpu",
        "transformer",
        max_steps=4,
        valid_every=2,
        log_every=1,
    )
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    first = _nmt(args, "train", raw, run_dir / "a.yaml", launcher=torchrun)
    raw["train"]["max_steps"] = 6
    second = _nmt(args, "train", raw, run_dir / "b.yaml", "--resume", launcher=torchrun)
    summary = json.loads((run_dir / "summary.json").read_text()) if first.returncode == 0 else {}
    if first.returncode or second.returncode or summary.get("steps") != 6:
        raise CheckFailed(
            f"exit codes {first.returncode}/{second.returncode}: "
            f"{(first.stderr + second.stderr)[-800:]}"
        )
    return "two processes trained 4 steps, resumed to 6"


# --------------------------------------------------------------------------- helpers


def _nmt(
    args: argparse.Namespace,
    command: str,
    raw: dict,
    config_path: Path,
    *extra: str,
    launcher: list[str] | None = None,
) -> subprocess.CompletedProcess:
    import yaml

    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(raw))
    runner = [sys.executable, *(launcher or []), "-m", "nmt.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*runner, command, "--config", str(config_path), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@contextlib.contextmanager
def _server(command: list[str], port: int):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CheckFailed(f"server exited: {proc.communicate()[1][-800:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise CheckFailed("server not healthy within 180 s")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


CHECKS: dict[str, Callable[[argparse.Namespace], str]] = {
    "precision": precision,
    "rnn_dtype": rnn_dtype,
    "fp16_loss": fp16_loss,
    "masked_rows": masked_rows,
    "train_resume": train_resume,
    "train_speed": train_speed,
    "serve": serve,
    "ddp": ddp,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("NMT_DATA_DIR", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/gpu_smoke"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"SKIP {args.check}: no CUDA device (torch {torch.__version__})")
        return 0
    try:
        seen = CHECKS[args.check](args)
    except CheckFailed as e:
        print(f"FAIL {args.check}: {e}")
        return 1
    except Exception as e:  # a crash is a failed check, reported on its line
        print(f"FAIL {args.check}: {type(e).__name__}: {str(e)[:500]}")
        return 1
    status = "SKIP" if seen.startswith("SKIP") else "PASS"
    print(f"{status} {args.check}: {seen.removeprefix('SKIP: ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
