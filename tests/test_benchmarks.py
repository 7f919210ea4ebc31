"""Benchmark suite: every script runs at ``--size smoke`` and prints one markdown table (and the JSON asked
for); the helpers the figures rest on (ratios, the authors' re-created pipeline, the proposed fast paths) are
exact."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.common import StreamingTable, Timings, fmt, interleaved, markdown_table, resolve_device
from benchmarks.data import (
    AuthorsTrainDataset,
    check_proposed_views,
    extract_to_files,
    proposed_training_views,
)
from benchmarks.degradation import cv2_degrade_batch, nearest_integer_degrade
from fskd.data.datamodule import FaceDataModule
from fskd.data.degrade import degrade_fixed
from fskd.data.recordio import FaceRecordFile

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {  # script -> rows its table must contain
    "data": ["authors", "ours (worker)", "ours (worker + CPU views)"],
    "degradation": ["| 14/nearest | cv2 |", "| 14/nearest | ours |", "| multi/random | ours |"],
    "training": ["teacher step, plain loop", "F-SKD student step, plain loop", "lightning.Trainer",
                 "frozen teacher forward", "47,000 iterations"],
    "evaluation": ["| 112 |", "| 56 |", "| 28 |", "| 14 |", "| all 4 |"],
}


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` as rows of stripped cells (header first, separator dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|") and line.endswith("|"):
            current.append([cell.strip() for cell in line[1:-1].split("|")])
        elif current:
            tables.append(current)
            current = []
    for table in tables:
        assert set("".join(table[1])) <= {"-", ":"}, f"second line is not a separator: {table[1]}"
        del table[1]
    return tables


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str, Path]]:
    """Every script at ``--size smoke --json``, started together (they mostly wait on imports): script ->
    (exit code, stdout, stderr, json path). Each gets at most 120 s."""
    folder = tmp_path_factory.mktemp("bench-smoke")
    processes = {}
    for script in sorted(SCRIPTS):
        command = [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--size", "smoke",
                   "--json", str(folder / f"{script}.json")]
        processes[script] = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
    runs = {}
    try:
        for script, process in processes.items():
            stdout, stderr = process.communicate(timeout=120)
            runs[script] = (process.returncode, stdout, stderr, folder / f"{script}.json")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_smoke_prints_one_table_and_json(script: str, smoke_runs: dict) -> None:
    code, stdout, stderr, json_path = smoke_runs[script]
    assert code == 0, stderr[-3000:]
    tables = markdown_tables(stdout)
    assert len(tables) == 1, stdout
    header, *rows = tables[0]
    assert rows and all(len(row) == len(header) for row in rows)
    for expected in SCRIPTS[script]:
        assert expected in stdout, f"{expected!r} missing from\n{stdout}"
    payload = json.loads(json_path.read_text())
    assert payload["table"] in stdout
    assert payload["args"]["size"] == "smoke"
    assert payload["machine"]["nproc"] >= 1 and payload["results"]


@pytest.mark.slow
def test_smoke_json_values_are_consistent(smoke_runs: dict) -> None:
    """Reference rows are their own reference (ratio exactly 1); the recipe estimate is 47,000 steps."""
    degradation = json.loads(smoke_runs["degradation"][3].read_text())["results"]
    assert degradation["14/nearest cv2"]["ratio_vs_cv2"] == 1.0
    assert degradation["multi/random cv2"]["ratio_vs_cv2"] == 1.0
    assert all(r["images_per_second"] > 0 for r in degradation.values())
    data = json.loads(smoke_runs["data"][3].read_text())["results"]
    assert data["authors, workers=0"]["ratio_vs_authors"] == 1.0
    assert data["authors, workers=0"]["bytes_per_image_from_dataset"] == 2 * 4 * 3 * 112 * 112
    training = json.loads(smoke_runs["training"][3].read_text())["results"]
    step = training["teacher Lightning"]["seconds_per_step"]
    assert training["teacher recipe hours"] == pytest.approx(47_000 * step / 3600)


def test_gpu_script_fails_clearly_without_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu.sh would run the real benchmarks")
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no CUDA GPU is visible" in result.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_gpu_script_uses_the_given_python_and_names_a_missing_package_first(tmp_path: Path) -> None:
    """PYTHON as a bare command name is used as given (before: replaced by python3), and a package the benchmarks
    import is checked before anything runs (before: only torch.cuda, and the run failed minutes later)."""
    interpreter = tmp_path / "bin" / "mypython"
    interpreter.parent.mkdir()
    interpreter.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    interpreter.chmod(0o755)
    blocked = tmp_path / "blocked" / "cv2"  # stands for an environment without opencv
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'cv2'\", name='cv2')\n")
    env = dict(os.environ, PYTHON="mypython", PATH=f"{interpreter.parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(blocked.parent), OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"gpu.sh: using {interpreter}"
    assert lines[1] == (f"gpu.sh: {sys.executable} cannot import cv2 (needed by benchmarks/degradation.py, "
                        "benchmarks/data.py): install opencv-python-headless (pip install -e '.[bench]')")
    assert lines[2] == ("gpu.sh: nothing was run; install the missing packages into that environment, or set "
                        "PYTHON")
    assert not (tmp_path / "out").exists()
    missing = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], capture_output=True, text=True,
                             env=dict(env, PYTHON="no-such-python-3.99"), timeout=60)
    assert missing.returncode == 2 and missing.stderr.splitlines()[0] == (
        "gpu.sh: PYTHON=no-such-python-3.99 is neither an executable file nor a command on PATH (set "
        "PYTHON=/path/to/python of the fskd environment)")


def test_preflight_names_the_cli_requirements_of_the_dry_run(tmp_path: Path) -> None:
    """scale.py starts `python -m fskd fit`, whose LightningCLI needs jsonargparse[signatures]. Importing scale.py
    does not import it, so an environment without it (a PyTorch image with Lightning preinstalled) passed the
    preflight and would have failed minutes into gpu.sh."""
    for module in ("jsonargparse", "typeshed_client"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    result = subprocess.run([sys.executable, "benchmarks/preflight.py", "training", "scale"], cwd=REPO,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpu.sh: {sys.executable} cannot import {module} (needed by benchmarks/scale.py): install "
        "'jsonargparse[signatures]'" for module in ("jsonargparse", "typeshed_client")]


def test_streaming_table_prints_each_row_as_it_is_added() -> None:
    stream = io.StringIO()
    table = StreamingTable("Title", ["a", "b"], stream=stream)
    assert stream.getvalue() == "### Title\n\n| a | b |\n|---|---|\n"  # before any measurement
    table.row([1, "x"])
    assert stream.getvalue().endswith("|---|---|\n| 1 | x |\n")  # written at once, not at the end
    table.row(["2", "y"])
    assert stream.getvalue() == "### Title\n\n" + table.text() + "\n"
    assert table.text() == markdown_table(["a", "b"], [[1, "x"], ["2", "y"]])
    with pytest.raises(ValueError, match="one cell per header"):
        table.row([1])


def test_training_benchmark_measures_fp16_with_a_grad_scaler(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Lightning's 16-mixed and an fp16 plain loop with a GradScaler (before: refused, so gpu.sh never ran it)."""
    import logging

    from benchmarks import training

    # The benchmark sets process-wide state for its own run (one torch thread, quiet Lightning loggers): restore
    # it afterwards, or later tests run single-threaded and without Lightning's log lines.
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
    threads = torch.get_num_threads()
    try:
        assert training.main(["--size", "smoke", "--precision", "fp16", "--json", str(tmp_path / "fp16.json")]) == 0
    finally:
        torch.set_num_threads(threads)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)  # setLevel also clears the loggers' cached decisions
    printed = capsys.readouterr().out
    (table,) = markdown_tables(printed)
    assert [row[0] for row in table[1:]] == [
        "teacher step, plain loop", "F-SKD student step, plain loop", "frozen teacher forward (no_grad)",
        "teacher step, lightning.Trainer", "F-SKD student step, lightning.Trainer",
        "teacher: 47,000 iterations x batch 4", "F-SKD student: 47,000 iterations x batch 4"]
    assert "fp16 autocast with a GradScaler on cpu" in printed
    results = json.loads((tmp_path / "fp16.json").read_text())["results"]
    assert all(results[name]["images_per_second"] > 0 for name in ("teacher", "student", "teacher Lightning"))


