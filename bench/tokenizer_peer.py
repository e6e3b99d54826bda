"""HF tokenizers peer of bench_tokenizer: same corpus, single thread, encode with offsets, median of passes.

usage: python bench/tokenizer_peer.py MODEL_DIR CORPUS [REPEATS]
"""
import os, statistics, sys, time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer

tok = Tokenizer.from_file(os.path.join(sys.argv[1], "tokenizer.json"))
raw = open(sys.argv[2], "rb").read()
lines = [l.decode("utf-8", errors="replace") for l in raw.split(b"\n")[:-1]]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 7
times = []
for r in range(repeats + 1):
    t0 = time.perf_counter()
    n = sum(len(tok.encode(l).ids) for l in lines)  # one call per line, like bench_tokenizer
    if r:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(f"hf {sys.argv[1]}: {len(lines)} lines, {n} tokens, median {med:.4f} s/pass, {len(raw) / med / 1e6:.2f} MB/s")
