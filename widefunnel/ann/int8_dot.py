"""Eight exact int8 dot products at once with the CPU's int8 dot instruction (VNNI ``vpdpbusd``), for the IVF scan.

Why: LLVM vectorises a numba int8 dot loop by widening to 16 bits (``vpmaddwd``) and then sums each row's lanes
on its own; at d = 32 that is about 8 cycles a row, so the IVF scan at 10M items ran at half the memory's speed.
``vpdpbusd`` multiplies 32 byte pairs and adds them in fours into int32 lanes in one instruction, and the eight
rows' lanes are then summed together in one shuffle tree (three levels of even/odd shuffles and adds).

Exact: ``vpdpbusd`` takes an unsigned and a signed byte. The codes are made unsigned by flipping their top bit
(c + 128, so 0..255 for every int8), and the query stays signed: each 4-product sum fits int32 without
saturation (the instruction without ``s`` wraps, and nothing overflows), and the total is
``dot + 128 * sum(q)``, which the caller's ``bias`` (-128 * sum(q)) takes back off.

Used only where the CPU numba compiles for has the instruction (AVX-VNNI, or AVX512-VNNI with VL): numba
compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise, and its cache is keyed
by both, so code built here never runs on a CPU without it. An AVX2 CPU without VNNI gets the same eight-row
shape with ``vpmaddwd`` (2.2x the plain loop's rows a second in cache, 1M x 32); any other keeps the loop.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

ROWS = 8  # rows per call
WORD = 32  # bytes per ``vpdpbusd`` (a 256-bit register)


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


def _dots8(words: int):
    """The intrinsic for rows of ``words`` * 32 bytes: ``dots8(q, codes, row, dots, at, bias)`` sets
    ``dots[at + i] = bias + sum((codes[row + i] + 128) * q)`` for i < 8; rows C-contiguous, ``q`` contiguous."""

    @intrinsic
    def dots8(typingctx, q, codes, row, dots, at, bias):
        if not (isinstance(codes, types.Array) and codes.ndim == 2 and isinstance(q, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            v_bytes, v_lanes = ir.VectorType(i8, WORD), ir.VectorType(i32, WORD // 4)
            q_arr = context.make_array(signature.args[0])(context, builder, args[0])
            c_arr = context.make_array(signature.args[1])(context, builder, args[1])
            d_arr = context.make_array(signature.args[3])(context, builder, args[3])
            stride = builder.extract_value(c_arr.strides, 0)
            base, q_base = builder.bitcast(c_arr.data, i8.as_pointer()), builder.bitcast(q_arr.data, i8.as_pointer())

            def load(ptr, offset):
                at = builder.gep(ptr, [offset])
                return builder.load(builder.bitcast(at, v_bytes.as_pointer()), align=1)

            name = "llvm.x86.avx512.vpdpbusd.256"  # LLVM selects the VEX form (AVX-VNNI) when that is what exists
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(v_lanes, [v_lanes] * 3), name)
            flip = ir.Constant(v_bytes, [0x80] * WORD)
            qv = [builder.bitcast(load(q_base, ir.Constant(i64, WORD * w)), v_lanes) for w in range(words)]
            row = args[2] if args[2].type.width == 64 else builder.sext(args[2], i64)
            sums = []
            for i in range(ROWS):
                offset = builder.mul(builder.add(row, ir.Constant(i64, i)), stride)
                acc = ir.Constant(v_lanes, [0] * (WORD // 4))
                for w in range(words):
                    c = load(base, builder.add(offset, ir.Constant(i64, WORD * w)))
                    acc = builder.call(fn, [acc, builder.bitcast(builder.xor(c, flip), v_lanes), qv[w]])
                sums.append(acc)
            # pairwise: (a, b) -> [a0+a1, a2+a3, .., b0+b1, ..]; three levels leave row i's sum in lane i
            even = ir.Constant(ir.VectorType(i32, 8), list(range(0, 16, 2)))
            odd = ir.Constant(ir.VectorType(i32, 8), list(range(1, 16, 2)))
            while len(sums) > 1:
                sums = [builder.add(builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd))
                        for a, b in zip(sums[::2], sums[1::2])]
            bias = args[5] if args[5].type.width == 32 else builder.trunc(args[5], i32)
            splat = builder.insert_element(ir.Constant(v_lanes, [0] * 8), bias, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, 8), [0] * 8))
            out = builder.add(sums[0], splat)
            dst = builder.gep(d_arr.data, [args[4]])
            builder.store(out, builder.bitcast(dst, v_lanes.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(q, codes, row, dots, at, bias), codegen

    return dots8


dots8_32 = _dots8(1)
dots8_64 = _dots8(2)
dots8_128 = _dots8(4)


def _dots16_wide(d: int):
    """512-bit form (AVX512-VNNI): ``dots16(q, codes, row, dots, at, bias)`` sets ``dots[at + i]`` for i < 16, as
    ``dots8``. At d = 32 one register holds two rows, so 16 rows take 8 loads, 8 ``vpdpbusd`` and one tree of
    7 pair steps (half the 256-bit form's instructions a row)."""
    per_vec = max(1, 64 // d)  # rows a 64-byte register holds
    words = max(1, d // 64)  # registers a row takes

    @intrinsic
    def dots16(typingctx, q, codes, row, dots, at, bias):
        if not (isinstance(codes, types.Array) and codes.ndim == 2 and isinstance(q, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            v_bytes, v_lanes = ir.VectorType(i8, 64), ir.VectorType(i32, 16)
            q_arr = context.make_array(signature.args[0])(context, builder, args[0])
            c_arr = context.make_array(signature.args[1])(context, builder, args[1])
            d_arr = context.make_array(signature.args[3])(context, builder, args[3])
            base, q_base = builder.bitcast(c_arr.data, i8.as_pointer()), builder.bitcast(q_arr.data, i8.as_pointer())
            name = "llvm.x86.avx512.vpdpbusd.512"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(v_lanes, [v_lanes] * 3), name)
            flip = ir.Constant(v_bytes, [0x80] * 64)
            if per_vec == 2:  # the 32-byte query in both halves
                half = builder.load(builder.bitcast(q_base, ir.VectorType(i8, 32).as_pointer()), align=1)
                qv = [builder.bitcast(builder.shuffle_vector(half, half, ir.Constant(
                    ir.VectorType(i32, 64), list(range(32)) * 2)), v_lanes)]
            else:
                qv = [builder.bitcast(builder.load(builder.bitcast(builder.gep(q_base, [ir.Constant(i64, 64 * w)]),
                                                                   v_bytes.as_pointer()), align=1), v_lanes)
                      for w in range(words)]
            row = args[2] if args[2].type.width == 64 else builder.sext(args[2], i64)
            stride = builder.extract_value(c_arr.strides, 0)

            def row_bytes(i: int, offset: int, width: int):
                at = builder.gep(base, [builder.add(builder.mul(builder.add(row, ir.Constant(i64, i)), stride),
                                                    ir.Constant(i64, offset))])
                return builder.load(builder.bitcast(at, ir.VectorType(i8, width).as_pointer()), align=1)

            sums = []
            for v in range(16 // per_vec):
                acc = ir.Constant(v_lanes, [0] * 16)
                for w in range(words):
                    if per_vec == 2:  # two rows in one register, each at its own address (any row stride)
                        c = builder.shuffle_vector(row_bytes(2 * v, 0, 32), row_bytes(2 * v + 1, 0, 32),
                                                   ir.Constant(ir.VectorType(i32, 64), list(range(64))))
                    else:
                        c = row_bytes(v, 64 * w, 64)
                    acc = builder.call(fn, [acc, builder.bitcast(builder.xor(c, flip), v_lanes), qv[w]])
                sums.append(acc)
            even = ir.Constant(ir.VectorType(i32, 16), list(range(0, 32, 2)))
            odd = ir.Constant(ir.VectorType(i32, 16), list(range(1, 32, 2)))
            while len(sums) > 1:
                sums = [builder.add(builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd))
                        for a, b in zip(sums[::2], sums[1::2])]
            bias = args[5] if args[5].type.width == 32 else builder.trunc(args[5], i32)
            splat = builder.insert_element(ir.Constant(v_lanes, [0] * 16), bias, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            dst = builder.gep(d_arr.data, [args[4]])
            builder.store(builder.add(sums[0], splat), builder.bitcast(dst, v_lanes.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(q, codes, row, dots, at, bias), codegen

    return dots16


dots16_32 = _dots16_wide(32)
dots16_64 = _dots16_wide(64)
dots16_128 = _dots16_wide(128)


def _dots8_madd(words: int):
    """AVX2 form for CPUs without VNNI: ``dots8`` with each 16 bytes sign-extended to 16 bits and multiplied in
    pairs (``vpmaddwd``), the query likewise; ``bias`` is added as given (the products are signed already)."""

    @intrinsic
    def dots8(typingctx, q, codes, row, dots, at, bias):
        if not (isinstance(codes, types.Array) and codes.ndim == 2 and isinstance(q, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v16i8, v16i16, v_lanes = ir.VectorType(i8, 16), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
            q_arr = context.make_array(signature.args[0])(context, builder, args[0])
            c_arr = context.make_array(signature.args[1])(context, builder, args[1])
            d_arr = context.make_array(signature.args[3])(context, builder, args[3])
            stride = builder.extract_value(c_arr.strides, 0)
            base, q_base = builder.bitcast(c_arr.data, i8.as_pointer()), builder.bitcast(q_arr.data, i8.as_pointer())

            def load16(ptr, offset):
                at = builder.gep(ptr, [offset])
                return builder.sext(builder.load(builder.bitcast(at, v16i8.as_pointer()), align=1), v16i16)

            name = "llvm.x86.avx2.pmadd.wd"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(v_lanes, [v16i16, v16i16]), name)
            halves = 2 * words
            qv = [load16(q_base, ir.Constant(i64, 16 * h)) for h in range(halves)]
            row = args[2] if args[2].type.width == 64 else builder.sext(args[2], i64)
            sums = []
            for i in range(ROWS):
                offset = builder.mul(builder.add(row, ir.Constant(i64, i)), stride)
                acc = None
                for h in range(halves):
                    prod = builder.call(fn, [load16(base, builder.add(offset, ir.Constant(i64, 16 * h))), qv[h]])
                    acc = prod if acc is None else builder.add(acc, prod)
                sums.append(acc)
            even = ir.Constant(ir.VectorType(i32, 8), list(range(0, 16, 2)))
            odd = ir.Constant(ir.VectorType(i32, 8), list(range(1, 16, 2)))
            while len(sums) > 1:
                sums = [builder.add(builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd))
                        for a, b in zip(sums[::2], sums[1::2])]
            bias = args[5] if args[5].type.width == 32 else builder.trunc(args[5], i32)
            splat = builder.insert_element(ir.Constant(v_lanes, [0] * 8), bias, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, 8), [0] * 8))
            dst = builder.gep(d_arr.data, [args[4]])
            builder.store(builder.add(sums[0], splat), builder.bitcast(dst, v_lanes.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(q, codes, row, dots, at, bias), codegen

    return dots8


madd8_32 = _dots8_madd(1)
madd8_64 = _dots8_madd(2)
madd8_128 = _dots8_madd(4)


@intrinsic
def at_least64(typingctx, dots, n, bound):
    """Bit i set <=> i < ``n`` and ``dots[i] >= bound``, over a 64-entry int32 buffer: one vector compare (a
    mask register on AVX-512), instead of a branch per row."""
    if not isinstance(dots, types.Array):
        return None

    def codegen(context, builder, signature, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(i32, 64)
        d_arr = context.make_array(signature.args[0])(context, builder, args[0])
        v = builder.load(builder.bitcast(d_arr.data, vec.as_pointer()), align=4)
        t = args[2] if args[2].type.width == 32 else builder.trunc(args[2], i32)
        splat = builder.insert_element(ir.Constant(vec, [0] * 64), t, ir.Constant(i32, 0))
        splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, 64), [0] * 64))
        bits = builder.bitcast(builder.icmp_signed(">=", v, splat), i64)
        n = args[1] if args[1].type.width == 64 else builder.sext(args[1], i64)
        # rows below n: (1 << n) - 1, with n = 64 kept whole (a shift by 64 is undefined)
        low = builder.select(builder.icmp_signed(">=", n, ir.Constant(i64, 64)), ir.Constant(i64, -1),
                             builder.sub(builder.shl(ir.Constant(i64, 1), n), ir.Constant(i64, 1)))
        del i1
        return builder.and_(bits, low)

    return types.uint64(dots, n, bound), codegen
