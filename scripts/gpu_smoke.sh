#!/usr/bin/env bash
# The first run on a CUDA machine: eight checks in about five minutes, one line each
# (PASS / FAIL / SKIP), exit status non-zero if any check failed.
#
#   bash scripts/gpu_smoke.sh                  # on GPU 0 (CUDA_VISIBLE_DEVICES to choose)
#   bash scripts/gpu_smoke.sh --device cpu     # the same script on a CPU (tests the script)
#
# Needs the corpora under $NMT_DATA_DIR (default ../shared/data) and the project installed
# (README: Install). Work files go to runs/gpu_smoke (removed first).
#   1 precision     what `precision: auto` picks for this GPU, against its native bf16
#   2 rnn_dtype     LSTM/GRU layers under bf16 autocast run in fp32, not cuDNN's fp16
#   3 fp16_loss     the loss gradient of fp16 logits at loss scales 65536 and 32768
#   4 masked_rows   fully masked attention rows per SDPA kernel; our windowed encoder finite
#   5 train_resume  train 4 steps, --resume to 6
#   6 train_speed   Transformer and LSTM+Bahdanau: tokens/s, loss falls, peak memory
#   7 serve         nmt serve on the GPU: a translation with alignment, fp32 and bf16
#   8 ddp           two-GPU torchrun training and resume (skipped with one GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
if [[ "${1:-}" == "--device" ]]; then device="$2"; fi
work=runs/gpu_smoke
rm -rf "$work"
mkdir -p "$work"
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| devices', torch.cuda.device_count())"
failed=0
for check in precision rnn_dtype fp16_loss masked_rows train_resume train_speed serve ddp; do
    python scripts/gpu_checks.py "$check" --device "$device" --work-dir "$work" 2>>"$work/stderr.log" \
        || failed=$((failed + 1))
done
if (( failed )); then
    echo "$failed check(s) failed; details in $work/stderr.log"
    exit 1
fi
echo "all checks passed or skipped"
