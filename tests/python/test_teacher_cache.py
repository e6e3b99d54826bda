"""kdae teacher-cache against transformers: the shards are read back here with numpy (an
independent reader of the documented format) and compared with the tiny teacher's log_softmax.

- ids: the stored ids are a top-k of the teacher's distribution (ties within 1e-4 allowed);
- log-probs: the top-1 log-prob within 1e-4, sqrt(p_j / p_0) within 1 / (2L) + 1e-4 (the codec bound),
  the decoded distribution (entries + tail) sums to 1 and the tail holds the mass outside the ids;
- the reported reconstruction error equals KL(full || sparse, tail spread evenly) recomputed here;
- resume rewrites the same bytes; a mismatched re-run, a corrupt shard: errors naming the field or file.
"""
import json
import os
import pathlib
import re
import struct

import numpy as np
import pytest
import torch

from train_fixtures import SPECIALS, encode, make_model, render, run

TOP_K, BATCH, ERROR_ROWS = 16, 3, 8
PROMPTS = ["cat sun", "red tree river", "map", "blue door song list", "code", "stone sun", "list", "tree cat map"]
ANSWERS = ["a b c", "hello there", "x", "zebra: 42!", "ok ok ok ok", "fine", "yes\nno", "done."]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    teacher = make_model(root / "teacher", seed=1, hidden=64, layers=2, heads=4, kv_heads=2, sharpen=6.0)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in zip(PROMPTS, ANSWERS)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, teacher


def capture(root, out, top_k=TOP_K, check=True):
    return run("teacher-cache", "--teacher", root / "teacher", "--data", root / "data.jsonl", "--template", "chatml",
               "--seq-length", 64, "--top-k", top_k, "--batch-size", BATCH, "--shard-mb", "0.0001",
               "--error-rows", ERROR_ROWS, "--threads", 1, "--out", out, check=check)


def read_shard(path):
    """Header, per-sample row offsets and decoded rows (ids, unnormalized log-probs, codes, tail)."""
    raw = pathlib.Path(path).read_bytes()
    assert raw[:8] == b"KDAETCS\n"
    version, length = struct.unpack_from("<II", raw, 8)
    assert version == 1
    h = json.loads(raw[16:16 + length])
    off = 16 + length
    n_samples = h["sample_end"] - h["sample_begin"]
    offsets = np.frombuffer(raw, np.uint64, n_samples + 1, off).astype(np.int64)
    V, k, bits = h["vocab"], h["top_k"], h["logprob_bits"]
    id_bits = max(1, int(np.ceil(np.log2(V))))
    rec = 8 + (k * id_bits + (k - 1) * bits + 7) // 8
    data = np.frombuffer(raw, np.uint8, h["rows"] * rec, off + 8 * (n_samples + 1)).reshape(h["rows"], rec)
    head = data[:, :8].copy().view(np.float32)  # (rows, 2): top-1 log-prob, tail
    stream = np.unpackbits(data[:, 8:], axis=1, bitorder="little").astype(np.int64)  # (rows, bits)
    def field(start, width, count):
        w = stream[:, start:start + width * count].reshape(-1, count, width)
        return (w << np.arange(width)).sum(-1)
    ids = field(0, id_bits, k)
    codes = field(k * id_bits, bits, k - 1)
    return h, offsets, ids, head[:, 0], codes, head[:, 1]


def supervised_rows(prompt, answer):
    """Positions whose next token is supervised (answer + <|im_end|>), as data::collate counts them."""
    prefix = encode(render(prompt))
    ids = encode(render(prompt, answer))
    first = len(prefix)  # first answer token
    last = first + len(encode(answer))  # the <|im_end|> closing the turn
    assert ids[last] == SPECIALS.index("<|im_end|>")
    return ids, list(range(first - 1, last))


def teacher_logp(teacher, ids):
    with torch.no_grad():
        return torch.log_softmax(teacher(torch.tensor([ids])).logits[0].double(), -1).numpy()  # (T, V)


