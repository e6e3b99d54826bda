"""kill -9 during checkpoint saves: every checkpoint-<N> left behind is complete and readable by the
safetensors package, whatever moment the process died at."""
import json
import pathlib
import random
import re
import signal
import subprocess
import time

from safetensors.torch import load_file

from train_tool import tool_path


def check_complete(ckpt: pathlib.Path) -> int:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["magic"] == "kdae-trainer-state" and state["format_version"] == 1
    step = state["step"]
    assert ckpt.name == f"checkpoint-{step}"
    model = load_file(str(ckpt / "model.safetensors"))
    assert (model["model.embed_tokens.weight"] == step).all()
    assert model["model.embed_tokens.weight"].shape == (1024, 1024)
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert (opt["model.norm.weight.exp_avg_sq"] == step).all()
    return step


def test_kill_during_saves_leaves_only_complete_checkpoints(tmp_path: pathlib.Path):
    rng = random.Random(11)
    out = tmp_path / "out"
    kills = 0
    last_seen = 0
    for round_ in range(8):
        proc = subprocess.Popen([str(tool_path()), "ckpt-loop", str(out), "1000000", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        ckpts = sorted(p for p in out.iterdir() if re.fullmatch(r"checkpoint-[0-9]+", p.name))
        assert 1 <= len(ckpts) <= 3, [p.name for p in ckpts]  # keep-last 2, plus one mid-rotation
        steps = [check_complete(p) for p in ckpts]
        assert max(steps) >= last_seen  # each round resumed after the newest checkpoint
        last_seen = max(steps)
        # Leftover staging directories are hidden names, never checkpoint-<N>.
        for p in out.iterdir():
            assert p.name.startswith("checkpoint-") or p.name.startswith(".checkpoint-"), p.name
    assert kills == 8
    assert last_seen >= 8  # every round got at least one save in
