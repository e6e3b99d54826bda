"""lr schedules vs transformers' get_*_schedule_with_warmup, at every step (LambdaLR's lr after k steps)."""
import math

import pytest
import torch
import transformers

from train_tool import run_tool

HF = {
    "cosine": transformers.get_cosine_schedule_with_warmup,
    "linear": transformers.get_linear_schedule_with_warmup,
}


def hf_lrs(kind: str, base: float, total: int, warmup: int, n: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    if kind == "constant":
        sched = transformers.get_constant_schedule_with_warmup(opt, warmup)
    else:
        sched = HF[kind](opt, warmup, total)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind,total,warmup_steps,warmup_ratio", [
    ("cosine", 100, 0, 0.1),    # the reference config: warmup from the ratio, ceil(0.1 * 100) = 10
    ("cosine", 37, 0, 0.1),     # ceil(3.7) = 4
    ("cosine", 50, 7, 0.5),     # warmup_steps wins over the ratio
    ("cosine", 20, 0, 0.0),
    ("linear", 40, 5, 0.0),
    ("linear", 33, 0, 0.25),
    ("constant", 25, 6, 0.0),
    ("constant", 10, 0, 0.0),
])
def test_schedule_matches_transformers(kind, total, warmup_steps, warmup_ratio):
    base = 2e-5
    lines = run_tool("lr", kind, base, total, warmup_steps, warmup_ratio).split()
    ours = [float(v) for v in lines[1::2]]
    assert len(ours) == total + 3
    warmup = warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * total)
    theirs = hf_lrs(kind, base, total, warmup, total + 3)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-18), f"step {step}: ours {a} transformers {b}"
    if kind != "constant":
        assert ours[total] == 0.0
    if warmup > 0:
        assert ours[0] == 0.0
