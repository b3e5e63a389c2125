"""What runs the network when a command scores films: ONNX Runtime by default on a CPU, PyTorch on request.

The same bundle answers through either engine with the same preprocessing (it is inside the exported graph: field
of view, border crop, intensity step, normalisation, every member of an ensemble, and the test-time views with
`--tta`), the same threshold and the same out-of-distribution guard (the graph returns the guard's statistics
from the same call; pneumoscan.models.ood_statistics scores them). ONNX Runtime is the default because it is
faster on a CPU (issue 22: `serve` 3x the requests per second of PyTorch on 2 cores) and needs no torch import,
so a cold `predict` starts in a fraction of the time.

Where the graph comes from, first found wins:
1. `--exported FILE` (a file made by `pneumoscan export`);
2. the bundle's own `model.onnx` (`make model`, `ensemble` and `adapt` write it), used when the manifest's
   `exported` record names the bundle's weights and the file's checksum;
3. the cache: `$PNEUMOSCAN_CACHE_DIR`, else `$XDG_CACHE_HOME/pneumoscan`, else `~/.cache/pneumoscan`, folder
   `onnx/`, one file per weights SHA-256 (and graph settings), exported on first use with its parity against
   PyTorch checked and written beside it (`<key>.onnx.json`). A graph whose parity failed is never used.
Where none can be made (an architecture the exporter cannot trace), the command falls back to PyTorch with one
warning line.

Threads: ONNX Runtime runs one operator at a time (sequential execution, one inter-op thread) on as many intra-op
threads as this process may use (its CPU affinity, which respects `taskset` and container limits; under torchrun
divided by LOCAL_WORLD_SIZE, the ranks on this machine), without
busy-waiting between calls (spinning threads steal the cores the decoders and the web server need);
`PNEUMOSCAN_ONNX_THREADS` overrides the count (e.g. one per rank when several processes share a machine).

This module imports neither torch nor the network code; the PyTorch engine is in pneumoscan.serving.torch_engine.
"""

from pathlib import Path
from typing import Any

from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.models.manifest import checked_bundle_folder
from pneumoscan.serving.runtime import (  # noqa: F401  (the engines' vocabulary, re-exported)
    CACHE_VARIABLE,
    ENGINES,
    THREADS_VARIABLE,
    Engine,
    EngineInfo,
    OnnxBackend,
    OnnxEngine,
    Scores,
    bundled_graph,
    cache_dir,
    cached_graph,
    cached_graph_path,
    onnx_threads,
)


def open_engine(model: Path | str, engine: str = "auto", exported: Path | None = None, tta: bool = False,
                warn: Any = None) -> Any:
    """The engine a command scores with. `engine`: auto (ONNX Runtime where the bundle can be exported, else PyTorch
    with one warning line through `warn`), onnx (ONNX Runtime or an error), torch, or tflite (with `exported`).
    `tta`: the test-time views (ONNX Runtime gets a graph that holds them)."""
    if engine not in ENGINES:
        raise PneumoscanError(f"engine '{engine}': choose from {', '.join(ENGINES)}")
    if engine == "torch" or engine == "tflite":
        from pneumoscan.serving.torch_engine import backend_engine, torch_engine

        if engine == "torch":
            return torch_engine(model, tta=tta)
        if exported is None:
            raise PneumoscanError("--engine tflite needs --exported FILE (made by `pneumoscan export --to tflite`)")
        if tta:
            raise PneumoscanError("--tta runs with the PyTorch and ONNX Runtime engines, not TFLite")
        return backend_engine(model, exported)
    folder, manifest = checked_bundle_folder(model)
    if exported is not None:
        if tta:
            raise PneumoscanError("--tta with --exported: the exported file holds no test-time views; leave out "
                                  "--exported (the TTA graph is made and cached) or use --engine torch")
        return OnnxEngine(folder, manifest, exported, "--exported")
    graph = None if tta else bundled_graph(folder, manifest)
    if graph is not None:
        return OnnxEngine(folder, manifest, graph, "bundle")
    graph = cached_graph(manifest, tta)
    if graph is not None:
        return OnnxEngine(folder, manifest, graph, "cache")
    from pneumoscan.serving.export import export_to_cache

    try:
        graph = export_to_cache(folder, cached_graph_path(manifest, tta), tta=tta)
    except PneumoscanError as error:
        if engine == "onnx" or isinstance(error, BundleError):  # a broken bundle is refused, not served by PyTorch
            raise
        from pneumoscan.serving.torch_engine import torch_engine

        reason = str(error).splitlines()[0]
        if warn is not None:
            warn(f"ONNX Runtime cannot run this model, scoring with PyTorch instead: {reason}")
        return torch_engine(folder, tta=tta, note=f"fell back to PyTorch: {reason}")
    return OnnxEngine(folder, manifest, graph, "cache")
