#!/usr/bin/env bash
# The seeds' comparison regenerated with kit on the mnfinder test split (issue 23), for a quiet machine:
#
#  1. seed 003's table (Caicedo et al. 2019): classical, pixel_forest, deepcell, unet_lite0, maskrcnn_lite0 and
#     their LightGBM ensemble, each trained on the 4 folds of mnfinder's train split, post-processing tuned out
#     of fold, then `kit compare` on the 16 test images: F1/AP vs IoU, mAP with CI and paired difference,
#     missed by size / extra / merges / splits, s/image (2 cores);
#  2. does the ensemble gain from a third or fourth family? Every candidate set is fitted and compared on the
#     out-of-fold images only; the choice is then scored on the test split once;
#  3. seed 004's automatic labels: agreement with the truth on held-out images of labels made by models trained
#     on the train split, and a U-Net trained on automatic labels only (the classical pipeline's labels of the
#     train split) against the same recipe trained on the truth, both on the test split.
#
# Usage (from the repository root, with kit installed): bash benchmarks/seeds_comparison.sh [MINUTES]
# MINUTES: the time budget of each network fold (default 10; the demo gives the U-Net ~8 on 2 cores).
# Everything is an MLflow run (`kit ui`); the tables are written under outputs/compare/ and outputs/seeds/.
set -euo pipefail
M=${1:-10}
OUT=outputs/seeds
mkdir -p "$OUT"

kit data import mnfinder
kit weights import efficientnet-lite0

# --- 1. every family: 4 folds, out-of-fold predictions (tune the post-processing), the test split ----------
kit train --exp classical --folds all
kit train --exp pixel_forest --folds all
for exp in deepcell unet_lite0 maskrcnn_lite0; do
  kit train --exp "$exp" --folds all --set training.max_minutes="$M"
done
for exp in classical pixel_forest deepcell unet_lite0 maskrcnn_lite0; do
  kit predict --exp "$exp" --oof
  kit predict --exp "$exp" --split test
done
kit ensemble --exp ensemble   # the demo's pair: unet_lite0 + maskrcnn_lite0
kit compare unet_lite0 maskrcnn_lite0 ensemble deepcell pixel_forest classical --kind test \
  --out outputs/compare/seeds-test

# --- 2. a third or fourth family in the ensemble, chosen on the out-of-fold images only ------------------------
CANDIDATES=()
for extra in classical pixel_forest deepcell "classical, pixel_forest, deepcell"; do
  name="ensemble_$(echo "$extra" | tr -d ' ' | tr ',' '_')"
  printf 'base: ensemble\nensemble:\n  bases: [unet_lite0, maskrcnn_lite0, %s]\n' "$extra" > "$OUT/$name.yaml"
  kit ensemble --exp "$OUT/$name.yaml"
  CANDIDATES+=("$OUT/$name.yaml")
done
kit compare ensemble "${CANDIDATES[@]}" --kind oof --out outputs/compare/seeds-ensembles-oof
CHOICE=$(python -c "
import pandas as pd
t = pd.read_csv('outputs/compare/seeds-ensembles-oof/compare.csv')
print(t.loc[t['map'].idxmax(), 'experiment'])")
echo "chosen on OOF: $CHOICE"
if [ "$CHOICE" = ensemble ]; then CHOSEN=ensemble; else CHOSEN="$OUT/$CHOICE.yaml"; fi
kit compare ensemble "$CHOSEN" --kind test --out outputs/compare/seeds-ensemble-choice-test

# --- 3. automatic labels (seed 004) -------------------------------------------------------------------------------
# Agreement with the truth on held-out images (validation + test) of labels made by models trained on train.
for exp in classical unet_lite0; do
  kit data autolabel --from "$exp" --data data/mnfinder --splits validation,test --out "data/mnfinder-heldout-$exp"
done
# A U-Net trained on the classical pipeline's labels of the train split only (its test split keeps the truth),
# against the same recipe trained on the truth. (The classical parameters were chosen on the train split's
# truth: 2 choices and 6 watershed thresholds, far from a network's fit of it.)
kit data autolabel --from classical --data data/mnfinder --splits train --out data/mnfinder-auto
printf 'base: unet_lite0\ndata:\n  root: data/mnfinder-auto\n' > "$OUT/unet_lite0_autolabels.yaml"
AUTO="$OUT/unet_lite0_autolabels.yaml"
kit train --exp "$AUTO" --folds all --set training.max_minutes="$M"
kit predict --exp "$AUTO" --oof
kit predict --exp "$AUTO" --split test
kit compare unet_lite0 "$AUTO" classical --kind test --out outputs/compare/seeds-autolabels-test
