#!/usr/bin/env bash
# The benchmark runs the open performance work is judged by, in one call on a machine with a GPU,
# from the repository root once the build folder ($BUILD_DIR, default build) is there, with the
# sigattn package importable (PYTHONPATH=python, or installed) and TritonSigmoid where it can be:
#   1. head dims 64..256 at L = 4096, forward, backward and the training step, against cuDNN,
#      flash and TritonSigmoid, and causal at d = 64 and 128;
#   2. the heavy-tailed varlen batch (--lengths), dense and causal;
#   3. causal with the windows (256, 0) and (1024, 0) at L = 8192;
#   4. decode steps against the copy rate and torch SDPA (contiguous and paged caches);
#   5. the torch op's host overhead against torch SDPA (cuDNN).
# Each step runs under a share of $DEADLINE seconds (default 540) so that a call's logs come back
# within its limit; CSVs, plots and logs go to $OUT (default bench-out). Prints what each step
# wrote and its status; exits 0 even when a step fails (the log says which).
set -uo pipefail

build_dir="${BUILD_DIR:-build}"
library="${build_dir}/libsigattn.so"
out="${OUT:-bench-out}"
deadline="${DEADLINE:-540}"
mkdir -p "${out}"
export SIGATTN_LIBRARY="${SIGATTN_LIBRARY:-${library}}"
export PYTHONUNBUFFERED=1

if [[ ! -e "${library}" ]]; then
  echo "device_bench.sh: ${library} is missing; build it first (cmake --build ${build_dir})" >&2
  exit 2
fi

start=$(date +%s)
log="${out}/device_bench.log"
: >"${log}"

# Runs one step ("name" then the command) within `share` percent of the time left.
step() {
  local name=$1 share=$2
  shift 2
  local left=$((deadline - ($(date +%s) - start)))
  local limit=$((left * share / 100))
  if ((limit < 20)); then
    echo "${name}: skipped, ${left} s left" | tee -a "${log}"
    return
  fi
  timeout "${limit}" "$@" >"${out}/${name}.log" 2>&1
  echo "${name}: exit ${?} after $(($(date +%s) - start)) s (limit ${limit} s)" | tee -a "${log}"
}

nvidia-smi -L 2>/dev/null | tee -a "${log}"
step heads 35 python3 bench/bench.py --lib "${library}" --d 64,80,96,128,192,256 --L 4096 \
  --pad 0 --csv "${out}/heads.csv" --png "${out}/heads.png"
step causal 15 python3 bench/bench.py --lib "${library}" --d 64,128 --L 4096 --pad 0 --causal 1 \
  --csv "${out}/causal.csv" --png "${out}/causal.png"
step lengths 30 python3 bench/bench.py --lib "${library}" --lengths --d 128 --causal 0,1 \
  --seed 1 --csv "${out}/lengths.csv" --png "${out}/lengths.png"
step window 35 python3 bench/bench.py --lib "${library}" --d 128 --L 8192 --pad 0 --causal 1 \
  --window 256,0 --csv "${out}/window256.csv" --png "${out}/window256.png"
step decode 60 python3 bench/decode.py --batch 1,16,64,128 --context 4096,32768,131072 \
  --csv "${out}/decode.csv"
step host 90 python3 bench/host_overhead.py --mode steps --csv "${out}/host_overhead.csv"
echo "device_bench.sh: results in ${out}" | tee -a "${log}"
