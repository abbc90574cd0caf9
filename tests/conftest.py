"""Test-wide settings."""

import torch

# This suite runs on small CPU machines shared with other work: with one intra-op thread per process
# the tiny models of the tests run many times faster than with torch's default thread pool, and
# results do not depend on the machine's core count.
torch.set_num_threads(1)
