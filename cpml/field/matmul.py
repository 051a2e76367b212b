"""Exact modular matrix products on float64 BLAS.

Operands are centred representatives (|v| <= h = (p-1)/2 < 2^30). When k * h^2 < 2^53 (the Lagrange
encoding: p < 2^25 and K+T <= 32) the product is a single GEMM. Otherwise the smaller operand is split
into L signed base-2^s limbs, one GEMM multiplies the other operand by all limbs at once, and the limb
products are recombined by Horner's rule, acc <- centred(acc) * 2^s + product_i, with s chosen so that
every intermediate is an exact float64 integer. Inner dimensions beyond 2^20 are cut into chunks whose
results are summed the same way.

The output is computed tile by tile on one thread per core: each tile's GEMM result (under a MiB)
is reduced mod p while it is still in cache, and an int32 right operand (half the bytes of float64 to
read from memory) is widened to float64 one tile at a time, and each BLAS call is small enough that OpenBLAS runs it
on the calling thread, so our threads never contend with BLAS's own pool. The reduction is a handful of
numpy ufuncs; for large products (the dataset encoding) it is one fused loop compiled by numba, which
halves the encoding's CPU time; it is compiled on first use and cached on disk.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from cpml.errors import argument_error
from cpml.field.jit import compiled
from cpml.field.prime_field import Elements, PrimeField

_EXACT = 2.0**53 - 2.0**32  # every float64 intermediate stays below this, and so does q*p when reducing
_MAX_INNER_CHUNK = 1 << 20
_TILE_ELEMENTS = 96 * 1024  # products per tile (768 KiB of float64), reduced while in cache; best measured
_SMALL_KERNEL_ARCHS = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})  # OpenBLAS small-matrix GEMM
_TILE_WORK = 1 << 21  # multiply-adds per tile at most, so long inner dimensions still give many tiles
_PARALLEL_WORK = 1 << 21  # below this many multiply-adds a thread pool costs more than it saves
_MAX_THREADS = 8
_COMPILED_PRODUCTS = 1 << 22  # from this many outputs on, the compiled reduction's one-off JIT pays off

Tile = tuple[int, int, int, int]  # row_lo, row_hi, col_lo, col_hi
Centred = np.float64 | np.int32


def matmul_mod(field: PrimeField, a: npt.ArrayLike, b: npt.ArrayLike) -> Elements:
    """Return (a @ b) mod p exactly for field-element matrices (or a vector b)."""
    a_el = field.check_elements(a, "a")
    b_el = field.check_elements(b, "b")
    return matmul_mod_centred(field, field.centred(a_el), field.centred(b_el))


def matmul_mod_centred(field: PrimeField, a: npt.NDArray[Centred], b: npt.NDArray[Centred]) -> Elements:
    """Return (a @ b) mod p for float64 or int32 operands holding integers with |v| <= (p-1)/2."""
    for name, operand in (("a", a), ("b", b)):
        if operand.dtype not in (np.float64, np.int32):
            raise argument_error(name, "hold centred representatives as float64 or int32", str(operand.dtype))
    vector = b.ndim == 1
    b2 = b[:, None] if vector else b
    if a.ndim != 2 or a.shape[1] != b2.shape[0]:
        raise argument_error("b", f"have {a.shape[1] if a.ndim == 2 else '?'} rows to match 'a'", b.shape)
    n, k = a.shape
    m = b2.shape[1]
    if n and m and k:  # every tile writes its part: no need to zero (page-faulting) memory first
        out = np.empty((n, m), dtype=np.uint32)
        _Product.plan(field.p, np.asarray(a, np.float64), b2).run(out)
    else:
        out = np.zeros((n, m), dtype=np.uint32)
    return out[:, 0] if vector else out


@dataclass(frozen=True)
class _Product:
    """One product cut into inner chunks, limbs of the split operand, and output tiles."""

    p: int
    a: npt.NDArray[np.float64]  # (n, k), or its limbs (L, n, k) when split == "a"
    b: npt.NDArray[Centred]  # (k, m), widened tile by tile if int32, or its limbs as a (k, L, m) view
    split: str  # "a", "b" or "" (no split)
    shape: tuple[int, int, int]  # n, k, m
    shift: float  # the limb base 2^s
    limbs: int
    chunk: int  # inner chunk length
    tile_rows: int
    tile_cols: int
    compiled: bool  # reduce contiguous tiles with the numba kernel (large products only)

    @staticmethod
    def plan(p: int, a: npt.NDArray[np.float64], b: npt.NDArray[Centred]) -> _Product:
        """Pick chunks, limbs and tiles so that every float64 intermediate is an exact integer."""
        (n, k), m = a.shape, b.shape[1]
        half = (p - 1) // 2
        kc = min(k, _MAX_INNER_CHUNK)
        # One chunk needs kc*h^2 <= EXACT; several also carry a running centred sum (|.| <= h + 4).
        carry = half + 4 if kc < k else 0
        if kc * half * half + carry <= _EXACT:
            split, s, limbs = "", 0, 1
        else:
            s = _limb_bits(half, kc)
            limbs = _limb_count(half, s)
            split = "b" if b.size <= a.size else "a"
        if split == "a":  # limbs stacked along rows: full-height tiles
            tile_rows, tile_cols = n, _tile_extent(limbs * n, m, kc)
        elif split == "b":  # limbs stacked along columns: full-width tiles
            tile_rows, tile_cols = _tile_extent(limbs * m, n, kc), m
        else:
            tile_cols = min(m, max(64, _TILE_ELEMENTS // n))
            tile_rows = _tile_extent(tile_cols, n, kc)
        return _Product(
            p=p,
            a=_split(a, s, limbs) if split == "a" else a,
            b=_split(np.asarray(b.T, np.float64), s, limbs).transpose(2, 0, 1) if split == "b" else b,
            split=split,
            shape=(n, k, m),
            shift=float(2**s),
            limbs=limbs,
            chunk=kc,
            tile_rows=tile_rows,
            tile_cols=tile_cols,
            compiled=n * m >= _COMPILED_PRODUCTS,
        )

    def run(self, out: Elements) -> None:
        """Fill out (n, m) with the reduced product, one thread per core taking tiles from a queue."""
        n, k, m = self.shape
        tiles = [
            (r, min(r + self.tile_rows, n), c, min(c + self.tile_cols, m))
            for r in range(0, n, self.tile_rows)
            for c in range(0, m, self.tile_cols)
        ]
        compiled = _compiled_reduction() if self.compiled else None  # compile once, before the threads
        threads = min(_cores(), len(tiles), _MAX_THREADS)
        if threads <= 1 or n * m * k * self.limbs < _PARALLEL_WORK:
            self._work(_TileQueue(tiles, 1), 0, out, compiled)
            return
        queue, pool = _TileQueue(tiles, threads), _pool()
        for future in [pool.submit(self._work, queue, t, out, compiled) for t in range(threads)]:
            future.result()

    def _work(self, queue: _TileQueue, worker: int, out: Elements, compiled: Callable[..., None] | None) -> None:
        """Compute tiles from the shared queue until it is empty, with this thread's own scratch."""
        size = self.tile_rows * self.tile_cols
        product = np.empty(size * self.limbs)
        total, scratch = np.empty(size), np.empty(size)
        widened = np.empty(self.chunk * self.tile_cols if self.b.dtype != np.float64 else 0)
        k = self.shape[1]
        while True:
            tile = queue.take(worker)
            if tile is None:
                return
            r0, r1, c0, c1 = tile
            shape = (r1 - r0, c1 - c0)
            count = shape[0] * shape[1]
            y = scratch[:count].reshape(shape)
            acc = total[:count].reshape(shape)
            for lo in range(0, k, self.chunk):
                hi = min(lo + self.chunk, k)
                digits = self._limb_products(product[: count * self.limbs], widened, tile, lo, hi)
                h = digits[-1]
                for digit in reversed(digits[:-1]):  # Horner, most significant limb first
                    _centred_residue(h, y, self.p)
                    np.multiply(h, self.shift, out=h)
                    np.add(h, digit, out=h)
                if lo == 0 and hi < k:
                    np.copyto(acc, h)
                elif lo > 0:
                    np.add(acc, h, out=acc)
                if hi < k:
                    _centred_residue(acc, y, self.p)
            result = acc if k > self.chunk else h
            if compiled is not None and result.flags.c_contiguous:
                compiled(result, out, r0, c0, self.p, 1.0 / self.p)
            else:
                _reduce_into(result, scratch[:count], out[r0:r1, c0:c1], self.p)

    def _limb_products(
        self, buffer: npt.NDArray[np.float64], widened: npt.NDArray[np.float64], tile: Tile, lo: int, hi: int
    ) -> list[npt.NDArray[np.float64]]:
        """One GEMM for a tile and inner chunk; returns the L limb products, least significant first."""
        r0, r1, c0, c1 = tile
        tr, tc, limbs = r1 - r0, c1 - c0, self.limbs
        if self.split == "a":  # (L*n, kc) @ (kc, tc), tiles span all rows
            product = buffer.reshape(limbs * tr, tc)
            _gemm(self.a[:, :, lo:hi].reshape(limbs * tr, hi - lo), self._right(widened, lo, hi, c0, c1), product)
            return [product[i * tr : (i + 1) * tr] for i in range(limbs)]
        if self.split == "b":  # (tr, kc) @ (kc, L*m), tiles span all columns
            product = buffer.reshape(tr, limbs * tc)
            right = cast("npt.NDArray[np.float64]", self.b)  # split "b": the limbs of a float64 operand
            _gemm(self.a[r0:r1, lo:hi], right[lo:hi].reshape(hi - lo, limbs * tc), product)
            return [product[:, i * tc : (i + 1) * tc] for i in range(limbs)]
        product = buffer.reshape(tr, tc)
        _gemm(self.a[r0:r1, lo:hi], self._right(widened, lo, hi, c0, c1), product)
        return [product]

    def _right(self, widened: npt.NDArray[np.float64], lo: int, hi: int, c0: int, c1: int) -> npt.NDArray[np.float64]:
        """The unsplit right operand's block for a tile, an int32 block widened into this thread's scratch."""
        block = self.b[lo:hi, c0:c1]
        if block.dtype == np.float64:
            return cast("npt.NDArray[np.float64]", block)
        staged = widened[: block.size].reshape(block.shape)
        np.copyto(staged, block)
        return staged