def test_cache_matches_transformers(world, tmp_path):
    root, teacher = world
    out = tmp_path / "cache"
    proc = capture(root, out)
    shards = sorted(out.glob("shard-*.kdtc"))
    assert len(shards) == (len(PROMPTS) + BATCH - 1) // BATCH  # tiny shards: one per batch
    rows_done, err_sum, err_rows, my_err, total_bytes = 0, 0.0, 0, [], 0
    for path in shards:
        h, offsets, ids, lp0, codes, tail = read_shard(path)
        total_bytes += path.stat().st_size
        L = 2 ** h["logprob_bits"] - 1
        assert h["top_k"] == TOP_K and h["temperature"] == 1.0 and h["logprob_bits"] == 8
        err_sum += h["error_sum"]
        err_rows += h["error_rows"]
        batch_rows = []
        for s in range(h["sample_begin"], h["sample_end"]):
            tokens, positions = supervised_rows(PROMPTS[s], ANSWERS[s])
            i = s - h["sample_begin"]
            assert offsets[i + 1] - offsets[i] == len(positions), f"sample {s}"
            logp = teacher_logp(teacher, tokens)
            for r, t in zip(range(offsets[i], offsets[i + 1]), positions):
                full = logp[t]
                order = np.argsort(-full)
                present = np.concatenate([[True], codes[r] > 0])
                got_ids = ids[r][present]
                # A valid top-k: every stored id at least as likely as any id left out (up to 1e-4).
                left_out = np.setdiff1d(np.arange(len(full)), got_ids)
                assert full[got_ids].min() >= full[left_out].max() - 1e-4
                assert abs(lp0[r] - full[ids[r][0]]) < 1e-4 and abs(full[ids[r][0]] - full[order[0]]) < 1e-4
                u = np.exp(0.5 * (full[ids[r][1:]] - full[ids[r][0]]))
                u_hat = codes[r] / L
                kept = codes[r] > 0  # absent entries' ids read 0; their u must have rounded to 0
                assert np.abs(u_hat - u)[kept].max(initial=0) <= 0.5 / L + 1e-4
                assert np.all(u_hat[~kept] == 0)
                # Stored tail = the true mass outside the present ids.
                outside = np.setdiff1d(np.arange(len(full)), got_ids)
                assert abs(tail[r] - np.exp(full[outside]).sum()) < 1e-5
                batch_rows.append((full, ids[r], lp0[r], codes[r], tail[r], L))
            if (s + 1) % BATCH == 0 or s + 1 == h["sample_end"]:
                my_err.append(batch_rows[:ERROR_ROWS])
                batch_rows = []
        rows_done += h["rows"]
    # The reconstruction error, recomputed from the decoded rows and the transformers distribution.
    kl = 0.0
    for batch in my_err:
        for full, rid, l0, code, t, L in batch:
            lp = np.concatenate([[l0], np.where(code > 0, l0 + 2 * np.log(np.maximum(code, 1) / L), -np.inf)])
            z = np.exp(lp).sum() + t
            q = np.full(len(full), np.log(t / z / (len(full) - (lp > -np.inf).sum())))
            q[rid[lp > -np.inf]] = lp[lp > -np.inf] - np.log(z)
            kl += (np.exp(full) * (full - q)).sum()
    assert err_rows == sum(len(b) for b in my_err)
    assert abs(err_sum - kl) < 1e-4 * max(1.0, kl)
    figures = re.search(r"supervised tokens (\d+)\s+bytes (\d+)\s+bytes/token ([\d.]+)", proc.stdout)
    assert figures and int(figures[1]) == rows_done and int(figures[2]) == total_bytes
    reported = float(re.search(r"KL\(full \|\| sparse\) ([\d.e+-]+)", proc.stdout)[1])
    assert abs(reported - kl / err_rows) < 1e-4 * max(1.0, reported)

    inspect = run("teacher-cache", "inspect", out).stdout
    assert f"coverage {len(PROMPTS)} / {len(PROMPTS)} samples (complete)" in inspect
    assert f"top_k {TOP_K}" in inspect and figures[0] in inspect


def test_resume_mismatch_and_corruption(world, tmp_path):
    root, _ = world
    out = tmp_path / "cache"
    capture(root, out)
    shards = sorted(out.glob("shard-*.kdtc"))
    before = [p.read_bytes() for p in shards]
    shards[-1].unlink()
    proc = capture(root, out)
    assert f"resuming after sample {2 * BATCH}" in proc.stderr
    assert [p.read_bytes() for p in sorted(out.glob("shard-*.kdtc"))] == before

    proc = capture(root, out, top_k=8, check=False)
    assert proc.returncode == 1 and "different 'top_k'" in proc.stderr and "shard-00000.kdtc" in proc.stderr

    with open(shards[1], "r+b") as f:
        f.truncate(shards[1].stat().st_size - 5)
    proc = run("teacher-cache", "inspect", out, check=False)
    assert proc.returncode == 1 and str(shards[1]) in proc.stderr and "truncated" in proc.stderr
