#!/usr/bin/env bash
# The world model's recipe on one GPU, sized to finish in under 8 minutes on a current
# datacenter GPU: render the world-model mix, train the `mini` DiT from scratch on CUDA under
# bf16 autocast with the text-sensitivity probe, then score it on the world benchmark.
#
#     bash benchmarks/gpu_world_model.sh OUT [STEPS] [PRESET]
#
# Writes OUT/world (data), OUT/run (the run: metrics.jsonl with the probe, loss.png) and
# OUT/eval (benchmark report); prints the wall time of each stage. Same settings as the CPU
# recipe in the world-dit model card, except more sequences per step, which a GPU takes at
# almost no cost per step (8 packed sequences of 1024 tokens: about 80 clips). PRESET (default
# mini) may be mini-fine, 8-pixel tokens: it needs sequences of 3328 tokens for the mix's
# longest clips, and learns colour, shape and size faster per CPU minute than mini.
set -euo pipefail
out=${1:?usage: gpu_world_model.sh OUT [STEPS] [PRESET]}
steps=${2:-6000}
preset=${3:-mini}
budget=1024
if [ "$preset" = mini-fine ]; then budget=3328; fi
mkdir -p "$out"
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name: $((SECONDS - t0)) s"; }

stage world kinetoscope world --mix world-model --out "$out/world" --clips 12000 --seed 4000
stage train kinetoscope train --data "$out/world/manifest.jsonl" --preset "$preset" --out "$out/run" \
    --steps "$steps" --lr 1e-3 --warmup 200 --max-frames 49 --token-budget "$budget" --sequences 8 \
    --checkpoint-every 1000 --preview-every 0 --probe-every 500 --timestep-mean 0.5 \
    --precision bf16 --device cuda --seed 0
stage probe kinetoscope eval sensitivity --model "$out/run" --out "$out/run/probe.json"
stage eval kinetoscope eval world --model "$out/run" --out "$out/eval"
