"""Where this process sits in a torchrun launch, read from the environment alone (no torch import): the CLI asks
before every command, and a prediction through ONNX Runtime never loads torch."""

import os


def launched_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun): only rank 0 reports progress."""
    return int(os.environ.get("RANK", "0"))
