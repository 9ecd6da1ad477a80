"""Explicit 16-lane float32 vectors for numba: the register blocking of the kernels.

numba has no vector type: its SIMD is whatever LLVM's loop vectoriser makes of a loop. That vectorises an
inner loop over an output row but keeps the row in memory, so a matrix-vector product loads and stores its
output on every pass over the rows, and the dependent additions wait on those round trips; and it ends a
46-unit gate loop with a scalar tail. With a vector type of its own (numba's extension API: a type, its
LLVM data model, intrinsics and operator overloads), a kernel holds up to six 16-float pieces of its
output in registers for a whole product (kernels._vec_mat), as a BLAS micro-kernel does, and runs its gate
formulas 16 units at a time with a masked last piece. LLVM lowers `<16 x float>` to whatever the CPU has
(one AVX-512 register, two AVX2 ones, four NEON ones) and the masked loads and stores to native ones where
they exist.

Every operation is lane-wise IEEE float32 and the very instruction numba emits for a scalar: `muladd` is a
multiply and then an add, each rounded (never a fused multiply-add), comparisons are ordered but for !=,
so a kernel built from them gives the scalar loop's numbers bit for bit (tests/test_kernels.py checks).
Loads and stores assume a unit stride along the array's last axis (a row of a C-ordered matrix, or a
slice of one); they are not bounds-checked: the callers stay within their rows.
"""

from __future__ import annotations

import operator

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

LANES = 16
_F = ir.FloatType()
_VEC = ir.VectorType(_F, LANES)
_I32 = ir.IntType(32)
_MASK = ir.VectorType(ir.IntType(1), LANES)
_MLOAD, _MSTORE = "llvm.masked.load.v16f32.p0", "llvm.masked.store.v16f32.p0"


def _vector_type(cls_name: str, name: str, llvm: ir.VectorType) -> type:
    """A numba type (class `cls_name`, type name `name`) whose values are the LLVM vector `llvm`, and its
    data model."""

    def __init__(self) -> None:
        types.Type.__init__(self, name=name)

    cls = type(cls_name, (types.Type,), {"__init__": __init__, "__module__": __name__})

    def model_init(self, dmm, fe_type):  # numba's data-model signature
        models.PrimitiveModel.__init__(self, dmm, fe_type, llvm)

    register_model(cls)(type(f"_{cls_name}Model", (models.PrimitiveModel,), {"__init__": model_init}))
    return cls


F32x16 = _vector_type("F32x16", "f32x16", _VEC)
f32x16 = F32x16()


def _address(context, builder, aty, arr, i, vec=_VEC):
    """Pointer to a[i] of the array `arr` (type aty) as a pointer to a vector of type vec."""
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [i]), vec.as_pointer())


def _spread(builder, v, vty):
    """The scalar v in every lane of a vector of type vty."""
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _lanes_of(builder, ty, v):
    """v (of numba type ty) as a vector: itself, or a float32 scalar in every lane."""
    return v if isinstance(ty, F32x16) else _spread(builder, v, _VEC)


def _first(builder, n, lanes=LANES):
    """The mask of lanes 0..n-1 of a vector of `lanes` lanes."""
    wide = ir.VectorType(ir.IntType(64), lanes)
    return builder.icmp_unsigned("<", ir.Constant(wide, list(range(lanes))), _spread(builder, n, wide))


def _masked(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


@intrinsic
def load(typingctx, a, i):
    """a[i : i + 16] as a vector."""

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], *args), align=4)

    return f32x16(a, types.intp), codegen


@intrinsic
def store(typingctx, a, i, x):
    """a[i : i + 16] = x."""

    def codegen(context, builder, sig, args):
        builder.store(args[2], _address(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(a, types.intp, f32x16), codegen


@intrinsic
def load_n(typingctx, a, i, n):
    """a[i : i + n] (n <= 16) in the first n lanes, zeros after: the elements past n are not read."""

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1])
        zero = ir.Constant(_VEC, [0.0] * LANES)
        mask = _first(builder, args[2])
        return _masked(builder, _MLOAD, _VEC, [p, ir.Constant(_I32, 4), mask, zero])

    return f32x16(a, types.intp, types.intp), codegen


