"""Exact int8 dot products of 8 or 16 rows at once with the CPU's int8 dot instructions, for the IVF scan.

Why: LLVM vectorises a numba int8 dot loop by widening to 16 bits (``vpmaddwd``) and then sums each row's lanes
on its own; at d = 32 that is about 8 cycles a row, so the IVF scan at 10M items ran at half the memory's speed.
VNNI's ``vpdpbusd`` multiplies 32 (or 64) byte pairs and adds them in fours into int32 lanes in one instruction,
and the rows' lanes are then summed together in one shuffle tree (pairwise even/odd shuffles and adds).

Exact: ``vpdpbusd`` takes an unsigned and a signed byte. The codes are made unsigned by flipping their top bit
(c + 128, so 0..255 for every int8), and the query stays signed: each 4-product sum fits int32 without
saturation (the instruction without ``s`` wraps, and nothing overflows), and the total is
``dot + 128 * sum(q)``, which the caller's ``bias`` (-128 * sum(q)) takes back off.

Used only where the CPU numba compiles for has the instruction (AVX-VNNI, or AVX512-VNNI with VL): numba
compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise, and its cache is keyed
by both, so code built here never runs on a CPU without it. An AVX2 CPU without VNNI gets the same eight-row
shape with ``vpmaddwd`` (2.2x the plain loop's rows a second, one thread, 200,000 x 32 rows in cache); any other
keeps the loop.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import config
from numba.extending import intrinsic


def _target_features() -> dict[str, bool]:
    """The CPU features numba compiles for: the host's, or those ``NUMBA_CPU_FEATURES`` names ("+avx2,-avx512f");
    none for a ``NUMBA_CPU_NAME`` alone (another CPU, whose features this module cannot list)."""
    if config.CPU_FEATURES:
        return {f[1:]: f[0] == "+" for f in config.CPU_FEATURES.split(",") if len(f) > 1 and f[0] in "+-"}
    if config.CPU_NAME:
        return {}
    return dict(llvm.get_host_cpu_features())


_FEATURES = _target_features()
HAS_VNNI = bool(_FEATURES.get("avxvnni") or (_FEATURES.get("avx512vnni") and _FEATURES.get("avx512vl")))
HAS_VNNI_512 = HAS_VNNI and bool(_FEATURES.get("avx512vnni"))
HAS_AVX2 = bool(_FEATURES.get("avx2"))


def _splat(builder, value, lanes: int):
    """``value`` in every lane of a vector."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(ir.VectorType(value.type, lanes), [0] * lanes), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


class _Rows:
    """The IR of one call: the arrays' pointers, the rows' bytes by address (row stride from the array, so any
    layout), the query's words, and the result's store."""

    def __init__(self, context, builder, signature, args):
        self.b = builder
        self.i8, self.i32, self.i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        q_arr, c_arr, d_arr = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 3))
        self.q = builder.bitcast(q_arr.data, self.i8.as_pointer())
        self.codes = builder.bitcast(c_arr.data, self.i8.as_pointer())
        self.stride = builder.extract_value(c_arr.strides, 0)
        self.row = args[2] if args[2].type.width == 64 else builder.sext(args[2], self.i64)
        self.out = builder.gep(d_arr.data, [args[4]])
        self.bias = args[5] if args[5].type.width == 32 else builder.trunc(args[5], self.i32)

    def load(self, ptr, offset, width: int):
        at = self.b.gep(ptr, [offset if isinstance(offset, ir.Value) else ir.Constant(self.i64, offset)])
        return self.b.load(self.b.bitcast(at, ir.VectorType(self.i8, width).as_pointer()), align=1)

    def row_bytes(self, i: int, offset: int, width: int):
        start = self.b.mul(self.b.add(self.row, ir.Constant(self.i64, i)), self.stride)
        return self.load(self.codes, self.b.add(start, ir.Constant(self.i64, offset)), width)

    def function(self, name: str, ret, params: list):
        module = self.b.module
        return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, params), name)

    def unsigned(self, v):
        """Bytes c -> c + 128 as unsigned (the top bit flipped)."""
        return self.b.xor(v, ir.Constant(v.type, [0x80] * v.type.count))

    def store_sums(self, sums: list):
        """Sum each row's lanes (pairwise: (a, b) -> [a0+a1, a2+a3, .., b0+b1, ..], until row i's sum is lane i),
        add ``bias`` and store the rows' dots."""
        lanes = sums[0].type.count
        even = ir.Constant(ir.VectorType(self.i32, lanes), list(range(0, 2 * lanes, 2)))
        odd = ir.Constant(ir.VectorType(self.i32, lanes), list(range(1, 2 * lanes, 2)))
        while len(sums) > 1:
            sums = [self.b.add(self.b.shuffle_vector(a, c, even), self.b.shuffle_vector(a, c, odd))
                    for a, c in zip(sums[::2], sums[1::2])]
        total = self.b.add(sums[0], _splat(self.b, self.bias, lanes))
        self.b.store(total, self.b.bitcast(self.out, total.type.as_pointer()), align=4)


