"""tvm_shuffle: compile, tune and ship ShuffleNet-class networks with Apache TVM.

The pipeline, one module a step: ``frontends`` (import) -> ``passes`` (graph
passes) -> ``tune`` -> ``build`` (build and export) -> ``runtime`` (run) ->
``report``.
"""

__version__ = "0.1.0"
