"""Our event-file writer read back by TensorBoard's own EventAccumulator."""
import pathlib
import random

from tensorboard.backend.event_processing import event_accumulator

from train_tool import run_tool


def test_scalars_round_trip(tmp_path: pathlib.Path):
    rng = random.Random(3)
    tags = ["train/loss", "train/lr", "train/grad_norm", "eval/loss"]
    expected = {t: [] for t in tags}
    lines = []
    for step in [0, 1, 2, 5, 127, 128, 300, 16384, 2**31 + 5]:
        for tag in tags:
            value = rng.uniform(-1e3, 1e3) if tag != "train/lr" else rng.uniform(0, 1e-4)
            expected[tag].append((step, value))
            lines.append(f"{tag} {step} {value!r}")
    path = pathlib.Path(run_tool("tb", tmp_path / "runs", stdin="\n".join(lines) + "\n").strip())
    assert path.name.startswith("events.out.tfevents.")
    acc = event_accumulator.EventAccumulator(str(path.parent), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == sorted(tags)
    for tag in tags:
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [s for s, _ in expected[tag]]
        for event, (_, value) in zip(got, expected[tag]):
            # simple_value is a float32 field
            assert abs(event.value - value) <= abs(value) * 2**-23 + 1e-30, (tag, event.step)
            assert event.wall_time > 1.6e9


def test_crc_framing_is_checked_by_the_reader(tmp_path: pathlib.Path):
    """tensorboard's record reader verifies both CRCs; a flipped data byte must be rejected there."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    path = pathlib.Path(run_tool("tb", tmp_path, stdin="a 1 2.5\n").strip())
    reader = PyRecordReader_New(str(path))
    records = []
    while True:
        try:
            reader.GetNext()
        except Exception:
            break
        records.append(reader.record())
    assert len(records) == 2  # file_version + one scalar
    assert b"brain.Event:2" in records[0]
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload
    path.write_bytes(bytes(data))
    reader = PyRecordReader_New(str(path))
    reader.GetNext()
    failed = False
    try:
        reader.GetNext()
    except Exception:
        failed = True
    assert failed
