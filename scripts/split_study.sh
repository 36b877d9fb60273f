#!/usr/bin/env bash
# The split-learning study of docs/split.md: flat FedAvg, then SplitFed and U-shaped at two
# cut layers × three codecs (activations and gradients alike) on scenarios/split_finance.ron,
# each split run then inverted by its server (`sim invert`). Tabulate with
#   python3 scripts/split_study.py runs/split-*
# Usage: scripts/split_study.sh [SIM] (default: sim on PATH); from the crate root, with
# ../shared beside it. Runs already present are skipped.
set -euo pipefail
SIM=${1:-sim}
S=scenarios/split_finance.ron
run() { # NAME SET...
    local name=$1; shift
    [ -f "runs/$name/summary.json" ] && return 0
    "$SIM" run "$S" --out "runs/$name" --metrics-addr none "$@"
}
run split-flat --set topology=Flat
for cut in 2 8; do
    for mode in SplitFed UShaped; do
        for codec in None Int8 'TopK(fraction: 0.1)'; do
            tag=$(echo "$codec" | tr -cd 'a-zA-Z0-9' | tr 'A-Z' 'a-z' | sed 's/fraction//')
            name="split-$(echo $mode | tr 'A-Z' 'a-z')$cut-$tag"
            run "$name" --set "topology=Split(cut_layer: $cut, mode: $mode, \
activation_compression: $codec, gradient_compression: $codec)"
            [ -f "runs/$name/inversion.json" ] || "$SIM" invert "runs/$name" --members 100
        done
    done
done