@intrinsic
def store_n(typingctx, a, i, x, n):
    """a[i : i + n] = the first n lanes of x (n <= 16): the elements past n are not written."""

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1])
        mask = _first(builder, args[3])
        align = ir.Constant(_I32, 4)
        _masked(builder, _MSTORE, ir.VoidType(), [args[2], p, align, mask])
        return context.get_dummy_value()

    return types.none(a, types.intp, f32x16, types.intp), codegen


@njit(inline="always")
def load_part(a, i, full, n):
    """load(a, i) if full, else load_n(a, i, n)."""
    return load(a, i) if full else load_n(a, i, n)


@njit(inline="always")
def store_part(a, i, x, full, n):
    """store(a, i, x) if full, else store_n(a, i, x, n)."""
    if full:
        store(a, i, x)
    else:
        store_n(a, i, x, n)


@njit(inline="always")
def get(a, i, n):
    """a[i : i + n] (n > 0) as a vector, zeros past n: a plain load where the whole vector lies inside,
    masked only at the ragged end. AVX2 has no cheap masked store (Zen 3 microcodes it): with a masked
    load and store for every piece, the loss took 1.5x and forward + backward 1.04-1.18x as long on an AMD
    EPYC. `put` does the same."""
    return load_part(a, i, n >= LANES, n)


@njit(inline="always")
def put(a, i, x, n):
    """a[i : i + n] = the first n lanes of x (n > 0), as `get`."""
    store_part(a, i, x, n >= LANES, n)


@intrinsic
def splat(typingctx, x):
    """x in every lane."""

    def codegen(context, builder, sig, args):
        return _spread(builder, args[0], _VEC)

    return f32x16(types.float32), codegen


@intrinsic
def muladd(typingctx, acc, s, m):
    """acc + s * m lane by lane: the product rounded, then the sum (no fused multiply-add)."""

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], builder.fmul(args[1], args[2]))

    return f32x16(f32x16, f32x16, f32x16), codegen


def _row(context, builder, arr, aty, i, j):
    """Pointer to arr[i, j] (any strides) as a pointer to a vector."""
    p = cgutils.get_item_pointer2(
        context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape, 2),
        cgutils.unpack_tuple(builder, arr.strides, 2), aty.layout, [i, j],
    )  # fmt: skip
    return builder.bitcast(p, _VEC.as_pointer())


