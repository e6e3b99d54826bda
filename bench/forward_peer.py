"""transformers peer of bench_forward: same model directory, inputs, threads and timing rule.
usage: forward_peer.py MODEL_DIR [B T REPS THREADS]"""
import json
import resource
import statistics
import sys
import time

import torch
import transformers

model_dir = sys.argv[1]
B, T, reps = (int(x) for x in (sys.argv[2:5] + ["4", "256", "5"][len(sys.argv[2:5]):]))
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else torch.get_num_threads())
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ids = torch.randint(model.config.vocab_size, (B, T))
with torch.inference_mode():
    model(ids)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        model(ids)
        rates.append(B * T / (time.perf_counter() - start))
print(json.dumps({"impl": "transformers", "tokens_per_s": statistics.median(rates),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