def test_cuda_device_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_channels_last_below_quarter_width_on_the_cpu_is_refused(capsys: pytest.CaptureFixture) -> None:
    # Found by the gpu.sh rehearsal: the variant at width 1/16 ended the whole benchmark with "free(): invalid next
    # size" (torch's CPU channels_last convolutions), losing the rows after it.
    from benchmarks.training import main as training_main

    with pytest.raises(SystemExit) as stopped:
        training_main(["--size", "smoke", "--channels-last", "--json", "unused.json"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --channels-last on the CPU needs --width >= 0.25: torch {torch.__version__}'s CPU convolutions "
        "corrupt memory for channels_last iResNets narrower than that (width 0.0625)")


# -- helpers -------------------------------------------------------------------------------------------------
def test_timings_ratios_are_medians_of_per_round_ratios() -> None:
    timings = Timings({"a": [1.0, 2.0, 10.0], "b": [2.0, 2.0, 5.0]})
    # per round time(b) / time(a) = 2, 1, 0.5 -> median 1; time(a) / time(b) = 0.5, 1, 2 -> median 1
    assert timings.ratio("a", "b") == 1.0
    timings = Timings({"a": [1.0, 1.0, 1.0], "b": [2.0, 3.0, 4.0]})
    assert timings.ratio("a", "b") == 3.0
    assert timings.time_ratio("b", "a") == 3.0
    assert timings.median("b") == 3.0


def test_interleaved_alternates_and_uses_self_reported_seconds() -> None:
    calls = []
    timings = interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y") or 0.25},
                          rounds=3, warmup=1)
    assert calls == ["x", "y"] + ["x", "y", "y", "x", "x", "y"]  # warm-up, then rounds in rotated order
    assert timings.seconds["y"] == [0.25, 0.25, 0.25]
    assert len(timings.seconds["x"]) == 3 and all(s >= 0 for s in timings.seconds["x"])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved({"x": lambda: None}, rounds=0)


