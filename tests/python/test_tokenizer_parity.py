"""kdae tokenize vs HF tokenizers / sentencepiece on tests/assets/tokenizer-corpus.txt.

Every line must give identical ids, identical byte offsets (lines that are valid UTF-8) and identical
decoded text. Invalid UTF-8 lines: kdae replaces each maximal invalid subsequence with U+FFFD, which is
exactly what Python's errors="replace" hands HF, so ids must match there too.
"""
import json, os, pathlib, subprocess

import pytest
from tokenizer_fixtures import fixture_dir

ROOT = pathlib.Path(os.environ.get("KDAE_ROOT", pathlib.Path(__file__).resolve().parents[2]))
KDAE = os.environ.get("KDAE_BIN", "kdae")
RAW_LINES = (ROOT / "tests/assets/tokenizer-corpus.txt").read_bytes().split(b"\n")[:-1]
TEXTS = [raw.decode("utf-8", errors="replace") for raw in RAW_LINES]
VALID = [raw.decode("utf-8", errors="replace").encode() == raw for raw in RAW_LINES]

JSON_FAMILIES = ["smollm2", "llama3", "qwen2", "mistral-metaspace", "llama2-legacy"]
SP_FAMILIES = ["sp-mistral-v1", "sp-mistral-v3"]


def kdae(args, stdin):
    r = subprocess.run([KDAE, "tokenize", *args], input=stdin, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = r.stdout.split(b"\n")
    assert out[-1] == b""
    return out[:-1]


def byte_offsets(text, offsets):
    pos = [0]
    for ch in text:
        pos.append(pos[-1] + len(ch.encode()))
    return [[pos[b], pos[e]] for b, e in offsets]


def test_corpus_is_varied():
    assert len(RAW_LINES) >= 2000
    assert sum(not v for v in VALID) >= 8
    scripts = {"cyrillic": "\u0400-\u04ff", "cjk": "\u4e00-\u9fff", "greek": "\u0370-\u03ff", "kana": "\u3040-\u30ff"}
    import re
    for name, rng in scripts.items():
        assert sum(bool(re.search(f"[{rng}]", t)) for t in TEXTS) >= 10, name


@pytest.mark.parametrize("family", JSON_FAMILIES)
def test_tokenizer_json_parity(family):
    from tokenizers import Tokenizer
    d = fixture_dir(family)
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    got = [json.loads(l) for l in kdae(["--tokenizer", str(d), "--offsets"], b"\n".join(RAW_LINES) + b"\n")]
    assert len(got) == len(RAW_LINES)
    bad_ids = bad_offsets = 0
    first = None
    for i, (text, g) in enumerate(zip(TEXTS, got)):
        e = hf.encode(text)
        if g["ids"] != e.ids:
            bad_ids += 1
            first = first or (i, text, g["ids"][:20], e.ids[:20])
        elif VALID[i] and g["offsets"] != byte_offsets(text, e.offsets):
            bad_offsets += 1
            first = first or (i, text, g["offsets"][:10], byte_offsets(text, e.offsets)[:10])
        if not VALID[i]:  # offsets must still lie inside the raw line, in order
            assert all(0 <= b <= e2 <= len(RAW_LINES[i]) for b, e2 in g["offsets"])
    assert (bad_ids, bad_offsets) == (0, 0), first

    # Decode: kdae --decode (skip special) vs HF decode, line by line.
    ids = [g["ids"] for g in got]
    dec = kdae(["--tokenizer", str(d), "--decode", "--no-special"], "\n".join(map(json.dumps, ids)).encode() + b"\n")
    mismatches = [(i, t.decode(errors="replace"), hf.decode(x, skip_special_tokens=True))
                  for i, (t, x) in enumerate(zip(dec, ids)) if t.decode() != hf.decode(x, skip_special_tokens=True)]
    assert not mismatches, mismatches[:3]
    # Byte-level families reproduce every valid line exactly (no special tokens in the way).
    if family in ("smollm2", "llama3"):
        plain = [g["ids"] for g in (json.loads(l) for l in kdae(["--tokenizer", str(d), "--no-special", "--offsets"],
                 b"\n".join(RAW_LINES) + b"\n"))]
        dec = kdae(["--tokenizer", str(d), "--decode"], "\n".join(map(json.dumps, plain)).encode() + b"\n")
        assert all(dec[i] == RAW_LINES[i] for i in range(len(RAW_LINES)) if VALID[i])


@pytest.mark.parametrize("family", SP_FAMILIES)
def test_sentencepiece_parity(family):
    import sentencepiece as spm
    d = fixture_dir(family)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    got = [json.loads(l) for l in kdae(["--tokenizer", str(d), "--offsets"], b"\n".join(RAW_LINES) + b"\n")]
    for i, (text, g) in enumerate(zip(TEXTS, got)):
        proto = sp.encode(text, return_type="proto")
        assert g["ids"] == [sp.bos_id()] + [p.id for p in proto.pieces], (i, text)
        if VALID[i]:
            assert g["offsets"][1:] == [[p.begin, p.end] for p in proto.pieces], (i, text)
    dec = kdae(["--tokenizer", str(d), "--decode", "--no-special"], "\n".join(json.dumps(g["ids"]) for g in got).encode() + b"\n")
    for i, g in enumerate(got):
        assert dec[i].decode() == sp.decode(g["ids"][1:]), i


def test_special_tokens_and_config():
    d = fixture_dir("llama3")
    line = "<|begin_of_text|>hi<|eot_id|> there"
    (ids,) = kdae(["--tokenizer", str(d)], line.encode() + b"\n")
    from tokenizers import Tokenizer
    assert json.loads(ids) == Tokenizer.from_file(str(d / "tokenizer.json")).encode(line).ids
    assert json.loads(ids)[:2] == [128000, 128000]
    (plain,) = kdae(["--tokenizer", str(d), "--no-special"], line.encode() + b"\n")
    assert json.loads(plain)[0] == 128000 and json.loads(plain)[1] != 128000


def test_errors_name_the_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
    r = subprocess.run([KDAE, "tokenize", "--tokenizer", str(tmp_path)], input=b"x\n", capture_output=True)
    assert r.returncode == 1
    assert b"tokenizer.json" in r.stderr and b"merges[0]" in r.stderr