class _TileQueue:
    """Tiles cut into one contiguous run per thread; a thread whose run is done steals from the longest other.

    Contiguous runs keep each thread's output in its own memory pages: when two threads write into the
    same freshly allocated (huge) page, one waits while the kernel zeroes it, which cost a third of the
    encoding's time here with interleaved tiles.
    """

    def __init__(self, tiles: list[Tile], workers: int) -> None:
        self._tiles = tiles
        bounds = [len(tiles) * w // workers for w in range(workers + 1)]
        self._runs = [[lo, hi] for lo, hi in itertools.pairwise(bounds)]  # [next, end) of each thread's run
        self._lock = threading.Lock()

    def take(self, worker: int) -> Tile | None:
        """The next tile for this worker: the front of its own run, else the back of the longest run."""
        with self._lock:
            run = self._runs[worker]
            if run[0] < run[1]:
                run[0] += 1
                return self._tiles[run[0] - 1]
            victim = max(self._runs, key=lambda r: r[1] - r[0])
            if victim[0] == victim[1]:
                return None
            victim[1] -= 1
            return self._tiles[victim[1]]


def _gemm(left: npt.NDArray[np.float64], right: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> None:
    """out = left @ right in pieces that BLAS runs on this thread (its own pool would fight ours)."""
    rows, inner = left.shape
    cols = right.shape[1]
    piece = _gemm_piece()
    if rows >= cols:
        step = max(1, piece // max(1, inner * cols))
        for lo in range(0, rows, step):
            np.matmul(left[lo : lo + step], right, out=out[lo : lo + step])
    else:
        step = max(1, piece // max(1, inner * rows))
        for lo in range(0, cols, step):
            np.matmul(left, right[:, lo : lo + step], out=out[:, lo : lo + step])


@functools.cache
def _gemm_piece() -> int:
    """The largest m*n*k that OpenBLAS computes on the calling thread, and fast, for numpy's BLAS here."""
    blas = ThreadpoolController().select(user_api="blas").info()
    # OpenBLAS threads a GEMM above 2^18 multiply-adds, except that on these cores its single-threaded
    # small-matrix kernels take every GEMM up to 100^3 (about 25% faster here than 2^18 pieces).
    small_kernels = bool(blas) and all(
        lib["internal_api"] == "openblas" and lib.get("architecture") in _SMALL_KERNEL_ARCHS for lib in blas
    )
    return 1_000_000 if small_kernels else 1 << 18


def _centred_residue(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], p: int) -> None:
    """Replace exact float64 integers (|x| <= EXACT) by a residue with |x| <= (p-1)/2 + 4, in place."""
    # y = x * fl(1/p) is within 2^-52 |x/p| <= 2/p of x/p, so x - p*rint(y) is off centre by at most 3.
    np.multiply(x, 1.0 / p, out=y)
    np.rint(y, out=y)
    np.multiply(y, p, out=y)  # exact: |y*p| <= |x| + p < 2^53
    np.subtract(x, y, out=x)


def _reduce_into(x: npt.NDArray[np.float64], scratch: npt.NDArray[np.float64], out: Elements, p: int) -> None:
    """Write exact float64 integers (|x| <= EXACT) reduced to [0, p) into the uint32 array out."""
    y = scratch.reshape(x.shape)
    np.multiply(x, 1.0 / p, out=y)
    np.rint(y, out=y)
    np.multiply(y, p, out=y)
    np.subtract(x, y, out=x)  # the centred residue r, |r| <= (p-1)/2 + 3 < 2^31
    # y is dead: its bytes hold r as int32 (first half) and r + p as uint32 (second half).
    halves = scratch.view(np.int32)
    ints, words = halves[: x.size].reshape(x.shape), halves[x.size :].view(np.uint32).reshape(x.shape)
    np.copyto(ints, x, casting="unsafe")
    unsigned = ints.view(np.uint32)
    # r >= 0: r < r + p < 2^32. r < 0: r wraps to 2^32 + r > p, and r + p wraps back into [0, p).
    np.add(unsigned, np.uint32(p), out=words)
    np.minimum(unsigned, words, out=out)


def _reduce_rows(x: npt.NDArray[np.float64], out: Elements, row: int, col: int, p: int, inverse: float) -> None:
    """out[row:, col:] = x mod p for a C-contiguous tile of exact float64 integers: _reduce_into, fused (numba)."""
    modulus, word = np.float64(p), np.int32(p)
    for i in range(x.shape[0]):
        source = x[i]
        target = out[row + i, col : col + x.shape[1]]
        for j in range(x.shape[1]):
            # x * fl(1/p) + 1/2 is within 3.01/p of x/p + 1/2 (see _centred_residue): |r| <= (p-1)/2 + 4.
            # np.floor keeps the arithmetic in float64 (math.floor goes through int64) so it vectorizes.
            r = np.int32(source[j] - np.floor(source[j] * inverse + 0.5) * modulus)
            target[j] = np.uint32(r + (word & (r >> np.int32(31))))  # r < 0: the arithmetic shift selects p


def _compiled_reduction() -> Callable[..., None] | None:
    """_reduce_rows compiled by numba; None without numba (the numpy reduction does the same work)."""
    return compiled(_reduce_rows, "void(float64[:, ::1], uint32[:, ::1], int64, int64, int64, float64)", contract=True)


def _limb_bits(half: int, inner: int) -> int:
    """The widest limb of s bits for which a Horner step stays exact: see _Product.plan."""

    def exact(s: int) -> bool:
        return inner * half * 2.0 ** (s - 1) + (half + 4) * (2.0**s + 1) <= _EXACT

    if not exact(2):
        raise argument_error("inner dimension", "be small enough for exact float64 products", inner)
    s = 2
    while s < 31 and exact(s + 1):
        s += 1
    return s


def _limb_count(half: int, s: int) -> int:
    """How many signed s-bit limbs _split needs so that its top limb also stays within 2^(s-1)."""
    count, bound = 1, float(half)
    while bound > 2 ** (s - 1):
        bound = (bound + 2 ** (s - 1)) / 2**s
        count += 1
    return count


def _split(x: npt.NDArray[np.float64], s: int, limbs: int) -> npt.NDArray[np.float64]:
    """Split integers into L signed base-2^s digits in [-2^(s-1), 2^(s-1)], least significant first."""
    parts = np.empty((limbs, *x.shape))
    base, offset = float(2**s), float(2 ** (s - 1))
    rest = np.array(x, dtype=np.float64)
    for i in range(limbs - 1):
        np.add(rest, offset, out=parts[i])
        np.mod(parts[i], base, out=parts[i])
        np.subtract(parts[i], offset, out=parts[i])
        np.subtract(rest, parts[i], out=rest)
        np.divide(rest, base, out=rest)  # exact: rest - digit is a multiple of 2^s
    parts[limbs - 1] = rest
    return parts


def _tile_extent(fixed: int, total: int, inner: int) -> int:
    """How many rows (or columns) of `fixed` products make a tile that fits in cache, at least one."""
    return max(1, min(total, _TILE_ELEMENTS // fixed, _TILE_WORK // (fixed * inner)))


def _cores() -> int:
    """The CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child has none of its parent's threads


def _pool() -> ThreadPoolExecutor:
    """This process's tile workers; their threads start on first use."""
    pool = _POOLS.get(os.getpid())
    if pool is None:  # setdefault is atomic; an executor that loses the race never started a thread
        pool = _POOLS.setdefault(os.getpid(), ThreadPoolExecutor(min(_cores(), _MAX_THREADS), "cpml-matmul"))
    return pool
