"""Detection: which values of a Relax function are channel shuffles, and what every split and concat reads.

No pattern per frontend: every data-movement operator (``reshape``,
``permute_dims``, ``split``, ``strided_slice``, ``take`` with constant
indices, ``concat``, ``squeeze``, ``expand_dims``) is evaluated on an *index
tensor*, an integer array whose elements name the source element they hold.
A 4-D NCHW result whose every element comes from the same ``(n, h, w)`` of a
4-D source is a :class:`ChannelMap`: channel ``c`` is plane ``plane[c]`` of
source ``source[c]``. So torch.export's reshape -> permute_dims -> reshape,
ONNX's 4-D and 5-D Reshape -> Transpose -> Reshape, the classic exporter's
strided slices and the authors' even/odd ``reshape(b*c//2, 2, h*w)`` form all
end up as the same kind of data, and a permutation of spatial or batch
elements is simply not a channel map.

A channel shuffle with ``g`` groups of ``k = C/g`` channels is the
permutation ``pi(c) = (c % g) * k + c // g``; ShuffleNet v2's split after it
takes contiguous windows of that permutation. :func:`find_shuffles` reports
every value (or set of values) that is such a window, any ``g`` with
``1 < g < C`` and ``C % g == 0``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from tvm_shuffle.tvm_compat import Constant, relax, tvm

# Operators that only move elements; their results can be traced.
MOVE_OPS = frozenset({"relax.reshape", "relax.permute_dims", "relax.split", "relax.strided_slice", "relax.take",
                      "relax.concat", "relax.squeeze", "relax.expand_dims"})

# Index tensors grow with the activations; a larger tensor is not traced.
MAX_TRACED_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelMap:
    """Logical channel ``c`` of a 4-D NCHW value is plane ``plane[c]`` of ``sources[source[c]]``."""

    sources: tuple  # relax.Var per source, each a 4-D (N, C_s, H, W) tensor
    source: np.ndarray  # (C,) index into ``sources``
    plane: np.ndarray  # (C,) channel of that source

    @property
    def channels(self) -> int:
        return len(self.plane)

    def source_channels(self, i: int) -> int:
        return _static_shape(self.sources[i])[1]

    def is_identity(self) -> bool:
        """The whole of a single source, in order: no data movement at all."""
        return (len(self.sources) == 1 and self.source_channels(0) == self.channels
                and bool((self.plane == np.arange(self.channels)).all()))

    def is_permutation(self) -> bool:
        """Every channel of a single source exactly once."""
        return (len(self.sources) == 1 and self.source_channels(0) == self.channels
                and bool((np.sort(self.plane) == np.arange(self.channels)).all()))

    def compose(self, inner: dict) -> "ChannelMap":
        """Replace each source that ``inner`` maps (a Var -> ChannelMap dict) by what it reads."""
        entries = []
        for s, p in zip(self.source, self.plane):
            var = self.sources[s]
            if var in inner:
                m = inner[var]
                entries.append((m.sources[m.source[p]], int(m.plane[p])))
            else:
                entries.append((var, int(p)))
        return from_entries(entries)


def from_entries(entries) -> ChannelMap:
    """A ChannelMap from ``(source var, plane)`` pairs, sources in order of first use."""
    order: dict = {}
    for var, _ in entries:
        order.setdefault(var, len(order))
    return ChannelMap(tuple(order), np.array([order[v] for v, _ in entries], dtype=np.int64),
                      np.array([p for _, p in entries], dtype=np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class ShuffleMatch:
    """A channel shuffle of ``input`` with ``groups`` groups, read by ``outputs``.

    One output holding the whole permutation is the plain shuffle; several
    outputs are a shuffle followed by a split (each a contiguous window of it).
    """

    input: "relax.Var"
    groups: int
    channels: int
    outputs: tuple  # relax.Var per window, in window order
    windows: tuple  # (start, stop) of each output within the shuffled channels

    @property
    def form(self) -> str:
        if len(self.outputs) == 1 and self.windows[0] == (0, self.channels):
            return "shuffle"
        return f"shuffle+split into {len(self.outputs)}"

    def describe(self) -> str:
        outs = ", ".join(v.name for v in self.outputs)
        return f"{self.input.name} -> {outs}: {self.form}, {self.groups} groups of {self.channels // self.groups}"


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """``pi`` with ``shuffled[:, c] = x[:, pi[c]]`` (torchvision's ``channel_shuffle``)."""
    k = channels // groups
    c = np.arange(channels)
    return (c % groups) * k + c // groups


@dataclasses.dataclass
class Analysis:
    """What :func:`analyze` found in one function.

    ``local`` maps each traced 4-D value to the nearest 4-D values it reads;
    ``region`` holds the values that belong to a shuffle (its outputs, the
    concat it reads, and every split/concat downstream); ``maps`` gives each
    region value in terms of values outside the region.
    """

    bindings: list
    local: dict
    shuffles: list
    region: set
    maps: dict

    def shuffles_reaching(self, var) -> list:
        """The shuffles whose outputs ``var`` (a region value) reads, directly or through splits/concats."""
        return [m for m in self.shuffles if var in self._reach[m]]

    def __post_init__(self):
        self._reach = {}
        for match in self.shuffles:
            reach = set(match.outputs)
            for b in self.bindings:
                if b.var in self.local and any(s in reach for s in self.local[b.var].sources):
                    reach.add(b.var)
            self._reach[match] = reach


def analyze(func: "relax.Function") -> Analysis:
    """Trace the data movement of ``func`` and find its channel shuffles."""
    bindings = list(_bindings(func))
    local = _trace_local(bindings)
    shuffles = _match_shuffles(bindings, local)
    region = _region(bindings, local, shuffles)
    maps: dict = {}
    for b in bindings:
        if b.var in region:
            maps[b.var] = local[b.var].compose(maps)
    return Analysis(bindings, local, shuffles, region, maps)


def find_shuffles(func: "relax.Function") -> list[ShuffleMatch]:
    """Every channel shuffle in ``func`` (see the module docstring for the forms)."""
    return analyze(func).shuffles


# ---------------------------------------------------------------------------
# Index tracing


def _bindings(func) -> Iterator:
    body = func.body
    if isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            yield from block.bindings


def _static_shape(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values):
        return None
    return tuple(int(d) for d in ty.shape.values)


def _ints(expr) -> list[int]:
    return [int(x) for x in expr]


class _Sources:
    """Gives each source its own range of codes: code = base + flat element index."""

    def __init__(self):
        self.vars: list = []
        self.bases: list[int] = []
        self._next = 0

    def codes(self, var, shape) -> np.ndarray:
        base = self._next
        self.vars.append(var)
        self.bases.append(base)
        self._next += int(np.prod(shape))
        return base + np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)


