"""Data-parallel training on MPI (herbs.distributed), on the real engine: runs of tests/distributed_child.py
started by ``mpiexec -n 2`` and alone, one thread per process.

- Equivalence: 2 ranks with batches of 2 end with the parameters of one process accumulating 2 batches
  of 2 (update_freq 2), with dropout and drop path on (rank r's batch i draws the masks of batch 2i + r).
  The only difference is the order of the gradient sums: one process adds batch 2's gradient into the
  block holding batch 1's inside the engine's kernels, the ranks each compute theirs from zero and the
  all-reduce adds the two (for 2 ranks a + b, exact and the same on both). That is one float32 rounding
  of each sum (relative 2^-24); over the runs here (6 updates of Swin, 2 of ResNet at lr 0.01) it grows
  to at most 2.3e-7 on parameters of size ~1, and the tests allow 2e-6. Runs much longer can part
  further: the selector keeps the top-K tokens, and a rounding that swaps two tokens of equal confidence
  changes the trajectory (seen with ResNet after 4 updates: 1e-3).
- The ranks hold the same bits, and only rank 0 writes files; a resumed 2-rank run ends with the bits of
  an uninterrupted one.
- Faults: a rank that raises or is killed stops the job within a bounded time with the error named;
  ranks with another image size, class count or seed are refused at the start.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import herbs
from herbs import weights

CHILD = os.path.join(os.path.dirname(__file__), "distributed_child.py")
MPIEXEC = shutil.which("mpiexec")
HERBS_ROOT = os.path.dirname(os.path.dirname(herbs.__file__))  # the herbs that this test imports
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([HERBS_ROOT, os.environ.get("PYTHONPATH", "")]))
TIMEOUT = 120  # s: a run here takes 1-3 s; a job that hangs fails the test instead of the suite

try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
needs_mpi = pytest.mark.skipif(mpi4py is None or MPIEXEC is None,
                                reason="needs mpi4py and an MPI with mpiexec: pip install '.[mpi]' (mpi4py, mpich)")


def run(out, kind, update_freq, *settings, ranks=2):
    """(exit code, stdout, stderr, seconds) of a run of the child into `out`; ranks=1 starts it alone."""
    os.makedirs(out, exist_ok=True)
    command = [sys.executable, CHILD, str(out), kind, str(update_freq), *settings]
    if ranks > 1:  # python -m mpi4py: an exception escaping a rank ends the job (README, Running on a cluster)
        command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py"] + command[1:]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def finished(out, kind, update_freq, *settings, ranks=2):
    code, stdout, stderr, _ = run(out, kind, update_freq, *settings, ranks=ranks)
    assert code == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def saved(out, rank=0):
    with np.load(os.path.join(out, f"rank{rank}.npz")) as f:
        return {name: f[name] for name in f.files}


@needs_mpi
@pytest.mark.parametrize("kind, epochs", [("swin", 3), ("resnet", 1)])
def test_two_ranks_equal_one_process_accumulating_two_batches(kind, epochs, tmp_path):
    alone = finished(tmp_path / "alone", kind, 2, f"epochs={epochs}", ranks=1)
    ranked = finished(tmp_path / "ranks", kind, 1, f"epochs={epochs}")
    one, two = saved(tmp_path / "alone"), saved(tmp_path / "ranks")
    np.testing.assert_allclose(two["params"], one["params"], rtol=0, atol=2e-6)
    for a, b in zip(alone, ranked):  # the losses of the global batches, and the whole validation set
        for key in ("loss_total", "loss_comb", "loss_drop"):
            assert b[key] == pytest.approx(a[key], rel=1e-6)
        assert b["val_count"] == a["val_count"] == 6 and b["skipped_batches"] == 0
    other = saved(tmp_path / "ranks", rank=1)
    for name in one:  # the ranks hold the same bits, buffers included
        assert np.array_equal(other[name], two[name]), name


@needs_mpi
def test_only_rank_0_writes_and_a_resumed_run_ends_with_the_same_bits(tmp_path):
    finished(tmp_path / "whole", "swin", 1)
    code, _, stderr, seconds = run(tmp_path / "stopped", "swin", 1, "fail=1:5")  # rank 1, epoch 3's first batch
    assert code != 0 and seconds < 60
    assert "rank 1 of 2 failed, stopping every rank: RuntimeError: an injected failure at train_step call 5" in stderr
    checkpoint = weights.load_checkpoint(str(tmp_path / "stopped" / "last.pth"))  # whole: atomic writes
    assert checkpoint["epoch"] in (1, 2) and checkpoint["ranks"] == 2
    finished(tmp_path / "stopped", "swin", 1)  # resumes from last.pth
    for rank in (0, 1):
        a, b = saved(tmp_path / "whole", rank), saved(tmp_path / "stopped", rank)
        for name in a:
            assert np.array_equal(a[name], b[name]), name
    lines = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_second")}
             for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    again = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_second")}
             for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and again == lines  # rank 0 alone wrote them: no line twice
    assert sorted(os.listdir(tmp_path / "whole")) == ["best.pth", "curves.png", "last.pth", "metrics.jsonl",
                                                      "rank0.npz", "rank1.npz", "summary.csv"]


@needs_mpi
def test_timms_tools_on_two_ranks_equal_one_process(tmp_path):
    """Mixup/cutmix draws per batch of the whole run (rank r's batch i is the run's batch 2i + r),
    clipping sees the gradient summed over the ranks, and the EMA follows the same parameters: 2 ranks
    end where one process accumulating 2 batches does, EMA included (its BatchNorm statistics are
    each rank's, averaged as the model's are, so they are not compared)."""
    finished(tmp_path / "alone", "swin", 2, "epochs=2", "tools=1", ranks=1)
    finished(tmp_path / "ranks", "swin", 1, "epochs=2", "tools=1")
    one, two = saved(tmp_path / "alone"), saved(tmp_path / "ranks")
    np.testing.assert_allclose(two["params"], one["params"], rtol=0, atol=2e-6)
    ema = [weights.load_checkpoint(str(tmp_path / run / "last.pth"))["model_ema"] for run in ("alone", "ranks")]
    for name, value in ema[0].items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            np.testing.assert_allclose(ema[1][name], value, rtol=0, atol=2e-6, err_msg=name)


@needs_mpi
def test_a_killed_rank_stops_the_job(tmp_path):
    code, stdout, stderr, seconds = run(tmp_path, "swin", 1, "kill=1:3")
    assert code != 0 and seconds < 60, stderr
    assert "Killed (signal 9)" in stdout + stderr  # the launcher's report (MPICH's on stdout)


@needs_mpi
def test_a_nan_on_one_rank_stops_or_skips_the_update_on_every_rank(tmp_path):
    code, _, stderr, seconds = run(tmp_path / "stop", "swin", 1, "nan=1:2")
    assert code != 0 and seconds < 60
    assert stderr.count("NonFiniteError: optimiser step 2 (epoch 1, batches 2-2 of 2") == 2  # raised by both ranks
    assert "rank 1: batch 2 has NaN or infinite pixels in" in stderr
    history = finished(tmp_path / "skip", "swin", 1, "nan=1:2", "skip=1")
    assert [line["skipped_batches"] for line in history] == [2, 0, 0]  # one update: a batch on each rank
    a, b = saved(tmp_path / "skip", 0), saved(tmp_path / "skip", 1)
    assert all(np.array_equal(a[name], b[name]) for name in a)


@needs_mpi
@pytest.mark.parametrize("setting, message", [
    ("img_size=1:128", "model img_size: rank 0 64, rank 1 128"),
    ("classes=1:4", "model num_classes: rank 0 3, rank 1 4"),
    ("seed=1:7", 'training state: rank 0 {"seed": 0, "step": 0}, rank 1 {"seed": 7, "step": 0}'),
])
def test_ranks_with_other_settings_are_refused_at_the_start(setting, message, tmp_path):
    code, _, stderr, seconds = run(tmp_path, "swin", 1, setting)
    assert code != 0 and seconds < 60
    assert "RankMismatchError: the ranks of this run were given different settings" in stderr
    assert message in stderr
    assert not os.path.exists(tmp_path / "metrics.jsonl")  # nothing trained


def test_without_a_launcher_nothing_changes(monkeypatch):
    from herbs import distributed

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.world()
    assert (world.rank, world.size, world.comm) == (0, 1, None)
    grads = np.arange(5, dtype=np.float32)
    world.sum_gradients(grads)
    assert grads.tolist() == [0, 1, 2, 3, 4] and world.gather([1]) == [1] and world.sum({"a": 2.0}) == {"a": 2.0}


def test_a_launched_process_without_mpi4py_refuses_to_train_alone(monkeypatch):
    from herbs import distributed

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(RuntimeError, match=r"one of 2 started by an MPI launcher, but mpi4py is not installed"):
        distributed.world()


def test_shards_deal_the_batches_of_one_process_round_robin():
    from herbs import data

    dataset = data.SyntheticDataset(2, size=8, n_per_class=7, seed=0)  # 14 images: 4 batches of 3, 2 left
    one = data.DataLoader(dataset, 3, shuffle=True, seed=5, drop_last=True)
    shards = [data.DataLoader(dataset, 3, shuffle=True, seed=5, drop_last=True, shard=(r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]  # 4 batches cut to 3, one per rank
    for r, shard in enumerate(shards):
        assert [b.tolist() for b in shard._batches(2)] == [one._batches(2)[r].tolist()]
    evaluation = [data.DataLoader(dataset, 3, shard=(r, 3)) for r in range(3)]  # 5 batches, the last of 2
    assert [len(s) for s in evaluation] == [2, 2, 1]
    assert sorted(np.concatenate([b for s in evaluation for b in s._batches(0)]).tolist()) == list(range(14))
    with pytest.raises(ValueError, match="0 <= rank < count"):
        data.DataLoader(dataset, 3, shard=(3, 3))


@needs_mpi
def test_herbs_demo_under_mpiexec(tmp_path):
    """The command line: rank 0 alone prints and writes; one rank gets no validation batch (6 images in
    one batch of 8), which must not keep the other waiting in the gathering of the accuracies."""
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "herbs", "demo", "--epochs", "2",
               "--per-class", "8", "--val-per-class", "2", "--classes", "3", "--heatmaps", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("validation top-1 after") == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and all(line["val_count"] == 6 for line in lines)
    assert weights.load_checkpoint(str(tmp_path / "last.pth"))["ranks"] == 2
