"""The data-parallel path on a GPU (bench/gpu-check.sh): the tiny world of tests/python/train_fixtures.py trained
for 6 steps as one plain process on cuda and as one torchrun rank on the NCCL backend (world size 1 still joins
the process group and runs every collective), and as 2 NCCL ranks on the same GPU when asked (--ranks 2). Prints
the largest difference of the logged losses and final weights against the plain run; exits 1 past --tol.
--sharding and --teacher-sharding run the NCCL job in those modes (reduce, broadcast and all-gather on NCCL).
Usage: KDAE_BIN=build/kdae python bench/distributed_check.py [--ranks 2] [--tol 1e-4] [--sharding gradients]
       [--teacher-sharding full]"""
import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
from safetensors.torch import load_file  # noqa: E402
from train_fixtures import KDAE, make_world, write_config  # noqa: E402

KEYS = ("train/loss", "train/ce_loss", "train/kd_loss", "train/grad_norm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--sharding", default="none")
    ap.add_argument("--teacher-sharding", default="replicate")
    args = ap.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="kdae-dist-check-"))
    world = make_world(root / "world")
    base = dict(max_steps=6, device="cuda", teacher_device="cuda", attn_weight=1.0)
    plain = write_config(root / "plain.yaml", world, root / "plain", train_batch_size=8, **base)
    nccl = write_config(root / "nccl.yaml", world, root / "nccl", train_batch_size=8 // args.ranks, backend="nccl",
                        sharding=args.sharding, teacher_sharding=args.teacher_sharding, **base)
    subprocess.run([KDAE, "distill", "--config", str(plain)], check=True, capture_output=True)
    torchrun = pathlib.Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--no-python", "--nproc-per-node", str(args.ranks), "--master-addr",
                           "127.0.0.1", "--master-port", str(free_port()), KDAE, "distill", "--config", str(nccl)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return 1
    layout = [l for l in proc.stderr.splitlines() if l.startswith("kdae: rank 0")]
    print(layout[0] if layout else "(no layout line)")
    a = [json.loads(l) for l in (root / "plain" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (root / "nccl" / "metrics.jsonl").read_text().splitlines()]
    worst = max(abs(x[k] - y[k]) / max(1.0, abs(x[k])) for x, y in zip(a, b) for k in KEYS if k in x)
    wa = load_file(str(root / "plain" / "model" / "model.safetensors"))
    wb = load_file(str(root / "nccl" / "model" / "model.safetensors"))
    wdiff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"NCCL {args.ranks} rank(s), sharding {args.sharding}, teacher_sharding {args.teacher_sharding}, vs plain process on cuda: max relative loss difference {worst:.3g}, "
          f"max weight difference {wdiff:.3g}, steps {len(b)}, dist/ranks {b[-1].get('dist/ranks')}")
    return 0 if worst <= args.tol and wdiff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