def _vnni256(g: _Rows, d: int) -> list:
    """8 rows, 32 bytes a register: ``vpdpbusd`` (LLVM picks the VEX form where only AVX-VNNI exists)."""
    lanes = ir.VectorType(g.i32, 8)
    fn = g.function("llvm.x86.avx512.vpdpbusd.256", lanes, [lanes] * 3)
    qv = [g.b.bitcast(g.load(g.q, 32 * w, 32), lanes) for w in range(d // 32)]
    sums = []
    for i in range(8):
        acc = ir.Constant(lanes, [0] * 8)
        for w in range(d // 32):
            acc = g.b.call(fn, [acc, g.b.bitcast(g.unsigned(g.row_bytes(i, 32 * w, 32)), lanes), qv[w]])
        sums.append(acc)
    return sums


def _vnni512(g: _Rows, d: int) -> list:
    """16 rows, 64 bytes a register: at d = 32 two rows share one (8 loads, 8 ``vpdpbusd`` and one 7-step tree
    for 16 rows: half the 256-bit form's instructions a row)."""
    lanes = ir.VectorType(g.i32, 16)
    fn = g.function("llvm.x86.avx512.vpdpbusd.512", lanes, [lanes] * 3)
    both = ir.Constant(ir.VectorType(g.i32, 64), list(range(64)))
    if d == 32:  # the query in both halves, two rows a register
        half = g.load(g.q, 0, 32)
        qv = [g.b.bitcast(g.b.shuffle_vector(half, half, ir.Constant(ir.VectorType(g.i32, 64), list(range(32)) * 2)),
                          lanes)]
        regs = [[g.b.shuffle_vector(g.row_bytes(2 * v, 0, 32), g.row_bytes(2 * v + 1, 0, 32), both)]
                for v in range(8)]
    else:
        qv = [g.b.bitcast(g.load(g.q, 64 * w, 64), lanes) for w in range(d // 64)]
        regs = [[g.row_bytes(i, 64 * w, 64) for w in range(d // 64)] for i in range(16)]
    sums = []
    for words in regs:
        acc = ir.Constant(lanes, [0] * 16)
        for w, c in enumerate(words):
            acc = g.b.call(fn, [acc, g.b.bitcast(g.unsigned(c), lanes), qv[w]])
        sums.append(acc)
    return sums


def _madd(g: _Rows, d: int) -> list:
    """8 rows on AVX2 without VNNI: 16 bytes at a time sign-extended to 16 bits and multiplied in pairs
    (``vpmaddwd``), the query likewise; signed already, so the caller's bias is 0."""
    words, lanes = ir.VectorType(ir.IntType(16), 16), ir.VectorType(g.i32, 8)
    fn = g.function("llvm.x86.avx2.pmadd.wd", lanes, [words, words])
    qv = [g.b.sext(g.load(g.q, 16 * h, 16), words) for h in range(d // 16)]
    sums = []
    for i in range(8):
        prods = [g.b.call(fn, [g.b.sext(g.row_bytes(i, 16 * h, 16), words), qv[h]]) for h in range(d // 16)]
        acc = prods[0]
        for p in prods[1:]:
            acc = g.b.add(acc, p)
        sums.append(acc)
    return sums


_FORMS = {"vnni256": _vnni256, "vnni512": _vnni512, "madd": _madd}


def _intrinsic(form: str, d: int):
    """``f(q, codes, row, dots, at, bias)``: ``dots[at + i] = bias + dot(q, codes[row + i])`` for the form's 8 or
    16 rows, VNNI's with 128 * sum(q) added (``bias`` = -128 * sum(q) takes it off), AVX2's without (bias 0)."""
    build = _FORMS[form]

    @intrinsic
    def dots(typingctx, q, codes, row, out, at, bias):
        if not (isinstance(codes, types.Array) and codes.ndim == 2 and isinstance(q, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            g = _Rows(context, builder, signature, args)
            g.store_sums(build(g, d))
            return context.get_dummy_value()

        return types.none(q, codes, row, out, at, bias), codegen

    return dots


WIDTHS = (32, 64, 128)  # the row widths the forms take; other widths keep the loop


def _by_width(form: str):
    """One call for the widths the forms take (``WIDTHS``), dispatched on the codes' width."""
    k32, k64, k128 = (_intrinsic(form, d) for d in WIDTHS)

    @njit(inline="always")
    def call(q, codes, row, out, at, bias):
        d = codes.shape[1]
        if d == 32:
            k32(q, codes, row, out, at, bias)
        elif d == 64:
            k64(q, codes, row, out, at, bias)
        else:
            k128(q, codes, row, out, at, bias)

    return call


vnni8, vnni16, madd8 = _by_width("vnni256"), _by_width("vnni512"), _by_width("madd")


@intrinsic
def at_least64(typingctx, dots, n, bound):
    """Bit i set <=> i < ``n`` and ``dots[i] >= bound``, over a 64-entry int32 buffer: one vector compare (a
    mask register on AVX-512), instead of a branch per row."""
    if not isinstance(dots, types.Array):
        return None

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        d_arr = context.make_array(signature.args[0])(context, builder, args[0])
        v = builder.load(builder.bitcast(d_arr.data, ir.VectorType(i32, 64).as_pointer()), align=4)
        t = args[2] if args[2].type.width == 32 else builder.trunc(args[2], i32)
        bits = builder.bitcast(builder.icmp_signed(">=", v, _splat(builder, t, 64)), i64)
        n = args[1] if args[1].type.width == 64 else builder.sext(args[1], i64)
        # rows below n: (1 << n) - 1, with n = 64 kept whole (a shift by 64 is undefined)
        low = builder.select(builder.icmp_signed(">=", n, ir.Constant(i64, 64)), ir.Constant(i64, -1),
                             builder.sub(builder.shl(ir.Constant(i64, 1), n), ir.Constant(i64, 1)))
        return builder.and_(bits, low)

    return types.uint64(dots, n, bound), codegen
