"""The ensemble engine: outputs G(u_j) of all J members on one batch.

Members are evaluated a chunk at a time (``ensemble.chunk_size`` members per batched call), so
peak memory is the ensemble matrix plus one chunk's intermediates, whatever J is. The forward
may run in fp32, tf32 or bf16 (``ensemble.precision``); outputs are always returned in fp32.

Fused kernels are trusted only after they proved themselves (:class:`FusedGate`): on first use
per device, model, precision and kernel configuration they are checked against the PyTorch
path in float64 on one small chunk; what fails falls back to the PyTorch path (``kernel=auto``,
one line on stderr, once per process and device) or is a one-line error (``kernel=triton``).

Memory: :func:`forward_memory` estimates what a forward holds at its peak (the outputs and one
chunk's intermediates) before anything is allocated (``runs/memory.py`` plans a run with it). An
out-of-memory error during a forward halves the chunk once, says so in one line on stderr and
goes on; a second one is an ``OutOfMemory`` error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import torch

from ..config.schema import name_of
from ..errors import ConfigError, OutOfMemory
from .base import ModelSpec

CPU_CHUNK = 16                 # members per call on CPU: a chunk's intermediates stay in cache
CUDA_BUDGET_BYTES = 2 << 30    # upper bound on the intermediates of a chunk on CUDA


def resolve_device(device) -> torch.device:
    name = name_of(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "auto or cpu: no CUDA device is visible to torch here")
    return torch.device(name)


def auto_chunk_size(model: ModelSpec, batch: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, CUDA_BUDGET_BYTES // max(1, model.activation_bytes(batch)))
    return CPU_CHUNK


def planned_chunk(model: ModelSpec, batch: int, device: torch.device, chunk_size: int | None = None) -> int:
    """The most members per call the engine uses for ``batch`` images: ``ensemble.chunk_size``,
    else 16 on CPU, else on CUDA the memory budget's cap (the timed choice and the fused
    kernels' chunk stay within it)."""
    return int(chunk_size) if chunk_size else auto_chunk_size(model, batch, torch.device(device))


def forward_memory(model: ModelSpec, members: int, batch: int, classes: int, device: torch.device | str,
                   chunk_size: int | None = None, precision: str = "fp32") -> dict[str, int]:
    """Bytes the forward of ``members`` networks on ``batch`` images holds at its peak, by what
    holds them: the outputs (members x batch x classes, fp32) and one chunk's intermediates
    (``ModelSpec.activation_bytes`` per member; half of them under bf16)."""
    chunk = max(1, min(int(members), planned_chunk(model, batch, torch.device(device), chunk_size)))
    per_member = model.activation_bytes(batch)
    if name_of(precision) == "bf16":
        per_member //= 2
    return {f"forward outputs ({members} x {batch} x {classes}, fp32)": 4 * int(members) * batch * classes,
            f"forward chunk ({chunk} members on {batch} images)": chunk * per_member}


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError or the CPU allocator's RuntimeError."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device):
    """fp32: exact fp32 matmuls and convolutions; tf32: TensorFloat-32 allowed on CUDA;
    bf16: autocast to bfloat16."""
    precision = name_of(precision)
    if device.type != "cuda":
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def fused_available(model: ModelSpec) -> bool:
    """Whether ``model`` has fused kernels that can run here (Triton importable; CUDA or the
    interpreter)."""
    return hasattr(model, "fused_forward") and model.fused_available()


def resolve_kernel(kernel: str, model: ModelSpec, device: torch.device) -> str:
    """``ensemble.kernel`` -> "triton" or "torch" (auto: the fused kernels on CUDA where they exist)."""
    kernel = name_of(kernel)
    if kernel == "torch":
        return "torch"
    if kernel == "triton":
        if not fused_available(model):
            raise ConfigError("ensemble.kernel", "triton", f"auto or torch: no fused kernels for model "
                              f"{model.name} on {device.type} here (they need Triton and CUDA)")
        return "triton"
    return "triton" if device.type == "cuda" and fused_available(model) else "torch"


# Chunk sizes timed on CUDA, per (device, model, batch, precision, kernel): members per call.
_PROBED: dict[tuple, int] = {}
PROBE_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)