def test_markdown_table_and_number_format() -> None:
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    with pytest.raises(ValueError, match="one cell per header"):
        markdown_table(["a", "b"], [[1]])
    assert [fmt(v) for v in (1234.5, 56.78, 0.04321, 1.0)] == ["1234", "56.8", "0.0432", "1.00"]
    assert fmt(0.5) == "0.5" and fmt(2.5e-5) == "2.5e-05"


@pytest.mark.parametrize("resolution", [14, 28, 56])
def test_nearest_integer_degrade_equals_degrade_fixed(resolution: int) -> None:
    images = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(resolution)) * 2 - 1
    expected = degrade_fixed(images, resolution, "nearest")
    assert torch.equal(nearest_integer_degrade(images, resolution), expected)


def test_nearest_integer_degrade_rejects_non_divisors() -> None:
    with pytest.raises(ValueError, match="not a square multiple of 15"):
        nearest_integer_degrade(torch.zeros(1, 3, 112, 112), 15)


def test_cv2_nearest_reference_equals_our_nearest_on_uint8() -> None:
    """The authors' cv2 INTER_NEAREST down+up picks the same pixels as our degradation."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=generator)
    hwc = [image.permute(1, 2, 0).contiguous().numpy() for image in images]
    ours = degrade_fixed(images.float(), 14, "nearest").to(torch.uint8)
    for theirs, expected in zip(cv2_degrade_batch(hwc, 14, np.random.default_rng(0)), ours, strict=True):
        np.testing.assert_array_equal(theirs, expected.permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def tiny_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fskd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("bench-rec")
    generate_dataset(root, identities=3, images_per_identity=4, pairs=20, seed=0)
    return root


def test_extracted_files_hold_the_record_bytes(tiny_rec: Path, tmp_path: Path) -> None:
    paths, labels = extract_to_files(tiny_rec, tmp_path)
    with FaceRecordFile(tiny_rec / "train.rec", tiny_rec / "train.idx") as records:
        assert len(paths) == len(records) == 12
        for index, (path, label) in enumerate(zip(paths, labels, strict=True)):
            assert (label, Path(path).read_bytes()) == records.read_image(index)
    assert (tmp_path / "train.list").read_text().splitlines()[0] == "image/000000/00000001.jpg  0"


def test_authors_dataset_matches_its_description(tiny_rec: Path, tmp_path: Path) -> None:
    """HR = (BGR/255 - 0.5) / 0.5 of the (possibly flipped) image; LR = the same image, nearest 14 -> 112."""
    paths, labels = extract_to_files(tiny_rec, tmp_path)
    dataset = AuthorsTrainDataset(paths, labels)
    np.random.seed(0)
    for index in range(4):
        hr, lr, label = dataset[index]
        bgr = torch.from_numpy(cv2.imread(paths[index])).permute(2, 0, 1).float()
        candidates = [(bgr / 255 - 0.5) / 0.5, (bgr.flip(-1) / 255 - 0.5) / 0.5]
        assert any(torch.allclose(hr, c, atol=1e-6) for c in candidates)
        assert hr.shape == lr.shape == (3, 112, 112) and label == labels[index]
        torch.testing.assert_close(lr, degrade_fixed(hr[None], 14, "nearest")[0], atol=1e-6, rtol=0)


def test_proposed_training_views_are_bit_identical(tiny_rec: Path) -> None:
    module = FaceDataModule(str(tiny_rec), batch_size=12, num_workers=0, train_resolution=14, seed=3)
    batch = next(iter(module.train_dataloader()))
    check_proposed_views(module, batch)  # raises if any view differs
    state = module.generator.get_state()
    expected = module.training_views(batch["image"].clone(), batch["label"])
    module.generator.set_state(state)
    actual = proposed_training_views(module, batch["image"].clone(), batch["label"])
    assert torch.equal(actual["hr"], expected["hr"]) and torch.equal(actual["lr"], expected["lr"])
    assert not torch.equal(actual["hr"], actual["lr"])


def test_proposed_training_views_refuse_random_interpolation(tiny_rec: Path) -> None:
    module = FaceDataModule(str(tiny_rec), batch_size=4, num_workers=0, train_resolution=14,
                            train_interpolation="random")
    with pytest.raises(ValueError, match="fixed nearest policies only"):
        proposed_training_views(module, torch.zeros(4, 3, 112, 112, dtype=torch.uint8), torch.zeros(4))


REHEARSAL_SHIM = '''\
"""gpu.sh's interpreter in the rehearsal: logs each command it is given, answers that CUDA is available, and runs
everything else with the real interpreter, on the CPU and at a tiny size."""
import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["REHEARSAL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["-c"] and "torch.cuda.is_available()" in args[1]:
    sys.exit(0)
SHRINK = {"--device": "cpu", "--batch": "2", "--rounds": "1", "--warmup": "0", "--width": "0.25",
          "--images": "8", "--size": "smoke", "--steps": "2", "--workers": "1",
          "--val-backbone": "iresnet18:0.0625"}  # the recipe's iResNet-50 would take 100 s over 1,200 images here
shrunk, rest = [], iter(args)
for arg in rest:
    if arg == "--cudnn-benchmark":  # CUDA only: refused on the CPU
        continue
    shrunk += [arg, SHRINK[arg]] if arg in SHRINK and next(rest, None) is not None else [arg]
if shrunk[:3] == ["-m", "fskd", "synth"]:
    shrunk += ["--identities", "12", "--pairs", "20"]
if shrunk[:1] == ["benchmarks/scale.py"]:
    shrunk += ["--workers", "0"]
os.execv(sys.executable, [sys.executable, *shrunk])
'''


def rehearsal_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a gpu.sh rehearsal in ``tmp_path``: bin/ (the stand-in interpreter and nvidia-smi)
    first on PATH, commands logged to commands.jsonl, the scratch folder scratch/."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "rehearsal-python"
    shim.write_text(f"#!{sys.executable}\n{REHEARSAL_SHIM}")
    shim.chmod(0o755)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Rehearsal GPU (this CPU), 0 MiB, 0'\n")
    smi.chmod(0o755)
    return dict(os.environ, PYTHON="rehearsal-python", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                REHEARSAL_LOG=str(tmp_path / "commands.jsonl"), GPU_BENCH_SCRATCH=str(tmp_path / "scratch"),
                OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_gpu_script_runs_only_the_sections_asked_for(tmp_path: Path) -> None:
    env = dict(rehearsal_env(tmp_path), GPU_BENCH_ONLY="degradation")
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "out" / "gpu-benchmarks.md").read_text()
    assert [line for line in report.splitlines() if line.startswith("## ")] == ["## degradation"]
    commands = [json.loads(line) for line in (tmp_path / "commands.jsonl").read_text().splitlines()]
    assert ["benchmarks/preflight.py", "degradation"] in commands  # only what the chosen section imports
    assert not any("synth" in command for command in commands) and not (tmp_path / "scratch").exists()
    wrong = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out2")], timeout=60,
                           env=dict(env, GPU_BENCH_ONLY="scale evaluaton"), capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.splitlines() == [
        "gpu.sh: GPU_BENCH_ONLY names 'evaluaton', which is not a section (sections: training training-fp16 "
        "degradation evaluation data scale)"]
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_gpu_script_rehearsal_runs_every_section_as_written(tmp_path: Path) -> None:
    """benchmarks/gpu.sh exactly as written, on this CPU: a fake nvidia-smi, and an interpreter (PYTHON) that says
    CUDA is there, logs every command and runs it on the CPU at a tiny size (--device cuda -> cpu, batch 2, one
    round, 12 CASIA-shaped identities, 2 steps, a small validation backbone). Every section must finish and reach
    the report: the script's control flow, each benchmark's acceptance of the GPU arguments, the CASIA-shaped data
    step and the real-size dry run (resume identical to the uninterrupted run) are what a GPU machine runs first."""
    env = rehearsal_env(tmp_path)
    log, out, scratch = tmp_path / "commands.jsonl", tmp_path / "out", tmp_path / "scratch"
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out)], env=env, capture_output=True,
                            text=True, timeout=1200)
    report = (out / "gpu-benchmarks.md").read_text() if (out / "gpu-benchmarks.md").exists() else ""
    assert result.returncode == 0, report[-4000:] + result.stderr[-2000:]
    assert "FAILED" not in report and "failed" not in report
    assert "* GPU: Rehearsal GPU (this CPU), 0 MiB, 0" in report
    sections = [line[3:] for line in report.splitlines() if line.startswith("## ")]
    assert sections == ["training", "training-fp16", "degradation", "evaluation", "data", "scale"]
    for section in sections:  # each section's table reached the report and its own files
        assert markdown_tables((out / f"{section}.md").read_text()), section
        assert json.loads((out / f"{section}.json").read_text())["results"], section
    assert "_CASIA-shaped data: " in report and report.rstrip().splitlines()[-1].startswith("_Total: ")
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    scripts = {command[0]: command for command in commands if command[0].startswith("benchmarks/")}
    assert sorted(scripts) == ["benchmarks/data.py", "benchmarks/degradation.py", "benchmarks/evaluation.py",
                               "benchmarks/preflight.py", "benchmarks/scale.py", "benchmarks/training.py"]
    for script in ("training", "degradation", "evaluation", "scale"):  # as written: gpu.sh asked for the GPU
        command = scripts[f"benchmarks/{script}.py"]
        assert command[command.index("--device") + 1] == "cuda", command
    assert ["-m", "fskd", "synth", "--out", str(scratch / "casia_synth"), "--shape", "casia",
            "--workers", str(len(os.sched_getaffinity(0)))] in commands
    results = json.loads((out / "scale.json").read_text())["results"]
    assert results["teacher"]["first_batch_s"] > 0 and results["teacher"]["steady_img_s"] > 0
    assert results["teacher"]["checkpoint_bytes"] > 100e6  # iResNet-50 + the 12-way head + momentum
    assert results["resume"]["identical"], results["resume"]["detail"]
    assert results["F-SKD student (14 px)"]["steady_img_s"] > 0
    assert results["validation"]["loop_seconds"] > 0 and results["forward"]["img_s"] > 0
    assert results["positives"]["images"] == 561
    assert "| full validation |" in report and "| resume (last step) |" in report
    assert not list(out.rglob("*.ckpt")) and not (out / "casia_synth").exists()  # data and runs stay in scratch