def _transpose_tile(w: int):
    """The intrinsic transpose{w}(a, z, s, out, i, j), for w = 16 or 8:

    out[j + c, i + r] = a[i + r, j + c] + z[i + r, j + c] * s (a alone where s == 0 or z is None) for the
    r, c < w inside a (m, n): one w x w tile, its rows loaded as vectors and transposed in registers by
    rounds of two-row shuffles (each swaps the off-diagonal blocks of one size: w/2, ..., 2, 1). z has a's
    shape. Where out's rows have room for a whole vector from column i (a padded transpose:
    kernels._transposed), each row of the tile is one plain store, rows past m giving zeros; elsewhere
    masked stores write only the tile. Rows past m are read from row m - 1. AVX2 has no cheap masked store
    (Zen 3 microcodes it): with masked stores throughout, transposing a 46 x 138 matrix took 3x as long on
    an AMD EPYC (the tiles alone, 8 x 8). Loads are plain where the tile's columns are all inside a, and z
    is loaded only where s != 0 and z is not None: the padded transposes of GRU 46's U and V
    (kernels._transposed, z None, 8 x 8) in 0.55-0.61x the time of masked loads of a and z throughout."""
    vec, mask_ty, i64 = ir.VectorType(_F, w), ir.VectorType(ir.IntType(1), w), ir.IntType(64)
    mload, mstore = f"llvm.masked.load.v{w}f32.p0", f"llvm.masked.store.v{w}f32.p0"

    def first(builder, n):  # the mask of lanes 0..min(n, w) - 1
        n = builder.select(builder.icmp_signed("<", n, ir.Constant(i64, w)), n, ir.Constant(i64, w))
        return _first(builder, n, w)

    def transpose(typingctx, a, z, s, out, i, j):
        def codegen(context, builder, sig, args):
            aty, zty, _, oty = sig.args[:4]
            src = context.make_array(aty)(context, builder, args[0])
            noise = None
            if not isinstance(zty, types.NoneType):
                noise = context.make_array(zty)(context, builder, args[1])
            dst = context.make_array(oty)(context, builder, args[3])
            i, j = args[4], args[5]
            m, n = cgutils.unpack_tuple(builder, src.shape, 2)
            width = cgutils.unpack_tuple(builder, dst.shape, 2)[1]

            def at(arr, ty, r, c):
                return builder.bitcast(_row(context, builder, arr, ty, r, c), vec.as_pointer())

            rows, cols = builder.sub(m, i), builder.sub(n, j)  # left in a from (i, j)
            in_cols, in_rows = first(builder, cols), first(builder, rows)
            zero = ir.Constant(vec, [0.0] * w)
            noisy = builder.fcmp_unordered("!=", args[2], ir.Constant(_F, 0.0))  # as Python's s != 0
            sv = _spread(builder, args[2], vec)
            align = ir.Constant(_I32, 4)
            below = [builder.add(i, ir.Constant(i64, r)) for r in range(w)]  # the tile's rows in a
            inside = [builder.icmp_signed("<", row, m) for row in below]
            last = builder.sub(m, ir.Constant(i64, 1))
            below = [builder.select(ok, row, last) for ok, row in zip(inside, below, strict=True)]

            def tile_rows(arr, ty, plain):  # plain loads where the tile's w columns are all inside a
                ptrs = [at(arr, ty, row, j) for row in below]
                if plain:
                    return [builder.load(p, align=4) for p in ptrs]
                return [_masked(builder, mload, vec, [p, align, in_cols, zero]) for p in ptrs]

            def either(cond, then, otherwise):  # the vectors of then() where cond, else of otherwise()
                with builder.if_else(cond) as (yes, no):
                    with yes:
                        a, block_a = then(), builder.block
                    with no:
                        b, block_b = otherwise(), builder.block
                out = []
                for x, y in zip(a, b, strict=True):
                    out.append(builder.phi(vec))
                    out[-1].add_incoming(x, block_a)
                    out[-1].add_incoming(y, block_b)
                return out

            def loads(plain):  # z is loaded only where s != 0 (z None: never)
                va = tile_rows(src, aty, plain)
                if noise is None:
                    return va
                return either(
                    noisy,
                    lambda: [
                        builder.fadd(x, builder.fmul(z, sv))
                        for x, z in zip(va, tile_rows(noise, zty, plain), strict=True)
                    ],
                    lambda: va,
                )

            full = builder.icmp_signed(">=", cols, ir.Constant(i64, w))
            vecs = either(full, lambda: loads(True), lambda: loads(False))
            vecs = [builder.select(ok, v, zero) for ok, v in zip(inside, vecs, strict=True)]
            d = w // 2
            while d:
                new = list(vecs)
                for r in range(w):
                    if r & d:
                        continue
                    lo = [c if not c & d else w + c - d for c in range(w)]
                    hi = [c + d if not c & d else w + c for c in range(w)]
                    for q, order in ((r, lo), (r + d, hi)):
                        idx = ir.Constant(ir.VectorType(_I32, w), order)
                        new[q] = builder.shuffle_vector(vecs[r], vecs[r + d], idx)
                vecs = new
                d //= 2
            room = builder.icmp_signed("<=", builder.add(i, ir.Constant(i64, w)), width)
            with builder.if_else(room) as (whole, masked):
                with whole:
                    for c in range(w):
                        col = builder.add(j, ir.Constant(i64, c))
                        with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, c), cols)):
                            builder.store(vecs[c], at(dst, oty, col, i), align=4)
                with masked:
                    for c in range(w):
                        inside = builder.icmp_signed("<", ir.Constant(i64, c), cols)
                        col = builder.select(inside, builder.add(j, ir.Constant(i64, c)), j)  # a row of out
                        keep = builder.select(inside, in_rows, ir.Constant(mask_ty, [0] * w))
                        _masked(builder, mstore, ir.VoidType(), [vecs[c], at(dst, oty, col, i), align, keep])
            return context.get_dummy_value()

        return types.none(a, z, types.float32, out, types.intp, types.intp), codegen

    transpose.__name__ = transpose.__qualname__ = f"transpose{w}"
    return intrinsic(transpose)


