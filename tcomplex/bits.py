"""Gating states as bits: packed storage and exact Hamming distances by XOR + popcount.

Gating states (Section 3) are binary, so one sample's states fit in ``ceil(d / 64)``
64-bit words (8 gates per byte instead of one byte per gate as bool, 32 times less
than float32).  For 0/1 states the squared distance of the kernel of Eq. 2 is the
Hamming distance, ``||a - b||^2 = popcount(a XOR b)``, an exact integer.

:class:`PackedStates` is an ``[n, d]`` matrix of gating states stored as words.  Its
layers ("spans") each start on a word boundary and their padding bits are 0, so the
XOR of two rows is 0 there and the distance of a concatenation of layers is the sum
of the layers' distances, from the same storage.  Bit ``g`` of a layer is bit
``g % 64`` of its word ``g // 64`` (little-endian bytes, numpy's ``bitorder="little"``).

:func:`hamming_block` computes a block of pairwise distances with a numba kernel:
parallel over rows (``prange``, as many threads as ``torch.get_num_threads()``),
four rows of the left block share every word loaded from the right block, the word
loop is a popcount reduction the compiler vectorises, and on a self-distance block
only the upper triangle is computed and mirrored.  Results are integers, so they do
not depend on the number of threads.  numba is imported on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PackedStates", "max_pool_packed", "pack_bits", "pack_onehot", "pack_pool_winners", "pack_positive", "unpack_bits",
    "hamming_block",
    "hamming_distances", "kernel_block_sums",
]

WORD_BITS = 64


def _words(d: int) -> int:
    return -(-d // WORD_BITS)


def pack_bits(states: Tensor, *, route: str = "auto") -> Tensor:
    """Pack bool ``[n, d]`` states into int64 words ``[n, ceil(d / 64)]`` (padding bits 0).

    On the CPU by ``numpy.packbits``; on other devices by torch ops on that device
    (so states recorded on a GPU travel to the CPU already packed).  ``route="torch"``
    forces the torch ops (same words).
    """
    if states.dim() != 2 or states.dtype != torch.bool:
        raise ValueError(f"pack_bits needs bool [n, d] states, got {states.dtype} {tuple(states.shape)}")
    n, d = states.shape
    w = _words(d)
    if states.device.type == "cpu" and route != "torch":
        packed = np.packbits(states.numpy(), axis=1, bitorder="little")  # [n, ceil(d/8)] uint8
        if packed.shape[1] == w * 8:
            return torch.from_numpy(packed.view(np.int64))
        out = np.empty((n, w * 8), dtype=np.uint8)
        out[:, : packed.shape[1]] = packed
        out[:, packed.shape[1] :] = 0
        return torch.from_numpy(out.view(np.int64))
    x = states.view(torch.uint8)
    if w * WORD_BITS != d:
        x = torch.nn.functional.pad(x, (0, w * WORD_BITS - d))
    shifts = torch.arange(8, dtype=torch.uint8, device=states.device)
    byte = (x.reshape(n, w * 8, 8) << shifts).sum(-1, dtype=torch.uint8)  # disjoint bits: sum == or
    return byte.view(torch.int64)


def pack_onehot(offsets: Tensor, window: int, *, route: str = "auto") -> Tensor:
    """Words of the one-hot states ``[n, d' * window]`` of winners at ``offsets`` ``[n, d']``.

    Max-pool states (Appendix A): output j's window occupies gates ``j * window ..
    j * window + window - 1`` and only its winner's gate is 1.  On the CPU the bits
    are set directly (numba), without the bool one-hot; elsewhere (or with
    ``route="torch"``) the one-hot is built and packed by :func:`pack_bits`.
    """
    n, d_out = offsets.shape
    if offsets.device.type != "cpu" or route == "torch":
        codes = torch.arange(window, dtype=offsets.dtype, device=offsets.device)
        return pack_bits((offsets[:, :, None] == codes).reshape(n, d_out * window), route=route)
    out = np.zeros((n, _words(d_out * window)), dtype=np.uint64)
    _kernels()["onehot"](offsets.numpy(), np.int64(window), out)
    return torch.from_numpy(out.view(np.int64))


def pack_pool_winners(indices: Tensor, plane: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], *, out: Tensor | None = None) -> Tensor | None:
    """Words of the one-hot max-pool states straight from ``max_pool``'s indices, or None.

    ``indices`` ``[n, C, *out]`` are the flat plane indices ``max_pool1d/2d(return_indices=True)``
    returns; output j's window takes gates ``j * window .. j * window + window - 1`` (row-major in
    the window) and only its winner's gate is 1 (Appendix A), as :func:`pack_onehot` packs them
    from window offsets.  One compiled pass on the CPU; None where it does not apply (not the
    CPU, 3-D pools, a window wider than the padded plane's row, more than 2^31 indices), and the
    caller takes the general route.  Dilation must be 1.  ``out`` (int64 ``[n, words]`` on the
    CPU, rows may be a strided view such as a recorder's word buffer) receives the words in
    place of a new tensor; every word of it is written.
    """
    nd = len(plane)
    if indices.device.type != "cpu" or nd not in (1, 2) or indices.dim() != nd + 2:
        return None
    if nd == 1:
        plane, kernel, stride, padding = (1, *plane), (1, *kernel), (0, *stride), (0, *padding)
    out_h, out_w = (1, indices.shape[-1]) if nd == 1 else tuple(indices.shape[-2:])
    if kernel[1] > plane[1] or indices.numel() >= 2**31:
        return None
    n, channels = indices.shape[0], indices.shape[1]
    window = int(kernel[0]) * int(kernel[1])
    flat = indices.reshape(n, -1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    shape = (n, _words(flat.shape[1] * window))
    target = np.zeros(shape, dtype=np.uint64) if out is None else _out_words(out, shape)
    if 8 % window == 0:  # whole windows per byte (2x2, 1x2, 1-D pools of 2, 4 or 8): a byte at a time
        base = _window_starts(channels, out_h, out_w, int(plane[1]), int(stride[0]), int(stride[1]),
                              int(padding[0]), int(padding[1]))
        _kernels()["pool_winners_bytes"](flat.numpy(), base, int(plane[1]), int(kernel[0]), int(kernel[1]), window,
                                         target.view(np.uint8))
    else:
        _kernels()["pool_winners"](flat.numpy(), channels, out_h, out_w, int(plane[1]), int(kernel[0]), int(kernel[1]),
                                   int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]), window, target)
    return out if out is not None else torch.from_numpy(target.view(np.int64))


@functools.lru_cache(maxsize=64)
def _window_starts(channels: int, out_h: int, out_w: int, plane_w: int, s_h: int, s_w: int, p_h: int,
                   p_w: int) -> np.ndarray:
    """Flat plane index of the top-left element of every output's window, in max_pool's
    output order (channel, row, column): ``(oh s_h - p_h) W + ow s_w - p_w``."""
    oh = np.arange(out_h, dtype=np.int64)[:, None]
    ow = np.arange(out_w, dtype=np.int64)[None, :]
    starts = np.tile(((oh * s_h - p_h) * plane_w + ow * s_w - p_w).reshape(-1), channels)
    starts.setflags(write=False)
    return starts


def pack_positive(values: Tensor, out: Tensor) -> int:
    """Write the bits of ``values > 0`` (float ``[n, d]``, CPU) into ``out``; return the NaN count.

    A ReLU's gating state read off its output (Section 3: sigma = 1 where the input is > 0,
    and relu(x) > 0 exactly where x > 0) in one compiled pass: the words land in ``out``
    (int64 ``[n, ceil(d / 64)]`` on the CPU, unit column stride, e.g. a view of a recorder's
    word buffer; padding bits 0), the same words :func:`pack_bits` gives for ``values > 0``,
    without the bool matrix.  NaN reads as 0 and is counted, so a caller can refuse it.
    ``values`` must be C-contiguous float32 or float64.
    """
    if values.dim() != 2 or values.dtype not in (torch.float32, torch.float64) or values.device.type != "cpu":
        raise ValueError(f"pack_positive needs float32/float64 [n, d] values on the CPU, got {values.dtype} "
                         f"{tuple(values.shape)} on {values.device}")
    n, d = values.shape
    target = _out_words(out, (n, _words(d)))
    if not values.is_contiguous():
        values = values.contiguous()
    return int(_kernels()["positive_bytes"](values.detach().numpy(), target.view(np.uint8)))


def max_pool_packed(values: Tensor, kernel: Sequence[int], stride: Sequence[int], out: Tensor, words: Tensor, *,
                    count_nan: bool = True) -> int | None:
    """Max-pool ``values`` into ``out`` and write the one-hot winner bits into ``words``, in one pass.

    The max-pool states of Appendix A (output j's window takes gates ``j * window ..
    j * window + window - 1``, row-major in the window, and only the winner's is 1): the
    words :func:`pack_pool_winners` makes from ``max_pool(return_indices=True)``'s indices,
    and in ``out`` the values ``max_pool`` returns (the winning element, ties to the first
    in row-major order), without the indices.  ``values`` are C-contiguous float32/float64
    ``[n, C, H, W]`` (a 1-D pool passes H = 1 and kernel/stride ``(1, k)``) on the CPU; no
    padding, dilation 1, windows fully inside the plane (``ceil_mode=False``), and the
    window (``kh * kw``) must divide 8, so that whole windows fill a byte.  ``out`` is
    C-contiguous ``[n, C, OH, OW]`` of the same dtype, ``words`` int64 ``[n, words]`` with
    unit column stride (rows may be a view of a recorder's word buffer).

    Returns the number of NaN among the values; where it is not 0, ``out`` and ``words``
    do not follow max_pool's NaN rule and the caller pools with torch instead.
    ``count_nan=False`` skips the count (and returns 0) for values the caller already
    knows to be free of NaN.  Returns None, writing nothing, where the arguments are
    outside the cases above.
    """
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(v) for v in stride)
    if (values.dim() != 4 or values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64)
            or not values.is_contiguous() or min(kh, kw, sh, sw) < 1 or 8 % (kh * kw)):
        return None
    n, c, h, w = values.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    if min(oh, ow) < 1 or tuple(out.shape) != (n, c, oh, ow) or out.dtype != values.dtype or not out.is_contiguous():
        return None
    target = _out_words(words, (n, _words(c * oh * ow * kh * kw)))
    offs = _window_offsets(kh, kw, w)
    return int(_kernels()["max_pool_bytes"](values.detach().numpy().reshape(n, c, h * w), offs, w, sh, sw,
                                            out.detach().numpy(), target.view(np.uint8), bool(count_nan)))


@functools.lru_cache(maxsize=64)
def _window_offsets(kh: int, kw: int, plane_w: int) -> np.ndarray:
    """Flat plane offsets ``r W + c`` of a window's elements, row-major."""
    offs = (np.arange(kh, dtype=np.int64)[:, None] * plane_w + np.arange(kw, dtype=np.int64)[None, :]).reshape(-1)
    offs.setflags(write=False)
    return offs


def _out_words(out: Tensor, shape: tuple[int, int]) -> np.ndarray:
    """``out`` as the uint64 array a packing kernel writes into, after checking it can take
    ``shape`` words (int64, CPU, unit column stride: rows may be a view of a wider buffer)."""
    if tuple(out.shape) != shape or out.dtype != torch.int64 or out.device.type != "cpu" or out.stride(1) != 1:
        raise ValueError(f"out must be an int64 CPU tensor {shape} with unit column stride, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device} with strides {out.stride()}")
    return out.numpy().view(np.uint64)


def unpack_bits(words: Tensor, d: int, *, route: str = "auto") -> Tensor:
    """Bool ``[n, d]`` from words ``[n, >= ceil(d / 64)]`` made by :func:`pack_bits`."""
    n = words.shape[0]
    if words.device.type == "cpu" and route != "torch":
        raw = np.ascontiguousarray(words.numpy()).view(np.uint8)
        return torch.from_numpy(np.unpackbits(raw, axis=1, count=d, bitorder="little").view(np.bool_))
    x = words.contiguous().view(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=words.device)
    bits = (x[:, :, None] >> shifts) & 1
    return bits.reshape(n, -1)[:, :d].bool()


class PackedStates:
    """Gating states ``[n, d]`` as bits: int64 ``words`` and the layers ("spans") they hold.

    ``spans`` lists ``(first_word, width)`` per layer: the layer's ``width`` gates sit in
    words ``first_word .. first_word + ceil(width / 64) - 1`` of every row, padding bits 0.
    The states are the concatenation of the spans in the given order; spans may be
    any subset of a larger word matrix (a recording's), so selecting layers copies
    nothing.  ``shape``, ``device`` and ``dtype`` (bool) describe the unpacked states.
    """

    def __init__(self, words: Tensor, spans: Sequence[tuple[int, int]] | None = None):
        if not isinstance(words, Tensor) or words.dim() != 2 or words.dtype != torch.int64:
            raise ValueError("words must be an int64 [n, n_words] tensor (see pack_bits)")
        if spans is None:
            spans = [(0, words.shape[1] * WORD_BITS)]
        spans = [(int(a), int(b)) for a, b in spans]
        for first, width in spans:
            if width < 1 or first < 0 or first + _words(width) > words.shape[1]:
                raise ValueError(f"span (first_word={first}, width={width}) does not fit {words.shape[1]} words")
        self.words = words
        self.spans: tuple[tuple[int, int], ...] = tuple(spans)

    @classmethod
    def from_bool(cls, states: Tensor) -> PackedStates:
        """Pack bool ``[n, d]`` states (one span)."""
        return cls(pack_bits(states), [(0, states.shape[1])])

    @property
    def n(self) -> int:
        return self.words.shape[0]

    @property
    def d(self) -> int:
        return sum(w for _, w in self.spans)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n, self.d))

    @property
    def device(self) -> torch.device:
        return self.words.device

    dtype = torch.bool

    @property
    def nbytes(self) -> int:
        """Bytes of the word matrix (shared with other views of it)."""
        return self.words.numel() * 8

    def word_ranges(self) -> np.ndarray:
        """``[k, 2]`` int64 word ranges ``[start, stop)`` covering the spans (adjacent spans merged)."""
        out: list[list[int]] = []
        for first, width in self.spans:
            stop = first + _words(width)
            if out and out[-1][1] == first:
                out[-1][1] = stop
            else:
                out.append([first, stop])
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def rows(self, index: Tensor | slice) -> PackedStates:
        """The states of some samples (a bool mask, an index tensor or a slice)."""
        return PackedStates(self.words[index], self.spans)

    def repack(self, states: Tensor) -> PackedStates:
        """Pack other bool ``[m, d]`` states in this object's layout (same spans, same words)."""
        if states.dim() != 2 or states.shape[1] != self.d:
            raise ValueError(f"states must be [m, {self.d}], got {tuple(states.shape)}")
        words = torch.zeros(states.shape[0], self.words.shape[1], dtype=torch.int64, device=states.device)
        g = 0
        for first, width in self.spans:
            words[:, first : first + _words(width)] = pack_bits(states[:, g : g + width])
            g += width
        return PackedStates(words, self.spans)

    def unpack(self, rows: slice | None = None) -> Tensor:
        """The bool ``[n, d]`` states (optionally of a slice of rows)."""
        w = self.words if rows is None else self.words[rows]
        parts = [unpack_bits(w[:, first : first + _words(width)], width) for first, width in self.spans]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def column_counts(self, chunk_bytes: int = 64 * 2**20) -> Tensor:
        """Number of open gates per gate, float64 ``[d]`` (exact integers).

        Rows are unpacked a chunk at a time and summed as float32 (exact below 2**24
        rows per chunk; a bool -> int64 sum over rows is many times slower on the CPU),
        the chunks combined in float64.
        """
        total = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        rows = max(1, min(self.n, chunk_bytes // (5 * self.d)))
        for i in range(0, self.n, rows):
            total += self.unpack(slice(i, i + rows)).to(torch.float32).sum(0)
        return total

    def __repr__(self) -> str:
        return f"PackedStates(n={self.n}, d={self.d}, layers={len(self.spans)}, {self.nbytes} bytes)"


# ---------------------------------------------------------------------------
# numba kernels (compiled on first use)
# ---------------------------------------------------------------------------
_KERNELS: dict[str, Any] = {}
#: kernel blocking: rows of the left set per task, rows of the right set and words per cache block
G, JB, K = 16, 64, 1024


def _kernels() -> dict[str, Any]:
    if _KERNELS:
        return _KERNELS
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic

    @intrinsic
    def popcount(typingctx, x):
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.ctpop(args[0])

        return x(x), codegen

    @njit(boundscheck=False)
    def quad(a0, a1, a2, a3, b, js, je, kc, ke, first, out):
        # rows sliced to the word chunk: indices from 0 let the compiler drop negative-index
        # handling and vectorise the popcount reduction (runtime bounds do not)
        a0, a1, a2, a3 = a0[kc:ke], a1[kc:ke], a2[kc:ke], a3[kc:ke]
        for j in range(js, je):
            bj = b[j, kc:ke]
            c0 = c1 = c2 = c3 = np.uint64(0)
            for k in range(bj.shape[0]):
                x = bj[k]
                c0 += popcount(a0[k] ^ x)
                c1 += popcount(a1[k] ^ x)
                c2 += popcount(a2[k] ^ x)
                c3 += popcount(a3[k] ^ x)
            if first:
                out[0, j], out[1, j], out[2, j], out[3, j] = c0, c1, c2, c3
            else:
                out[0, j] += c0
                out[1, j] += c1
                out[2, j] += c2
                out[3, j] += c3

    @njit(boundscheck=False)
    def single(a0, b, js, je, kc, ke, first, out):
        a0 = a0[kc:ke]
        for j in range(js, je):
            bj = b[j, kc:ke]
            c0 = np.uint64(0)
            for k in range(bj.shape[0]):
                c0 += popcount(a0[k] ^ bj[k])
            if first:
                out[j] = c0
            else:
                out[j] += c0

    @njit(boundscheck=False)
    def group(a, b, i0, i1, upper, ranges, out):
        """rows i0..i1-1 of a against the rows of b (from i0 on when upper), into out.

        Cache blocking: JB rows of b times K words (JB * K * 8 bytes, in L2) serve all
        the group's rows; four rows of a share every word loaded from b.
        """
        nb = b.shape[0]
        jlo = i0 if upper else 0
        for jc in range(jlo, nb, JB):
            je = min(jc + JB, nb)
            first = True
            for r in range(ranges.shape[0]):
                w0, w1 = ranges[r, 0], ranges[r, 1]
                for kc in range(w0, w1, K):
                    ke = min(kc + K, w1)
                    for t in range(i0, i1, 4):
                        ni = min(4, i1 - t)
                        js = max(jc, t) if upper else jc
                        if ni == 4:
                            quad(a[t], a[t + 1], a[t + 2], a[t + 3], b, js, je, kc, ke, first, out[t : t + 4])
                        else:
                            for u in range(ni):
                                single(a[t + u], b, js, je, kc, ke, first, out[t + u])
                    first = False

    @njit(parallel=True, boundscheck=False, nogil=True)
    def cross(a, b, ranges, out):
        na = a.shape[0]
        for g in prange((na + G - 1) // G):
            i0 = G * np.int64(g)
            group(a, b, i0, min(i0 + G, na), False, ranges, out)

    @njit(parallel=True, boundscheck=False, nogil=True)
    def self_upper(a, ranges, out):
        n = a.shape[0]
        ng = (n + G - 1) // G
        # group g and group ng-1-g together: every iteration does the same work (triangle)
        for p in prange((ng + 1) // 2):
            for q in range(2):
                g = np.int64(p) if q == 0 else np.int64(ng - 1 - p)
                if q == 1 and g == p:
                    break
                i0 = G * g
                group(a, a, i0, min(i0 + G, n), True, ranges, out)
        for i in prange(n):
            out[i, i] = 0
            for j in range(i):
                out[i, j] = out[j, i]

    @njit(boundscheck=False, nogil=True)
    def onehot(off, window, out):
        one = np.uint64(1)
        for i in range(off.shape[0]):
            for j in range(off.shape[1]):
                pos = np.int64(j) * window + np.int64(off[i, j])
                out[i, pos >> 6] |= one << np.uint64(pos & 63)

    @njit(parallel=True, boundscheck=False, nogil=True)
    def pool_winners(idx, channels, out_h, out_w, plane_w, k_h, k_w, s_h, s_w, p_h, p_w, window, out):
        """Set the one-hot bit of every window's winner from max_pool's flat plane indices.

        ``idx`` [n, channels * out_h * out_w] (row-major over channel, output row, output column);
        1-D pools pass out_h = k_h = 1, s_h = p_h = 0.  The winner of output (oh, ow) sits at
        delta = idx - ((oh s_h - p_h) W + ow s_w - p_w) = r W + c with r < k_h, 0 <= c < k_w <= W,
        so r is the number of whole rows W in delta (counted by comparisons, no division or branch).
        """
        one = np.uint64(1)
        for i in prange(idx.shape[0]):
            j = np.int64(0)
            word = np.int64(0)  # positions grow with j: gather a word's bits, store it once
            acc = np.uint64(0)
            for ch in range(channels):
                for oh in range(out_h):
                    row0 = (np.int64(oh) * s_h - p_h) * plane_w - p_w
                    for ow in range(out_w):
                        delta = idx[i, j] - row0 - np.int64(ow) * s_w
                        r = np.int64(0)
                        for t in range(1, k_h):  # branch-free: r = #{t < k_h : delta >= t W}
                            r += np.int64(delta >= t * plane_w)
                        pos = j * window + r * (k_w - plane_w) + delta
                        w = pos >> 6
                        if w != word:
                            out[i, word] = acc
                            word = w
                            acc = np.uint64(0)
                        acc |= one << np.uint64(pos & 63)
                        j += 1
            out[i, word] = acc

    @njit(parallel=True, boundscheck=False, nogil=True)
    def pool_winners_bytes(idx, starts, plane_w, k_h, k_w, window, out8):
        """pool_winners for windows that divide 8: byte b of a row holds the one-hot windows of
        outputs b * per .. b * per + per - 1 (per = 8 // window), each from the winner's offset
        delta = idx - starts[j] = r W + c (r < k_h, 0 <= c < k_w) as r k_w + c; bytes past the
        last output are 0.  Fixed short inner loops: fewer instructions per output than the
        word-at-a-time kernel."""
        n, J = idx.shape
        per = 8 // window
        nb = out8.shape[1]
        gap = plane_w - k_w
        for i in prange(n):
            for b in range(nb):
                j0 = b * per
                byte = np.uint8(0)
                for q in range(per):
                    j = j0 + q
                    if j < J:
                        delta = idx[i, j] - starts[j]
                        r = np.int64(0)
                        for t in range(1, k_h):
                            r += np.int64(delta >= t * plane_w)
                        byte |= np.uint8(1) << np.uint8(q * window + delta - r * gap)
                out8[i, b] = byte

    @njit(boundscheck=False, nogil=True)
    def max_pool_row(xi, offs, plane_w, s_h, s_w, oi, o8, count_nan):
        """One sample of max_pool_bytes; returns its NaN count (a function of its own, so that
        numba's parallel loop sees no reduction variables in the body)."""
        C = xi.shape[0]
        OH, OW = oi.shape[1], oi.shape[2]
        window = offs.shape[0]
        per = 8 // window
        byte = np.uint8(0)
        q = 0
        b = 0
        bad = 0
        for ch in range(C):
            for oh in range(OH):
                row = oh * s_h * plane_w
                for ow in range(OW):
                    base = row + ow * s_w
                    m = xi[ch, base]
                    for t in range(1, window):
                        v = xi[ch, base + offs[t]]
                        m = v if v > m else m
                    if count_nan:
                        for t in range(window):
                            v = xi[ch, base + offs[t]]
                            bad += v != v
                    arg = window - 1
                    for t in range(window - 2, -1, -1):
                        arg = t if xi[ch, base + offs[t]] == m else arg
                    oi[ch, oh, ow] = xi[ch, base + offs[arg]]
                    byte |= np.uint8(1) << np.uint8(q * window + arg)
                    q += 1
                    if q == per:
                        o8[b] = byte
                        b += 1
                        byte = np.uint8(0)
                        q = 0
        if q:
            o8[b] = byte
            b += 1
        for bb in range(b, o8.shape[0]):
            o8[bb] = 0
        return bad

    @njit(parallel=True, boundscheck=False, nogil=True)
    def max_pool_bytes(x, offs, plane_w, s_h, s_w, out, out8, count_nan):
        """Max-pool ``x`` [n, C, H * W] (no padding, dilation 1) into ``out`` [n, C, OH, OW] and the
        one-hot winner bits into ``out8`` (the bytes pool_winners_bytes writes), in one pass;
        ``offs`` holds the flat offsets r W + c of the window's elements, row-major.

        Branch-free per window: its maximum m by selects, then the winner is the first element
        equal to m in row-major order (max_pool's rule: a later element wins only if strictly
        greater), and the output is that element (so -0.0 / 0.0 ties give max_pool's value).
        The branchy compare-and-update loop mispredicts on ReLU outputs (half zeros) and costs
        several times more.  NaN makes this rule differ from max_pool's, so NaN is only counted:
        the caller pools such a batch with torch instead.  Returns the NaN count (0 without
        ``count_nan``, for values known to hold none)."""
        n = x.shape[0]
        nan = np.zeros(n, dtype=np.int64)
        for i in prange(n):
            nan[i] = max_pool_row(x[i], offs, plane_w, s_h, s_w, out[i], out8[i], count_nan)
        return nan.sum()

    @njit(parallel=True, boundscheck=False, nogil=True)
    def positive_bytes(y, out8):
        """Byte b of row i of ``out8`` = bits of y[i, 8b .. 8b + 7] > 0 (little-endian bit order, as
        numpy.packbits(bitorder="little")); bytes past the last value are 0.  Returns the NaN count.
        A byte at a time (a fixed inner loop of 8) compiles to far fewer instructions per value
        than a word at a time."""
        n, d = y.shape
        full = d // 8
        nb = out8.shape[1]
        nan = 0
        for i in prange(n):
            for b in range(full):
                j0 = b * 8
                byte = np.uint8(0)
                for q in range(8):
                    v = y[i, j0 + q]
                    byte |= np.uint8(v > 0) << np.uint8(q)
                    nan += np.int64(v != v)
                out8[i, b] = byte
            byte = np.uint8(0)
            for q in range(d - full * 8):
                v = y[i, full * 8 + q]
                byte |= np.uint8(v > 0) << np.uint8(q)
                nan += np.int64(v != v)
            for b in range(full, nb):
                out8[i, b] = byte
                byte = np.uint8(0)
        return nan

    @njit(boundscheck=False, nogil=True)
    def exp_table(inv, size):
        """exp(inv * k) for k = 0 .. size - 1, computed as kernel_sums computes each value."""
        out = np.empty(size, dtype=np.float64)
        for k in range(size):
            out[k] = np.exp(inv * np.float64(k))
        return out

    @njit(parallel=True, boundscheck=False, nogil=True)
    def kernel_sums(d2, inv, cls_c, row_tot, row_cls, table):
        """exp(inv * d2) (float64) summed per row, and per row and class if row_cls has columns.

        ``table`` (may be empty) holds exp(inv * k) for the integer distances k < len(table):
        Hamming distances of binary states are integers, so a lookup gives the very value
        the exp would (same expression, same compiled exp) at a fraction of its cost.
        Every sum runs sequentially inside one thread, in a fixed order: the results do not
        depend on the number of threads.
        """
        a, b = d2.shape
        labelled = row_cls.shape[1] > 0
        nt = table.shape[0]
        for i in prange(a):
            t = 0.0
            for j in range(b):
                x = d2[i, j]
                k = np.int64(x)
                if k < nt and np.float32(k) == x:
                    v = table[k]
                else:
                    v = np.exp(inv * np.float64(x))
                t += v
                if labelled:
                    row_cls[i, cls_c[j]] += v
            row_tot[i] += t

    _KERNELS.update(cross=cross, self_upper=self_upper, onehot=onehot, pool_winners=pool_winners, kernel_sums=kernel_sums,
                    positive_bytes=positive_bytes, pool_winners_bytes=pool_winners_bytes, max_pool_bytes=max_pool_bytes,
                    exp_table=exp_table, numba=numba)
    return _KERNELS


def _threads() -> int:
    k = _kernels()
    n = max(1, min(torch.get_num_threads(), k["numba"].config.NUMBA_NUM_THREADS))
    k["numba"].set_num_threads(n)
    return n


def _np_words(words: Tensor) -> np.ndarray:
    return np.ascontiguousarray(words.numpy()).view(np.uint64)


def hamming_block(
    a: PackedStates, b: PackedStates | None = None, *, out: Tensor | None = None
) -> Tensor:
    """Exact pairwise Hamming distances ``||a_i - b_j||^2`` as float32 ``[n_a, n_b]`` (CPU).

    ``b=None`` is the self-distance matrix of ``a``: only its upper triangle is computed
    and mirrored, the diagonal is 0.  The counts are integers, exact in float32 below
    2**24 gates.  Uses ``torch.get_num_threads()`` threads (capped by numba's
    ``NUMBA_NUM_THREADS``).
    """
    if a.device.type != "cpu" or (b is not None and b.device.type != "cpu"):
        raise ValueError("hamming_block runs on the CPU; for GPU states use the float path")
    ranges = a.word_ranges()
    if b is not None and (b.d != a.d or not np.array_equal(b.word_ranges(), ranges)):
        raise ValueError(f"the two state sets have different layouts (d = {a.d} and {b.d})")
    nb = a.n if b is None else b.n
    if out is None:
        out = torch.empty(a.n, nb, dtype=torch.float32)
    k = _kernels()
    _threads()
    if b is None:
        k["self_upper"](_np_words(a.words), ranges, out.numpy())
    else:
        k["cross"](_np_words(a.words), _np_words(b.words), ranges, out.numpy())
    return out


def kernel_block_sums(
    d2: Tensor, inv: float, sym: bool, cls_r: Tensor | None, cls_c: Tensor | None,
    row_tot: Tensor, row_cls: Tensor | None, col_tot: Tensor, col_cls: Tensor | None,
) -> None:
    """Add exp(inv * d2) of a CPU distance block to float64 row (and column) totals, per class.

    ``sym``: the block is a diagonal block (its columns are its rows: only row sums).
    ``cls_*``: int64 class index of every row / column (None without labels); ``*_cls``
    the float64 ``[rows, classes]`` per-class sums to add to.  Compiled (numba), one
    sequential sum per row and per column, so deterministic for any number of threads.
    """
    k = _kernels()
    _threads()
    empty_i = np.zeros(0, dtype=np.int64)
    empty_f = np.zeros((0, 0), dtype=np.float64)
    block = np.ascontiguousarray(d2.numpy())
    # a lookup table of the kernel values of integer distances, when it is much smaller than the block
    top = float(block.max()) if block.size else 0.0
    size = int(top) + 1 if top < 2**24 else 0
    table = k["exp_table"](float(inv), size) if 0 < size and 4 * size <= block.size else np.zeros(0)
    k["kernel_sums"](block, float(inv), empty_i if cls_c is None else cls_c.numpy(),
                     row_tot.numpy(), empty_f if row_cls is None else row_cls.numpy(), table)
    if not sym:  # columns as the rows of the transposed block (contiguous: cache-friendly)
        k["kernel_sums"](np.ascontiguousarray(block.T), float(inv), empty_i if cls_r is None else cls_r.numpy(),
                         col_tot.numpy(), empty_f if col_cls is None else col_cls.numpy(), table)


def hamming_distances(states: PackedStates) -> Tensor:
    """The full ``[n, n]`` float32 matrix of Hamming distances of ``states`` (Eq. 2's exponent)."""
    return hamming_block(states)
