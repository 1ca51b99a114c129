#!/usr/bin/env bash
# Figure 2 on the embedded dataset: train Gumbel and Sigmoid heads (same seed, same data), then
# compare the mean positive gradient per category in dB (gumbel - sigmoid: the first run is
# the reference), by frequency group.
# Usage: examples/compare_gradients.sh [OUT_DIR] [extra gumbel train options...]
set -euo pipefail
out=${1:-runs/compare}
shift || true
gumbel=${GUMBEL:-gumbel}
for loss in gumbel sigmoid; do
  if [ ! -f "$out/$loss/model_final.pt" ]; then
    "$gumbel" train --loss "$loss" --out "$out/$loss" "$@"
  fi
done
"$gumbel" grads "$out/sigmoid" "$out/gumbel" --plot "$out/grads.png"
"$gumbel" grads "$out/sigmoid" "$out/gumbel" --json > "$out/grads.json"
echo "figure: $out/grads.png  numbers: $out/grads.json"
