"""torch.compile's on-disk caches keyed to the vector ISA inductor writes CPU code for.

    run = compile_keyed_to_isa(dynamics._cached_rollout)   # torch.compile(...), each call under the tag below
    with caches_keyed_to_isa():                             # or around code whose compiles run lazily (backward)
        loss = compiled_module(batch); loss.backward()

Why: inductor's FX graph cache (torch 2.14) leaves out of its key the vector ISA that its C++ was written for
(AVX-512, AVX2, none), yet rebuilds the cached C++ with the ISA of the process that loads it. A graph cached
by an AVX-512 process, loaded by one that picks AVX2 (a node without AVX-512 sharing
``TORCHINDUCTOR_CACHE_DIR`` or a remote cache, or ``ATEN_CPU_CAPABILITY=avx2``), runs 16-lane loops over
8-lane vectors: silently wrong numbers (max error 5.2 on a layer norm and softmax, NaN in issue #14's
compiled rollout), or a C++ compile error when the loader has no vector ISA (docs/speed.md, "sixteenth
session"). Adding the ISA to ``torch.compiler.config.cache_key_tag``, which every compile cache hashes,
gives each ISA its own entries; a process's own tag is kept in front.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._inductor.cpu_vec_isa import pick_vec_isa


def isa_cache_tag() -> str:
    """The current compile-cache tag with the vector ISA inductor picks now (``pick_vec_isa``) appended."""
    return f"{torch.compiler.config.cache_key_tag}|cpu-vec-isa={pick_vec_isa()}"


@contextlib.contextmanager
def caches_keyed_to_isa() -> Iterator[None]:
    """While active, every compile reads and writes cache entries of this process's vector ISA only.

    Set and restored by hand: ``torch.compiler.config.patch`` took 31 us per call here against 5, and this runs
    around every compiled call (five per action of the shipped model with ``compile=true``)."""
    previous = torch.compiler.config.cache_key_tag
    torch.compiler.config.cache_key_tag = isa_cache_tag()
    try:
        yield
    finally:
        torch.compiler.config.cache_key_tag = previous


def compile_keyed_to_isa(fn: Callable[..., Any], **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(fn, **compile_kwargs)`` whose calls, and so its compiles, run under ``caches_keyed_to_isa``."""
    compiled = torch.compile(fn, **compile_kwargs)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with caches_keyed_to_isa():
            return compiled(*args, **kwargs)

    return run
