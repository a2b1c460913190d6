#!/usr/bin/env bash
# The checks of one session on a GPU machine, as one script (a lent machine's time is short and counted).
#
# Runs, from the repository root, within about 9 minutes:
#   - the CUDA tests (tests/test_cuda.py and the attacks' CUDA smoke test) on the GPU;
#   - GPU timings, one step after the other on CPU cores 0-3 (benchmarks/minimal_norm.py: FMN, DDN and
#     sigma-zero against adv_lib's on the Fashion-MNIST models; fab_projection.py: FAB's projection search
#     against the full sort; compare_peers.py --device cuda), then GPU results four at once, one core each:
#     the CUDA tests and cross-machine runs, minimal_norm.py at 1,000 steps on 1,000 images of the robust
#     Fashion-MNIST model (the command comes in MINIMAL_1000), minimal_norm.py on EfficientNet-Lite0 in
#     Linf, L2 and L0 (the L0 ensemble's members and their adv_lib peers; last in its lane, so it may get less
#     than its 150 s and then saves nothing), and suite_vs_autoattack.py on 1,000 Fashion-MNIST images;
#   - at the same time, benchmarks/compare_peers.py --quick on the CPU, one single-threaded process per
#     (model, attack) pinned to its own core (4-15), for this advlab and, beside it, the advlab of the commit
#     before the architecture change (.dev/old): the peers and the floor of each row share one process, so
#     their ratios are side by side as on a quiet 1-thread machine;
#   - advlab verify across machines: a run made elsewhere on the CPU (.dev/runs/cpu_effnet) verified here on CUDA,
#     and a run made here on CUDA left in the results for verification elsewhere on the CPU.
#
# Inputs (git-ignored, carried to the machine): .dev/whl (peer and model wheels; adv-lib 0.2.8 or later,
# whose sigma_zero minimal_norm.py imports), .dev/site (pyautoattack without
# its 45 MB example checkpoint), .dev/data (Fashion-MNIST test files, the 30 x 5 ImageNet set), .dev/runs, and
# .dev/old (`git archive 8220beb src benchmarks`: advlab before the architecture change).
# Output: $OUT/log.txt and $OUT/results.tgz (every JSON, table and log).
set -u
OUT=${OUT:-/tmp/gpu_out}
R=/tmp/res
mkdir -p "$OUT" "$R"
exec > >(tee "$OUT/log.txt") 2>&1
# This session's two measurements whose settings come from elsewhere (the issues' open rows):
# (adaptive.py's EfficientNet-Lite0 rows on 150 images were measured on the CPU; their lane now runs this.)
MINIMAL_1000=(python3 benchmarks/minimal_norm.py --device cuda --model fmnist_cnn_pgd --n 1000 --steps 1000
    --norms linf,l2,l1 --threads 1 --save "$R/minimal_1000.json")
FMN_TIME=(python3 benchmarks/minimal_norm.py --model fmnist_cnn_pgd --images 40 --steps 100 --norms l1,l0
    --entries "=advlab fmn,=adv_lib fmn" --repeats 9 --threads 1)
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

# CPU rows of compare_peers --quick, in the background, one single-threaded process per core (4-13): each row
# runs twice at the same time on two neighbouring cores, for the advlab of the commit before the architecture
# change (.dev/old) and this one (benchmarks/compare_versions.sh), rows paired so that a long row shares its
# cores with short ones.
mkdir -p "$R/cpu"
cpu_rows=()
core=4
for rows in "imagenet:cw_l2 fmnist_cnn_pgd:fgsm" "fmnist_cnn_pgd:cw_l2 imagenet:fgsm" \
    "imagenet:apgd_ce fmnist_cnn_pgd:bim fmnist_cnn_pgd:apgd_ce" "imagenet:bim fmnist_cnn_pgd:pgd" \
    "imagenet:pgd fmnist_cnn_pgd:pgd_l2 imagenet:pgd_l2"; do
    # shellcheck disable=SC2086  # one word per row
    CORES="$core $((core + 1))" PY=python3 timeout 560 bash benchmarks/compare_versions.sh .dev/old "$R/cpu" $rows \
        >"$R/cpu/lane-$core.log" 2>&1 &
    cpu_rows+=($!)
    core=$((core + 2))
done
stamp "10 CPU lanes started on cores 4-13"
# Cores 14-15: `advlab eval` in 1 and 2 processes on two quiet cores (the sandbox's run measured its load), then
# the CPU time of FMN-L1/L0 against adv_lib's on the robust model (FMN_TIME, one process, one core).
{
    timeout 330 taskset -c 14,15 python3 benchmarks/distributed_throughput.py --workload both --rounds 2 \
        --weights src/advlab/models/weights/fmnist_cnn_pgd.safetensors --json "$R/distributed_throughput.json" \
        >"$R/distributed_throughput.log" 2>&1
    OMP_NUM_THREADS=1 timeout 180 taskset -c 14 "${FMN_TIME[@]}" >"$R/fmn_time.log" 2>&1
} &
cpu_rows+=($!)

