"""Reading gating states out of a PyTorch model (Section 3 and Appendix A).

A *gating layer* is a call of an ``nn.ReLU``, ``nn.MaxPool1d``/``nn.MaxPool2d`` or
(training-mode) ``nn.Dropout`` module.  For every input it produces a binary
vector sigma_l of "which elements pass":

* ReLU: ``sigma = 1`` where the layer's *input* is > 0 (read before the module
  runs, so ``inplace=True`` is handled).
* Max-pool: the one-hot of the winning element of every pooling window
  (Appendix A writes it as a d'×d matrix).  We store the winner's offset inside
  its window (one small integer per output element) and expose it as the one-hot
  restricted to the entries that can ever be 1, i.e. ``d' * window`` gates: every
  pairwise Hamming distance, entropy and total correlation equals that of the
  d'×d matrix, since the dropped entries are always 0.
* Dropout: the keep mask, only while the module is in training mode (in eval
  mode dropout is the identity and is not a gating layer).  While recording,
  tcomplex draws the Bernoulli(1 - p) keep mask itself and applies it, so the mask
  is known exactly; the layer's output distribution is unchanged.

A module called several times in one forward pass (torchvision's ``BasicBlock``
calls ``self.relu`` twice) gives one gating layer per call, named ``name#0``,
``name#1``, ...; a module called once keeps its plain qualified name.

Hooks are installed only inside :class:`GateRecorder` (a context manager) and
are always removed on exit, also when the forward pass raises.  Inside it, a
module running torch's own ``MaxPool1d/2d.forward`` gets an instance-level
forward that pools once with ``return_indices=True``, returns exactly what the
module returns (same values, indices and memory layout) and turns the indices
into window offsets, so max-pool costs no second pooling; the patch is undone on
exit like the hooks.  A stock ``nn.ReLU`` is read from its output in a forward
hook (``relu(x) != 0`` is ``x > 0`` and cheaper to evaluate); ReLU or max-pool
subclasses with their own forward, and ReLUs with earlier forward hooks that
might change the output, are read from their input in a pre-hook as before.

Storage: when a forward pass ends, each recorded layer's states of the batch are
packed to bits (:func:`tcomplex.bits.pack_bits`, on the device they were computed
on) into the batch's rows of one int64 word matrix, every layer starting on a word
boundary; the bool states of all layers never exist at once.  :class:`Recording`
unpacks bool views on request and hands the bits to the estimators
(:meth:`Recording.packed`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcomplex.bits import PackedStates, pack_bits, pack_onehot

__all__ = [
    "GATE_KINDS",
    "GateInfo",
    "GateRecorder",
    "Recording",
    "gating_modules",
    "record_gates",
    "record_gates_with_and_without_sampling",
    "resolve_layers",
]

GATE_KINDS: tuple[str, ...] = ("relu", "maxpool", "dropout")

#: alpha of Section 4.4 / Appendix H: 0.01 for gates after fully connected layers,
#: 0.04 for gates after convolutional layers.
ALPHA_FC = 0.01
ALPHA_CONV = 0.04

#: Attribute a model's submodule may carry to switch its own random sampling
#: (e.g. a VAE's reparameterisation) off while I(X; Sigma) is measured (Eq. 3).
SAMPLING_ATTRIBUTE = "tcomplex_sampling"


def _kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        return "maxpool"
    if type(module) is nn.Dropout:
        return "dropout"
    return None


@dataclass(frozen=True)
class GateInfo:
    """Static description of one gating layer (one call of one module).

    Attributes
    ----------
    name: unique, stable name (``module`` or ``module#call``).
    module: qualified name of the module in the model.
    call: index of this call among the module's calls in one forward pass.
    kind: ``"relu"``, ``"maxpool"`` or ``"dropout"``.
    after: ``"conv"`` when the gated tensor has spatial dimensions (the gate
        follows a convolution), ``"fc"`` otherwise.
    width: number of gates per sample, d_l.
    shape: per-sample shape of the gated tensor (for max-pool: of its output).
    window: max-pool window size (1 for the other kinds).
    """

    name: str
    module: str
    call: int
    kind: str
    after: str
    width: int
    shape: tuple[int, ...]
    window: int = 1

    @property
    def default_alpha(self) -> float:
        """alpha of Section 4.4: 0.04 after a convolution, 0.01 after an FC layer."""
        return ALPHA_CONV if self.after == "conv" else ALPHA_FC


@dataclass
class _PoolWinners:
    """Compact max-pool states: the winner's offset inside each window."""

    offsets: Tensor  # uint8/int16 [n, d']
    window: int

    def onehot(self) -> Tensor:
        n, d_out = self.offsets.shape
        codes = torch.arange(self.window, dtype=self.offsets.dtype, device=self.offsets.device)
        return (self.offsets[:, :, None] == codes).reshape(n, d_out * self.window)


def _as_bool(state: Tensor | _PoolWinners) -> Tensor:
    return state.onehot() if isinstance(state, _PoolWinners) else state


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
    """(spatial dims, kernel, stride, padding, dilation) of a MaxPool1d/2d module."""
    nd = 2 if isinstance(pool, nn.MaxPool2d) else 1
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
    left = torch.arange(out_shape[0], device=idx.device) * s[0] - p[0]
    return (idx - left) // dil[0]


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
    if any(d != 1 for d in dil) or math.prod(plane) >= 2**31:
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


def _pool_with_winners(x: Tensor, pool: nn.Module) -> tuple[Tensor, Tensor, Tensor, int, tuple[int, ...]]:
    """Pool ``x`` as ``pool`` does, by one ``max_pool1d/2d(return_indices=True)`` call.

    Returns the pooled output and indices (exactly what the module returns), the
    winner's offset inside its window for every output element, flattened to
    ``[rows, d']`` (uint8, or int16 for windows over 255 elements), the window
    size and the per-sample output shape.  Ties go to the first maximum in the
    window's row-major order, as max_pool picks them.
    """
    nd, k, s, p, dil = _pool_params(pool)
    fn = F.max_pool2d if nd == 2 else F.max_pool1d
    out, idx = fn(x, k, s, p, dil, ceil_mode=pool.ceil_mode, return_indices=True)
    window = math.prod(k)
    dtype = torch.uint8 if window <= 255 else torch.int16
    off = _window_offsets(idx, tuple(x.shape[-nd:]), k, s, p, dil, dtype)
    return out, idx, off.flatten(1), window, tuple(idx.shape[1:])


def _pool_winner_offsets(x: Tensor, pool: nn.Module) -> tuple[Tensor, int, tuple[int, ...]]:
    """Offset of the max inside its window for every pooled output element."""
    _, _, off, window, shape = _pool_with_winners(x, pool)
    return off, window, shape


_STOCK_POOL_FORWARDS = (nn.MaxPool1d.forward, nn.MaxPool2d.forward)


def _is_stock(module: nn.Module, forwards: tuple[Any, ...]) -> bool:
    """The module runs torch's own forward (not a subclass's or an instance attribute's)."""
    return type(module).forward in forwards and "forward" not in module.__dict__


def _forward_hooks_before(module: nn.Module) -> bool:
    """Forward hooks that would run before ours (and might change the output)."""
    from torch.nn.modules import module as module_mod

    return bool(module._forward_hooks) or bool(getattr(module_mod, "_global_forward_hooks", None))


class GateRecorder:
    """Context manager that records gating states of ``model`` during forward passes.

    >>> with GateRecorder(model, kinds=("relu",)) as rec:
    ...     model(x)
    >>> recording = rec.recording()        # name -> bool [n, d_l]

    Parameters
    ----------
    model: any ``nn.Module``; its train/eval mode is left as it is.
    kinds: which gating kinds to record (subset of ``GATE_KINDS``).
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
        self._modules = gating_modules(model, self.kinds)
        if not self._modules:
            raise ValueError(
                f"the model has no gating module of kinds {self.kinds} (nn.ReLU, nn.MaxPool1d/2d, "
                "nn.Dropout); functional calls such as F.relu cannot be hooked: use module layers"
            )
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, Any]] = []  # (module, the forward set on it)
        self._saved_sampling: list[tuple[nn.Module, Any]] = []
        self._calls: dict[str, int] = {}
        self._batch: dict[tuple[str, int], Tensor | _PoolWinners] = {}
        self._batch_info: dict[tuple[str, int], tuple[str, str, tuple[int, ...], int, int]] = {}
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
        self._last: dict[str, Tensor | _PoolWinners] = {}
        self._active = False
        self._pending_input: dict[str, Tensor] = {}

    # -- context management -------------------------------------------------
    def __enter__(self) -> GateRecorder:
        if self._active:
            raise RuntimeError("this GateRecorder is already active")
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_root_start))
            self._handles.append(self.model.register_forward_hook(self._on_root_end))
            for name, module in self._modules.items():
                kind = _kind_of(module)
                if kind == "maxpool" and _is_stock(module, _STOCK_POOL_FORWARDS):
                    # pool once, with indices, and return that output as the module's
                    forward = self._make_pool_forward(name, module)
                    self._patched.append((module, forward))
                    module.forward = forward
                elif kind == "relu" and _is_stock(module, (nn.ReLU.forward,)) and not _forward_hooks_before(module):
                    # read the states off the output: relu(x) != 0 is x > 0, cheaper to evaluate
                    self._handles.append(module.register_forward_hook(self._make_relu_hook(name)))
                else:
                    self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(name, module)))
                if kind == "dropout":
                    self._handles.append(module.register_forward_hook(self._make_dropout_hook(name, module)))
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
        for key in self._order:
            name = self._names[key]
            state = self._batch[key]
            self._last[name] = state  # compact; expanded only when .last is read
            if self.store:
                self._store(name, state)
        if self.store:
            self._end_batch()
        self._batch = {}

    def _finalise_layout(self) -> None:
        keys = list(self._called)  # forward order
        self._layout = keys
        if not keys:
            raise ValueError(
                f"no gating layer of kinds {self.kinds} was called in the forward pass "
                "(dropout gates only in training mode; functional F.relu calls cannot be hooked)"
            )
        counts: dict[str, int] = {}
        for module_name, _ in keys:
            counts[module_name] = counts.get(module_name, 0) + 1
        names = {
            key: key[0] if counts[key[0]] == 1 else f"{key[0]}#{key[1]}" for key in keys
        }
        all_names = [names[k] for k in keys]
        kept = all_names if self.layers is None else resolve_layers(all_names, self.layers)
        order = [k for k in keys if names[k] in kept]  # the selection, in forward order
        self._order = order
        self._names = {k: names[k] for k in order}
        for k in order:
            kind, after, shape, width, window = self._batch_info[k]
            self.info[names[k]] = GateInfo(names[k], k[0], k[1], kind, after, width, shape, window)

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
        # amax propagates NaN and is several times cheaper than isnan(x).any()
        if self.check_nan and x.is_floating_point() and x.numel() and torch.isnan(x.amax()):
            raise ValueError(
                f"NaN in the input of gating layer {name!r}: the model produced NaN activations "
                "(diverged training or NaN inputs); gating states of NaN are undefined"
            )
        return x

    def _make_pre_hook(self, name: str, module: nn.Module):
        kind = _kind_of(module)

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if kind == "dropout":
                if not mod.training:
                    return
                x = self._checked_input(name, args)
                # keep the input: inplace dropout overwrites it before the forward hook
                self._pending_input[name] = x.clone() if mod.inplace else x
                return
            key = self._next_key(name)
            if not self._wanted(key):
                return
            x = self._checked_input(name, args)
            after = "conv" if x.dim() > 2 else "fc"
            if kind == "relu":
                state: Tensor | _PoolWinners = (x > 0).flatten(1)
                width, window, shape = state.shape[1], 1, tuple(x.shape[1:])
            else:
                offsets, window, shape = _pool_winner_offsets(x, mod)
                state = _PoolWinners(offsets, window)
                width = offsets.shape[1] * window
                after = "conv"
            self._record(key, state, kind, after, shape, width, window)

        return hook

    def _make_relu_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            key = self._next_key(name)
            if not self._wanted(key):
                return
            y = self._checked_input(name, (output,))  # relu keeps NaN, so this checks the input
            # relu(x) is x where x > 0 and +-0 elsewhere, so relu(x) != 0 is exactly x > 0 (NaN
            # aside: it would read as 1, hence the comparison when NaN is not ruled out)
            state = (y.bool() if self.check_nan else y > 0).flatten(1)
            after = "conv" if y.dim() > 2 else "fc"
            self._record(key, state, "relu", after, tuple(y.shape[1:]), state.shape[1], 1)

        return hook

    def _make_pool_forward(self, name: str, module: nn.Module):
        """A forward for a stock MaxPool1d/2d: pools once and records the winners."""
        stock = type(module).forward
        one_d = isinstance(module, nn.MaxPool1d)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if len(args) + len(kwargs) != 1 or (kwargs and "input" not in kwargs):
                return stock(module, *args, **kwargs)  # raises the usual TypeError
            key = self._next_key(name)
            if not self._wanted(key):
                return stock(module, *args, **kwargs)
            x = self._checked_input(name, args or (kwargs["input"],))
            if x.layout != torch.strided or x.is_quantized:  # no indices to reuse: pool as before
                result = stock(module, x)
                offsets, window, shape = _pool_winner_offsets(x, module)
            else:
                out, idx, offsets, window, shape = _pool_with_winners(x, module)
                if module.return_indices:
                    result = (out, idx)
                elif one_d and not out.is_contiguous():
                    # max_pool1d without indices returns a contiguous tensor on the CPU; keep
                    # the module's output layout exactly (rare: a non-contiguous input)
                    result = stock(module, x)
                else:
                    result = out  # max_pool2d is max_pool2d_with_indices' output
            width = offsets.shape[1] * window
            self._record(key, _PoolWinners(offsets, window), "maxpool", "conv", shape, width, window)
            return result

        return forward

    def _make_dropout_hook(self, name: str, module: nn.Module):
        def hook(mod: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if not mod.training:
                return None
            x = self._pending_input.pop(name)
            key = self._next_key(name)
            if self.sampling:
                keep = torch.empty_like(x).bernoulli_(1.0 - mod.p).bool()
                out = x * keep / (1.0 - mod.p) if mod.p < 1 else torch.zeros_like(x)
            else:
                keep = torch.ones_like(x, dtype=torch.bool)
                out = x
            if self._wanted(key):
                after = "conv" if x.dim() > 2 else "fc"
                state = keep.flatten(1)
                self._record(key, state, "dropout", after, tuple(x.shape[1:]), state.shape[1], 1)
            if mod.inplace:
                output.copy_(out)
                return output
            return out

        return hook

    def _record(self, key, state, kind, after, shape, width, window) -> None:
        self._batch[key] = state
        if self._order is None:
            self._batch_info[key] = (kind, after, shape, width, window)

    # -- storage: every layer packed to bits as it is stored ----------------------
    def _store(self, name: str, state: Tensor | _PoolWinners) -> None:
        """Pack one layer's states of this batch into the batch's rows of the word storage."""
        if not self._offsets:
            self._offsets = _word_offsets((k, i.width) for k, i in self.info.items())
        # on the states' device (a GPU sends 1/8 of the bytes); max-pool winners straight to bits
        if isinstance(state, _PoolWinners):
            words = pack_onehot(state.offsets, state.window)
        else:
            words = pack_bits(state.contiguous())
        if self._batch_words is None:
            b = words.shape[0]
            total = sum(-(-i.width // 64) for i in self.info.values())
            device = words.device if self.store_device is None else self.store_device
            if self._capacity is not None and self._rows + b <= self._capacity:
                if not self._blocks:
                    self._blocks = [torch.zeros(self._capacity, total, dtype=torch.int64, device=device)]
                self._batch_words = self._blocks[0][self._rows : self._rows + b]
            else:
                if self._capacity is not None:  # more rows than announced: blocks per batch from here
                    self._blocks = [self._blocks[0][: self._rows]] if self._blocks else []
                    self._capacity = None
                self._batch_words = torch.zeros(b, total, dtype=torch.int64, device=device)
        first = self._offsets[name]
        self._batch_words[:, first : first + words.shape[1]] = words

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
        """Gating states of the last forward pass: name -> bool ``[batch, d_l]``."""
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
    kinds: gating kinds to record (Section 3: ReLU, max-pool, dropout).
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
