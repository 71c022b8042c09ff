#!/usr/bin/env bash
# Sequence-level knowledge distillation data for Multi30k (Kim & Rush, 2016): the teacher
# (one checkpoint or an ensemble) translates the training sources with beam search, and
# data/distilled/<src>-<tgt>/ gets the sources twice, once with their references and once
# with the teacher's translations as targets. configs/multi30k/distilled_*.yaml train on it.
#
#   scripts/distill_multi30k.sh en de 1.3 models/transformer_en-de.pt models/transformer_en-de_seed2.pt
#
# Arguments: source and target language, the teacher's length penalty (as chosen on val),
# its checkpoint(s). Reads $NMT_DATA_DIR/multi30k (default: data/multi30k).
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
src=$1 tgt=$2 length_penalty=$3
shift 3
corpus=${NMT_DATA_DIR:-data}/multi30k
out=data/distilled/$src-$tgt
mkdir -p "$out"
nmt translate --checkpoint "$@" --input "$corpus/train.$src.gz" --output "$out/distilled.$tgt" \
    --beam 5 --length-penalty "$length_penalty"
sources=$(zcat "$corpus/train.$src.gz" | wc -l)
translations=$(wc -l < "$out/distilled.$tgt")
if [ "$sources" != "$translations" ]; then
    echo "error: $translations translations for $sources sources" >&2
    exit 1
fi
{ zcat "$corpus/train.$src.gz"; zcat "$corpus/train.$src.gz"; } > "$out/train.$src"
{ zcat "$corpus/train.$tgt.gz"; cat "$out/distilled.$tgt"; } > "$out/train.$tgt"
echo "$out: $((2 * sources)) pairs (references and distilled targets)"
