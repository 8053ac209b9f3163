#!/usr/bin/env bash
# End-to-end checks of `sigattn tune` on a machine with a GPU, from the repository root once the
# build folder ($BUILD_DIR, default build; configured with tests, so the CLI honours
# SIGATTN_TUNE_INJECT) is there:
#   1. `tune --preset quick`: exit 0, every problem has a winner, every winner's candidate row is
#      `ok` (verified against the reference before it was timed);
#   2. a run killed with SIGKILL part way resumes: the second run measures none of the committed
#      candidates again except the finalists' re-timing;
#   3. a candidate that writes to an invalid address is recorded as launch_error, one that hangs
#      as timeout, and both runs still find a winner;
#   4. two runs on fresh databases time the same heuristic tile within 2 % of each other, and
#      report a speedup over it only where the gap exceeds both timings' spread.
# Databases and logs go to $OUT (default: a temporary directory). Exits non-zero on the first
# failed check.
set -euo pipefail

build_dir="${BUILD_DIR:-build}"
cli="$(realpath "${build_dir}/sigattn")"
out="${OUT:-$(mktemp -d)}"
mkdir -p "${out}"
echo "tune_gpu_check.sh: logs and databases in ${out}"

fail() {
  echo "tune_gpu_check.sh: FAILED: $*" >&2
  exit 1
}

# Prints the candidate rows of a database as "tile status" lines for one spec prefix.
candidates() {
  "${cli}" --db "$1" db export -o "${out}/export.json" >/dev/null
  python3 - "${out}/export.json" "$2" <<'PY'
import json, sys
def tile_text(t):
    # The canonical tile string of an exported tile object, as the tuner prints winners.
    return (f"{t['family']}.m{t['block_m']}n{t['block_n']}w{t['warps']}s{t['stages']}"
            + (".atomicdq" if t.get("atomic_dq") else "")
            + (f".{t['schedule']}" if t.get("schedule", "strided") != "strided" else "")
            + (f".splits{t['splits']}" if t.get("splits") else ""))
data = json.load(open(sys.argv[1]))
for c in data.get("candidates", []):
    if c["spec"].startswith(sys.argv[2]):
        print(tile_text(c["tile"]), c["status"], c["measured_at"])
PY
}

echo "== 1. quick preset"
"${cli}" tune --preset quick --db "${out}/quick.db" --json >"${out}/quick.json" \
  2>"${out}/quick.log" || fail "tune --preset quick exited with $? (see ${out}/quick.log)"
python3 - "${out}/quick.json" <<'PY' || fail "quick preset results"
import json, sys
result = json.load(open(sys.argv[1]))
problems = result["problems"]
assert problems, "no problems"
for p in problems:
    assert "winner" in p, f"{p['problem']}: no winner: {p.get('error')}"
    print(f"{p['problem']:<48} {p['winner']:<22} {p['best_ms']:.4f} ms "
          f"(heuristic {p.get('heuristic_ms', float('nan')):.4f} ms, {p['tflops']:.1f} TFLOPS)")
PY
"${cli}" --db "${out}/quick.db" db export -o "${out}/quick_export.json" >/dev/null
python3 - "${out}/quick.json" "${out}/quick_export.json" <<'PY' || fail "winners not verified"
import json, sys
def tile_text(t):
    # The canonical tile string of an exported tile object, as the tuner prints winners.
    return (f"{t['family']}.m{t['block_m']}n{t['block_n']}w{t['warps']}s{t['stages']}"
            + (".atomicdq" if t.get("atomic_dq") else "")
            + (f".{t['schedule']}" if t.get("schedule", "strided") != "strided" else "")
            + (f".splits{t['splits']}" if t.get("splits") else ""))
problems = json.load(open(sys.argv[1]))["problems"]
rows = json.load(open(sys.argv[2]))["candidates"]
status = {(r["spec"], r["seqlen_q_bucket"], tile_text(r["tile"])): r["status"] for r in rows}
for p in problems:
    key = (p["spec"], p["seqlen_q_bucket"], p["winner"])
    assert status.get(key) == "ok", f"{key}: {status.get(key)}"
print(f"{len(problems)} winners, each recorded ok (verified before timing)")
PY

echo "== 2. SIGKILL and resume"
shape="fwd.bf16.d128.L4096"
db="${out}/resume.db"
setsid "${cli}" tune --shape "${shape}" --strategy exhaustive --db "${db}" \
  >"${out}/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  sleep 1
  count=$( (candidates "${db}" fwd.bf16.d128 2>/dev/null || true) | wc -l)
  if (( count >= 4 )); then break; fi
