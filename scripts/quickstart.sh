#!/usr/bin/env bash
# The whole default pipeline on one machine: prepare Multi30k de->en, train a small Transformer
# for a bounded time, evaluate it on test_2016_flickr, then serve it over HTTP.
#   NMT_DATA_DIR=../shared/data bash scripts/quickstart.sh        (CPU is enough)
# Environment: NMT_DATA_DIR (corpora; fetch with scripts/download_data.py), PORT (default 8000),
# RUN_DIR (default runs/quickstart), TRAIN_MINUTES (default 10), SERVE=0 to stop after evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${NMT_DATA_DIR:-data}"
RUN_DIR="${RUN_DIR:-runs/quickstart}"
PORT="${PORT:-8000}"
MINUTES="${TRAIN_MINUTES:-10}"
CONFIG=configs/quickstart.yaml

echo "== 1/4 prepare: corpus, SentencePiece, cached token ids"
nmt prepare --config "$CONFIG" --set train.run_dir="$RUN_DIR" data.dir="$DATA"

echo "== 2/4 train: at most $MINUTES minutes"
if [ -f "$RUN_DIR/last.pt" ]; then resume=--resume; else resume=; fi
nmt train --config "$CONFIG" --set train.run_dir="$RUN_DIR" data.dir="$DATA" \
  train.max_minutes="$MINUTES" $resume
CKPT="$RUN_DIR/averaged.pt"
[ -f "$CKPT" ] || CKPT="$RUN_DIR/best.pt"

echo "== 3/4 evaluate on test_2016_flickr (beam 5)"
nmt evaluate --checkpoint "$CKPT" --src "$DATA/multi30k/test_2016_flickr.de.gz" \
  --ref "$DATA/multi30k/test_2016_flickr.en.gz" --beam 5 --output "$RUN_DIR/test.hyp.en"

[ "${SERVE:-1}" = "0" ] && exit 0
echo "== 4/4 serve on http://127.0.0.1:$PORT  (Ctrl-C to stop)"
cat <<MSG
Try, from another terminal:
  curl -s http://127.0.0.1:$PORT/translate -H 'Content-Type: application/json' \\
    -d '{"text": "Ein Mann fährt mit dem Fahrrad die Straße entlang.", "alignment": true}'
MSG
exec nmt serve --checkpoint "$CKPT" --host 127.0.0.1 --port "$PORT"
