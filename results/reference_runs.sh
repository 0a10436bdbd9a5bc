#!/usr/bin/env bash
# Reference runs on the CIFAR-10 copy (npz) that the committed results/ files come from.
# Usage: bash results/reference_runs.sh [DATA_ROOT]   (default: ../shared/data/cifar10)
# Each run writes results/reference/<name>/ (config, provenance, metrics, summary, results.csv);
# checkpoints are not committed. Finally the report command makes results/reference_report/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${PACT_DATA_ROOT:-../shared/data/cifar10}}
OUT=results/reference
PH=${PACT_HARNESS:-pact-harness}
common=(--data-root "$DATA" --progress off)

# Foundation: ResNet-8, 5000 training images, 2 epochs, 2000 test images.
$PH train --method resnet --depth 8 --epochs 2 --train-subset 5000 --test-subset 2000 \
  "${common[@]}" --out $OUT/resnet8_5k_2ep

# The vanilla depth series on the same budget as the adaptive runs below.
for depth in 8 14 20; do
  $PH train --method resnet --depth $depth --epochs 3 --train-subset 3000 --test-subset 1000 \
    "${common[@]}" --out $OUT/resnet${depth}_3k_3ep
done

# ACT / SACT: ResNet-20 (3 units per block), 3000 images, 3 epochs, a small and a large tau.
for m in act sact; do
  for tau in 0.01 0.5; do
    $PH train --method $m --depth 20 --epochs 3 --train-subset 3000 --test-subset 1000 \
      --tau $tau "${common[@]}" --out $OUT/${m}20_tau${tau}
  done
done

# PACT / spatial PACT: the same budget, a small and a large lambda; deterministic thresholds
# 0.3/0.5/0.7 and 5 repeats of the random modes.
for m in pact spatial_pact; do
  for lam in 0.01 0.5; do
    $PH train --method $m --depth 20 --epochs 3 --train-subset 3000 --test-subset 1000 \
      --lambda $lam --thresholds 0.3,0.5,0.7 --repeats 5 "${common[@]}" \
      --out $OUT/${m}20_lambda${lam}
  done
done

$PH report $OUT --out results/reference_report
