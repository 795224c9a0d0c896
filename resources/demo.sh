#!/usr/bin/env bash
# rsvl demo (make demo): train → classify → query → evaluate on the bundled sample scene
# (real Sentinel-2 L1C + elevation + land cover, resources/sample) through qgis_process,
# exactly as a user would from the shell. Usage: resources/demo.sh VENV OUT_DIR
set -euo pipefail
VENV=$1
OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
S=$HERE/sample
QP=$VENV/bin/qgis_process
PY=$VENV/bin/python
mkdir -p "$OUT"
LOG=$OUT/qgis_process.log
: > "$LOG"

run() {  # run ALGORITHM ARGS…, keep its log, print its results block
  echo "== qgis_process run $1" | tee -a "$LOG"
  if ! "$QP" run "$@" > "$OUT/.last" 2>&1; then
    cat "$OUT/.last" >> "$LOG"; tail -20 "$OUT/.last"; echo "rsvl demo: $1 failed (log: $LOG)" >&2; exit 1
  fi
  cat "$OUT/.last" >> "$LOG"
  sed -n '/^Results/,$p' "$OUT/.last" | grep -E '^[A-Z_]+:' | sed 's/^/   /'
}

echo "rsvl demo: split the reference into a seeded, class-stratified 10 % (training) and 90 % (test)"
"$PY" -m rsvl.backend split --labels "$S/lulc.tif" --fraction 0.1 --seed 0 \
  --first "$OUT/train_labels.tif" --second "$OUT/test_labels.tif" | sed 's/^/   /'

run rsvl:train -- INPUT_MS="$S/s2_l1c_2015-07-11.tif" INPUT_LIDAR="$S/dem.tif" \
  TRAINING="$OUT/train_labels.tif" OUTPUT_MODEL="$OUT/model.safetensors" OUTPUT_REPORT="$OUT/train_report.html"
run rsvl:classify -- MODEL="$OUT/model.safetensors" INPUT_MS="$S/s2_l1c_2015-07-11.tif" INPUT_LIDAR="$S/dem.tif" \
  OUTPUT="$OUT/classes.tif" OUTPUT_CONFIDENCE="$OUT/confidence.tif"
run rsvl:query -- MODEL="$OUT/model.safetensors" INPUT_MS="$S/s2_l1c_2015-07-11.tif" INPUT_LIDAR="$S/dem.tif" \
  PROMPTS="$(printf 'forest\nmeadow\nbuilt-up area\nwater')" OUTPUT_SIMILARITY="$OUT/query_similarity.tif" \
  OUTPUT="$OUT/query_best.tif"
run rsvl:evaluate -- INPUT="$OUT/classes.tif" REFERENCE="$OUT/test_labels.tif" OUTPUT_CSV="$OUT/confusion.csv" \
  OUTPUT_JSON="$OUT/accuracy.json" OUTPUT_REPORT="$OUT/accuracy_report.html"
rm -f "$OUT/.last"

cat <<TXT

rsvl demo done — outputs in $OUT
   model               $OUT/model.safetensors   (training report: $OUT/train_report.html)
   class map           $OUT/classes.tif         (+ classes.qml; confidence.tif)
   query similarity    $OUT/query_similarity.tif (one band per prompt; best prompt: query_best.tif)
   accuracy            $OUT/accuracy_report.html, confusion.csv, accuracy.json
   qgis_process log    $LOG
Test accuracy on the other 90 % of the labelled pixels, side by side with per-pixel baselines
trained and tested on the same split in this run (all bands at the pixel, 500-tree forest):
TXT
"$PY" -m rsvl.backend baselines --ms "$S/s2_l1c_2015-07-11.tif" --lidar "$S/dem.tif" \
  --train "$OUT/train_labels.tif" --test "$OUT/test_labels.tif" --compare "$OUT/accuracy.json"
