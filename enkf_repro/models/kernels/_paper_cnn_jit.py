"""Triton kernels of the paper's CNN (see ``paper_cnn_triton`` for the layouts, the math and
the costs; call them through that module).

This file is executed as a fresh module once per mode (compiled, or Triton's interpreter when
``TRITON_INTERPRET=1``), because ``@triton.jit`` chooses the mode when it decorates. For the
same reason the kernels call only Triton builtins and jit functions of this file (see _sum).
Constexpr codes: ACT 0 logistic, 1 relu, 2 tanh; PREC 0 IEEE fp32, 1 tf32, 2 bf16, 3 tf32x3;
EMULATE: interpreter mode (tensor-core operand rounding emulated, see _mma).
"""

import triton
import triton.language as tl


@triton.jit
def _act(v, ACT: tl.constexpr):
    """0 logistic, 1 relu, 2 tanh (fp32)."""
    if ACT == 0:
        r = 1.0 / (1.0 + tl.exp(-v))
    elif ACT == 1:
        r = tl.maximum(v, 0.0)
    else:
        e = tl.exp(-2.0 * tl.abs(v))         # tanh|v| = (1 - e) / (1 + e), no overflow
        r = (1.0 - e) / (1.0 + e)
        r = tl.where(v < 0, -r, r)
    return r


@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum(x, axis). Only builtins are used in these kernels (tl.full, not tl.zeros; this,
    not tl.sum): the library's own jit functions are decorated when triton is imported, and the
    interpreter cannot call them if that happened before TRITON_INTERPRET was set."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _round_bf16(x):
    """fp32 x rounded to the nearest bfloat16 (ties to even), kept in fp32: the interpreter's
    fp32 -> bf16 cast truncates, the GPU's rounds to nearest."""
    u = x.to(tl.uint32, bitcast=True)
    u = u + (0x7FFF + ((u >> 16) & 1))
    u = (u >> 16) << 16
    return u.to(tl.float32, bitcast=True)


