"""Rewriting a Relax module's calls (the mutator every graph pass here is written with) or pattern matches, and its constants' size."""

from __future__ import annotations

import math

from tvm_shuffle.tvm_compat import Constant, relax, tvm  # noqa: F401 - tvm names the annotations


def rewrite_calls(mod: "tvm.IRModule", rewrite) -> "tvm.IRModule":
    """``mod`` with every call in its Relax functions replaced by ``rewrite(call, builder)`` (the call itself to keep it).

    Calls are rewritten innermost first; ``builder`` starts from ``mod`` and
    collects any kernels ``rewrite`` adds.
    """
    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            return rewrite(self.visit_expr_post_order(call), self.builder_)

    rewriter = Rewriter(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def is_op_call(expr, name: str) -> bool:
    """Whether ``expr`` is a call of the Relax operator ``name`` (``"relax.nn.conv2d"``)."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def rewrite_matches(mod: "tvm.IRModule", pattern, rewrite) -> "tvm.IRModule":
    """``mod`` with every match of the dataflow ``pattern`` in its Relax functions replaced by ``rewrite(expr, matches)``."""
    from tvm.relax.dpl import rewrite_call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(pattern, rewrite, func)
    return out


def constant_bytes(mod: "tvm.IRModule") -> int:
    """Bytes of the distinct constants the Relax functions of ``mod`` hold (weights, biases, scales), as stored."""
    seen: dict[int, int] = {}

    def visit(expr):
        if isinstance(expr, Constant):
            # Keyed by the node, not its transient Python wrapper; sized from shape and dtype, not a copy of the data.
            tensor = expr.value
            seen.setdefault(expr.__chandle__(), math.prod(tensor.shape) * tensor.dtype.itemsize)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return sum(seen.values())


__all__ = ["is_op_call", "rewrite_calls", "rewrite_matches", "constant_bytes"]
