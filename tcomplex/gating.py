"""Reading gating states out of a PyTorch model (Section 3 and Appendix A).

What counts as gating
---------------------
A *gating layer* is one call of an operation whose output is its input times a
binary, input-dependent (or random) mask -- the operations Section 3 and
Appendix A define.  For every input it produces a binary vector sigma_l of
"which elements pass":

* ReLU (kind ``"relu"``: ``nn.ReLU`` and subclasses, ``F.relu``, ``F.relu_``,
  ``torch.relu``, ``torch.relu_``, ``Tensor.relu``/``relu_``): ``sigma = 1``
  where the layer's *input* is > 0 (``inplace=True`` is handled).
* ReLU6 (kind ``"relu6"``: ``nn.ReLU6``, ``F.relu6``): relu6(x) = relu(x) -
  relu(x - 6) is two ReLU gates per unit, so sigma_l holds ``2 d`` gates: first
  ``x > 0`` for all d units, then ``x < 6`` for all d units.
* Max-pool (kind ``"maxpool"``: ``nn.MaxPool1d/2d/3d``,
  ``nn.AdaptiveMaxPool1d/2d/3d`` and the functional ``F.max_pool1d/2d/3d``,
  ``F.adaptive_max_pool1d/2d/3d``, their ``_with_indices`` forms and
  ``torch.max_pool1d/2d/3d``): the one-hot of the winning (first maximal)
  element of every pooling window (Appendix A writes it as a d'×d matrix).  We
  store the winner's offset inside its window (one small integer per output
  element) and expose it as the one-hot restricted to the entries that can ever
  be 1, i.e. ``d' * window`` gates: every pairwise Hamming distance, entropy and
  total correlation equals that of the d'×d matrix, since the dropped entries
  are always 0.  Adaptive windows differ in size; their offsets are taken in a
  box of the largest window size per dimension (entries outside a smaller
  window are always 0, so the same equalities hold).
* Dropout (kind ``"dropout"``: ``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
  ``F.dropout``, ``F.dropout1d/2d/3d``, ``torch.dropout``): the keep mask, only
  in training mode (in eval mode, or with ``training=False``, dropout is the
  identity and not a gating layer).  While recording, tcomplex draws the
  Bernoulli(1 - p) keep mask itself and applies it, so the mask is known
  exactly; the layer's output distribution is unchanged.  Channel-wise dropout
  (``Dropout1d/2d/3d``) draws one keep bit per (sample, channel), as torch does,
  and its state is that bit *expanded to every element* of the channel: sigma
  is the gate of every unit, as for a convolutional ReLU layer, so its width is
  C×spatial and all elements of a channel share one value.

Other activations (GELU, SiLU, LeakyReLU, PReLU, ELU, SELU, CELU, Softplus,
Tanh, Sigmoid, Hardtanh, Hardswish, Mish, ..., alpha dropout, subclasses of
dropout with their own forward) are not gating: their output is not the input
times a binary mask, so they have no gating state and are left out of Sigma.
The first recorded forward pass of a model that runs any of them warns once
(:class:`NonGatingWarning`), naming the modules and functional call sites.

Names
-----
A module call is named by the module's qualified name.  A module called several
times in one forward pass (torchvision's ``BasicBlock`` calls ``self.relu``
twice) gives one gating layer per call, named ``name#0``, ``name#1``, ...; a
module called once keeps its plain qualified name.  A *functional* call is
named by its call site: the qualified name of the innermost module whose
forward made the call, the operation and the call's index among the calls of
that operation from that module in one forward pass, always written out, e.g.
``block.relu()#0``, ``block.relu()#1`` (``relu()#0`` for a call in the root
module's own forward).  The ``()`` keeps these names apart from module names
(``block.relu#0`` is the first call of a *module* ``block.relu``), and the
index does not depend on other operations or modules, so adding a layer
elsewhere does not rename a call site.  A functional call made inside a gating
or other activation module (``nn.ReLU.forward`` calls ``F.relu``) belongs to
that module and is not recorded again.  A functional call whose tensor's first
dimension is not the batch is not a per-sample gating layer: it is left out and
named in the warning.

Hooks and nesting
-----------------
Hooks are installed only inside :class:`GateRecorder` (a context manager) and
are always removed on exit, also when the forward pass raises; functional
calls are seen through a ``torch.overrides.TorchFunctionMode`` that is active
only between the start and the end of the model's forward pass.  Inside it, a
module running torch's own ``MaxPool1d/2d.forward`` gets an instance-level
forward that pools once with ``return_indices=True``, returns exactly what the
module returns (same values, indices and memory layout) and turns the indices
into window offsets, so max-pool costs no second pooling; the patch is undone on
exit like the hooks.  A stock ``nn.ReLU`` likewise gets an instance-level forward
that runs torch's own and reads the states off its output (``relu(x) != 0`` is
``x > 0`` and cheaper to evaluate), before any forward hook of the user's could
change it.  These two need no module hooks of ours, so torch calls them on its
fast path.  ReLU or max-pool subclasses with their own forward, ReLU6, MaxPool3d,
adaptive max-pools, and a module whose forward another recorder has already
replaced (nested recorders), are read from their input in a pre-hook.

Recorders may be nested (an outer one around a training loop, an inner
``record_gates`` on the same model): every recorder sees every call, and a
training-mode dropout draws *one* keep mask per call, which is applied and
which every active recorder stores.  Nesting recorders with different
``sampling`` on overlapping models is refused with a RuntimeError (one of them
would store a mask that was not applied).

Storage: each recorded layer's states of a batch are packed to bits into the batch's
rows of one int64 word matrix, every layer starting on a word boundary.  The first
forward pass fixes the layout, so its layers are packed when it ends; from the second
on, each layer is packed as soon as it is recorded (the bool states or pool indices
are freed at once and the forward pass keeps a plain one's working set): a stock ReLU
on the CPU writes the bits of its output straight into the buffer, counting NaN in
the same pass (:func:`tcomplex.bits.pack_positive`), a stock max-pool whose window
divides 8 (2x2, 1x2, ...) on a contiguous CPU batch without autograd pools and writes
its winners' bits in one branch-free pass (:func:`tcomplex.bits.max_pool_packed`, the
module's exact output; see :data:`FUSED_MAX_POOL`), other max-pool winners go from the
indices to the buffer (:func:`tcomplex.bits.pack_pool_winners`), and everything else
is packed by :func:`tcomplex.bits.pack_bits` on the device it was computed on.  The
bool states of all layers never exist at once.  :class:`Recording`
unpacks bool views on request and hands the bits to the estimators
(:meth:`Recording.packed`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from tcomplex.bits import PackedStates, max_pool_packed, pack_bits, pack_onehot, pack_pool_winners, pack_positive, unpack_bits

__all__ = [
    "FUSED_MAX_POOL",
    "GATE_KINDS",
    "GateInfo",
    "GateRecorder",
    "NonGatingWarning",
    "Recording",
    "gating_modules",
    "record_gates",
    "record_gates_with_and_without_sampling",
    "resolve_layers",
]

GATE_KINDS: tuple[str, ...] = ("relu", "relu6", "maxpool", "dropout")

#: alpha of Section 4.4 / Appendix H: 0.01 for gates after fully connected layers,
#: 0.04 for gates after convolutional layers.
ALPHA_FC = 0.01
ALPHA_CONV = 0.04

#: Attribute a model's submodule may carry to switch its own random sampling
#: (e.g. a VAE's reparameterisation) off while I(X; Sigma) is measured (Eq. 3).
SAMPLING_ATTRIBUTE = "tcomplex_sampling"

#: Recorders pool a stock max-pool whose window divides 8 (2x2, 1x2, ...) with their own
#: one-pass kernel (:func:`tcomplex.bits.max_pool_packed`: the module's exact output and the
#: winners' bits) from the second batch on; False pools with torch's kernel, as the module
#: does outside a recorder (the benchmark compares both).
FUSED_MAX_POOL = True


class NonGatingWarning(UserWarning):
    """A recorded model runs activations that are not gating layers (left out of Sigma)."""


_ADAPTIVE_POOLS = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

#: activation modules that are not gating layers (warned about, never recorded)
_NON_GATING_MODULES: tuple[type, ...] = tuple(
    getattr(nn, n)
    for n in (
        "GELU", "SiLU", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "Softplus", "Tanh",
        "Sigmoid", "Hardtanh", "Hardswish", "Hardsigmoid", "Mish", "LogSigmoid", "Softsign",
        "Tanhshrink", "Softshrink", "Hardshrink", "Threshold", "GLU", "AlphaDropout",
        "FeatureAlphaDropout", "FractionalMaxPool2d", "FractionalMaxPool3d",
    )
    if hasattr(nn, n)
)


def _kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if type(module) is nn.ReLU6:
        return "relu6"
    if isinstance(module, _MAX_POOLS + _ADAPTIVE_POOLS):
        return "maxpool"
    if type(module) in _DROPOUTS:
        return "dropout"
    return None


def _is_activation(module: nn.Module) -> bool:
    """A gating module, or an activation / dropout module that is not gating."""
    return _kind_of(module) is not None or isinstance(
        module, _NON_GATING_MODULES + (nn.modules.dropout._DropoutNd,)
    )


@dataclass(frozen=True)
class GateInfo:
    """Static description of one gating layer (one call of one module).

    Attributes
    ----------
    name: unique, stable name (``module`` or ``module#call``; for a functional
        call ``module.op()#call``).
    module: qualified name of the module in the model (for a functional call:
        of the module whose forward made the call, ``""`` for the root).
    call: index of this call among the module's calls (functional: among the
        calls of ``function`` from ``module``) in one forward pass.
    kind: ``"relu"``, ``"relu6"``, ``"maxpool"`` or ``"dropout"``.
    after: ``"conv"`` when the gated tensor has spatial dimensions (the gate
        follows a convolution), ``"fc"`` otherwise.
    width: number of gates per sample, d_l (``2 * prod(shape)`` for ReLU6).
    shape: per-sample shape of the gated tensor (for max-pool: of its output).
    window: max-pool window size (1 for the other kinds).
    function: the functional operation (``"relu"``, ``"max_pool2d"``,
        ``"dropout2d"``, ...) for a functional call site, None for a module.
    """

    name: str
    module: str
    call: int
    kind: str
    after: str
    width: int
    shape: tuple[int, ...]
    window: int = 1
    function: str | None = None

    @property
    def default_alpha(self) -> float:
        """alpha of Section 4.4: 0.04 after a convolution, 0.01 after an FC layer."""
        return ALPHA_CONV if self.after == "conv" else ALPHA_FC


_INTERNAL_DIRS = tuple(str(Path(m.__file__).resolve().parent) + os.sep for m in (torch, sys.modules["tcomplex"]))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside torch and tcomplex
    (the user's ``model(x)`` or ``record_gates`` call), however deep torch's module call is."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _other_function_modes() -> bool:
    """Whether a torch-function mode other than the recorders' own is active in this thread."""
    try:
        stack = torch.overrides._get_current_function_mode_stack()
    except Exception:  # the helper moved: assume a mode, take torch's route
        return True
    return any(not isinstance(m, _GatingMode) for m in stack)


