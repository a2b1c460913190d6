#!/usr/bin/env bash
# The checks of one session on a GPU machine, as one script (a lent machine's time is short and counted).
#
# Runs, from the repository root, within about 9 minutes:
#   - the CUDA tests (tests/test_cuda.py and the attacks' CUDA smoke test) on the GPU;
#   - GPU timings: benchmarks/compare_peers.py --device cuda, benchmarks/minimal_norm.py and benchmarks/adaptive.py
#     on the GPU (one after the other, on CPU cores 0-3);
#   - at the same time, benchmarks/compare_peers.py --quick on the CPU, one single-threaded process per
#     (model, attack) pinned to its own core (4-15): the peers and the floor of each row share one process, so
#     their ratios are side by side as on a quiet 1-thread machine;
#   - advlab verify across machines: a run made elsewhere on the CPU (.dev/runs/cpu_effnet) verified here on CUDA,
#     and a run made here on CUDA left in the results for verification elsewhere on the CPU.
#
# Inputs (git-ignored, carried to the machine): .dev/whl (peer and model wheels), .dev/site (pyautoattack without
# its 45 MB example checkpoint), .dev/data (Fashion-MNIST test files, the 30 x 5 ImageNet set), .dev/runs.
# Output: $OUT/log.txt and $OUT/results.tgz (every JSON, table and log).
set -u
OUT=${OUT:-/tmp/gpu_out}
R=/tmp/res
mkdir -p "$OUT" "$R"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$SECONDS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }
finish() { stamp "packing results"; tar czf "$OUT/results.tgz" -C /tmp res; }
trap finish EXIT

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl
export PYTHONPATH=$PWD/src:$PWD:/tmp/site:$PWD/.dev/site PYTHONUNBUFFERED=1 ADVLAB_FASHION_MNIST=/usr/share/datasets/fashion-mnist
mkdir -p /usr/share/datasets/fashion-mnist ../shared/data
cp .dev/data/fashion-mnist/* /usr/share/datasets/fashion-mnist/
cp -r .dev/data/imagenet-30x5 ../shared/data/
{
    nvidia-smi
    lscpu
    python3 -c "import torch, timm, sys; print(sys.version, torch.__version__, torch.version.cuda, timm.__version__)"
    git log --oneline -1
} >"$R/env.txt" 2>&1
stamp "set up: $(tail -2 "$R/env.txt" | tr '\n' ' ')"

# CPU rows of compare_peers --quick, one pinned process per row, in the background.
mkdir -p "$R/cpu"
core=4
cpu_rows=()
for model in imagenet fmnist_cnn_pgd; do
    for attack in fgsm bim pgd pgd_l2 apgd_ce cw_l2; do
        OMP_NUM_THREADS=1 timeout 480 taskset -c $core python3 benchmarks/compare_peers.py --quick --threads 1 \
            --models $model --attacks $attack --out "$R/cpu/$model-$attack" >"$R/cpu/$model-$attack.log" 2>&1 &
        cpu_rows+=($!)
        core=$((core + 1))
    done
done
stamp "12 CPU rows started on cores 4-15"

DEADLINE=${DEADLINE:-555}  # seconds after the start by which every GPU step has ended (the call's limit is 600)
gpu() {  # gpu SECONDS NAME COMMAND...: one GPU step on cores 0-3, at most SECONDS and never past DEADLINE
    local limit=$1 name=$2 left=$((DEADLINE - (SECONDS - T0)))
    shift 2
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then stamp "$name: skipped (no time left)"; return; fi
    stamp "$name (at most $limit s)"
    OMP_NUM_THREADS=4 timeout "$limit" taskset -c 0-3 "$@" >"$R/$name.log" 2>&1
    stamp "$name: exit $? ($(tail -1 "$R/$name.log"))"
}
# In the order of what matters most, each step on its own (GPU timings are not shared with another GPU job).
gpu 90 cuda_tests python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py "tests/test_attacks.py::test_runs_on_cuda"
gpu 30 verify_cpu_run_on_cuda python3 -m advlab verify .dev/runs/cpu_effnet --device cuda --data ../shared/data/imagenet-30x5
gpu 40 cuda_run python3 -m advlab eval --model efficientnet_lite0 --data ../shared/data/imagenet-30x5 --sample 8 \
    --batch-size 8 --suite fast --eps 4/255 --save-adversarial --device cuda --out "$R/cuda_effnet" --quiet
for model in fmnist_cnn_standard fmnist_cnn_pgd; do
    gpu 75 "minimal_$model" python3 benchmarks/minimal_norm.py --device cuda --model $model --n 1000 --steps 100 \
        --norms l0,l1,l2,linf --threads 4
done
gpu 100 peers_cuda python3 benchmarks/compare_peers.py --quick --device cuda --models imagenet --batch 128 \
    --strength-images 128 --repeats 3 --long-repeats 2 --out "$R/peers_cuda"
gpu 150 adaptive_effnet python3 benchmarks/adaptive.py --suite --device cuda --imagenet ../shared/data/imagenet-30x5 \
    --images 32 --out "$R/adaptive_effnet.jsonl"
for norms in l2,linf l0,l1; do
    gpu 60 "minimal_effnet_$norms" python3 benchmarks/minimal_norm.py --device cuda --model efficientnet_lite0 \
        --imagenet ../shared/data/imagenet-30x5 --n 32 --steps 100 --norms $norms --threads 4
done
stamp "waiting for the CPU rows"
wait "${cpu_rows[@]}"  # not a bare `wait`: it would also wait for the tee of the log, which never ends
stamp "done"
