"""AdamW (fused and reference) + global-norm clipping vs torch.optim.AdamW and clip_grad_norm_."""
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from train_tool import run_tool

B1, B2, EPS, WD = 0.9, 0.95, 1e-8, 0.1
LRS = [1e-3, 2e-3, 3e-3, 2.5e-3, 1e-3, 5e-4]


def make_problem(seed: int):
    """Names chosen to exercise the no-decay rule: matrices decay, 1-d tensors and *norm* / *bias* do not."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (11, 6),
        "model.layers.0.self_attn.q_proj.weight": (6, 6),
        "model.layers.0.self_attn.q_proj.bias": (6,),
        "model.layers.0.input_layernorm.weight": (6,),
        "model.norm.weight": (6,),
        "lm_head.weight": (11, 6),
        "scale": (),
    }
    params = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    grads = {}
    for k in range(len(LRS)):
        for n, s in shapes.items():
            if n == "lm_head.weight" and k in (0, 3):
                continue  # no grad at these steps: the parameter must not step (nor decay)
            grads[f"grad.{k}.{n}"] = torch.randn(s, generator=g) * (3.0 if k == 2 else 0.3)
    decay = {n for n, p in params.items() if p.dim() >= 2 and "norm" not in n and not n.endswith("bias")}
    return params, grads, decay


def oracle(params, grads, decay, max_norm):
    ps = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    opt = torch.optim.AdamW([
        {"params": [p for n, p in ps.items() if n in decay], "weight_decay": WD},
        {"params": [p for n, p in ps.items() if n not in decay], "weight_decay": 0.0},
    ], lr=LRS[0], betas=(B1, B2), eps=EPS, foreach=False)
    norms = []
    for k, lr in enumerate(LRS):
        opt.zero_grad(set_to_none=True)
        for n, p in ps.items():
            key = f"grad.{k}.{n}"
            if key in grads:
                p.grad = grads[key].clone()
        live = [p for p in ps.values() if p.grad is not None]
        norms.append(torch.nn.utils.clip_grad_norm_(live, max_norm if max_norm > 0 else float("inf")))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return ps, opt, norms


@pytest.mark.parametrize("fused", [1, 0])
@pytest.mark.parametrize("max_norm", [1.0, 0.0])
def test_adamw_matches_torch(tmp_path: pathlib.Path, fused, max_norm):
    params, grads, decay = make_problem(seed=7)
    inp, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({**{f"param.{n}": p for n, p in params.items()}, **grads}, str(inp))
    run_tool("adamw", inp, out, fused, WD, B1, B2, EPS, max_norm, ",".join(map(repr, LRS)))
    ours = load_file(str(out))
    ps, opt, norms = oracle(params, grads, decay, max_norm)

    for k, norm in enumerate(norms):
        assert ours[f"grad_norm.{k}"].item() == pytest.approx(norm.item(), rel=1e-6)
    if max_norm > 0:
        assert max(n.item() for n in norms) > max_norm  # clipping really happened at some step
    worst = 0.0
    for n, p in ps.items():
        diff = (ours[f"param.{n}"] - p.detach()).abs().max().item()
        worst = max(worst, diff)
        assert diff <= 1e-6, f"{n}: max abs diff {diff}"
        state = opt.state[p]
        assert ours[f"state.{n}.step"].item() == state["step"].item()
        torch.testing.assert_close(ours[f"state.{n}.exp_avg"], state["exp_avg"], atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[f"state.{n}.exp_avg_sq"], state["exp_avg_sq"], atol=1e-6, rtol=0)
    assert ours["state.lm_head.weight.step"].item() == len(LRS) - 2
    # the parameters moved by far more than the tolerance, so the comparison is not vacuous
    moved = max((ours[f"param.{n}"] - params[n]).abs().max().item() for n in params)
    assert moved > 1e-3
