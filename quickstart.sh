#!/usr/bin/env bash
# Quick start: install maml-tf, meta-train 10-shot sinusoid MAML briefly, then test it.
# Usage: bash quickstart.sh [LOGDIR]   (about 1-3 minutes on 2 CPU cores, after the install)
set -euo pipefail
cd "$(dirname "$0")"
LOGDIR="${1:-logs/quickstart}"
python3 -m pip install -q -e .
COMMON=(--datasource=sinusoid --logdir="$LOGDIR" --norm=None --update_batch_size=10 --update_lr=0.01
        --metatrain_iterations=5000)
python3 main.py "${COMMON[@]}"
python3 main.py "${COMMON[@]}" --train=False
echo "Test results (MSE after 0..10 inner steps): $LOGDIR/cls_5.mbs_25.ubs_10.numstep1.updatelr0.01nonorm/test_ubs10_stepsize0.01.csv"
