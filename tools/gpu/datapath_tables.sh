#!/usr/bin/env bash
# On the GPU machine, after vLLM 0.33 is installed (../shared/gpu/README.md, tools/gpu/install_vllm033.sh): issue 23's
# tables for docs/benchmarks.md, one step per call so that each stays under ~6 minutes and lands in $OUT as it
# goes.  Steps: tier (tier_bench on the host's cores + the load ladder), shm (direct spec, /dev/shm, 32k/64k with
# the CPU tier and a second engine, which serves a prompt of its own before its first hit), shm128, disk
# (32k/64k, cold second engine), disk128, tiered (the 0.33 tiered path at 32k), tiered_rounds (its local hits in
# three rounds of fresh engines, each against the CPU tier alone of its own round: one pair of engines differs
# by up to 25%, docs/benchmarks.md session 11).  Each e2e writer is a new engine
# on an emptied root: its drops count as a fresh engine's.
#   bash tools/gpu/datapath_tables.sh tier shm     (from the project root; OUT defaults to ./out)
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
{ nproc; git rev-parse --short HEAD 2>/dev/null; } >> "$OUT/gpu.txt"
python3 -c "import vllm; print('vllm', vllm.__version__)" || exit 3
run() {  # NAME SECONDS COMMAND...: the command's output in $OUT/NAME.txt, its tail here
  local name=$1 secs=$2; shift 2
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name (rc $?)"; grep -v ' INFO \| WARNING \|^(EngineCore' "$OUT/$name.txt" | tail -20
}
e2e() {  # NAME SECONDS ARGS...
  local name=$1 secs=$2; shift 2
  run "$name" "$secs" python3 -m tools.e2e "$@" --json "$OUT/$name.json" --markdown "$OUT/$name.md"
}
for step in "$@"; do
  case $step in
    tier)
      run gpu_check 60 python3 -m tools.datapath.gpu_check
      run ladder 90 python3 -m tools.datapath.ladder --threads 16 --rounds 3
      run tier_bench 300 python3 -m tools.datapath.tier_bench --roots shm --mib 0.0625,2,32 --threads 4,16 \
        --reps 3 --gib 0.5 --json "$OUT/tier_bench.json" ;;
    shm) e2e e2e_shm 380 --roots shm --prompts 32k,64k --reps 2 --reader-warmup ;;
    shm128) e2e e2e_shm128 280 --roots shm --prompts 128k --reps 2 --no-cpu-tier --no-reader ;;
    disk) e2e e2e_disk 400 --roots disk --disk-dir /var/tmp/kvfs-e2e --prompts 32k,64k --cold-reader --no-cpu-tier ;;
    disk128) e2e e2e_disk128 280 --roots disk --disk-dir /var/tmp/kvfs-e2e --prompts 128k --reps 2 --no-cpu-tier \
      --no-reader ;;
    tiered) run tiered 420 python3 -m tools.e2e.tiered --modes cpu,kvfs,fs --prompts 32k --reps 3 \
      --json "$OUT/tiered.json" --markdown "$OUT/tiered.md" ;;
    tiered_rounds) run tiered_rounds 330 python3 -m tools.e2e.tiered --modes cpu,kvfs --prompts 32k --reps 3 \
      --rounds 3 --no-reader --json "$OUT/tiered_rounds.json" --markdown "$OUT/tiered_rounds.md" ;;
    *) echo "unknown step $step (tier, shm, shm128, disk, disk128, tiered, tiered_rounds)"; exit 2 ;;
  esac
done