def _trace_local(bindings) -> dict:
    """ChannelMap of each traced 4-D value, in terms of the 4-D values it reads."""
    sources = _Sources()
    codes: dict = {}  # var -> index tensor (or list of them for tuples)
    local: dict = {}
    fresh: dict = {}

    def operand(expr):
        # A value that is a channel map is where a local map starts; any other
        # traced value (a 5-D or 3-D intermediate, or a 4-D one that is not
        # NCHW-shaped like (N, g, C/g, H*W)) passes its codes through.
        if isinstance(expr, relax.Var) and expr in codes and expr not in local:
            return codes[expr]
        if not isinstance(expr, relax.Var):
            return None
        shape = _static_shape(expr)
        if shape is None or np.prod(shape) > MAX_TRACED_ELEMENTS:
            return None
        if expr not in fresh:
            fresh[expr] = sources.codes(expr, shape)
        return fresh[expr]

    for b in bindings:
        value = b.value
        if isinstance(value, relax.TupleGetItem):
            parts = codes.get(value.tuple_value)
            if isinstance(parts, list):
                _store(b.var, parts[value.index], codes, local, sources)
            continue
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or value.op.name not in MOVE_OPS:
            continue
        try:
            result = _evaluate(value, operand)
        except (ValueError, IndexError, TypeError):
            result = None
        if result is None:
            continue
        if isinstance(result, list):
            shapes = _tuple_shapes(b.var)
            if shapes is not None and [r.shape for r in result] == shapes:
                codes[b.var] = result
        elif result.shape == _static_shape(b.var):
            _store(b.var, result, codes, local, sources)
    return local


def _store(var, value, codes, local, sources) -> None:
    codes[var] = value
    if value.ndim == 4:
        cmap = _as_channel_map(value, sources)
        if cmap is not None:
            local[var] = cmap


def _tuple_shapes(var):
    ty = getattr(var, "ty", None)
    if not isinstance(ty, tvm.ir.TupleType):
        return None
    shapes = []
    for field in ty.fields:
        shape = _static_shape(relax.Var("f", field))
        if shape is None:
            return None
        shapes.append(shape)
    return shapes


