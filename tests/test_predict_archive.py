"""`predict --out FILE [--resume]` for archives: rows written a batch at a time equal the stdout rows, a run killed
mid-folder resumes to the rows of an uninterrupted one, a torn last line is cut, a changed film is scored again, an
unreadable one is recorded once, and two torchrun processes score (predict and evaluate) like one."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, TinyRun
from pneumoscan.cli.main import main

N_FILMS = 200
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pneumoscan"]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT / "src"))
    return env


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_FILMS tiny films (smooth blobs with noise, 40 px) in two subfolders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("archive") / "films"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for index in range(N_FILMS):
        sub = root / ("a" if index % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        blob = 120 + 80 * np.exp(-((xx - rng.uniform(8, 32)) ** 2 + (yy - rng.uniform(8, 32)) ** 2) / 90)
        film = np.clip(blob + rng.normal(0, 12, blob.shape), 0, 255).astype(np.uint8)
        Image.fromarray(film).save(sub / f"film-{index:03d}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png at all")
    return root


def _rows(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return list(csv.DictReader(path.open()))


def _by_file(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["file"]): row for row in rows}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_out_rows_equal_the_stdout_json_rows(tiny_run: TinyRun, folder: Path, tmp_path: Path, suffix: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = str(tiny_run.out_dir)
    assert main(["predict", "--model", model, str(folder / "a"), "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    out = tmp_path / f"rows{suffix}"
    assert main(["predict", "--model", model, str(folder / "a"), "--out", str(out), "--batch-size", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # the rows go to the file; stdout stays empty
    rows = _rows(out)
    good = [row for row in rows if not row["error"]]
    broken = [row for row in rows if row["error"]]
    assert [row["file"] for row in good] == [row["file"] for row in expected]  # input order
    for row, json_row in zip(good, expected, strict=True):
        assert len(str(row["sha256"])) == 64
        for name, value in json_row.items():
            written = row[name]
            if suffix == ".csv" and value is not None and not isinstance(value, str):
                written = json.loads(str(written))  # CSV cells are text: numbers and booleans as JSON spells them
            if isinstance(value, float):  # the guard's sums run over other batch shapes: last bits may differ
                assert written == pytest.approx(value, rel=1e-5, abs=1e-6), name
            else:
                assert written == value, name
    assert [Path(str(row["file"])).name for row in broken] == ["broken.png"]  # recorded, with the reason


def _assert_same_rows(actual: list[dict[str, object]], expected: list[dict[str, object]]) -> None:
    """The same films in the same order with the same labels, hashes and flags; the numbers within float noise (a
    film scored in another batch: ONNX Runtime's sums depend on the batch's shape)."""
    assert [row["file"] for row in actual] == [row["file"] for row in expected]
    for a, b in zip(actual, expected, strict=True):
        assert {k: v for k, v in a.items() if k not in ("probability", "ood_score")} == {
            k: v for k, v in b.items() if k not in ("probability", "ood_score")}
        for name in ("probability", "ood_score"):
            if b[name] in (None, ""):
                assert a[name] == b[name]
            else:
                assert float(str(a[name])) == pytest.approx(float(str(b[name])), rel=1e-5, abs=1e-6), name


def _wait_for_rows(path: Path, process: subprocess.Popen[str], at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {at_least} rows before the run ended: {process.poll()}")


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_run: TinyRun, folder: Path, tmp_path: Path) -> None:
    command = ["predict", "--model", str(tiny_run.out_dir), str(folder), "--batch-size", "8"]
    whole = tmp_path / "whole.jsonl"
    assert main([*command, "--out", str(whole)]) == 0
    # a run slowed to 0.1 s per batch (so the kill lands mid-folder), killed without warning
    slow = ("import sys, time; import pneumoscan.serving.archive as a; write = a.append_lines; "
            "a.append_lines = lambda p, t: (write(p, t), time.sleep(0.1)); "
            "from pneumoscan.cli.main import main; sys.exit(main(sys.argv[1:]))")
    killed = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, "-c", slow, *command, "--out", str(killed)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(killed, process, at_least=24)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    partial = killed.read_text().splitlines()
    assert 24 <= len(partial) < N_FILMS
    with killed.open("a") as handle:  # as if the kill had cut a batch's write short
        handle.write(partial[-1][: len(partial[-1]) // 2])
    assert main([*command, "--out", str(killed)]) == 2  # an existing file is not overwritten without --resume
    assert main([*command, "--out", str(killed), "--resume"]) == 0
    _assert_same_rows(_rows(killed), _rows(whole))  # every film once, in input order


def test_resume_rescores_a_changed_film_keeps_gone_ones_and_records_unreadable_once(
        tiny_run: TinyRun, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    films = tmp_path / "films"
    films.mkdir()
    for path in sorted((folder / "b").glob("*.png"))[:10]:
        (films / path.name).write_bytes(path.read_bytes())
    (films / "broken.png").write_bytes(b"\x89PNG but cut short")
    out = tmp_path / "rows.csv"
    command = ["predict", "--model", str(tiny_run.out_dir), str(films), "--out", str(out), "--resume"]
    assert main(command) == 0  # --resume with no file yet starts afresh
    before = _by_file(_rows(out))
    assert len(before) == 11 and before[str(films / "broken.png")]["probability"] == ""
    changed, gone = films / "film-000.png", films / "film-002.png"
    Image.fromarray(np.full((40, 40), 30, np.uint8)).save(changed)
    gone.unlink()
    capsys.readouterr()
    assert main(command) == 0
    assert "1 film(s) scored now, 9 already there" in capsys.readouterr().err  # not the broken one again
    after = _by_file(_rows(out))
    assert after[str(changed)]["sha256"] != before[str(changed)]["sha256"]
    assert after[str(gone)] == before[str(gone)]  # kept as it was
    assert {k: v for k, v in after.items() if k != str(changed)} == {k: v for k, v in before.items()
                                                                     if k != str(changed)}
    assert list(after)[-1] == str(gone)  # rows of films no longer given come after the current ones


def test_out_refuses_a_suffix_it_cannot_write_and_resume_without_out(tiny_run: TinyRun, folder: Path,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model = ["predict", "--model", str(tiny_run.out_dir), str(folder / "a")]
    assert main([*model, "--out", str(tmp_path / "rows.txt")]) == 2
    assert main([*model, "--resume"]) == 2
    errors = capsys.readouterr().err
    assert "ending in .csv or .jsonl" in errors and "--resume goes with --out" in errors
    assert not (tmp_path / "rows.txt").exists()


def test_two_torchrun_processes_score_like_one(tiny_run: TinyRun, folder: Path, tmp_path: Path) -> None:
    """predict --out: rank r takes batches r, r+2, ...; rank 0 merges in input order, and the parts are gone."""
    command = ["predict", "--model", str(tiny_run.out_dir), str(folder), "--batch-size", "16"]
    assert main([*command, "--out", str(tmp_path / "one.jsonl")]) == 0
    two = subprocess.run([*TORCHRUN, *command, "--out", str(tmp_path / "two.jsonl")], capture_output=True,
                         text=True, env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("row(s) in") == 1  # rank 0 alone reports
    one, both = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "two.jsonl")
    assert [row["file"] for row in one] == [row["file"] for row in both]
    for a, b in zip(one, both, strict=True):
        assert (a["label"], a["sha256"], a["in_distribution"], a["error"]) == (
            b["label"], b["sha256"], b["in_distribution"], b["error"])
        if a["probability"] is not None:
            assert abs(a["probability"] - b["probability"]) <= 1e-6  # type: ignore[operator]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]


def test_evaluate_under_torchrun_writes_the_metrics_of_one_process(tiny_run: TinyRun, tmp_path: Path) -> None:
    """68 test films, more than one 64-film batch: rank 1 scores the second batch, rank 0 evaluates."""
    command = ["evaluate", "--model", str(tiny_run.out_dir), "--data", "synthetic:n_per_class=136,size=32,seed=5",
               "--bootstrap", "100", "--no-framing", "--no-audit", "--no-cache"]
    one = subprocess.run([sys.executable, "-m", "pneumoscan", *command, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*TORCHRUN, *command, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    predictions = [(tmp_path / name / "predictions.csv").read_text() for name in ("one", "two")]
    assert predictions[0].count("\n") > 65
    assert predictions[0] == predictions[1]
    assert metrics[0] == metrics[1]


def test_out_decodes_one_batch_at_a_time(tiny_run: TinyRun, folder: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory holds one batch of films: the decoder is never handed more than --batch-size files."""
    import pneumoscan.serving.archive as archive

    sizes: list[int] = []
    decode = archive.decode_each

    def counting(items, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return decode(items, *args, **kwargs)

    monkeypatch.setattr(archive, "decode_each", counting)
    out = tmp_path / "rows.jsonl"
    assert main(["predict", "--model", str(tiny_run.out_dir), str(folder), "--out", str(out),
                 "--batch-size", "32"]) == 0
    assert max(sizes) == 32 and sum(sizes) == N_FILMS + 1 and len(_rows(out)) == N_FILMS + 1


def test_resume_on_one_process_takes_over_the_parts_of_an_interrupted_torchrun_run(
        tiny_run: TinyRun, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = ["predict", "--model", str(tiny_run.out_dir), str(folder / "b"), "--batch-size", "16"]
    whole = tmp_path / "whole.csv"
    assert main([*command, "--out", str(whole)]) == 0
    header, *lines = whole.read_text().splitlines(keepends=True)
    out = tmp_path / "rows.csv"
    (tmp_path / "rows.csv.rank0.part").write_text(header + "".join(lines[:30]))
    (tmp_path / "rows.csv.rank1.part").write_text(header + "".join(lines[40:60]) + lines[60][:20])  # torn
    assert main([*command, "--out", str(out)]) == 2  # the parts make it a run to resume
    capsys.readouterr()
    assert main([*command, "--out", str(out), "--resume"]) == 0
    assert "50 film(s) scored now, 50 already there" in capsys.readouterr().err
    _assert_same_rows(_rows(out), _rows(whole))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "whole.csv"]  # the parts are merged and gone
