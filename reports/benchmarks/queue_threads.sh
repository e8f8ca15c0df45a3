#!/usr/bin/env bash
# Two Gatys optimisations side by side, as two `nstlab ablate --jobs 2` queue workers run them,
# with T intra-op threads each (T = 2: torch's default on 2 cores; T = 1: ablate's worker_env).
# Usage, from the repository root with the venv active: bash reports/benchmarks/queue_threads.sh
set -euo pipefail
one_run='
import time, torch
from nstlab.models.gatys import GatysTransfer, settings_from_options
torch.manual_seed(0)
settings = settings_from_options({"extractor": "vgg19", "max_size": 128, "steps": 60, "weights": "random"})
model = GatysTransfer(settings, vgg_width=0.25)  # the demo profile extractor
content, style = torch.rand(1, 3, 128, 170), torch.rand(1, 3, 128, 128)
started = time.perf_counter()
model.stylize(content, [style])
print(f"  one run, {torch.get_num_threads()} thread(s): {time.perf_counter() - started:.1f} s")
'
for threads in 2 1; do
  started=$(date +%s.%N)
  OMP_NUM_THREADS=$threads python -c "$one_run" & OMP_NUM_THREADS=$threads python -c "$one_run" & wait
  echo "OMP_NUM_THREADS=$threads: both finished in $(python -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
done