def _evaluate(call, operand):
    """The index tensor(s) ``call`` produces from its operands', or None."""
    name = call.op.name
    if name == "relax.concat":
        if not isinstance(call.args[0], relax.Tuple):
            return None
        parts = [operand(x) for x in call.args[0].fields]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts, axis=int(call.attrs.axis))
    x = operand(call.args[0])
    if x is None:
        return None
    if name == "relax.reshape":
        if not isinstance(call.args[1], relax.ShapeExpr):
            return None
        return x.reshape(_ints(call.args[1].values))
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(x, None if axes is None else _ints(axes))
    if name == "relax.squeeze":
        axis = call.attrs.axis
        return np.squeeze(x, axis=None if axis is None else tuple(_ints(axis)))
    if name == "relax.expand_dims":
        return np.expand_dims(x, tuple(_ints(call.attrs.axis)))
    if name == "relax.split":
        return _split(call, x)
    if name == "relax.strided_slice":
        return _strided_slice(call, x)
    if name == "relax.take":
        indices = call.args[1]
        if not isinstance(indices, Constant):
            return None
        idx = indices.value.numpy()
        axis = int(call.attrs.axis) if call.attrs.axis is not None else None
        if axis is None or not np.issubdtype(idx.dtype, np.integer):
            return None
        if idx.size and (idx.min() < 0 or idx.max() >= x.shape[axis]):
            return None
        return np.take(x, idx, axis=axis)
    return None


def _split(call, x):
    axis = int(call.attrs.axis)
    sections = call.attrs.indices_or_sections
    if isinstance(sections, (tvm.tirx.IntImm, int)):
        n = int(sections)
        if x.shape[axis] % n:
            return None
        return list(np.split(x, n, axis=axis))
    return list(np.split(x, _ints(sections), axis=axis))


def _strided_slice(call, x):
    if len(call.args) < 4:
        return None
    axes, begin, end = (_ints(a) for a in call.args[1:4])
    strides = _ints(call.args[4]) if len(call.args) > 4 else [1] * len(axes)
    index = [slice(None)] * x.ndim
    for axis, b, e, s in zip(axes, begin, end, strides):
        index[axis] = slice(b, e, s)
    return x[tuple(index)]


def _as_channel_map(value: np.ndarray, sources: _Sources) -> ChannelMap | None:
    """``value`` (N, C, H, W codes) as a ChannelMap, or None if it moves elements across n, h or w."""
    n, c, h, w = value.shape
    bases = np.asarray(sources.bases)
    src = np.searchsorted(bases, value, side="right") - 1
    src_of = src[0, :, 0, 0]
    if not (src == src_of.reshape(1, c, 1, 1)).all():
        return None
    for i in np.unique(src_of):
        shape = _static_shape(sources.vars[i])
        if shape is None or len(shape) != 4 or (shape[0], shape[2], shape[3]) != (n, h, w):
            return None
    flat = value - bases[src]
    shapes = np.array([_static_shape(sources.vars[i]) for i in src_of])  # (C, 4)
    cs = shapes[:, 1].reshape(1, c, 1, 1)
    plane = (flat // (h * w)) % cs
    expected = ((np.arange(n).reshape(n, 1, 1, 1) * cs + plane) * h + np.arange(h).reshape(1, 1, h, 1)) * w \
        + np.arange(w).reshape(1, 1, 1, w)
    if not (flat == expected).all() or not (plane == plane[:1, :, :1, :1]).all():
        return None
    entries = [(sources.vars[s], int(p)) for s, p in zip(src_of, plane[0, :, 0, 0])]
    return from_entries(entries)


# ---------------------------------------------------------------------------
# Shuffle recognition


def _shuffle_window(cmap: ChannelMap, total: int) -> tuple[int, int, int] | None:
    """(groups, start, stop) if ``cmap`` is a contiguous window of a shuffle of its one source."""
    if len(cmap.sources) != 1:
        return None
    planes = cmap.plane
    if (np.diff(planes) == 1).all():
        return None  # a plain slice (or one channel), not a shuffle
    for groups in range(2, total):
        if total % groups:
            continue
        position = np.argsort(shuffle_permutation(total, groups))[planes]
        if (np.diff(position) == 1).all():
            return groups, int(position[0]), int(position[-1]) + 1
    return None


def _match_shuffles(bindings, local: dict) -> list[ShuffleMatch]:
    found: dict = {}
    for b in bindings:
        cmap = local.get(b.var)
        if cmap is None or len(cmap.sources) != 1:
            continue
        total = cmap.source_channels(0)
        window = _shuffle_window(cmap, total)
        if window is None:
            continue
        groups, start, stop = window
        found.setdefault((cmap.sources[0], groups), []).append((start, stop, b.var))
    matches = []
    for (source, groups), pieces in found.items():
        pieces.sort(key=lambda p: p[0])
        matches.append(ShuffleMatch(input=source, groups=groups, channels=_static_shape(source)[1],
                                    outputs=tuple(p[2] for p in pieces),
                                    windows=tuple((p[0], p[1]) for p in pieces)))
    return matches


def _region(bindings, local: dict, shuffles: list[ShuffleMatch]) -> set:
    """Shuffle outputs, the traced values they read (the concat), and every traced value downstream."""
    region = {v for m in shuffles for v in m.outputs}
    region |= {m.input for m in shuffles if m.input in local}
    for b in bindings:
        cmap = local.get(b.var)
        if cmap is not None and any(s in region for s in cmap.sources):
            region.add(b.var)
    return region
