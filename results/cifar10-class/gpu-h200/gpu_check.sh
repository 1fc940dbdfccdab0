#!/usr/bin/env bash
# One device run: throughput, a short CIFAR-10 pretraining on the JPEG copy, then original,pecker,sfd,salun (fast).
# usage: bash .gpudata/gpu_check.sh DEVICE PROFILE STEPS OUTDIR
set -uo pipefail
DEV=${1:-cuda}; PROF=${2:-fast}; STEPS=${3:-3000}; O=${4:-$OUT}
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 BENCH_CACHE=${BENCH_CACHE:-/tmp/bcache}
PREC=bf16,tf32,channels-last
DATA=.gpudata/cifar10-jpeg75.tar.gz
T0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - T0 )) s" | tee -a $O/timeline.txt; }
stamp start
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch;print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())") > $O/env.txt 2>&1
stamp throughput
timeout 75 python3 tests/benchmarks/throughput.py --task cifar10-class --profile $PROF --device $DEV --modes fp32,bf16 --reps 3 --json $O/throughput.json > $O/throughput.txt 2>&1
stamp pretrain
timeout 230 python3 -m bench pretrain --task cifar10-class --profile $PROF --device $DEV --data-root $DATA --steps $STEPS --precision $PREC > $O/pretrain.txt 2>&1
stamp run
timeout 170 python3 -m bench run --methods original,pecker,sfd,salun --task cifar10-class --profile $PROF --device $DEV --data-root $DATA --pretrain-steps $STEPS --precision $PREC --out $O/res --quiet > $O/run.txt 2>&1
stamp pack
tar czf $O/results.tgz -C $O res 2>/dev/null; rm -rf $O/res
stamp end