transpose16, transpose8 = _transpose_tile(16), _transpose_tile(8)


# --- float64 sums of squares: 16 float64 lanes a norm's running sums keep in registers (optim._add_squares)

_VEC64 = ir.VectorType(ir.DoubleType(), LANES)


F64x16 = _vector_type("F64x16", "f64x16", _VEC64)
f64x16 = F64x16()


@intrinsic
def load64(typingctx, a, i):
    """a[i : i + 16] of a float64 array as a vector."""

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], *args, _VEC64), align=8)

    return f64x16(a, types.intp), codegen


@intrinsic
def store64(typingctx, a, i, x):
    """a[i : i + 16] = x (a float64 array)."""

    def codegen(context, builder, sig, args):
        builder.store(args[2], _address(context, builder, sig.args[0], args[0], args[1], _VEC64), align=8)
        return context.get_dummy_value()

    return types.none(a, types.intp, f64x16), codegen


@intrinsic
def add_squares(typingctx, acc, x, i):
    """acc + float64(x[i : i + 16]) ** 2 lane by lane (x float32): each square rounded, then the sum."""

    def codegen(context, builder, sig, args):
        x = builder.load(_address(context, builder, sig.args[1], args[1], args[2]), align=4)
        v = builder.fpext(x, _VEC64)
        return builder.fadd(args[0], builder.fmul(v, v))

    return f64x16(f64x16, x, types.intp), codegen


# --- arithmetic: the operators on vectors (a float32 scalar on either side goes to every lane), so the
# kernels' element-wise formulas run unchanged on a scalar or on 16 lanes at once. Each operator is the
# LLVM instruction numba emits for the scalar (comparisons ordered but for !=, negation as -0.0 - x): the
# same IEEE result in every lane.


Mask16 = _vector_type("Mask16", "mask16", _MASK)
mask16 = Mask16()


def _operands(x, y) -> bool:
    """Whether (x, y) is a vector operation: a vector and a vector or a float32."""
    both = (x, y)
    vector = any(isinstance(t, F32x16) for t in both)
    return vector and all(isinstance(t, F32x16) or t == types.float32 for t in both)


def _binary(emit, result):
    @intrinsic
    def op(typingctx, x, y):
        if not _operands(x, y):
            return None

        def codegen(context, builder, sig, args):
            a, b = (_lanes_of(builder, t, v) for t, v in zip(sig.args, args, strict=True))
            return emit(builder, a, b)

        return result(x, y), codegen

    return op


_ARITH = {
    operator.add: lambda b, x, y: b.fadd(x, y),
    operator.sub: lambda b, x, y: b.fsub(x, y),
    operator.mul: lambda b, x, y: b.fmul(x, y),
    operator.truediv: lambda b, x, y: b.fdiv(x, y),
}
_COMPARE = {
    operator.lt: lambda b, x, y: b.fcmp_ordered("<", x, y),
    operator.gt: lambda b, x, y: b.fcmp_ordered(">", x, y),
    operator.le: lambda b, x, y: b.fcmp_ordered("<=", x, y),
    operator.ge: lambda b, x, y: b.fcmp_ordered(">=", x, y),
    operator.eq: lambda b, x, y: b.fcmp_ordered("==", x, y),
    operator.ne: lambda b, x, y: b.fcmp_unordered("!=", x, y),
}


def _register(pyop, intr):
    @overload(pyop)
    def _vector_op(x, y):
        if _operands(x, y):
            return lambda x, y: intr(x, y)