def _quiet(fn: Any) -> Any:
    """``fn`` with torch-function handling off: the recorder's own tensor work (NaN checks,
    packing, shapes) is not routed through torch-function modes, ours or a user's, which see
    the model's operations only.  Routing each of those calls through a Python mode cost more
    than packing the states (about 100 calls per batch of LeNet-5)."""

    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with torch._C.DisableTorchFunction():
            return fn(*args, **kwargs)

    return quiet


class _PoolWinners:
    """Compact max-pool states: the winner of every window, as max_pool's flat plane indices
    (``indices`` [n, C, *out] with the pool's geometry) or as offsets inside the window
    (uint8/int16 [n, d']).  Packing goes straight from the indices where it can
    (:func:`tcomplex.bits.pack_pool_winners`); the offsets are computed only when asked for."""

    def __init__(self, window: int, *, offsets: Tensor | None = None, indices: Tensor | None = None,
                 geometry: tuple[tuple[int, ...], ...] | None = None) -> None:
        self.window = window
        self._offsets = offsets
        self._indices = indices
        self._geometry = geometry  # (plane, kernel, stride, padding, dilation)
        src = offsets if offsets is not None else indices
        assert src is not None
        self.d_out = math.prod(src.shape[1:])

    @property
    def width(self) -> int:
        return self.d_out * self.window

    @property
    def offsets(self) -> Tensor:
        if self._offsets is None:
            plane, k, s, p, dil = self._geometry
            self._offsets = _window_offsets(self._indices, plane, k, s, p, dil, _offset_dtype(self.window)).flatten(1)
        return self._offsets

    @property
    def _source(self) -> Tensor:
        src = self._offsets if self._offsets is not None else self._indices
        assert src is not None
        return src

    @property
    def rows(self) -> int:
        return self._source.shape[0]

    @property
    def device(self) -> torch.device:
        return self._source.device

    def words(self, out: Tensor | None = None) -> Tensor:
        """The packed one-hot states (int64 words, :func:`tcomplex.bits.pack_onehot`'s layout),
        written into ``out`` where given (a CPU int64 view of the recorder's word buffer)."""
        if self._offsets is None and self._indices is not None:
            plane, k, s, p, dil = self._geometry
            if all(d == 1 for d in dil):
                on_cpu = out is not None and out.device.type == "cpu"
                words = pack_pool_winners(self._indices, plane, k, s, p, out=out if on_cpu else None)
                if words is not None:
                    return words
        return pack_onehot(self.offsets, self.window)

    def onehot(self) -> Tensor:
        n, d_out = self.offsets.shape
        codes = torch.arange(self.window, dtype=self.offsets.dtype, device=self.offsets.device)
        return (self.offsets[:, :, None] == codes).reshape(n, d_out * self.window)


class _StoredState:
    """A layer's states of one batch already packed into the recorder's word storage
    (``words`` [b, ceil(width / 64)], a view of it); unpacked only when asked for."""

    def __init__(self, words: Tensor, width: int) -> None:
        self.words = words
        self.width = width

    def onehot(self) -> Tensor:
        return unpack_bits(self.words, self.width)


def _nan_message(name: str) -> str:
    return (f"NaN in the input of gating layer {name!r}: the model produced NaN activations "
            "(diverged training or NaN inputs); gating states of NaN are undefined")


def _packs_positive(y: Any) -> bool:
    """Whether :func:`tcomplex.bits.pack_positive` takes ``y`` as it is (a batched CPU float
    tensor, contiguous, so that its [batch, units] view costs nothing)."""
    return (isinstance(y, Tensor) and y.device.type == "cpu" and y.dtype in (torch.float32, torch.float64)
            and y.dim() >= 2 and y.layout == torch.strided and not y.is_quantized and y.is_contiguous())


def _as_bool(state: Tensor | _PoolWinners | _StoredState) -> Tensor:
    return state.onehot() if isinstance(state, (_PoolWinners, _StoredState)) else state


