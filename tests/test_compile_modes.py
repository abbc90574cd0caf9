"""benchmarks/compile_modes.py: how it tells a compile mode that trains differently from one that does not."""

import sys
from argparse import Namespace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_modes  # noqa: E402


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "bn.bias": torch.randn(8, generator=g)}


def test_drift_is_zero_for_equal_models_and_the_worst_tensor_otherwise():
    a = _state(0)
    assert compile_modes.drift(a, {k: v.clone() for k, v in a.items()}) == 0.0
    b = {k: v.clone() for k, v in a.items()}
    b["bn.bias"] += 0.01 * a["bn.bias"].norm() / b["bn.bias"].numel() ** 0.5
    expected = ((a["bn.bias"] - b["bn.bias"]).norm() / a["bn.bias"].norm()).item()
    assert abs(compile_modes.drift(a, b) - expected) < 1e-7
    assert 0.009 < compile_modes.drift(a, b) < 0.011


def test_models_with_other_layers_never_count_as_the_same_training():
    a = _state(0)
    assert compile_modes.drift(a, {"conv.weight": a["conv.weight"]}) == float("inf")
    assert compile_modes.drift(a, {**a, "bn.bias": torch.zeros(4)}) == float("inf")


def test_table_flags_a_differing_mode_and_a_failed_worker():
    args = Namespace(reference="default", candidate="reduce-overhead")
    rows = compile_modes.table([
        {"run": "ok", "drift_candidate": 1e-6, "drift_reference": 2e-6, "same": True,
         "final_loss": [1.0, 1.0], "step_ms": [30.0, 10.0]},
        {"run": "bad", "drift_candidate": 0.3, "drift_reference": 2e-6, "same": False,
         "final_loss": [1.0, 2.0], "step_ms": [30.0, 10.0]},
        {"run": "broken", "error": "exit 1: ['RuntimeError: boom']"},
    ], args)
    ok, bad, broken = rows[2:]
    assert "| yes |" in ok and ok.endswith("| 3.00x |")
    assert "| NO |" in bad
    assert "failed: exit 1" in broken and "| no |" in broken


def test_workers_past_the_budget_are_cut_off_and_the_others_reported(tmp_path, monkeypatch):
    fake = tmp_path / "fake_worker.py"
    fake.write_text("import json, sys, time\n"
                    "name, out = sys.argv[sys.argv.index('--worker') + 1], sys.argv[sys.argv.index('--json') + 1]\n"
                    "print('x' * 200000, flush=True)\n"  # more than a pipe holds: a log file never blocks
                    "if name == 'slow':\n    time.sleep(60)\n"
                    "open(out, 'w').write(json.dumps({'run': name, 'same': True}))\n")
    monkeypatch.setattr(compile_modes, "__file__", str(fake))
    results = compile_modes.launch(["fast", "slow"], [], tmp_path, budget=3)
    assert results[0] == {"run": "fast", "same": True}
    assert results[1]["run"] == "slow" and results[1]["error"].startswith("cut off by the 3 s budget")
