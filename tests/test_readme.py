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
