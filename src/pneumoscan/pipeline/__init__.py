"""Pipelines that join the layers: train then package a run, studies of many runs, the demo.

The layers below never import this package: (data, metrics) -> config -> models -> training -> evaluation
-> (pipeline, serving) -> cli; tests/test_package_layers.py checks it.
"""