def probe_chunk(run_chunk, candidates, timer=None, per_member: bool = True) -> int:
    """The candidate chunk size with the least time per member (``per_member=False``: the least
    time): ``run_chunk(n)`` evaluates n members once (or the whole ensemble in chunks of n);
    each candidate is run once to warm up, then timed twice (best of two)."""

    def default_timer(n):
        run_chunk(n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_chunk(n)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    timer = timer or default_timer
    best, best_rate = candidates[0], float("inf")
    for n in candidates:
        t = min(timer(n), timer(n))
        rate = t / n if per_member else t
        if rate < best_rate:
            best, best_rate = n, rate
    return best


# Normwise error of the forward's logits against float64 (max |got - ref| / max |ref|) that each
# precision stands for, on the GPU: fp32 means fp32 accuracy whatever the route (IEEE products,
# or three tf32 products on the tensor cores); tf32 and bf16 are tensor-core precisions.
PRECISION_TOLERANCE = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2}
CHECK_MEMBERS = 32           # members of the chunk on which fused kernels prove themselves
FUSED_MAX_CHUNKS = 16        # the fused forward of J members takes at most this many chunks (where
FUSED_PROBE_SIZES = (256, 512, 1024, 2048, 4096, 8192)   # memory allows): host cost is bounded

_REJECTED: dict[tuple, str] = {}       # (device, model, precision) -> why the fused kernels are not used
_VERDICTS: dict[tuple, str | None] = {}  # (device, model, precision, configuration, batch) -> None or why
_NOTIFIED: set[str] = set()            # devices whose fallback line was printed
_STATIC: dict[str, str | None] = {}    # device -> missing prerequisite or untested Triton, or None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def model_key(model: ModelSpec) -> str:
    """The model as the kernel caches name it: name, activation, pooling."""
    parts = [model.name, str(getattr(model, "activation", ""))]
    if getattr(model, "pool_conv2", False):
        parts.append("pool_conv2")
    return ":".join(p for p in parts if p)


def _kernel_module(model: ModelSpec):
    """The fused-kernel module of ``model`` when the engine can tune it (the paper CNN), else None."""
    if model.name != "paper_cnn" or not hasattr(model, "activation"):
        return None
    from .kernels import paper_cnn_triton

    return paper_cnn_triton


def static_problem(device: torch.device) -> str | None:
    """Why fused kernels cannot be trusted on ``device`` before any is run: an untested Triton,
    or (on CUDA, compiled) a missing piece of what Triton needs to build its launcher. Cached."""
    from .kernels import paper_cnn_triton as K

    key = str(device)
    if key not in _STATIC:
        why = K.untested_triton()
        if why is None and device.type == "cuda" and not K.interpreting():
            missing = K.launcher_prerequisites()
            if missing:
                why = "Triton cannot build its kernel launcher: missing " + "; ".join(missing)
        _STATIC[key] = why
    return _STATIC[key]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"{torch.cuda.get_device_name(idx)} sm_{major}{minor}"
    return device.type


def _cache_file():
    from ..config.paths import cache_dir

    return cache_dir() / "kernels.json"


