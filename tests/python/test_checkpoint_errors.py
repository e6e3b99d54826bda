"""Bad checkpoints and configs: `kdae forward` exits 1 with one clear line naming the file or tensor."""
import json
import os
import shutil
import struct
import subprocess

import pytest
import torch
from safetensors.torch import save_file

KDAE = os.environ.get("KDAE_BIN", "kdae")
CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32, hidden_size=16,
              intermediate_size=24, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture()
def model_dir(tmp_path):
    import transformers
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in CONFIG.items()
                                                                      if k not in ("architectures", "model_type")}))
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def forward(model_dir, tmp_path):
    r = subprocess.run([KDAE, "forward", "--model", str(model_dir), "--tokens", "1,2,3",
                        "--out", str(tmp_path / "o.safetensors")], capture_output=True, text=True)
    return r.returncode, r.stderr.strip()


def test_good_model_runs(model_dir, tmp_path):
    assert forward(model_dir, tmp_path) == (0, "")


def corrupt(path, fn):
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(fn(data)))


def test_truncated_file(model_dir, tmp_path):
    corrupt(model_dir / "model.safetensors", lambda d: d[: len(d) // 2])
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "model.safetensors" in err and "past the data buffer" in err and "\n" not in err


def test_header_length_past_end(model_dir, tmp_path):
    corrupt(model_dir / "model.safetensors", lambda d: struct.pack("<Q", len(d) * 2) + d[8:])
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "header length" in err and "model.safetensors" in err


def rewrite_header(path, edit):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * ((8 - (len(text) + 8) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def test_offset_out_of_range(model_dir, tmp_path):
    def edit(h):
        h["model.norm.weight"]["data_offsets"] = [10 ** 9, 10 ** 9 + 64]
    rewrite_header(model_dir / "model.safetensors", edit)
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "model.norm.weight" in err and "past the data buffer" in err


def test_unknown_dtype(model_dir, tmp_path):
    def edit(h):
        h["model.norm.weight"]["dtype"] = "F33"
    rewrite_header(model_dir / "model.safetensors", edit)
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "unknown dtype 'F33'" in err and "model.norm.weight" in err


def test_config_missing_key(model_dir, tmp_path):
    cfg = json.loads((model_dir / "config.json").read_text())
    del cfg["hidden_size"]
    (model_dir / "config.json").write_text(json.dumps(cfg))
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "config.json" in err and "missing key 'hidden_size'" in err


def test_shape_mismatch(model_dir, tmp_path):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["intermediate_size"] = 20
    (model_dir / "config.json").write_text(json.dumps(cfg))
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "gate_proj.weight" in err and "[24, 16]" in err and "[20, 16]" in err


def test_missing_and_unexpected_tensor(model_dir, tmp_path):
    from safetensors.torch import load_file
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["model.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(model_dir / "model.safetensors"))
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "unexpected tensor 'model.extra.weight'" in err
    del tensors["model.extra.weight"], tensors["model.norm.weight"]
    save_file(tensors, str(model_dir / "model.safetensors"))
    code, err = forward(model_dir, tmp_path)
    assert code == 1 and "missing tensor 'model.norm.weight'" in err


def test_usage_error_exit_2(model_dir, tmp_path):
    r = subprocess.run([KDAE, "forward", "--model", str(model_dir), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "--bogus" in r.stderr
