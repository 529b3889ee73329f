"""``metabench profile`` and ``metabench.measure.profiler.profile_call``: one small case, profiled once."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch.profiler import ProfilerActivity

from metabench.cli import main
from metabench.measure.profiler import TRACE_SUFFIX, profile_activities, profile_call
from metabench.sweep import normalise_case, prepare_case

SMALL = {"problem": "linear_meta_regression", "n_tasks": 2, "dim": 6, "n_train": 8, "n_val": 8, "lam": 1.0}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    case = normalise_case({**SMALL, "algorithm": "imaml", "kappa": 10.0, "inner_lr": "auto", "inner_steps": 3})
    out = tmp_path_factory.mktemp("profiles")
    return out, profile_call(prepare_case(case), out, "imaml_small")


def _events(path) -> list[dict]:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    return trace["traceEvents"]


def test_profile_call_writes_every_file(profiled):
    out, paths = profiled
    assert paths["tensorboard_dir"] == out / "imaml_small"
    assert paths["tensorboard_trace"].parent == paths["tensorboard_dir"]
    assert paths["tensorboard_trace"].name.endswith(TRACE_SUFFIX)  # what torch-tb-profiler looks for
    assert paths["chrome_trace"] == out / "imaml_small.chrome_trace.json"
    for key in ("tensorboard_trace", "chrome_trace", "table"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert "aten::" in paths["table"].read_text()


def test_tensorboard_trace_has_ops_and_memory_events(profiled):
    _, paths = profiled
    events = _events(paths["tensorboard_trace"])
    names = [e.get("name", "") for e in events]
    assert any(n.startswith("aten::") for n in names)  # the hypergradient's torch ops
    assert any("backward" in n.lower() or "autograd" in n.lower() for n in names)  # autograd (HVPs, outer grad)
    # profile_memory: allocation/free instant events named "[memory]" whose args carry "Bytes"
    memory = [e for e in events if e.get("name") == "[memory]"]
    assert memory and all("Bytes" in e.get("args", {}) for e in memory)
    assert any(e["args"]["Bytes"] > 0 for e in memory) and any(e["args"]["Bytes"] < 0 for e in memory)


def test_chrome_trace_is_valid_json(profiled):
    _, paths = profiled
    assert any(e.get("name", "").startswith("aten::") for e in _events(paths["chrome_trace"]))


def test_memory_timeline_is_opt_in_and_best_effort(profiled, tmp_path):
    _, paths = profiled
    assert "memory_timeline" not in paths
    case = normalise_case({**SMALL, "algorithm": "maml", "kappa": 10.0, "inner_lr": "auto", "inner_steps": 2})
    paths = profile_call(prepare_case(case), tmp_path, "maml_small", memory_timeline=True)
    timeline = tmp_path / "maml_small.memory_timeline.json"
    if "memory_timeline" in paths:  # torch's deprecated exporter worked: [times, [bytes per category]]
        assert paths["memory_timeline"] == timeline and len(json.loads(timeline.read_text())) == 2
    else:
        assert not timeline.exists()


def test_profile_call_rejects_a_path_as_name(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        profile_call(lambda: None, tmp_path, "a/b")


def test_profile_activities_degrade_without_cuda(monkeypatch):
    assert profile_activities("cpu") == [ProfilerActivity.CPU]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile_activities("cuda") == [ProfilerActivity.CPU]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profile_activities("cuda:0") == [ProfilerActivity.CPU, ProfilerActivity.CUDA]


def test_cli_profile_writes_files(tmp_path, capsys):
    argv = ["profile", "--algorithm", "imaml", "--inner-steps", "3", "--out", str(tmp_path)]
    assert main([*argv, "--set", "dim=6", "--set", "n_train=8", "--set", "n_val=8", "--set", "n_tasks=2"]) == 0
    printed = capsys.readouterr().out
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith("imaml_linear_meta_regression_K3_cg5")
    assert len(list(runs[0].glob(f"*{TRACE_SUFFIX}"))) == 1
    assert (tmp_path / f"{runs[0].name}.chrome_trace.json").is_file()
    assert (tmp_path / f"{runs[0].name}.txt").is_file()
    assert f"tensorboard --logdir {tmp_path}" in printed and "ui.perfetto.dev" in printed


@pytest.mark.parametrize(
    "extra",
    [
        ["--algorithm", "nope"],  # unknown algorithm
        ["--algorithm", "imaml", "--set", "no_such_option=1"],  # unknown parameter
        ["--algorithm", "imaml", "--set", "cg_iters"],  # not KEY=VALUE
        ["--algorithm", "imaml", "--set", "cg_iters=many"],  # bad option value
        ["--algorithm", "imaml", "--problem", "nope"],  # unknown problem
        ["--algorithm", "imaml", "--set", "lam=0"],  # implicit method on a problem it does not apply to
    ],
)
def test_cli_profile_bad_input_exits_2(tmp_path, capsys, extra):
    assert main(["profile", *extra, "--out", str(tmp_path)]) == 2
    assert "metabench profile: error:" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_profile_cuda_unavailable_exits_2(tmp_path, capsys):
    assert main(["profile", "--algorithm", "maml", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_torch_tb_profiler_loads_the_trace(profiled, tmp_path):
    """Only where the optional TensorBoard plugin is installed (``pip install torch-tb-profiler``)."""
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    _, paths = profiled
    args = ["worker", None, str(paths["tensorboard_trace"])]
    if "cache_dir" in inspect.signature(RunProfileData.parse).parameters:  # torch-tb-profiler 0.4.x
        args.append(str(tmp_path))
    data = RunProfileData.parse(*args)
    data = data[0] if isinstance(data, tuple) else data  # newer versions return (data, trace_path)
    run = RunGenerator("worker", None, data).generate_run_profile()
    assert {"operator", "trace", "memory"} <= {view.name for view in run.views}
