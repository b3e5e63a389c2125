"""Pipelines that join the layers: train then package a run, studies of many runs, the demo.

The layers below never import this package: data -> models -> training -> evaluation -> pipeline -> cli.
"""