DEADLINE=${DEADLINE:-555}  # seconds after the start by which every GPU step has ended (the call's limit is 600)
gpu() {  # gpu SECONDS CORES NAME COMMAND...: one GPU step on CORES, at most SECONDS and never past DEADLINE
    local limit=$1 cores=$2 name=$3 left=$((DEADLINE - (SECONDS - T0)))
    shift 3
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then stamp "$name: skipped (no time left)"; return; fi
    stamp "$name (at most $limit s)"
    local threads=1
    case $cores in *-*) threads=$((${cores#*-} - ${cores%-*} + 1)) ;; esac
    OMP_NUM_THREADS=$threads timeout "$limit" taskset -c "$cores" "$@" >"$R/$name.log" 2>&1
    stamp "$name: exit $? ($(tail -1 "$R/$name.log"))"
}
# Phase 1, the GPU timings, each step alone on the GPU (a timing shares it with nothing).
for model in fmnist_cnn_standard fmnist_cnn_pgd; do  # FMN, DDN, sigma-zero against adv_lib's: launch-bound here
    gpu 50 0-3 "minimal_time_$model" python3 benchmarks/minimal_norm.py --device cuda --model $model --n 1000 \
        --steps 100 --norms l0,l1,l2,linf --threads 4 --repeats 3 --no-fragile \
        --entries "=advlab fmn,=adv_lib fmn,=advlab ddn,=adv_lib ddn,=advlab sigma_zero,=adv_lib sigma_zero" \
        --save "$R/minimal_time_$model.json"
done
gpu 40 0-3 fab_projection python3 benchmarks/fab_projection.py --device cuda --n 32 --steps 20 --targets 1 \
    --norms linf,l2,l1 --threads 4
gpu 90 0-3 peers_cuda python3 benchmarks/compare_peers.py --quick --device cuda --models imagenet --batch 128 \
    --strength-images 128 --repeats 3 --long-repeats 2 --attacks fgsm pgd_l2 apgd_ce --out "$R/peers_cuda"
# Phase 2, results whose times are not the point, four at once (one core each): the CUDA tests and the runs
# verified across machines; minimal-norm attacks at 1,000 steps, and on EfficientNet-Lite0; the strong suite
# against AutoAttack on 1,000 Fashion-MNIST images (robust accuracy is the device's; the CPU run took 45 minutes).
{
    gpu 150 0 cuda_tests python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py "tests/test_attacks.py::test_runs_on_cuda"
    gpu 30 0 verify_cpu_run_on_cuda python3 -m advlab verify .dev/runs/cpu_effnet --device cuda --data ../shared/data/imagenet-30x5
    gpu 40 0 cuda_run python3 -m advlab eval --model efficientnet_lite0 --data ../shared/data/imagenet-30x5 --sample 8 \
        --batch-size 8 --suite fast --eps 4/255 --save-adversarial --device cuda --out "$R/cuda_effnet" --quiet
    gpu 150 0 minimal_effnet_l0 python3 benchmarks/minimal_norm.py --device cuda --model efficientnet_lite0 \
        --imagenet ../shared/data/imagenet-30x5 --n 150 --steps 100 --norms l0 --threads 1 --no-fragile \
        --entries "=advlab fmn,=advlab fmn a1000,=advlab sigma_zero,=adv_lib fmn,=adv_lib sigma_zero" \
        --save "$R/minimal_effnet_l0.json"
} &
phase2=($!)
gpu 400 1 minimal_1000 "${MINIMAL_1000[@]}" &
phase2+=($!)
{
    gpu 200 2 minimal_effnet_linf python3 benchmarks/minimal_norm.py --device cuda --model efficientnet_lite0 \
        --imagenet ../shared/data/imagenet-30x5 --n 150 --steps 100 --norms linf --threads 1 \
        --save "$R/minimal_effnet_linf.json"
    gpu 200 2 minimal_effnet_l2 python3 benchmarks/minimal_norm.py --device cuda --model efficientnet_lite0 \
        --imagenet ../shared/data/imagenet-30x5 --n 150 --steps 100 --norms l2 --threads 1 \
        --save "$R/minimal_effnet_l2.json"
} &
phase2+=($!)
gpu 400 3 suite_vs_autoattack python3 benchmarks/suite_vs_autoattack.py --device cuda --models fmnist_cnn_pgd,fmnist_cnn_standard \
    --fmnist-n 1000 --threads 1 --out "$R/suite_vs_autoattack.json" &
phase2+=($!)
wait "${phase2[@]}"
stamp "waiting for the CPU rows"
# Not a bare `wait`: it would also wait for the tee of the log, which never ends. Rows still running at
# CPU_DEADLINE are stopped (their logs say how far they got), so the results come back within the call's limit.
CPU_DEADLINE=${CPU_DEADLINE:-585}
while [ $((SECONDS - T0)) -lt "$CPU_DEADLINE" ]; do
    running=0
    for pid in "${cpu_rows[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ $running = 0 ] && break
    sleep 2
done
# A lane's pid is its `timeout` (which passes TERM on to its command) or, for the cores 14-15 group, a subshell
# whose children are `timeout`s: TERM to the pid and to its children reaches every row's timeout either way.
for pid in "${cpu_rows[@]}"; do
    kill -0 "$pid" 2>/dev/null && { stamp "stopping CPU lane $pid"; kill "$pid"; pkill -P "$pid"; }
done
sleep 3  # the stopped rows' processes end before their results are packed
stamp "done"
