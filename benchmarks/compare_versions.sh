#!/usr/bin/env bash
# compare_peers.py --quick rows of two advlab versions side by side: is this advlab at least as fast as an older one?
#
#   git archive OLD_COMMIT src benchmarks | tar -x -C /tmp/old    # the older tree (its own src and benchmarks)
#   bash benchmarks/compare_versions.sh /tmp/old OUT_DIR [ROW ...]  # a ROW is "MODEL:ATTACK", default: all 12
#
# For each row, the older tree's compare_peers.py (advlab as that version runs it) and this tree's (advlab on the
# model as given and on advlab.models.prepare's copy) run at the same time, one single-threaded process per CPU
# core (cores 0 and 1, or the two of CORES="A B"), each against the same fastest peers of the last full table; so the two versions meet the
# same machine load, and each process also times its own raw forward+backward floor. A ratio between the two
# processes is read from their CPU seconds, and within each process against its peer (docs/benchmarks.md,
# compare_peers.py). Writes OUT_DIR/{old,new}-MODEL-ATTACK.{json,md,log}; needs the peers (`make bench-deps`).
set -u
OLD=$(cd "$1" && pwd)
OUT=$2
shift 2
PY=${PY:-.venv/bin/python}
read -r core_old core_new <<<"${CORES:-0 1}"
mkdir -p "$OUT"
[ -e "$OLD/../shared" ] || ln -s "$(cd .. && pwd)/shared" "$OLD/../shared"  # the old _peers looks for ../shared
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
    for model in fmnist_cnn_pgd imagenet; do
        for attack in fgsm bim pgd pgd_l2 apgd_ce cw_l2; do rows+=("$model:$attack"); done
    done
fi
libs() {  # the peers a row is timed against
    case $1 in
    fgsm) echo "torchattacks ART" ;;
    cw_l2) echo "adv_lib" ;;
    *) echo "adv_lib torchattacks" ;;
    esac
}
for r in "${rows[@]}"; do
    model=${r%%:*} attack=${r#*:} repeats=(--repeats 5 --long-repeats 3)
    [ "$model" = imagenet ] && [ "$attack" = cw_l2 ] && repeats=(--repeats 5 --long-repeats 1)
    echo "[$(date +%T)] $model $attack (cores $core_old, $core_new)"
    # shellcheck disable=SC2046  # libs gives several words on purpose
    PYTHONPATH=$OLD/src:$OLD:${PYTHONPATH:-} OMP_NUM_THREADS=1 taskset -c "$core_old" "$PY" "$OLD/benchmarks/compare_peers.py" --quick \
        --threads 1 --models "$model" --attacks "$attack" "${repeats[@]}" --libraries advlab $(libs "$attack") \
        --out "$OUT/old-$model-$attack" >"$OUT/old-$model-$attack.log" 2>&1 &
    old=$!
    # shellcheck disable=SC2046
    PYTHONPATH=$PWD/src:$PWD:${PYTHONPATH:-} OMP_NUM_THREADS=1 taskset -c "$core_new" "$PY" benchmarks/compare_peers.py --quick \
        --threads 1 --models "$model" --attacks "$attack" "${repeats[@]}" \
        --libraries advlab advlab-prepared $(libs "$attack") --out "$OUT/new-$model-$attack" \
        >"$OUT/new-$model-$attack.log" 2>&1
    wait $old
done
"$PY" benchmarks/_peers/versions_table.py "$OUT"