def _word_offsets(widths: Iterable[tuple[str, int]]) -> dict[str, int]:
    """First word of every layer when each layer starts on a 64-bit word boundary."""
    out: dict[str, int] = {}
    w = 0
    for name, width in widths:
        out[name] = w
        w += -(-width // 64)
    return out


class Recording(Mapping[str, Tensor]):
    """Ordered mapping from gating-layer name to a bool tensor ``[n, d_l]``, stored as bits.

    Layers are in forward order.  ``rec.info[name]`` gives a :class:`GateInfo`.
    ``rec.concat()`` is Sigma = [Sigma_1, ..., Sigma_L] and ``rec.suffix(l)`` is
    (Sigma_l, ..., Sigma_L) (Proposition 2, Figure 1).

    Storage: one int64 word matrix ``[n, W]``, 64 gates per word, every layer starting
    on a word boundary (padding bits 0), so the recording takes ~n * d / 8 bytes
    (:attr:`nbytes`).  ``rec[name]``, ``concat`` and ``suffix`` unpack bool copies;
    :meth:`packed` gives the bits of any set of layers without copying, which the
    estimators take directly (per layer and concatenated from the same storage).
    """

    def __init__(self, states: Mapping[str, Tensor | _PoolWinners], info: Mapping[str, GateInfo]):
        if list(states) != list(info):
            raise ValueError("states and info must name the same layers in the same order")
        sizes = {_as_bool(s).shape[0] for s in states.values()}
        if len(sizes) > 1:
            raise ValueError(f"layers hold different numbers of samples: {sorted(sizes)}")
        offsets = _word_offsets((k, i.width) for k, i in info.items())
        n = sizes.pop() if sizes else 0
        total = sum(-(-i.width // 64) for i in info.values())
        words = torch.zeros(n, total, dtype=torch.int64)
        for k, st in states.items():
            b = _as_bool(st)
            if b.shape[1] != info[k].width:
                raise ValueError(f"layer {k!r} holds {b.shape[1]} gates but its info says {info[k].width}")
            packed = pack_bits(b.cpu())
            words[:, offsets[k] : offsets[k] + packed.shape[1]] = packed
        self._init(words, offsets, info)

    @classmethod
    def from_packed(cls, words: Tensor, offsets: Mapping[str, int], info: Mapping[str, GateInfo]) -> Recording:
        """A recording over an int64 word matrix ``[n, W]``; layer ``k`` starts at word ``offsets[k]``."""
        if list(offsets) != list(info):
            raise ValueError("offsets and info must name the same layers in the same order")
        rec = cls.__new__(cls)
        rec._init(words, offsets, info)
        return rec

    def _init(self, words: Tensor, offsets: Mapping[str, int], info: Mapping[str, GateInfo]) -> None:
        self._words = words
        self._offsets = dict(offsets)
        self.info: dict[str, GateInfo] = dict(info)
        self.n: int = words.shape[0]
        PackedStates(words, [(self._offsets[k], i.width) for k, i in self.info.items()])  # validates the layout

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._offsets:
            raise KeyError(f"no gating layer {name!r}; layers: {list(self._offsets)}")
        return self.packed([name]).unpack()

    def __iter__(self) -> Iterator[str]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed states (the word matrix, shared by selections of it)."""
        return self._words.numel() * self._words.element_size()

    def packed(self, names: Sequence[str | int] | None = None) -> PackedStates:
        """The states of some layers (all by default), concatenated, as bits without a copy.

        Pass it to any estimator (``kde_entropy(rec.packed(), ...)``): distances are
        computed by XOR + popcount on the CPU.
        """
        chosen = self.names if names is None else resolve_layers(self.names, names)
        if not chosen:
            raise ValueError("no layer selected: the recording has no layers")
        return PackedStates(self._words, [(self._offsets[k], self.info[k].width) for k in chosen])

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: [{self.n}, {i.width}] {i.kind}" for k, i in self.info.items())
        return f"Recording({body})"

    @property
    def names(self) -> list[str]:
        return list(self._offsets)

    def select(self, layers: Sequence[str | int]) -> Recording:
        """A recording of only the given layers (names or 1-based / negative positions), sharing the bits."""
        chosen = resolve_layers(self.names, layers)
        return Recording.from_packed(self._words, {k: self._offsets[k] for k in chosen}, {k: self.info[k] for k in chosen})

    def concat(self, names: Sequence[str | int] | None = None) -> Tensor:
        """Concatenate layers (all by default) into one bool tensor ``[n, sum d_l]`` (unpacked copy)."""
        chosen = self.names if names is None else resolve_layers(self.names, names)
        if not chosen:
            raise ValueError("nothing to concatenate: the recording has no layers")
        return self.packed(chosen).unpack()

    def suffix(self, l: int) -> Tensor:
        """(Sigma_l, ..., Sigma_L) for 1-based l, as one bool tensor (Proposition 2)."""
        if not 1 <= l <= len(self):
            raise ValueError(f"l must be in 1..{len(self)}, got {l}")
        return self.concat(self.names[l - 1 :])

    def default_alpha(self, names: Sequence[str | int] | None = None) -> float:
        """alpha for a set of layers: 0.04 if any of them follows a convolution, else 0.01.

        This matches the authors' public code, which uses 0.04 for the concatenated
        Sigma of a network as soon as one of its gating layers is convolutional.
        """
        chosen = self.names if names is None else resolve_layers(self.names, names)
        return ALPHA_CONV if any(self.info[k].after == "conv" for k in chosen) else ALPHA_FC


def resolve_layers(available: Sequence[str], layers: Iterable[str | int]) -> list[str]:
    """Map layer names or positions to names, in the order given.

    Integers are positions in forward order: 1-based (the paper's "l = 3, 4") or
    negative from the end (``-4, -3, -2, -1`` are the last four gating layers).
    An unknown name or a position out of range is a ValueError listing the valid ones.
    """
    available = list(available)
    out: list[str] = []
    for item in layers:
        if isinstance(item, bool):
            raise ValueError(f"layer selector {item!r} is not a name or an integer position")
        if isinstance(item, int):
            L = len(available)
            if 1 <= item <= L:
                out.append(available[item - 1])
            elif -L <= item <= -1:
                out.append(available[item])
            else:
                raise ValueError(
                    f"layer position {item} is out of range: use 1..{L} or -{L}..-1 "
                    f"(gating layers in forward order: {available})"
                )
        elif isinstance(item, str):
            if item not in available:
                raise ValueError(f"unknown gating layer {item!r}; valid names: {available}")
            out.append(item)
        else:
            raise ValueError(f"layer selector {item!r} is not a name or an integer position")
    if len(set(out)) != len(out):
        raise ValueError(f"a layer is selected twice: {out}")
    return out


def gating_modules(model: nn.Module, kinds: Sequence[str] = GATE_KINDS) -> dict[str, nn.Module]:
    """Qualified name -> module for every module of the requested kinds."""
    _check_kinds(kinds)
    return {name: m for name, m in model.named_modules() if _kind_of(m) in kinds}


def _check_kinds(kinds: Sequence[str]) -> None:
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence such as ('relu',), not the string {kinds!r}")
    bad = [k for k in kinds if k not in GATE_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown gating kinds {bad or kinds!r}; choose from {GATE_KINDS}")


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _pool_params(pool: nn.Module) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(spatial dims, kernel, stride, padding, dilation) of a MaxPool1d/2d/3d module."""
    nd = 3 if isinstance(pool, nn.MaxPool3d) else 2 if isinstance(pool, nn.MaxPool2d) else 1
    k = _tuple(pool.kernel_size, nd)
    s = _tuple(pool.stride if pool.stride is not None else pool.kernel_size, nd)
    return nd, k, s, _tuple(pool.padding, nd), _tuple(pool.dilation, nd)


def _offsets_generic(idx: Tensor, plane: tuple[int, ...], k, s, p, dil) -> Tensor:
    """Window offsets from max_pool's flat indices by row/column arithmetic (any dilation)."""
    nd = len(plane)
    out_shape = idx.shape[-nd:]
    if nd == 2:
        width = plane[-1]
        rows, cols = idx // width, idx % width
        top = torch.arange(out_shape[0], device=idx.device) * s[0] - p[0]
        left = torch.arange(out_shape[1], device=idx.device) * s[1] - p[1]
        dr = (rows - top[:, None]) // dil[0]
        dc = (cols - left[None, :]) // dil[1]
        return dr * k[1] + dc
    if nd == 1:
        left = torch.arange(out_shape[0], device=idx.device) * s[0] - p[0]
        return (idx - left) // dil[0]
    starts = [torch.arange(out_shape[d], device=idx.device) * s[d] - p[d] for d in range(nd)]
    return _offsets_in_box(idx, plane, starts, [(dd, kk) for dd, kk in zip(dil, k)])


def _offsets_in_box(idx: Tensor, plane: Sequence[int], starts: Sequence[Tensor], steps: Sequence[tuple[int, int]]) -> Tensor:
    """Row-major offset of a flat plane index inside its window (any number of dims).

    ``starts[d]`` is the first coordinate of every output position's window along
    dim d, ``steps[d] = (dilation, window extent)``.
    """
    nd = len(plane)
    coords: list[Tensor] = []
    rem = idx
    for d in reversed(range(nd)):
        coords.insert(0, rem % plane[d])
        rem = rem // plane[d]
    off = torch.zeros_like(idx)
    for d in range(nd):
        shape = [1] * nd
        shape[d] = -1
        dil, extent = steps[d]
        off = off * extent + (coords[d] - starts[d].view(shape)) // dil
    return off


@functools.lru_cache(maxsize=128)
def _offset_plan(
    plane: tuple[int, ...], out_shape: tuple[int, ...], k, s, p, dil, device: torch.device
) -> tuple[Tensor, int, int, int] | None:
    """Constants of the fast int32 path of :func:`_window_offsets`, or None where it does not apply.

    With ``base`` the flat index of every window's first element (padding
    included), ``delta = idx - base = r * W + c`` for the winner's row r < k0 and
    column c < k1 inside its window; its offset ``r * k1 + c`` is
    ``delta - r * (W - k1)``, with ``r = (delta * mult) >> shift`` (division by W
    as a multiply and a shift, checked here on every possible delta).
    """
    if len(plane) > 2 or any(d != 1 for d in dil) or math.prod(plane) >= 2**31:
        return None
    starts = [torch.arange(n, dtype=torch.int32) * st - pad for n, st, pad in zip(out_shape, s, p)]
    if len(plane) == 1:
        return starts[0].to(device), 0, 0, 0
    width = plane[1]
    if k[1] > width:  # r * W + c would not identify (r, c)
        return None
    base = (starts[0][:, None] * width + starts[1][None, :]).to(device)
    if k[0] == 1:
        return base, 0, 0, 0
    deltas = [r * width + c for r in range(k[0]) for c in range(k[1])]
    for shift in range(8, 31):
        mult = -(-(1 << shift) // width)  # ceil(2^shift / W)
        if deltas[-1] * mult >= 2**31:
            break
        if all((d * mult) >> shift == d // width for d in deltas):
            return base, mult, shift, width - k[1]
    return None


def _window_offsets(idx: Tensor, plane: tuple[int, ...], k, s, p, dil, dtype: torch.dtype) -> Tensor:
    """Offset of the winner inside its window (row-major) from max_pool's flat plane indices."""
    nd = len(plane)
    plan = _offset_plan(plane, tuple(idx.shape[-nd:]), k, s, p, dil, idx.device)
    if plan is None:
        return _offsets_generic(idx, plane, k, s, p, dil).to(dtype)
    base, mult, shift, skip = plan
    delta = idx.to(torch.int32, copy=True)
    delta -= base
    if not mult:
        return delta.to(dtype)
    rows = delta * mult
    rows >>= shift
    # delta - rows * skip, written straight into the small dtype (one pass fewer)
    return torch.sub(delta, rows, alpha=skip, out=torch.empty(idx.shape, dtype=dtype, device=idx.device))


def _pool_with_winners(x: Tensor, pool: nn.Module) -> tuple[Tensor, Tensor, _PoolWinners, int, tuple[int, ...]]:
    """Pool ``x`` as ``pool`` does, by one ``max_pool1d/2d(return_indices=True)`` call.

    Returns the pooled output and indices (exactly what the module returns), the
    winners (:class:`_PoolWinners`: offsets inside the window, uint8 or int16 for
    windows over 255 elements, computed when asked for), the window size and the
    per-sample output shape.  Ties go to the first maximum in the
    window's row-major order, as max_pool picks them.
    """
    nd, k, s, p, dil = _pool_params(pool)
    return _max_pool_with_winners(x, nd, k, s, p, dil, pool.ceil_mode)


def _offset_dtype(window: int) -> torch.dtype:
    return torch.uint8 if window <= 255 else torch.int16 if window <= 2**15 - 1 else torch.int32


def _max_pool_with_winners(
    x: Tensor, nd: int, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], dil: tuple[int, ...], ceil_mode: bool
) -> tuple[Tensor, Tensor, _PoolWinners, int, tuple[int, ...]]:
    """:func:`_pool_with_winners` for explicit max-pool parameters (1, 2 or 3 spatial dims)."""
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    out, idx = fn(x, k, s, p, dil, ceil_mode=ceil_mode, return_indices=True)
    with torch._C.DisableTorchFunction():  # the recorder's bookkeeping (see _quiet)
        window = math.prod(k)
        winners = _PoolWinners(window, indices=idx, geometry=(tuple(x.shape[-nd:]), k, s, p, dil))
        return out, idx, winners, window, tuple(idx.shape[1:])


def _adaptive_pool_winners(x: Tensor, nd: int, output_size: Any) -> tuple[Tensor, int, tuple[int, ...]]:
    """Winner offsets of an adaptive max-pool (1, 2 or 3 spatial dims).

    Output position i along a dim of length L pooled to O covers
    ``[floor(i L / O), ceil((i + 1) L / O))``, as torch computes it; windows differ
    in size, so offsets are row-major in a box of the largest extent per dim.
    """
    fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[nd - 1]
    _, idx = fn(x, output_size, return_indices=True)
    plane = tuple(x.shape[-nd:])
    out_shape = tuple(idx.shape[-nd:])
    starts, steps = [], []
    for L, O in zip(plane, out_shape):
        i = torch.arange(O)
        lo = (i * L) // O
        hi = -((-(i + 1) * L) // O)
        starts.append(lo.to(idx.device))
        steps.append((1, int((hi - lo).max())))
    window = math.prod(e for _, e in steps)
    off = _offsets_in_box(idx, plane, starts, steps).to(_offset_dtype(window))
    return off.flatten(1), window, tuple(idx.shape[1:])


def _module_pool_winners(x: Tensor, pool: nn.Module) -> tuple[_PoolWinners, int, tuple[int, ...]]:
    """The winner of every window of a max-pool module (offsets inside the window, when asked for)."""
    if isinstance(pool, _ADAPTIVE_POOLS):
        nd = 1 if isinstance(pool, nn.AdaptiveMaxPool1d) else 2 if isinstance(pool, nn.AdaptiveMaxPool2d) else 3
        off, window, shape = _adaptive_pool_winners(x, nd, pool.output_size)
        return _PoolWinners(window, offsets=off), window, shape
    _, _, off, window, shape = _pool_with_winners(x, pool)
    return off, window, shape


_FEATURE_OPS: dict[type, str] = {nn.Dropout1d: "dropout1d", nn.Dropout2d: "dropout2d", nn.Dropout3d: "dropout3d"}

_STOCK_POOL_FORWARDS = (nn.MaxPool1d.forward, nn.MaxPool2d.forward)


def _is_stock(module: nn.Module, forwards: tuple[Any, ...]) -> bool:
    """The module runs torch's own forward (not a subclass's or an instance attribute's)."""
    return type(module).forward in forwards and "forward" not in module.__dict__


# ---------------------------------------------------------------------------
# functional gating calls, seen through one TorchFunctionMode shared by all recorders
# ---------------------------------------------------------------------------
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_ADAPTIVE_ARGS = ("input", "output_size", "return_indices")
_DROPOUT_ARGS = ("input", "p", "training", "inplace")
_TORCH_DROPOUT_ARGS = ("input", "p", "train")


@functools.lru_cache(maxsize=1)
def _function_table() -> tuple[dict[Any, tuple[str, str, tuple[str, ...]]], dict[Any, str]]:
    """(gating functions -> (kind, op, argument names), non-gating activation functions -> op)."""
    gating: dict[Any, tuple[str, str, tuple[str, ...]]] = {}

    def add(owner: Any, names: Sequence[str], kind: str, op: str, argnames: tuple[str, ...]) -> None:
        for n in names:
            f = getattr(owner, n, None)
            if f is not None:
                gating[f] = (kind, op, argnames)

    add(F, ("relu", "relu_"), "relu", "relu", ("input",))
    add(torch, ("relu", "relu_"), "relu", "relu", ("input",))
    add(torch.Tensor, ("relu", "relu_"), "relu", "relu", ("input",))
    add(F, ("relu6",), "relu6", "relu6", ("input",))
    for nd in (1, 2, 3):
        op = f"max_pool{nd}d"
        add(F, (op, f"{op}_with_indices"), "maxpool", op, _MAXPOOL_ARGS)
        add(torch, (op, f"{op}_with_indices"), "maxpool", op, _MAXPOOL_ARGS)
        op = f"adaptive_max_pool{nd}d"
        add(F, (op, f"{op}_with_indices"), "maxpool", op, _ADAPTIVE_ARGS)
        add(torch, (op,), "maxpool", op, _ADAPTIVE_ARGS)
        add(F, (f"dropout{nd}d",), "dropout", f"dropout{nd}d", _DROPOUT_ARGS)
    add(F, ("dropout",), "dropout", "dropout", _DROPOUT_ARGS)
    add(torch, ("dropout", "dropout_"), "dropout", "dropout", _TORCH_DROPOUT_ARGS)
    add(torch, ("feature_dropout", "feature_dropout_"), "dropout", "feature_dropout", _TORCH_DROPOUT_ARGS)
    other: dict[Any, str] = {}
    for owner, names in (
        (F, ("gelu", "silu", "leaky_relu", "leaky_relu_", "prelu", "rrelu", "rrelu_", "elu", "elu_",
             "celu", "celu_", "selu", "selu_", "softplus", "tanh", "sigmoid", "hardtanh", "hardtanh_",
             "hardswish", "hardsigmoid", "mish", "logsigmoid", "softsign", "tanhshrink", "softshrink",
             "hardshrink", "threshold", "threshold_", "glu", "alpha_dropout", "feature_alpha_dropout",
             "fractional_max_pool2d", "fractional_max_pool3d")),
        (torch, ("tanh", "tanh_", "sigmoid", "sigmoid_", "selu", "selu_", "celu", "celu_", "rrelu",
                 "rrelu_", "prelu", "alpha_dropout", "feature_alpha_dropout")),
        (torch.Tensor, ("tanh", "tanh_", "sigmoid", "sigmoid_")),
    ):
        for n in names:
            f = getattr(owner, n, None)
            if f is not None and f not in gating:
                other[f] = n.rstrip("_")
    return gating, other


def _bind(argnames: tuple[str, ...], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(zip(argnames, args))
    bound.update(kwargs)
    if "train" in bound:
        bound["training"] = bound.pop("train")
    return bound


class _ThreadState(threading.local):
    """Per thread (torch's mode stack is per thread too)."""

    def __init__(self) -> None:
        #: recorders whose model's forward pass is running in this thread (innermost last)
        self.in_forward: list[GateRecorder] = []
        #: the one TorchFunctionMode on torch's mode stack while any of them is
        self.mode: list[TorchFunctionMode] = []


_THREAD = _ThreadState()
#: recorders inside their ``with`` block
_ENTERED: list[GateRecorder] = []
#: models already warned about (NonGatingWarning is given once per model)
_WARNED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
#: dropout module -> [recorders still to see this call, keep mask drawn for it]
_SHARED_DRAWS: weakref.WeakKeyDictionary[nn.Module, list[Any]] = weakref.WeakKeyDictionary()


class _GatingMode(TorchFunctionMode):
    """Routes functional gating calls to every recorder in a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        gating, other = _function_table()
        self._lookup = {**{f: (None, op, ()) for f, op in other.items()}, **gating}.get

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if kwargs is None:
            kwargs = {}
        try:
            entry = self._lookup(func)
        except TypeError:  # an unhashable callable: never a gating function
            entry = None
        if entry is None:  # every other torch call: straight through
            return func(*args, **kwargs)
        kind, op, argnames = entry
        if kind is None:  # an activation that is not gating: named in the warning
            for rec in _THREAD.in_forward:
                rec._note_non_gating_function(op)
            return func(*args, **kwargs)
        recs = [r for r in _THREAD.in_forward if r._wants_function(kind)]
        if not recs:
            return func(*args, **kwargs)
        bound = _bind(argnames, args, kwargs)
        x = bound.get("input")
        if not isinstance(x, Tensor):
            return func(*args, **kwargs)
        if kind == "dropout":
            return _functional_dropout(func, op, bound, args, kwargs, recs)
        keys = [(r, r._function_key(op, x)) for r in recs]
        keys = [(r, k) for r, k in keys if k is not None and r._wanted(k)]
        if not keys:
            return func(*args, **kwargs)
        _check_functional_input(keys, x)
        after = "conv" if x.dim() > 2 else "fc"
        window = 1
        shape = tuple(x.shape[1:])
        if kind == "relu":
            state: Tensor | _PoolWinners = (x > 0).flatten(1)
            width = state.shape[1]
            result = func(*args, **kwargs)
        elif kind == "relu6":
            state = torch.cat([(x > 0).flatten(1), (x < 6).flatten(1)], 1)
            width = state.shape[1]
            result = func(*args, **kwargs)
        else:
            result = func(*args, **kwargs)  # the user's pooling, exactly as called
            nd = int(op[-2])
            with torch.no_grad():  # the winners only: no graph for this second pooling
                state, window, shape = _functional_pool_winners(x, op, nd, bound)
            width = state.width
            after = "conv"
        for r, key in keys:
            r._record(key, state, kind, after, shape, width, window, op)
        return result


def _functional_pool_winners(x: Tensor, op: str, nd: int, bound: Mapping[str, Any]) -> tuple[_PoolWinners, int, tuple[int, ...]]:
    """Winners, window size and output shape of a functional (adaptive) max-pool call."""
    if op.startswith("adaptive"):
        off, window, shape = _adaptive_pool_winners(x, nd, bound["output_size"])
        return _PoolWinners(window, offsets=off), window, shape
    k = _tuple(bound["kernel_size"], nd)
    stride = bound.get("stride")
    st = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _tuple(stride, nd)
    _, _, offsets, window, shape = _max_pool_with_winners(
        x, nd, k, st, _tuple(bound.get("padding", 0), nd), _tuple(bound.get("dilation", 1), nd),
        bool(bound.get("ceil_mode", False)),
    )
    return offsets, window, shape


def _check_functional_input(keys: list[tuple[GateRecorder, tuple[str, int]]], x: Tensor) -> None:
    for r, key in keys:
        if r.check_nan:
            r._checked_input(f"{key[0]}#{key[1]}", (x,))
            return


def _feature_mask_shape(x: Tensor, op: str) -> tuple[int, ...]:
    """Shape of a channel-wise dropout's keep mask (one bit per sample and channel)."""
    nd = 2 if op == "feature_dropout" else int(op[-2])
    unbatched = (nd == 1 and x.dim() == 2) or (nd == 3 and x.dim() == 4)
    if unbatched or x.dim() < 2:
        raise ValueError(
            f"{op} got an input of shape {tuple(x.shape)} without a batch dimension: gating states are "
            "recorded per sample, so pass batched inputs (N, C, ...)"
        )
    return tuple(x.shape[:2]) + (1,) * (x.dim() - 2)


def _functional_dropout(func: Any, op: str, bound: dict[str, Any], args: Any, kwargs: Any, recs: list[GateRecorder]) -> Any:
    """A functional dropout in training mode: one keep mask, applied and given to every recorder."""
    x: Tensor = bound["input"]
    training = bound.get("training", True)
    try:
        p = float(bound.get("p", 0.5))  # also a numpy or 0-d tensor p
    except (TypeError, ValueError):
        p = float("nan")
    if not training or not 0.0 <= p <= 1.0:
        return func(*args, **kwargs)  # identity, or torch's own error for a bad p
    inplace = bool(bound.get("inplace", False)) or getattr(func, "__name__", "").endswith("_")
    keys = [(r, r._function_key(op, x)) for r in recs]
    keys = [(r, k) for r, k in keys if k is not None]
    if not keys:
        return func(*args, **kwargs)
    _check_functional_input(keys, x)
    sampling = {r.sampling for r, _ in keys}
    if len(sampling) > 1:
        raise RuntimeError(
            "nested GateRecorders with different sampling= saw the same dropout call: one of them would "
            "store a keep mask that was not applied; record with and without sampling one after the other"
        )
    mask_shape = tuple(x.shape) if op == "dropout" else _feature_mask_shape(x, op)
    if sampling.pop():
        keep = torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p).bool()
        out = x * keep / (1.0 - p) if p < 1 else torch.zeros_like(x)
    else:
        keep = torch.ones(mask_shape, dtype=torch.bool, device=x.device)
        out = x
    state = keep.expand(x.shape).flatten(1)
    after = "conv" if x.dim() > 2 else "fc"
    for r, key in keys:
        if r._wanted(key):
            r._record(key, state, "dropout", after, tuple(x.shape[1:]), state.shape[1], 1, op)
    if inplace:
        if out is not x:
            x.copy_(out)
        return x
    return out


def _mode_push(rec: GateRecorder) -> None:
    state = _THREAD
    state.in_forward.append(rec)
    if len(state.in_forward) == 1:
        mode = _GatingMode()
        mode.__enter__()
        state.mode.append(mode)


def _mode_pop(rec: GateRecorder) -> None:
    state = _THREAD
    if rec in state.in_forward:
        state.in_forward.remove(rec)
        if not state.in_forward and state.mode:
            state.mode.pop().__exit__(None, None, None)


def _calls_no_gating_function(module: nn.Module) -> bool:
    """A torch leaf module (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, ...): its forward
    makes no functional gating call, so it needs no place on the module stack."""
    return type(module).__module__.startswith("torch.nn.modules.") and next(module.children(), None) is None


class GateRecorder:
    """Context manager that records gating states of ``model`` during forward passes.

    >>> with GateRecorder(model, kinds=("relu",)) as rec:
    ...     model(x)
    >>> recording = rec.recording()        # name -> bool [n, d_l]

    Parameters
    ----------
    model: any ``nn.Module``; its train/eval mode is left as it is.
    kinds: which gating kinds to record (subset of ``GATE_KINDS``), as modules
        or functional calls (see "What counts as gating" in the module docstring).
    layers: optional names or positions (see :func:`resolve_layers`) to keep;
        validated after the first forward pass.
    sampling: ``False`` removes the model's random sampling while recording
        (training-mode dropout becomes the identity with an all-ones mask, and
        modules with a ``tcomplex_sampling`` attribute get it set to False), as
        Eq. 3 requires for I(X; Sigma).
    store: keep every batch (for :meth:`recording`); ``False`` keeps only the
        last batch in :attr:`last` (for use inside a training loop).
    store_device: where the stored (packed) states live (default CPU; None keeps
        them on the model's device).
    check_nan: raise if a gating layer's input holds NaN.

    Raises
    ------
    RuntimeError: on entry, if a recorder with a different ``sampling`` is
        already recording an overlapping model (nested recorders share one
        dropout mask per call, so they must agree on whether it is drawn).
    ValueError: after the first forward pass, if no gating operation ran.

    Warns
    -----
    NonGatingWarning: once per model, naming the activations it ran that are
        not gating layers (left out of Sigma).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kinds: Sequence[str] = GATE_KINDS,
        layers: Sequence[str | int] | None = None,
        sampling: bool = True,
        store: bool = True,
        store_device: str | torch.device | None = "cpu",
        check_nan: bool = True,
    ):
        _check_kinds(kinds)
        self.model = model
        self.kinds = tuple(kinds)
        self.layers = None if layers is None else list(layers)
        self.sampling = sampling
        self.store = store
        self.store_device = None if store_device is None else torch.device(store_device)
        self.check_nan = check_nan
        self._nan_free: Tensor | None = None  # the last ReLU output found free of NaN (and its version)
        self._nan_free_version = -1
        self._modules = gating_modules(model, self.kinds)
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, Any]] = []  # (module, the forward set on it)
        self._saved_sampling: list[tuple[nn.Module, Any]] = []
        self._calls: dict[str, int] = {}
        self._batch: dict[tuple[str, int], Tensor | _PoolWinners | _StoredState] = {}
        self._batch_info: dict[tuple[str, int], tuple[str, str, tuple[int, ...], int, int, str | None]] = {}
        self._order: list[tuple[str, int]] | None = None  # keys kept, forward order
        self._layout: list[tuple[str, int]] = []  # every gating call of the first forward
        self._called: list[tuple[str, int]] = []
        self._names: dict[tuple[str, int], str] = {}
        self.info: dict[str, GateInfo] = {}
        self._blocks: list[Tensor] = []  # packed batches [b, W] (or one preallocated buffer)
        self._rows = 0  # rows filled in the preallocated buffer
        self._capacity: int | None = None  # rows to preallocate (set by record_gates)
        self._batch_words: Tensor | None = None
        self._offsets: dict[str, int] = {}
        self._last: dict[str, Tensor | _PoolWinners | _StoredState] = {}
        self._active = False
        self._pending_input: dict[str, Tensor] = {}
        # module stack of the running forward pass: (qualified name, is an activation module)
        self._stack: list[tuple[str, bool]] = []
        self._act_depth = 0  # activation modules on the stack (their functional calls are theirs)
        self._batch_n: int | None = None
        self._sites: set[str] = set()  # call-site keys of functional calls
        self._non_gating: dict[str, None] = {}  # non-gating activations of the first pass (ordered)
        self._module_ids: set[int] = set()

    # -- context management -------------------------------------------------
    def __enter__(self) -> GateRecorder:
        if self._active:
            raise RuntimeError("this GateRecorder is already active")
        self._module_ids = {id(m) for m in self.model.modules()}
        for other in _ENTERED:
            if other.sampling != self.sampling and other._module_ids & self._module_ids:
                raise RuntimeError(
                    f"a GateRecorder with sampling={other.sampling} is already recording this model: nested "
                    f"recorders must agree on sampling (this one has sampling={self.sampling}), since one "
                    "dropout keep mask is drawn per call and shared; record with and without sampling one "
                    "after the other (record_gates_with_and_without_sampling does)"
                )
        self._active = True
        _ENTERED.append(self)
        try:
            self._handles.append(self.model.register_forward_pre_hook(_quiet(self._on_root_start)))
            self._handles.append(self.model.register_forward_hook(_quiet(self._on_root_end)))
            for name, module in self._modules.items():
                kind = _kind_of(module)
                if kind == "maxpool" and _is_stock(module, _STOCK_POOL_FORWARDS):
                    # pool once, with indices, and return that output as the module's
                    forward = self._make_pool_forward(name, module)
                    self._patched.append((module, forward))
                    module.forward = forward
                elif kind == "relu" and _is_stock(module, (nn.ReLU.forward,)):
                    # read the states off the output: relu(x) != 0 is x > 0, cheaper to evaluate
                    forward = self._make_relu_forward(name, module)
                    self._patched.append((module, forward))
                    module.forward = forward
                else:
                    self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(name, module)))
                if kind == "dropout":
                    self._handles.append(
                        module.register_forward_hook(self._make_dropout_hook(name, module), always_call=True)
                    )
            # module stack for naming functional call sites: pushed before every other pre-hook
            # (whose own pooling is then inside the module), popped after every forward hook;
            # installed last, so the hooks above see no earlier forward hook of ours
            own_depth = {id(m) for m, _ in self._patched}  # patched forwards keep the depth themselves
            for name, module in self.model.named_modules():
                act = _is_activation(module)
                if (not act and _calls_no_gating_function(module)) or id(module) in own_depth:
                    continue  # e.g. nn.Linear, nn.Conv2d: no call site can be inside them
                self._handles.append(
                    module.register_forward_pre_hook(self._make_push(name, act, module), prepend=True)
                )
                h = module.register_forward_hook(self._make_pop(act), always_call=True)
                self._handles.append(h)
            h = self.model.register_forward_hook(self._on_root_exit, always_call=True)
            self._handles.append(h)
            if not self.sampling:
                for m in self.model.modules():
                    if hasattr(m, SAMPLING_ATTRIBUTE):
                        self._saved_sampling.append((m, getattr(m, SAMPLING_ATTRIBUTE)))
                        setattr(m, SAMPLING_ATTRIBUTE, False)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        _mode_pop(self)
        if self in _ENTERED:
            _ENTERED.remove(self)
        for m in self._modules.values():
            entry = _SHARED_DRAWS.get(m)
            if entry is not None and self in entry[2]:
                entry[2].discard(self)
                if not entry[2]:
                    del _SHARED_DRAWS[m]
        for m, forward in self._patched:
            if m.__dict__.get("forward") is forward:
                del m.forward
        self._patched.clear()
        for m, value in self._saved_sampling:
            setattr(m, SAMPLING_ATTRIBUTE, value)
        self._saved_sampling.clear()
        self._pending_input.clear()
        self._active = False

    # -- hooks ----------------------------------------------------------------
    def _on_root_start(self, module: nn.Module, args: Any) -> None:
        self._calls = {}
        self._called = []
        self._batch = {}
        self._batch_words = None  # rows of a forward pass that raised are not kept
        x = args[0] if args else None
        self._batch_n = int(x.shape[0]) if isinstance(x, Tensor) and x.dim() > 0 else None
        _mode_push(self)

    def _on_root_exit(self, module: nn.Module, args: Any, output: Any) -> None:
        """Runs last, also when the forward pass raises: leave torch's mode stack as it was."""
        _mode_pop(self)
        self._stack = []
        self._act_depth = 0

    def _make_push(self, name: str, act: bool, module: nn.Module):
        first_pass_note = (
            None if _kind_of(module) is not None or not act else f"{type(module).__name__} {name!r}"
        )

        def push(mod: nn.Module, args: Any) -> None:
            self._stack.append((name, act))
            if act:
                self._act_depth += 1
                if first_pass_note is not None and self._order is None:
                    self._non_gating[first_pass_note] = None

        return push

    def _make_pop(self, act: bool):
        def pop(mod: nn.Module, args: Any, output: Any) -> None:
            if self._stack:
                self._stack.pop()
                if act:
                    self._act_depth -= 1

        return pop

    def _site(self, op: str) -> tuple[str, str]:
        path = self._stack[-1][0] if self._stack else ""
        return path, (f"{path}.{op}()" if path else f"{op}()")

    def _wants_function(self, kind: str) -> bool:
        return kind in self.kinds and self._act_depth == 0

    def _function_key(self, op: str, x: Tensor) -> tuple[str, int] | None:
        """The key of a functional call (counted for the layout), None if it is not per sample."""
        path, site = self._site(op)
        if x.dim() == 0 or (self._batch_n is not None and x.shape[0] != self._batch_n):
            if self._order is None:
                self._non_gating[
                    f"{op} in {path or 'the root module'!s} on a tensor of shape {tuple(x.shape)} "
                    "(first dimension is not the batch)"
                ] = None
            return None
        self._sites.add(site)
        return self._next_key(site)

    def _note_non_gating_function(self, op: str) -> None:
        if self._order is None and self._act_depth == 0:
            path, _ = self._site(op)
            self._non_gating[f"F.{op} in {path or 'the root module'}"] = None

    def _on_root_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._order is None:
            self._finalise_layout()
        if self._called != self._layout:
            raise RuntimeError(
                "the gating layers called in this forward pass differ from the first one "
                f"(first: {self._layout}, now: {self._called}); data-dependent control flow "
                "cannot be recorded batch by batch"
            )
        self._last = {}
        self._nan_free = None
        for key in self._order:
            name = self._names[key]
            state = self._batch[key]
            if self.store and not isinstance(state, _StoredState):  # the first batch: stored now
                state = self._store(name, state)
            self._last[name] = state  # compact; expanded only when .last is read
        if self.store:
            self._end_batch()
        self._batch = {}

    def _finalise_layout(self) -> None:
        keys = list(self._called)  # forward order
        self._layout = keys
        self._warn_non_gating()
        if not keys:
            raise ValueError(
                f"no gating module or function of kinds {self.kinds} was called in the forward pass "
                "(gating: ReLU, ReLU6, max-pool, dropout in training mode, as modules or functional "
                "calls; see 'What counts as gating' in the README)"
            )
        counts: dict[str, int] = {}
        for module_name, _ in keys:
            counts[module_name] = counts.get(module_name, 0) + 1
        names = {
            key: key[0] if counts[key[0]] == 1 and key[0] not in self._sites else f"{key[0]}#{key[1]}"
            for key in keys
        }
        all_names = [names[k] for k in keys]
        kept = all_names if self.layers is None else resolve_layers(all_names, self.layers)
        order = [k for k in keys if names[k] in kept]  # the selection, in forward order
        self._order = order
        self._names = {k: names[k] for k in order}
        for k in order:
            kind, after, shape, width, window, function = self._batch_info[k]
            module = k[0][: -len(function) - 3].rstrip(".") if function else k[0]
            self.info[names[k]] = GateInfo(names[k], module, k[1], kind, after, width, shape, window, function)

    def _warn_non_gating(self) -> None:
        if not self._non_gating or self.model in _WARNED:
            return
        _WARNED.add(self.model)
        warnings.warn(
            "these activations of the model are not gating layers and are left out of the recorded "
            f"gating states Sigma: {', '.join(self._non_gating)} (gating layers are ReLU, ReLU6, "
            "max-pool and training-mode dropout; see 'What counts as gating' in the README)",
            NonGatingWarning,
            stacklevel=_caller_stacklevel(),
        )

    def _wanted(self, key: tuple[str, int]) -> bool:
        return self._order is None or key in self._names

    def _next_key(self, name: str) -> tuple[str, int]:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        self._called.append((name, call))
        return (name, call)

    def _checked_input(self, name: str, args: tuple[Any, ...]) -> Tensor:
        if not args or not isinstance(args[0], Tensor):
            raise TypeError(f"gating layer {name!r} was called without a tensor input")
        x = args[0]
        if x is self._nan_free and x._version == self._nan_free_version:
            return x  # the output of the ReLU just checked (e.g. the input of the max-pool after it)
        # amax propagates NaN and is several times cheaper than isnan(x).any()
        if self.check_nan and x.is_floating_point() and x.numel() and torch.isnan(x.amax()):
            raise ValueError(_nan_message(name))
        return x

    def _make_pre_hook(self, name: str, module: nn.Module):
        kind = _kind_of(module)

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if kind == "dropout":
                if not mod.training:
                    return
                x = self._checked_input(name, args)
                if type(mod) is not nn.Dropout:
                    _feature_mask_shape(x, _FEATURE_OPS[type(mod)])  # raises for unbatched input
                # keep the input: inplace dropout overwrites it before the forward hook
                self._pending_input[name] = x.clone() if mod.inplace else x
                # one keep mask per call for all recorders of this module (nested recorders)
                entry = _SHARED_DRAWS.get(mod)
                if entry is None or entry[1] is not None:
                    _SHARED_DRAWS[mod] = [0, None, {self}]
                    entry = _SHARED_DRAWS[mod]
                entry[0] += 1
                entry[2].add(self)
                return
            key = self._next_key(name)
            if not self._wanted(key):
                return
            x = self._checked_input(name, args)
            after = "conv" if x.dim() > 2 else "fc"
            if kind == "relu":
                state: Tensor | _PoolWinners = (x > 0).flatten(1)
                width, window, shape = state.shape[1], 1, tuple(x.shape[1:])
            elif kind == "relu6":
                state = torch.cat([(x > 0).flatten(1), (x < 6).flatten(1)], 1)
                width, window, shape = state.shape[1], 1, tuple(x.shape[1:])
            else:
                state, window, shape = _module_pool_winners(x, mod)
                width = state.width
                after = "conv"
            self._record(key, state, kind, after, shape, width, window)

        return _quiet(hook)

    def _make_relu_forward(self, name: str, module: nn.Module):
        """A forward for a stock ``nn.ReLU``: torch's own, then the states read off its output
        (relu(x) > 0 is x > 0, cheaper to evaluate) before any forward hook can change it.  The
        F.relu inside is the module's (not a functional gating call), so the forward keeps the
        recorder's activation depth itself and the module needs no module-stack hooks: with no
        hooks of ours, torch calls it on its fast path."""
        stock = type(module).forward
        record_output = _quiet(self._record_relu_output)

        def forward(*args: Any, **kwargs: Any) -> Any:
            self._act_depth += 1
            try:
                output = stock(module, *args, **kwargs)
            finally:
                self._act_depth -= 1
            record_output(name, output)
            return output

        return forward

    def _record_relu_output(self, name: str, output: Any) -> None:
        key = self._next_key(name)
        if not self._wanted(key):
            return
        if self._order is not None and self.store and _packs_positive(output):
            # after the first batch: bits of output > 0 straight into this batch's rows of the
            # word buffer, NaN counted in the same pass (no bool states, no separate NaN check)
            b = output.shape[0]
            width = math.prod(output.shape[1:])
            dest = self._layer_words(key, b, width, output.device)
            if pack_positive(output.view(b, width), dest) and self.check_nan:
                raise ValueError(_nan_message(name))
            self._batch[key] = _StoredState(dest, width)
        else:
            self._checked_input(name, (output,))  # relu keeps NaN, so this checks the input
            # relu(x) is x where x > 0 and +-0 elsewhere, so relu(x) != 0 is exactly x > 0 (NaN
            # aside: it would read as 1, hence the comparison when NaN is not ruled out)
            state = (output.bool() if self.check_nan else output > 0).flatten(1)
            after = "conv" if output.dim() > 2 else "fc"
            self._record(key, state, "relu", after, tuple(output.shape[1:]), state.shape[1], 1)
        if self.check_nan:  # a max-pool right after this ReLU gets the same tensor: checked once
            self._nan_free, self._nan_free_version = output, output._version

    def _make_pool_forward(self, name: str, module: nn.Module):
        """A forward for a stock MaxPool1d/2d: pools once and records the winners (keeping the
        activation depth itself, as :meth:`_make_relu_forward` does)."""
        stock = type(module).forward
        one_d = isinstance(module, nn.MaxPool1d)
        # the pooling is the model's operation (seen by torch-function modes); the checks, the winners
        # and their storage are the recorder's own (not seen: _quiet, wrapped once here, not per call)
        checked_input, module_pool_winners, record, fused = (
            _quiet(self._checked_input), _quiet(_module_pool_winners), _quiet(self._record), _quiet(self._fused_pool))

        def forward(*args: Any, **kwargs: Any) -> Any:
            self._act_depth += 1  # the pooling inside is the module's, not a functional gating call
            try:
                return pool(*args, **kwargs)
            finally:
                self._act_depth -= 1

        def pool(*args: Any, **kwargs: Any) -> Any:
            if len(args) + len(kwargs) != 1 or (kwargs and "input" not in kwargs):
                return stock(module, *args, **kwargs)  # raises the usual TypeError
            key = self._next_key(name)
            if not self._wanted(key):
                return stock(module, *args, **kwargs)
            x = checked_input(name, args or (kwargs["input"],))
            result = fused(key, module, x)
            if result is not None:
                return result
            if x.layout != torch.strided or x.is_quantized:  # no indices to reuse: pool as before
                result = stock(module, x)
                winners, window, shape = module_pool_winners(x, module)
            else:
                out, idx, winners, window, shape = _pool_with_winners(x, module)
                if module.return_indices:
                    result = (out, idx)
                elif one_d and not out.is_contiguous():
                    # max_pool1d without indices returns a contiguous tensor on the CPU; keep
                    # the module's output layout exactly (rare: a non-contiguous input)
                    result = stock(module, x)
                else:
                    result = out  # max_pool2d is max_pool2d_with_indices' output
            record(key, winners, "maxpool", "conv", shape, winners.width, window)
            return result

        return forward

    def _fused_pool(self, key: tuple[str, int], module: nn.Module, x: Tensor) -> Tensor | None:
        """From the second batch on, a stock 2x2-like max-pool (window of 1, 2, 4 or 8 elements, no
        padding, dilation 1, ``ceil_mode=False``, no indices asked for) on a contiguous batched CPU
        float tensor without autograd is pooled by :func:`tcomplex.bits.max_pool_packed`: the
        module's exact output (the winning elements) and the winners' bits straight into the word
        buffer, in one pass.  On this machine torch's CPU max-pool costs ~3 ms for LeNet-5's first
        pool at batch 256 (a compare-and-branch per element that mispredicts on ReLU outputs), the
        branch-free kernel ~0.9 ms.  None, doing nothing, in every other case, and where a
        torch-function mode other than the recorders' is active (it is owed the pooling call) or
        the batch holds NaN (max-pool's NaN rule is torch's to apply): the caller pools with torch."""
        if (not FUSED_MAX_POOL or self._order is None or not self.store or module.return_indices or module.ceil_mode
                or type(x) is not Tensor or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or (x.requires_grad and torch.is_grad_enabled()) or _other_function_modes()):
            return None
        nd, k, s, p, dil = _pool_params(module)
        if x.dim() != nd + 2 or any(p) or any(v != 1 for v in dil) or 8 % math.prod(k):
            return None
        if not x.is_contiguous() or (nd == 2 and x.is_contiguous(memory_format=torch.channels_last)):
            return None  # channels-last (or ambiguous) strides: torch keeps them, so torch pools it
        n, c, *plane = x.shape
        if nd == 1:
            plane, k, s = [1, *plane], (1, *k), (1, *s)
        out_plane = [(size - kk) // ss + 1 for size, kk, ss in zip(plane, k, s)]
        if min(out_plane) < 1:
            return None  # torch's error message for a too small input
        width = c * math.prod(out_plane) * math.prod(k)
        dest = self._layer_words(key, n, width, x.device)
        if dest.device.type != "cpu":
            return None
        out = torch.empty((n, c, *out_plane), dtype=x.dtype)
        # with check_nan the input passed _checked_input, so it holds no NaN: nothing to count
        nan = max_pool_packed(x.view(n, c, *plane), k, s, out, dest, count_nan=not self.check_nan)
        if nan is None or nan:
            return None
        self._batch[key] = _StoredState(dest, width)
        return out.view(n, c, out_plane[-1]) if nd == 1 else out

    def _make_dropout_hook(self, name: str, module: nn.Module):
        channel_wise = type(module) is not nn.Dropout

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Tensor | None) -> Tensor | None:
            if not mod.training or name not in self._pending_input:
                return None
            x = self._pending_input.pop(name)
            entry = _SHARED_DRAWS.get(mod)
            if entry is not None and self in entry[2]:
                entry[0] -= 1
                entry[2].discard(self)
                if entry[0] <= 0 or not entry[2]:
                    del _SHARED_DRAWS[mod]
            else:
                entry = None
            if output is None:  # the forward pass raised (this hook is always called)
                return None
            keep = entry[1] if entry is not None else None
            if keep is None:  # the first recorder to see this call draws the mask
                if not self.sampling:
                    keep = torch.ones_like(x, dtype=torch.bool)
                elif channel_wise:
                    shape = _feature_mask_shape(x, _FEATURE_OPS[type(mod)])
                    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - mod.p).bool()
                else:
                    keep = torch.empty_like(x).bernoulli_(1.0 - mod.p).bool()
                if entry is not None:
                    entry[1] = keep
            if not self.sampling:
                out = x
            else:
                out = x * keep / (1.0 - mod.p) if mod.p < 1 else torch.zeros_like(x)
            key = self._next_key(name)
            if self._wanted(key):
                after = "conv" if x.dim() > 2 else "fc"
                state = keep.expand(x.shape).flatten(1)
                self._record(key, state, "dropout", after, tuple(x.shape[1:]), state.shape[1], 1)
            if mod.inplace:
                output.copy_(out)
                return output
            return out

        return hook

    def _record(self, key, state, kind, after, shape, width, window, function=None) -> None:
        if self._order is None:  # the first batch: the layout is known when the forward pass ends
            self._batch[key] = state
            self._batch_info[key] = (kind, after, shape, width, window, function)
            return
        name = self._names[key]
        self._check_width(name, width)
        # packed as soon as it is recorded: the layer's bool states (or pool indices) are freed at
        # once, so the forward pass runs with the working set of a plain one
        self._batch[key] = self._store(name, state) if self.store else state

    def _layer_words(self, key: tuple[str, int], b: int, width: int, device: torch.device) -> Tensor:
        """After the first batch: the word-buffer columns of this batch's rows that layer ``key``
        (``width`` gates, checked against the first batch's) is packed into directly."""
        layer = self._names[key]
        self._check_width(layer, width)
        return self._dest(layer, b, device)

    def _check_width(self, name: str, width: int) -> None:
        if width != self.info[name].width:
            raise RuntimeError(
                f"gating layer {name!r} has {width} gates in this forward pass but {self.info[name].width} "
                "in the first: a recording holds one layout, so record inputs of one shape (one recorder, "
                "or one record_gates call, per input shape)"
            )

    # -- storage: every layer packed to bits as it is stored ----------------------
    def _store(self, name: str, state: Tensor | _PoolWinners) -> _StoredState:
        """Pack one layer's states of this batch into the batch's rows of the word storage."""
        pool = isinstance(state, _PoolWinners)
        dest = self._dest(name, state.rows if pool else state.shape[0], state.device)
        # packed on the states' device (a GPU sends 1/8 of the bytes); max-pool winners go
        # straight to bits, and into the buffer where both are on the CPU
        words = state.words(out=dest) if pool else pack_bits(state.contiguous())
        if words is not dest:
            dest.copy_(words)
        return _StoredState(dest, self.info[name].width)

    def _dest(self, name: str, b: int, device: torch.device) -> Tensor:
        """Layer ``name``'s columns of this batch's rows in the word storage ``[b, words]``
        (allocated with the first layer of the batch, on ``store_device`` or ``device``)."""
        if not self._offsets:
            self._offsets = _word_offsets((k, i.width) for k, i in self.info.items())
        if self._batch_words is None:
            total = sum(-(-i.width // 64) for i in self.info.values())
            device = device if self.store_device is None else self.store_device
            if self._capacity is not None and self._rows + b <= self._capacity:
                if not self._blocks:
                    self._blocks = [torch.zeros(self._capacity, total, dtype=torch.int64, device=device)]
                self._batch_words = self._blocks[0][self._rows : self._rows + b]
            else:
                if self._capacity is not None:  # more rows than announced: blocks per batch from here
                    self._blocks = [self._blocks[0][: self._rows]] if self._blocks else []
                    self._capacity = None
                self._batch_words = torch.zeros(b, total, dtype=torch.int64, device=device)
        elif self._batch_words.shape[0] != b:
            raise RuntimeError(
                f"gating layer {name!r} got {b} samples in a forward pass whose other gating layers got "
                f"{self._batch_words.shape[0]}: every gating layer must keep the batch as its first dimension"
            )
        first = self._offsets[name]
        return self._batch_words[:, first : first + -(-self.info[name].width // 64)]

    def _end_batch(self) -> None:
        if self._batch_words is None:
            return
        if self._capacity is not None:
            self._rows += self._batch_words.shape[0]
        else:
            self._blocks.append(self._batch_words)
        self._batch_words = None

    # -- results ----------------------------------------------------------------
    @property
    def last(self) -> dict[str, Tensor]:
        """Gating states of the last forward pass: name -> bool ``[batch, d_l]`` (unpacked from the
        stored words, so on ``store_device`` when the recorder stores; with ``store=False`` on the
        device they were computed on)."""
        return {k: _as_bool(s) for k, s in self._last.items()}

    @property
    def names(self) -> list[str]:
        """Names of the recorded gating layers, in forward order (after a forward)."""
        return list(self.info)

    def recording(self) -> Recording:
        """All stored batches as a :class:`Recording` (packed bits, ~n * d / 8 bytes)."""
        if not self.store:
            raise RuntimeError("this recorder was created with store=False; use .last")
        if not self._blocks:
            raise RuntimeError("nothing recorded yet: run a forward pass inside the context")
        if self._capacity is not None:
            words = self._blocks[0][: self._rows]
        else:
            if len(self._blocks) > 1:
                self._blocks = [torch.cat(self._blocks)]  # keep one copy, not the parts
            words = self._blocks[0]
        return Recording.from_packed(words, self._offsets, self.info)

    def clear(self) -> None:
        """Forget stored batches (layer layout is kept)."""
        self._blocks = []
        self._rows = 0
        self._capacity = None
        self._batch_words = None
        self._last = {}


def _batches(inputs: Tensor | Iterable[Any], batch_size: int) -> Iterator[Tensor]:
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise ValueError(f"inputs must hold at least one sample, got shape {tuple(inputs.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        yield from inputs.split(batch_size)
        return
    for item in inputs:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, Mapping):
            raise TypeError("batches that are mappings are not supported: yield tensors or (x, y) tuples")
        if not isinstance(x, Tensor):
            raise TypeError(f"a batch must be a tensor or an (x, y, ...) tuple, got {type(x).__name__}")
        yield x


def record_gates(
    model: nn.Module,
    inputs: Tensor | Iterable[Any],
    *,
    kinds: Sequence[str] = GATE_KINDS,
    layers: Sequence[str | int] | None = None,
    batch_size: int = 256,
    sampling: bool = True,
    device: str | torch.device | None = None,
) -> Recording:
    """Record the gating states sigma_l of every gating layer for all ``inputs``.

    Parameters
    ----------
    model: the network; its train/eval mode is respected and left unchanged.
    inputs: a tensor ``[n, ...]`` (split into ``batch_size`` batches) or an
        iterable of batches (tensors or ``(x, y, ...)`` tuples, e.g. a DataLoader).
    kinds: gating kinds to record (Section 3: ReLU, ReLU6, max-pool, dropout),
        as modules or functional calls (see "What counts as gating" above).
    layers: names or positions of the layers to keep (:func:`resolve_layers`).
    sampling: False records with the model's random sampling removed (Eq. 3).
    device: where to run the forward passes (default: the model's device).

    Returns
    -------
    Recording: ordered mapping name -> bool tensor ``[n, d_l]`` (on the CPU), stored as
    bits: each layer is packed as its batch is recorded, so the bool states of all
    layers never exist at once; ``rec.packed()`` hands the bits to the estimators.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    seen = 0
    with GateRecorder(model, kinds=kinds, layers=layers, sampling=sampling) as rec, torch.no_grad():
        if isinstance(inputs, Tensor) and inputs.dim() > 0:
            rec._capacity = inputs.shape[0]  # one word buffer, filled batch by batch
        for x in _batches(inputs, batch_size):
            model(x.to(device))
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("inputs yielded no sample")
    return rec.recording()


def record_gates_with_and_without_sampling(
    model: nn.Module, inputs: Tensor | Iterable[Any], **kwargs: Any
) -> tuple[Recording, Recording]:
    """Record Sigma twice: as the model runs (for H, Eq. 2) and with sampling removed (Eq. 3).

    The two recordings have the same layers and widths, so ``kde_entropy`` of the
    first and ``kde_mutual_information`` of the second are directly comparable
    (H(Sigma) >= I(X; Sigma)).  ``inputs`` is iterated twice.
    """
    if "sampling" in kwargs:
        raise TypeError("sampling is set by this function")
    return (
        record_gates(model, inputs, sampling=True, **kwargs),
        record_gates(model, inputs, sampling=False, **kwargs),
    )