@triton.jit
def _tf32_trunc(x):
    """fp32 x with its 13 low mantissa bits cleared: the tf32 value the tensor cores read from
    an fp32 operand (kept in fp32)."""
    u = x.to(tl.uint32, bitcast=True)
    return (u & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _tf32_round(x):
    """fp32 x rounded to the nearest tf32 value, ties away from zero (cvt.rna.tf32.f32, what the
    3xTF32 split uses for its high part), kept in fp32."""
    u = x.to(tl.uint32, bitcast=True)
    return ((u + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr, EMULATE: tl.constexpr):
    """acc + a @ b with fp32 accumulation. PREC: 0 IEEE fp32, 1 tf32, 2 bf16 operands,
    3 tf32x3 (three tf32 products: about fp32 accuracy on the tensor cores).

    EMULATE (the interpreter, whose tl.dot computes every mode in fp32) rounds the operands as
    the tensor cores do and multiplies the rounded values exactly in fp32 (a product of two
    tf32 or two bf16 values fits in fp32): bf16 to nearest even; tf32 by truncation; tf32x3 as
    Triton splits it, a = big + small with big = tf32 to nearest, small = a - big read as tf32,
    acc + small_a big_b + big_a small_b + big_a big_b."""
    if PREC == 2:
        if EMULATE:
            a = _round_bf16(a.to(tl.float32))
            b = _round_bf16(b.to(tl.float32))
            r = tl.dot(a, b, acc, input_precision="ieee")
        else:
            r = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PREC == 1:
        if EMULATE:
            r = tl.dot(_tf32_trunc(a), _tf32_trunc(b), acc, input_precision="ieee")
        else:
            r = tl.dot(a, b, acc, input_precision="tf32")
    elif PREC == 3:
        if EMULATE:
            a_big = _tf32_round(a)
            b_big = _tf32_round(b)
            small = tl.dot(_tf32_trunc(a - a_big), b_big, input_precision="ieee")
            small = tl.dot(a_big, _tf32_trunc(b - b_big), small, input_precision="ieee")
            r = tl.dot(a_big, b_big, acc + small, input_precision="ieee")
        else:
            r = tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        r = tl.dot(a, b, acc, input_precision="ieee")
    return r


@triton.jit
def conv1_pool_act_kernel(
    x_ptr, w_ptr, h_ptr,            # x (B, 784) fp32; W rows; h (Jc, B, 144, 10)
    M, N, stride_w, stride_h,       # M = B*144, N = Jc*10, row stride of W, B*1440
    ACT: tl.constexpr, PREC: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)   # m = b*144 + 12*i + k
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)   # n = member*10 + channel
    m_ok = rm < M
    n_ok = rn < N
    b = rm // 144                                              # image
    i = (rm % 144) // 12                                       # pooled row
    k = rm % 12                                                # pooled column
    member = (rn // 10).to(tl.int64)
    c = rn % 10                                                # conv1 output channel
    x_row = x_ptr + (b * 784 + i * 56 + k * 2)                 # x[b, 2i, 2k]: top-left of the patch
    w_col = w_ptr + member * stride_w + c * 25                 # conv1.weight[c, 0, 0, 0] of the member
    acc00 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)       # conv1 at pixel (2i,   2k)
    acc01 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)       #                (2i,   2k+1)
    acc10 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)       #                (2i+1, 2k)
    acc11 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)       #                (2i+1, 2k+1)
    for t0 in tl.static_range(0, 32, BLOCK_K):
        rt = t0 + tl.arange(0, BLOCK_K)                        # tap t = 5*u + v (25 of 32 used)
        t_ok = rt < 25
        # im2col tile: x[b, 2i + dy + u, 2k + dx + v] = x_row + 28*u + v + (28*dy + dx)
        a_ptrs = x_row[:, None] + ((rt // 5) * 28 + rt % 5)[None, :]
        a_mask = m_ok[:, None] & t_ok[None, :]
        # conv1.weight[c, 0, u, v] of each column's member: a (BLOCK_K taps x BLOCK_N) tile
        w = tl.load(w_col[None, :] + rt[:, None], mask=t_ok[:, None] & n_ok[None, :], other=0.0)
        acc00 = _mma(tl.load(a_ptrs, mask=a_mask, other=0.0), w, acc00, PREC, EMULATE)
        acc01 = _mma(tl.load(a_ptrs + 1, mask=a_mask, other=0.0), w, acc01, PREC, EMULATE)
        acc10 = _mma(tl.load(a_ptrs + 28, mask=a_mask, other=0.0), w, acc10, PREC, EMULATE)
        acc11 = _mma(tl.load(a_ptrs + 29, mask=a_mask, other=0.0), w, acc11, PREC, EMULATE)
    # 2x2 max-pool, then the activation (act(max) = max(act) for a non-decreasing act)
    hv = _act(tl.maximum(tl.maximum(acc00, acc01), tl.maximum(acc10, acc11)), ACT)
    if PREC == 2:
        if EMULATE:
            hv = _round_bf16(hv)                               # as the GPU's cast rounds
    # h[member, b, i, k, c], channels-last per member
    h_ptrs = h_ptr + member[None, :] * stride_h + (rm * 10)[:, None] + c[None, :]
    tl.store(h_ptrs, hv.to(h_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _fc_class(fc_ptr, f_off, f_mask, o00, o01, o10, o11, POOL: tl.constexpr):
    """Per image of the block: sum over positions and channels of o * fc.weight[class]."""
    if POOL:
        # o00 holds the pooled output; fc.weight[n, 16*c + 4*i + k]
        t = o00 * tl.load(fc_ptr + f_off, mask=f_mask, other=0.0)[None, :, :]
    else:
        # fc.weight[n, 64*c + 8*oh + ow] at (oh, ow) = (2i, 2k) + (dy, dx)
        t = o00 * tl.load(fc_ptr + f_off, mask=f_mask, other=0.0)[None, :, :]
        t += o01 * tl.load(fc_ptr + f_off + 1, mask=f_mask, other=0.0)[None, :, :]
        t += o10 * tl.load(fc_ptr + f_off + 8, mask=f_mask, other=0.0)[None, :, :]
        t += o11 * tl.load(fc_ptr + f_off + 9, mask=f_mask, other=0.0)[None, :, :]
    return _sum(_sum(t, 2), 1)


@triton.jit
def conv2_act_fc_kernel(
    h_ptr, w_ptr, out_ptr,          # h (Jc, B, 144, 10); W rows; logits (Jc, B, 10) fp32
    Jc, B, stride_w, stride_h, n_blocks,  # members, images, row stride of W, B*1440, cdiv(B, IMGS)
    ACT: tl.constexpr, POOL: tl.constexpr, PREC: tl.constexpr, EMULATE: tl.constexpr,
    IMGS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    # last member first: kernel A wrote h roughly in member order, so the most recently
    # written (most likely still in L2) is read first
    member = (Jc - 1 - pid // n_blocks).to(tl.int64)
    first = (pid % n_blocks) * IMGS                            # first image of the block
    rr = tl.arange(0, IMGS * 16)                               # row = (image, 4i + k)
    img = first + rr // 16
    pi = (rr % 16) // 4                                        # window row i (0..3)
    pk = rr % 4                                                # window column k (0..3)
    r_ok = img < B
    ro = tl.arange(0, 32)                                      # conv2 output channel (20 used)
    o_ok = ro < 20
    # h[member, img, 2i, 2k, 0]: conv2's output pixel (2i, 2k) reads h[2i + kh, 2k + kw, c]
    a_base = h_ptr + member * stride_h + img * 1440 + pi * 240 + pk * 20
    w2_ptr = w_ptr + member * stride_w + 250                   # conv2.weight of the member
    acc00 = tl.full((IMGS * 16, 32), 0.0, tl.float32)        # output pixels (2i,   2k)
    acc01 = tl.full((IMGS * 16, 32), 0.0, tl.float32)        #               (2i,   2k+1)
    acc10 = tl.full((IMGS * 16, 32), 0.0, tl.float32)        #               (2i+1, 2k)
    acc11 = tl.full((IMGS * 16, 32), 0.0, tl.float32)        #               (2i+1, 2k+1)
    for k0 in range(0, 256, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)                        # kk = 50*kh + 10*kw + c
        k_ok = kk < 250
        kh = kk // 50
        kwc = kk % 50                                          # 10*kw + c
        # conv2.weight[o, c, kh, kw] as a (BLOCK_K x 32) tile
        w = tl.load(w2_ptr + (ro * 250)[None, :] + ((kwc % 10) * 25 + kh * 5 + kwc // 10)[:, None],
                    mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        # im2col tile: h[2i + dy + kh, 2k + dx + kw, c] = a_base + 120*kh + 10*kw + c + shift
        # kk and kk + 1 (kk even) are neighbours in h at an 8-byte aligned address (every term
        # of the offset is even, h is 16-byte aligned and B*1440 a multiple of 16): compiled for
        # sm_90 the gather copies pairs (8-byte cp.async; 16 bytes cannot be proven: 50 and the
        # shift 10 are not multiples of 4)
        a_ptrs = a_base[:, None] + (kh * 120 + kwc)[None, :]
        a_mask = r_ok[:, None] & k_ok[None, :]
        acc00 = _mma(tl.load(a_ptrs, mask=a_mask, other=0.0), w, acc00, PREC, EMULATE)
        acc01 = _mma(tl.load(a_ptrs + 10, mask=a_mask, other=0.0), w, acc01, PREC, EMULATE)
        acc10 = _mma(tl.load(a_ptrs + 120, mask=a_mask, other=0.0), w, acc10, PREC, EMULATE)
        acc11 = _mma(tl.load(a_ptrs + 130, mask=a_mask, other=0.0), w, acc11, PREC, EMULATE)
    # fc, fused: logits[img, n] = sum over (position, channel) of o * fc.weight[n]
    fc_ptr = w_ptr + member * stride_w + 5250                  # fc.weight of the member
    rp = tl.arange(0, 16)                                      # 4i + k
    f_mask = (rp < 16)[:, None] & o_ok[None, :]                # zero on padded channels
    if POOL:
        o00 = _act(tl.maximum(tl.maximum(acc00, acc01), tl.maximum(acc10, acc11)), ACT)
        o00 = tl.reshape(o00, (IMGS, 16, 32))                  # (image, 4i + k, channel)
        o01 = o00
        o10 = o00
        o11 = o00
        f_off = (ro * 16)[None, :] + rp[:, None]               # 16*c + 4i + k
        flat = 320
    else:
        o00 = tl.reshape(_act(acc00, ACT), (IMGS, 16, 32))
        o01 = tl.reshape(_act(acc01, ACT), (IMGS, 16, 32))
        o10 = tl.reshape(_act(acc10, ACT), (IMGS, 16, 32))
        o11 = tl.reshape(_act(acc11, ACT), (IMGS, 16, 32))
        f_off = (ro * 64)[None, :] + ((rp // 4) * 16 + (rp % 4) * 2)[:, None]  # 64c + 8(2i) + 2k
        flat = 1280
    out_img = first + tl.arange(0, IMGS)
    out_ptrs = out_ptr + (member * B + out_img) * 10
    for n in tl.static_range(10):                              # the 10 classes
        s = _fc_class(fc_ptr + n * flat, f_off, f_mask, o00, o01, o10, o11, POOL)
        tl.store(out_ptrs + n, s, mask=out_img < B)