def _cache_load() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _cache_store(key: str, value: dict) -> None:
    """Merge one entry into the kernel cache file (written to a temporary name, then moved)."""
    path = _cache_file()
    try:
        data = _cache_load()
        data[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass   # a cache that cannot be written costs a measurement next time, nothing else


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FusedGate:
    """What the fused kernels of one engine run with, decided on first use and cached: the
    kernel mode of the precision (fp32: tf32x3 or IEEE fp32, the faster that is accurate
    enough), the kernel configurations and the chunk size, measured on CUDA (cached in the
    tool's cache folder per device name, torch and Triton versions, model, batch and
    precision) or the defaults elsewhere; and the verdict of the check against the PyTorch path
    in float64 on :data:`CHECK_MEMBERS` members."""

    def __init__(self, engine: "EnsembleForward"):
        self.engine = engine
        self.plans: dict[int, dict] = {}        # batch -> {"mode", "conv1", "conv2"}
        self.chunks: dict[tuple, int] = {}      # (batch, J) -> members per chunk

    # -- keys ---------------------------------------------------------------------------------
    def _cache_key(self, batch: int) -> str:
        from .kernels import paper_cnn_triton as K

        e = self.engine
        return (f"{device_name(e.device)}|torch {torch.__version__}|triton {K.triton_version()}|"
                f"{model_key(e.model)}|B{batch}|{e.precision}")

    # -- the plan -----------------------------------------------------------------------------
    def plan(self, U: torch.Tensor, x: torch.Tensor) -> dict | None:
        """{"mode", "chunk"} for this call, or None when the fused kernels are not to be used
        (``kernel=auto`` falls back; ``kernel=triton`` raises before returning)."""
        e = self.engine
        B = x.shape[0]
        rkey = (str(e.device), model_key(e.model), e.precision)
        if rkey in _REJECTED:
            return e._reject(_REJECTED[rkey])
        why = static_problem(e.device)
        if why is not None:
            return e._reject(why, rkey)
        try:
            plan = self.plans.get(B) or self._choose(U, x)
            self.plans[B] = plan
            chunk = self._chunk(U, x, plan)
            verdict = self._verify(U, x, plan, chunk)
        except Exception as ex:  # noqa: BLE001 - compile, launcher, out-of-resources: all end here
            return e._reject(f"{_first_line(ex)} (while preparing them)", rkey)
        if verdict is not None:
            return e._reject(verdict, rkey)
        return {"mode": plan["mode"], "chunk": chunk}

    def _choose(self, U: torch.Tensor, x: torch.Tensor) -> dict:
        e = self.engine
        K = _kernel_module(e.model)
        B = x.shape[0]
        if K is None:
            return {"mode": e.precision, "conv1": None, "conv2": None}
        measure = e.device.type == "cuda" and not K.interpreting()
        if measure:
            cached = _cache_load().get(self._cache_key(B))
            if cached and cached.get("mode"):
                try:
                    configs = (K.config_by_name(cached["conv1"]), K.config_by_name(cached["conv2"]))
                    K.use_configs(B, cached["mode"], e.model.pool_conv2, configs)
                    return cached
                except KeyError:
                    pass   # configurations of another version of the kernels: measure again
            n = min(U.shape[0], CHECK_MEMBERS)
            ref = e._reference(U[:n], x)
            chunk = e.chunk_size or min(U.shape[0], K.recommended_chunk(B, "fp32"))
            sel = K.select_mode(U, x, e.model.activation, e.model.pool_conv2, e.precision, ref, chunk)
            if sel["mode"] is None:
                why = "; ".join(f"{m}: " + (f"error {v['error']:.1e}" if "error" in v else
                                            ", ".join(f"{k} {r}" for k, r in v["failed"].items()) or "no config ran")
                                for m, v in sel["modes"].items())
                raise RuntimeError(f"no kernel mode qualifies for {e.precision} ({why})")
            configs = (K.config_by_name(sel["conv1"]), K.config_by_name(sel["conv2"]))
            K.use_configs(B, sel["mode"], e.model.pool_conv2, configs)
            plan = {"mode": sel["mode"], "conv1": sel["conv1"], "conv2": sel["conv2"], "ms": sel["ms"],
                    "modes": {m: {k: v.get(k) for k in ("ms", "error", "best")} for m, v in sel["modes"].items()}}
            _cache_store(self._cache_key(B), plan)
            return plan
        mode = K.ROUTES[e.precision][0]
        c1, c2 = K.default_configs(B, mode, e.model.pool_conv2)
        return {"mode": mode, "conv1": c1.name, "conv2": c2.name}

    def _chunk(self, U: torch.Tensor, x: torch.Tensor, plan: dict) -> int:
        """Members per chunk of the fused forward: ``ensemble.chunk_size``; else on CUDA the
        fastest whole forward among :data:`FUSED_PROBE_SIZES` and J that keep the number of
        chunks at most :data:`FUSED_MAX_CHUNKS` and the chunk's h within the memory budget
        (measured once per J, cached); else the kernels' recommendation."""
        e = self.engine
        B, J = x.shape[0], U.shape[0]
        if e.chunk_size:
            return e.chunk_size
        K = _kernel_module(e.model)
        default = K.recommended_chunk(B, plan["mode"]) if K is not None else CPU_CHUNK
        if e.device.type != "cuda" or K is None or K.interpreting():
            return min(J, default)
        if (B, J) in self.chunks:
            return self.chunks[(B, J)]
        key = self._cache_key(B)
        cached = (_cache_load().get(key) or {}).get("chunks", {}).get(str(J))
        if cached:
            self.chunks[(B, J)] = int(cached)
            return int(cached)
        per_member = B * K.H_PER_IMAGE * torch.finfo(K.h_dtype(plan["mode"])).bits // 8
        cap = max(1, CUDA_BUDGET_BYTES // per_member)
        least = -(-J // FUSED_MAX_CHUNKS)
        sizes = sorted({n for n in FUSED_PROBE_SIZES + (J,) if least <= n <= min(cap, J)}) or [min(cap, J)]

        def whole_forward(n):
            e.model.fused_forward(U, x, plan["mode"], n)

        best = probe_chunk(whole_forward, sizes, per_member=False)
        self.chunks[(B, J)] = best
        entry = _cache_load().get(key) or dict(plan)
        entry.setdefault("chunks", {})[str(J)] = best
        _cache_store(key, entry)
        return best

    def _verify(self, U: torch.Tensor, x: torch.Tensor, plan: dict, chunk: int) -> str | None:
        """None when the fused output of the first members matches the PyTorch path in float64
        at the precision's tolerance (once per device, model, precision, configuration, batch)."""
        e = self.engine
        vkey = (str(e.device), model_key(e.model), e.precision,
                f"{plan['mode']}:{plan.get('conv1')}:{plan.get('conv2')}", x.shape[0])
        if vkey in _VERDICTS:
            return _VERDICTS[vkey]
        n = min(U.shape[0], CHECK_MEMBERS)
        W = U[:n]
        try:
            got = e.model.fused_forward(W, x, plan["mode"], min(n, chunk))
            _sync(e.device)
        except Exception as ex:  # noqa: BLE001
            _VERDICTS[vkey] = f"{_first_line(ex)} (at their first launch)"
            return _VERDICTS[vkey]
        ref = e._reference(W, x)
        rows = torch.isfinite(ref).flatten(1).all(1)
        if not bool(rows.any()):
            return None                       # nothing finite to compare with: check again next time
        got, ref = got[rows.to(got.device)], ref[rows]
        tol = PRECISION_TOLERANCE[e.precision]
        diff = (got.double() - ref.to(got.device)).abs().max().item()
        err = diff / max(ref.abs().max().item(), 1e-30)
        if not err <= tol:   # NaN-safe
            _VERDICTS[vkey] = (f"their output differs from the PyTorch path in float64 by {err:.1e} "
                               f"(tolerance {tol:.0e} for {e.precision}, kernel mode {plan['mode']})")
        else:
            _VERDICTS[vkey] = None
        return _VERDICTS[vkey]


class EnsembleForward:
    """``G = forward(U, x)``: U (J, P), x (B, ...) -> outputs (J, B, C) in fp32 (fp64 when U is
    fp64, for reference computations). Members are evaluated a chunk at a time; with
    ``kernel="triton"`` (and ``"auto"`` on CUDA for models with fused kernels) by the fused
    kernels once they have proved themselves (:class:`FusedGate`), else by the model's PyTorch
    ``forward_chunk``. ``kernel`` is what is used now: ``"torch"`` after a fallback."""

    def __init__(self, model: ModelSpec, chunk_size: int | None = None, precision: str = "fp32",
                 compile: bool = False, device: torch.device | str = "cpu", kernel: str = "torch"):
        self.model = model
        self.chunk_size = chunk_size
        self.precision = name_of(precision)
        self.device = torch.device(device)
        self.requested = name_of(kernel)
        self.kernel = resolve_kernel(kernel, model, self.device)
        self.gate = FusedGate(self)
        self.fused_mode: str | None = None      # the kernel mode of the last fused forward
        self._fused_chunk: int | None = None
        self._last_chunk: int | None = None     # members per call of the last forward
        self.oom_chunk: int | None = None       # the halved chunk after an out-of-memory error
        self._fn = model.forward_chunk
        if compile:
            self._fn = torch.compile(model.forward_chunk, dynamic=False)

    @classmethod
    def from_config(cls, model: ModelSpec, ecfg, device) -> "EnsembleForward":
        return cls(model, ecfg.chunk_size, ecfg.precision, ecfg.compile, device, ecfg.get("kernel", "auto"))

    def _reject(self, why: str, rkey: tuple | None = None) -> None:
        """The fused kernels are not used: a one-line error for ``kernel=triton``; for
        ``kernel=auto`` the PyTorch path from now on, said once per process and device."""
        if rkey is not None:
            _REJECTED[rkey] = why
        if self.requested == "triton":
            raise ConfigError("ensemble.kernel", "triton",
                              f"auto or torch: the fused Triton kernels are not trusted on {self.device}: {why}")
        self.kernel = "torch"
        dev = str(self.device)
        if dev not in _NOTIFIED:
            _NOTIFIED.add(dev)
            print(f"enkf-repro: ensemble.kernel=auto: using the PyTorch path on {dev}, not the fused Triton "
                  f"kernels: {why}", file=sys.stderr, flush=True)
        return None

    def _reference(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the members W by the PyTorch path in float64 (the check of fused kernels)."""
        with torch.no_grad():
            return self.model.forward_chunk(W.double(), self.model.prepare(x.double()))

    def chunk_for(self, batch: int, J: int | None = None, U: torch.Tensor | None = None,
                  x: torch.Tensor | None = None) -> int:
        """Members per call: ``ensemble.chunk_size``; on the fused path the chunk its gate chose;
        else 16 on CPU, else on CUDA the fastest of :data:`PROBE_SIZES` within the memory budget
        (timed once on the first batch, then cached)."""
        if self.oom_chunk:
            return self.oom_chunk
        if self.chunk_size:
            return self.chunk_size
        if self.kernel == "triton" and self._fused_chunk:
            return self._fused_chunk
        if self.device.type != "cuda":
            return CPU_CHUNK
        cap = auto_chunk_size(self.model, batch, self.device)
        key = (str(self.device), self.model.name, batch, self.precision, "torch")
        if key not in _PROBED:
            if U is None or x is None:
                return cap
            sizes = [n for n in PROBE_SIZES if n <= min(cap, U.shape[0])] or [min(cap, U.shape[0])]
            _PROBED[key] = probe_chunk(lambda n: self._evaluate(U[:n], x, n), sizes)
        return _PROBED[key]

    @torch.no_grad()
    def __call__(self, U: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return self._forward(U, x)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                self._halve_chunk(U, x, e)   # the first time; an OutOfMemory line the second

    def _forward(self, U: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "triton" and U.dtype == torch.float32:
            plan = self.gate.plan(U, x)
            if plan is not None:
                self.fused_mode, self._fused_chunk = plan["mode"], plan["chunk"]
                chunk = min(plan["chunk"], self.oom_chunk or plan["chunk"])
                self._last_chunk = chunk
                return self.model.fused_forward(U, x, plan["mode"], chunk)
        cs = self.chunk_for(x.shape[0], U.shape[0], U, x)
        self._last_chunk = cs
        return self._evaluate(U, x, cs)

    def _halve_chunk(self, U: torch.Tensor, x: torch.Tensor, error: BaseException) -> None:
        """Out of memory in a forward: the first time, halve the chunk and say so (the caller does
        the forward again: a forward changes nothing, so it can be redone); then an ``OutOfMemory``
        line."""
        J, B = U.shape[0], x.shape[0]
        cs = min(J, self._last_chunk or planned_chunk(self.model, B, self.device, self.chunk_size))
        first = _first_line(error)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.oom_chunk is not None or cs <= 1:
            err = OutOfMemory(f"out of memory on {self.device} in the ensemble forward of {J} members on {B} images "
                              f"at {cs} members per chunk{' (already halved once)' if self.oom_chunk else ''} "
                              f"({first})")
            err.chunk = cs
            raise err from None
        self.oom_chunk = cs // 2
        print(f"enkf-repro: out of memory on {self.device} in the ensemble forward at {cs} members per chunk "
              f"({first}); continuing with {self.oom_chunk} (ensemble.chunk_size={self.oom_chunk} starts so)",
              file=sys.stderr, flush=True)

    def _evaluate(self, U: torch.Tensor, x: torch.Tensor, cs: int) -> torch.Tensor:
        """The PyTorch path: ``forward_chunk`` a chunk of ``cs`` members at a time."""
        J = U.shape[0]
        dtype = torch.float64 if U.dtype == torch.float64 else torch.float32
        W = U.to(dtype)
        with precision_scope(self.precision, self.device):
            ctx = self.model.prepare(x.to(dtype))
            first = self._fn(W[: min(cs, J)], ctx)
            out = torch.empty((J,) + first.shape[1:], dtype=dtype, device=U.device)
            out[: first.shape[0]] = first
            for s in range(cs, J, cs):
                out[s: s + cs] = self._fn(W[s: s + cs], ctx)
        return out
