"""Where this process sits in a torchrun launch, read from the environment alone (no torch import): the CLI asks
before every command, and a prediction through ONNX Runtime never loads torch."""

import os


def launched_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun): only rank 0 reports progress."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """LOCAL_WORLD_SIZE as torchrun sets it: its processes on this machine (1 when not launched by torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
