"""What the kernels compile to for a GPU architecture, read without a GPU.

``triton.compile`` runs the whole pipeline (front end, layouts, LLVM, ptxas) for a target given
by name, so the binary of every kernel configuration can be inspected on any machine with
Triton's NVIDIA backend: the tensor-core instruction and how the warps share the tile, the
shared memory a program needs (and so how many programs fit on one SM), registers and spills
(``ptxas -v``), and how wide the loads of the im2col operand are.

    python scripts/sm90_report.py            # the table of every configuration, every precision
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter

from . import paper_cnn_triton as K

SM90_SHARED_PER_SM = 228 * 1024          # bytes of shared memory per SM on Hopper (227 KB per block)
SM90_REGISTERS_PER_SM = 65536


def compile_kernel(config, precision: str, pool_conv2: bool = False, activation: int = 2, arch: int = 90,
                   aligned_w: bool = True):
    """The compiled kernel (``triton.compiler.CompiledKernel``) of one configuration for
    ``sm_<arch>``; needs no device. Kernel A for a :class:`Conv1Config`, B for a :class:`Conv2Config`.
    ``aligned_w=False``: the variant for a chunk of U that starts at an odd row (the rows of U
    are 72,200 bytes apart, so only even rows are 16-byte aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = K._kernels()
    if kernels.emulate:
        raise RuntimeError("compile_kernel needs compiled kernels: unset TRITON_INTERPRET")
    prec = K.PRECISIONS.index(precision)
    h = "*bf16" if precision == "bf16" else "*fp32"
    if isinstance(config, K.Conv1Config):
        kernel = kernels.conv1
        sig = {"x_ptr": "*fp32", "w_ptr": "*fp32", "h_ptr": h, "M": "i32", "N": "i32", "stride_w": "i32",
               "stride_h": "i32"}
        const = {"ACT": activation, "PREC": prec, "EMULATE": False, "BLOCK_M": config.block_m,
                 "BLOCK_N": config.block_n, "BLOCK_K": config.block_k}
    else:
        kernel = kernels.conv2
        sig = {"h_ptr": h, "w_ptr": "*fp32", "out_ptr": "*fp32", "Jc": "i32", "B": "i32", "stride_w": "i32",
               "stride_h": "i32", "n_blocks": "i32"}
        const = {"ACT": activation, "POOL": pool_conv2, "PREC": prec, "EMULATE": False,
                 "IMGS": config.images, "BLOCK_K": config.block_k}
    sig.update(dict.fromkeys(const, "constexpr"))
    # what the launcher specialises on at run time: 16-byte aligned buffers (torch allocations,
    # and the rows of U at an even chunk start) and B * 1440 (a multiple of 16)
    names = list(sig)
    aligned = [n for n in ("x_ptr", "w_ptr", "h_ptr", "out_ptr", "stride_h") if n in sig
               and (aligned_w or n != "w_ptr")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    return triton.compile(ASTSource(kernel, sig, const, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def ptxas_report(ptx: str, arch: int = 90) -> dict:
    """Registers per thread and spill bytes from ``ptxas -v`` (Triton's bundled ptxas)."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        suffix = "a" if arch == 90 else ""
        err = subprocess.run([knobs.nvidia.ptxas.path, "-v", f"--gpu-name=sm_{arch}{suffix}", path, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    regs = [int(n) for n in re.findall(r"Used (\d+) registers", err)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", err)] + \
             [int(n) for n in re.findall(r"(\d+) bytes spill loads", err)]
    if not regs or not spills:
        raise RuntimeError(f"unexpected ptxas -v output: {err.strip()[:300]}")
    return {"registers": max(regs), "spill_bytes": max(spills), "ptxas": err.strip()}


def describe(compiled, num_warps: int, arch: int = 90) -> dict:
    """The facts of one compiled kernel: tensor-core instruction(s) and warp layout of the
    accumulator, shared memory, programs per SM, registers, spills, global-load widths."""
    ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
    mma = re.search(r"nvidia_mma<\{versionMajor = (\d+), versionMinor = \d+, warpsPerCTA = \[([\d, ]+)\], "
                    r"instrShape = \[([\d, ]+)\]", ttgir)
    instr = sorted(set(re.findall(r"\b(wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+\.\w+\.\w+\.\w+"
                                  r"|mma\.sync\.aligned\.m\d+n\d+k\d+[\w.]*)", ptx)))
    async_sizes = Counter(int(n, 0) for n in re.findall(r"cp\.async\.\w+\.shared\.global[^;]*?, (0x[0-9a-f]+|\d+)"
                                                        r"(?:, %r\d+)?;", ptx))
    loads = Counter(m if m else "b32" for m in re.findall(r"ld\.global(?:\.\w+)*?\.(v[248])?\.?[bf]\d+", ptx))
    shared = int(compiled.metadata.shared)
    regs = ptxas_report(ptx, arch)
    threads = 32 * num_warps
    by_smem = SM90_SHARED_PER_SM // max(shared + 1024, 1)      # + 1 KB reserved per block
    by_regs = SM90_REGISTERS_PER_SM // max(regs["registers"] * threads, 1)
    return {
        "mma": (f"v{mma.group(1)} instr {mma.group(3).replace(' ', '')} warps {mma.group(2).replace(' ', '')}"
                if mma else "none (CUDA cores)"),
        "instructions": instr,
        "shared_bytes": shared,
        "registers": regs["registers"],
        "spill_bytes": regs["spill_bytes"],
        "blocks_per_sm": min(by_smem, by_regs, 32),
        "cp_async_bytes": dict(sorted(async_sizes.items())),
        "global_loads": dict(sorted(loads.items())),
    }


def report(configs=None, precisions=K.PRECISIONS, pool_conv2=(False,), activation: int = 2,
           arch: int = 90) -> list[dict]:
    """One row per (configuration, precision, pooling): :func:`describe` of its compiled kernel."""
    rows = []
    for config in configs or (K.CONV1_CONFIGS + K.CONV2_CONFIGS):
        pools = (False,) if isinstance(config, K.Conv1Config) else pool_conv2
        for precision in precisions:
            for pool in pools:
                c = compile_kernel(config, precision, pool, activation, arch)
                rows.append({"kernel": "conv1" if isinstance(config, K.Conv1Config) else "conv2",
                             "config": config.name, "precision": precision, "pool_conv2": pool,
                             **describe(c, config.num_warps, arch)})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| kernel | config | precision | pool | tensor-core tile (wgmma) | shared KB | blocks/SM | regs | "
            "spill B | cp.async bytes: count | global loads |")
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        cp = ", ".join(f"{k}: {v}" for k, v in r["cp_async_bytes"].items()) or "-"
        ld = ", ".join(f"{k}: {v}" for k, v in r["global_loads"].items()) or "-"
        inst = "; ".join(i.split(".")[4] for i in r["instructions"] if i.startswith("wgmma")) or "-"
        lines.append(f"| {r['kernel']} | {r['config']} | {r['precision']} | {'4x4' if r['pool_conv2'] else '8x8'} | "
                     f"{r['mma']} ({inst}) | {r['shared_bytes'] / 1024:.0f} | {r['blocks_per_sm']} | "
                     f"{r['registers']} | {r['spill_bytes']} | {cp} | {ld} |")
    return "\n".join(lines)