done
kill -KILL -- "-${pid}" 2>/dev/null || true
wait "${pid}" 2>/dev/null || true
candidates "${db}" fwd.bf16.d128 >"${out}/before.txt"
committed=$(wc -l <"${out}/before.txt")
(( committed >= 4 )) || fail "only ${committed} candidates committed before the kill"
"${cli}" tune --shape "${shape}" --strategy exhaustive --db "${db}" --json \
  >"${out}/resumed.json" 2>"${out}/resumed.log" || fail "the resumed run exited with $?"
candidates "${db}" fwd.bf16.d128 >"${out}/after.txt"
python3 - "${out}/resumed.json" "${out}/before.txt" "${out}/after.txt" "${committed}" <<'PY' \
  || fail "resume"
import json, sys
p = json.load(open(sys.argv[1]))["problems"][0]
committed = int(sys.argv[4])
before = {l.split()[0]: l.split()[2] for l in open(sys.argv[2])}
after = {l.split()[0]: l.split()[2] for l in open(sys.argv[3])}
assert "winner" in p, p.get("error")
assert p["resumed"] >= committed, (p["resumed"], committed)
remeasured = [t for t in before if after[t] != before[t]]
# Only finalists (3) and the heuristic default are timed again.
assert len(remeasured) <= 4, remeasured
# Spilling candidates are measured twice (skipped when first met, then timed last).
assert p["measured"] <= p["candidates"] - committed + 4 + p["spilling"], p
print(f"killed after {committed} commits; resumed {p['resumed']}, measured {p['measured']} of "
      f"{p['candidates']}, re-timed {len(remeasured)} finalists")
PY

echo "== 3. a faulting and a hanging candidate"
for kind in fault hang; do
  db="${out}/${kind}.db"
  tile=sm80.m128n64w8s2  # one of the candidates of this shape, all of which exhaustive measures
  SIGATTN_TUNE_INJECT="${kind}:${tile}" "${cli}" tune --shape fwd.bf16.d128.L2048 \
    --strategy exhaustive --timeout 30 --db "${db}" --json >"${out}/${kind}.json" \
    2>"${out}/${kind}.log" || fail "${kind}: tune exited with $? (see ${out}/${kind}.log)"
  expected=$([[ ${kind} == fault ]] && echo launch_error || echo timeout)
  candidates "${db}" fwd.bf16.d128 | grep -q "^${tile} ${expected} " \
    || fail "${kind}: ${tile} is not recorded as ${expected}"
  python3 - "${out}/${kind}.json" <<'PY' || fail "${kind}: no winner or no restart"
import json, sys
r = json.load(open(sys.argv[1]))
p = r["problems"][0]
assert "winner" in p, p.get("error")
assert r["worker_restarts"] >= 1, r["worker_restarts"]
print(f"{p['problem']}: winner {p['winner']}, {p['failures']} failure(s), "
      f"{r['worker_restarts']} worker restart(s)")
PY
done
echo "== 4. the same kernel times the same in two runs"
shape="bwd.bf16.d128.L4096"
for run in 1 2; do
  "${cli}" tune --shape "${shape}" --strategy model --db "${out}/agree${run}.db" --json \
    >"${out}/agree${run}.json" 2>"${out}/agree${run}.log" \
    || fail "agreement run ${run} exited with $? (see ${out}/agree${run}.log)"
done
python3 - "${out}/agree1.json" "${out}/agree2.json" <<'PY' || fail "timings of two runs disagree"
import json, sys
runs = [json.load(open(path))["problems"] for path in sys.argv[1:]]
for first, second in zip(*runs):
    a, b = first["heuristic_ms"], second["heuristic_ms"]
    gap = abs(a - b) / min(a, b)
    print(f"{first['problem']:<40} heuristic {first['heuristic_tile']}: {a:.4f} / {b:.4f} ms "
          f"({100 * gap:.2f} % apart; spread {100 * first['heuristic_spread']:.1f} / "
          f"{100 * second['heuristic_spread']:.1f} %)")
    assert gap <= 0.02, f"{first['problem']}: the heuristic tile's times differ by {100 * gap:.1f} %"
    for p in (first, second):
        if "speedup" in p:
            beyond = p["heuristic_ms"] - p["best_ms"]
            spread = max(p["heuristic_spread"] * p["heuristic_ms"], p["best_spread"] * p["best_ms"])
            assert beyond > spread, f"{p['problem']}: speedup {p['speedup']} within the spread"
PY
echo "tune_gpu_check.sh: all checks passed"