for _op, _emit in _ARITH.items():
    _register(_op, _binary(_emit, f32x16))
for _op, _emit in _COMPARE.items():
    _register(_op, _binary(_emit, mask16))


@intrinsic
def _negate(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.fsub(ir.Constant(_VEC, [-0.0] * LANES), args[0])

    return f32x16(f32x16), codegen


@overload(operator.neg)
def _vector_neg(x):
    if isinstance(x, F32x16):
        return lambda x: _negate(x)


def where(c, x, y):
    """x where c holds, else y: `x if c else y` for a bool, lane by lane for a vector comparison."""
    return x if c else y


@intrinsic
def _select(typingctx, c, x, y):
    if not (isinstance(c, Mask16) and all(isinstance(t, F32x16) or t == types.float32 for t in (x, y))):
        return None

    def codegen(context, builder, sig, args):
        a, b = (_lanes_of(builder, t, v) for t, v in zip(sig.args[1:], args[1:], strict=True))
        return builder.select(args[0], a, b)

    return f32x16(c, x, y), codegen


@overload(where)
def _where(c, x, y):
    if isinstance(c, Mask16):
        return lambda c, x, y: _select(c, x, y)
    if isinstance(c, types.Boolean):
        return lambda c, x, y: x if c else y


def _llvm_unary(name):
    """An intrinsic: the LLVM vector intrinsic `name` of one <16 x float>."""

    @intrinsic
    def op(typingctx, x):
        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(_VEC, [_VEC])
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)

        return f32x16(f32x16), codegen

    return op


def _lane_wise(fn, vector, scalar):
    """Make `fn` (a Python stub of one argument named x) compile to `vector` for a vector argument and to
    `scalar` (a function of x) for a float."""

    @overload(fn)
    def _impl(x):
        if isinstance(x, F32x16):
            return lambda x: vector(x)
        if isinstance(x, types.Float):
            return scalar


def floor(x):
    """np.floor of a float32 or of each lane."""
    return np.floor(x)


def fabs(x):
    """abs of a float32, or of each lane (the sign bit cleared, as numba's abs)."""
    return abs(x)


def sqrt(x):
    """np.sqrt of a float32, or of each lane (IEEE: correctly rounded, as the scalar's)."""
    return np.sqrt(x)


_lane_wise(floor, _llvm_unary("llvm.floor.v16f32"), lambda x: np.floor(x))
_lane_wise(fabs, _llvm_unary("llvm.fabs.v16f32"), lambda x: abs(x))
_lane_wise(sqrt, _llvm_unary("llvm.sqrt.v16f32"), lambda x: np.sqrt(x))


def _reduced(m, name: str):
    """An intrinsic's signature and codegen: a bool from the LLVM reduction `name` of a lane mask m."""
    if not isinstance(m, Mask16):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(1), [_MASK])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)

    return types.boolean(m), codegen


@intrinsic
def any_lane(typingctx, m):
    """Whether some lane of a comparison holds."""
    return _reduced(m, "llvm.vector.reduce.or.v16i1")


@intrinsic
def all_lanes(typingctx, m):
    """Whether every lane of a comparison holds."""
    return _reduced(m, "llvm.vector.reduce.and.v16i1")


def pow2(x):
    """2.0 ** x for a whole float32 x in [-126, 127], or of each lane: x + 127 put in the exponent bits."""
    return np.float32(2.0) ** x


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (free: a register reinterpretation)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _F)

    return types.float32(types.int32), codegen


@intrinsic
def _pow2_16(typingctx, n):
    def codegen(context, builder, sig, args):
        i32s = ir.VectorType(_I32, LANES)
        e = builder.add(builder.fptosi(args[0], i32s), ir.Constant(i32s, [127] * LANES))
        return builder.bitcast(builder.shl(e, ir.Constant(i32s, [23] * LANES)), _VEC)

    return f32x16(f32x16), codegen


_lane_wise(pow2, _pow2_16, lambda x: _f32_from_bits(np.int32((np.int32(x) + 127) << 23)))
