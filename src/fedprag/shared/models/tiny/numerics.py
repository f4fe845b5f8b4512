"""The floating-point settings a build of the built-in model trains under.

Trained weights depend, bit for bit, on which kernels do the arithmetic, and torch and MKL pick
their kernels by the CPU. Measured on one 2-core AMD EPYC (Zen 4) by building the same 100-step
recipe once per setting (docs/experiments.md §1.5): each of torch's kernel levels
(``ATEN_CPU_CAPABILITY`` = default, avx2, avx512), each MKL branch (``MKL_CBWR``) and a change of
thread count gave other weights; the same settings always gave the same weights.

A recipe names one of two settings (``numerics``):

* ``native``: whatever torch and MKL pick on this CPU, on every core. The weights are those of
  this CPU family: a rebuild elsewhere answers alike but differs in its bytes.
* ``portable``: torch's AVX2 kernels, MKL's ``COMPATIBLE`` branch (SSE2 without the approximate
  ``rcpps``/``rsqrtps``, the branch Intel documents as giving the same results on its own and
  compatible processors) and exactly 2 threads, whatever the machine. Every instruction these
  kernels use is exactly rounded by IEEE 754, so any x86-64 CPU with AVX2 and FMA computes the same
  bits. On this machine it costs about 1.7 times a native build.

Torch reads its kernel level, and MKL its branch, once per process, so a build trains each stage
in a fresh process started with :func:`environment` (see :func:`fedprag.shared.models.tiny.build.build_tiny`).
"""

from __future__ import annotations

from fedprag.shared.log import get_logger

NUMERICS = ("native", "portable")
PORTABLE_THREADS = 2
_PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE",
                 "OMP_NUM_THREADS": str(PORTABLE_THREADS), "MKL_NUM_THREADS": str(PORTABLE_THREADS)}
log = get_logger(__name__)


def check(numerics: str) -> str:
    """``numerics`` if it is a known setting; a ``ValueError`` naming the field otherwise."""
    if numerics not in NUMERICS:
        raise ValueError(f"recipe.numerics: expected one of {', '.join(NUMERICS)}, got '{numerics}'")
    return numerics


def environment(numerics: str) -> dict[str, str]:
    """The environment variables a build process under ``numerics`` starts with."""
    return dict(_PORTABLE_ENV) if check(numerics) == "portable" else {}


def pinnable() -> bool:
    """Whether this CPU runs the AVX2 kernels ``portable`` pins (torch offers AVX2 or more here)."""
    import torch  # here, not above: recipes (and so the CLI) read this module without torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def apply(numerics: str) -> None:
    """In the build process: fix the thread count, and warn where this CPU cannot run the kernels
    ``portable`` pins (its weights will not match a build on another CPU)."""
    if check(numerics) != "portable":
        return
    import torch  # here, not above: recipes (and so the CLI) read this module without torch

    torch.set_num_threads(PORTABLE_THREADS)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        log.warning("tiny.numerics.unpinned", wanted="AVX2", capability=capability,
                    consequence="this CPU lacks AVX2; the weights will differ from a portable build elsewhere")
