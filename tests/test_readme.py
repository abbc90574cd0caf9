"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    """The first ```python block under the README's `heading`."""
    text = README.read_text()
    section = text[text.index(f"## {heading}"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("method", [None, "lr.SVDFinetune(model, rank='flops:0.5')",
                                    "lr.ELRT(model, rank='flops:0.5')", "lr.LRPET(model, goal=0.5, period=2)"])
def test_the_training_loop_example_trains_each_method_through_every_epoch(method):
    code = _block("In your own training loop").replace('"resnet56"', '"resnet20"')  # the same loop, faster
    if method is not None:
        code = re.sub(r"method = lr\.TRP\(.*?\)(?=\s)", f"method = {method}", code, count=1)
        assert method in code
    loop, end = code.split("compact = method.finalize()")
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator))
              for _ in range(3)]
    names = {"loader": loader, "epochs": 2}
    exec(loop, names)
    trained = names["method"]
    assert trained.step == 6  # every epoch's steps, not the first epoch's only
    if method and "SVDFinetune" in method:
        assert trained.swapped and trained.swap_step == 3  # swapped halfway, inside the loop
    exec("compact = method.finalize()" + end, names)
    assert names["lr"].count(names["compact"]).flops < names["lr"].count(names["lr"].models.create("resnet20")).flops


@pytest.mark.parametrize("build", [
    lambda lr, m: lr.TRP(m, period=2, input_size=(1, 3, 16, 16)),
    lambda lr, m: lr.LRPET(m, goal=0.5, period=2),
    lambda lr, m: lr.ELRT(m, rank="flops:0.5", input_size=(1, 3, 16, 16)),
    lambda lr, m: lr.SVDFinetune(m, rank="flops:0.5", input_size=(1, 3, 16, 16)),
])
def test_finalizing_a_copy_mid_run_leaves_training_as_it_was(build):
    """The README's advice for a look at the compact model mid-run: `copy.deepcopy(method).finalize()`."""
    import copy

    import lrtrain as lr

    def train(peek_at):
        torch.manual_seed(0)
        method = build(lr, lr.models.create("resnet20"))
        method.setup(steps_per_epoch=3, total_steps=6)
        optimizer = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        for step in range(6):
            x, y = torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)
            torch.nn.functional.cross_entropy(method.model(x), y).backward()
            method.before_step()
            optimizer.step()
            optimizer.zero_grad()
            method.after_step()
            if method.rebuild_optimizer:
                optimizer = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9)
                method.rebuild_optimizer = False
            if step == peek_at:
                assert lr.count(copy.deepcopy(method).finalize(), (1, 3, 16, 16)).flops > 0
        return method.model.eval()(torch.ones(2, 3, 16, 16))

    torch.testing.assert_close(train(peek_at=1), train(peek_at=None), atol=0, rtol=0)


def test_the_building_blocks_example_runs_as_written(tmp_path, monkeypatch):
    import lrtrain as lr

    monkeypatch.chdir(tmp_path)  # it writes compact.pt
    model = lr.models.create("resnet20")
    names = {"torch": torch, "lr": lr, "model": model, "compact": lr.factorize(lr.models.create("resnet20"), rank="flops:0.5")}
    code = _block("The building blocks").replace('"resnet56"', '"resnet20"').replace("(32, 3, 32, 32)", "(2, 3, 32, 32)")
    assert code != _block("The building blocks")  # a smaller model and batch: the same calls, faster
    exec(code, names)
    # it plans the dense model, before factorize changes it in place (a plan of the result would show 2 layers)
    assert code.index("lr.plan(model") < code.index("model = lr.factorize(model")
    assert sum(d.factorize for d in lr.plan(lr.models.create("resnet20"), rank="energy:0.9")) > 10
    assert isinstance(names["low"], lr.LowRankConv2d) and names["low"].rank == 16
    assert any(isinstance(m, lr.LowRankConv2d) for m in names["model"].modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = names["compact"].eval()(x)
        torch.testing.assert_close(names["fast"](x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert (tmp_path / "compact.pt").is_file()
