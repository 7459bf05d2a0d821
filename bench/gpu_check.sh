#!/usr/bin/env bash
# One-shot check of imm_ext on a machine with a CUDA GPU, for the first minutes on a lent or new GPU:
#
#   bench/gpu_check.sh [--dry-run] [--stages a,b,...] [OUT_DIR]        (OUT_DIR defaults to $OUT, else gpu-check/)
#
# Stages, in order: build (pip install for this GPU's architecture, no build isolation), doctor
# (imm-ext doctor --json), cuda-tests (pytest -m cuda), memcheck / racecheck / synccheck
# (compute-sanitizer on every op in every dtype, forward and backward, at small sizes), kernels
# (bench/kernels.py --device cuda --quick), models (bench/models.py --device cuda: DiT-S/2 block and train
# step, imm_ext layers against stock layers, eager and compiled). Each stage runs under its own time limit,
# cut further so that the whole check ends within GPU_CHECK_BUDGET_S (default 520 s), and a stage that
# fails or times out does not stop the next. Every log and JSON lands in OUT_DIR with SUMMARY.md, a page
# of one line per stage. Exit status: 0 when every stage that ran passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."

dry_run=0
stages="build,doctor,cuda-tests,memcheck,racecheck,synccheck,kernels,models"
out="${OUT:-gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --stages) shift; stages="$1" ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) out="$1" ;;
  esac
  shift
done
budget="${GPU_CHECK_BUDGET_S:-520}"
python="${PYTHON:-python}"

arch=$("$python" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else '')" 2>/dev/null)
sanitize="$python -m imm_ext.health_check --backend cuda --no-speed --json"

# name | time limit in seconds | command
plan() {
  cat <<EOF
build|240|IMM_EXT_CUDA=ON IMM_EXT_CUDA_ARCHS=${arch:-90} $python -m pip install --no-build-isolation --no-deps -v .
doctor|120|$python -m imm_ext.health_check --json
cuda-tests|150|$python -m pytest -m cuda -q -p no:cacheprovider tests
memcheck|60|compute-sanitizer --tool memcheck --error-exitcode 1 $sanitize
racecheck|90|compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 $sanitize
synccheck|60|compute-sanitizer --tool synccheck --error-exitcode 1 $sanitize
kernels|100|$python bench/kernels.py --device cuda --quick --out $out/kernels-cuda.json
models|120|$python bench/models.py --device cuda --batch 32 --reps 5 --out $out/models-cuda.json
EOF
}

selected() { case ",$stages," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

if [ "$dry_run" = 1 ]; then
  echo "gpu_check plan (GPU architecture: ${arch:-none found}; budget ${budget} s; output in $out/):"
  plan | while IFS='|' read -r name limit command; do
    selected "$name" && printf '  %-11s <= %4s s  %s\n' "$name" "$limit" "$command"
  done
  exit 0
fi

mkdir -p "$out"
summary="$out/SUMMARY.md"
started=$(date +%s)
{
  echo "# imm_ext GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(hostname)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo none) (sm_${arch:-?})"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); torch $("$python" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)"
  echo
  echo "| stage | result | seconds | detail |"
  echo "|---|---|---|---|"
} > "$summary"

detail() {  # the line of a stage's log worth reading in the summary
  case "$1" in
    cuda-tests) grep -E "passed|failed|error" "$2" | tail -1 ;;
    memcheck|racecheck|synccheck) grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$2" | tail -1 ;;
    doctor) grep -E '^  "ok"' "$2" | tail -1 ;;
    *) tail -1 "$2" | cut -c1-160 ;;
  esac
}

failed=0
while IFS='|' read -r name limit command; do
  selected "$name" || continue
  left=$(( budget - ($(date +%s) - started) ))
  [ "$left" -lt "$limit" ] && limit=$left
  log="$out/$name.log"
  if [ "$limit" -le 5 ]; then
    echo "| $name | SKIPPED | 0 | the time budget is spent |" >> "$summary"
    failed=1
    continue
  fi
  echo "== $name (<= $limit s): $command" | tee "$log"
  stage_start=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$command" >> "$log" 2>&1
  status=$?
  seconds=$(( $(date +%s) - stage_start ))
  case "$status" in
    0) result=PASS ;;
    124|137) result=TIMEOUT; failed=1 ;;
    *) result="FAIL ($status)"; failed=1 ;;
  esac
  [ "$name" = doctor ] && sed -n '/^{/,$p' "$log" > "$out/doctor.json"
  echo "| $name | $result | $seconds | $(detail "$name" "$log" | tr '|' '/') |" >> "$summary"
  echo "   $result in $seconds s"
done < <(plan)

echo >> "$summary"
echo "Total: $(( $(date +%s) - started )) s. Logs and JSON: $out/." >> "$summary"
cat "$summary"
exit $failed
