"""Typed building blocks: spec, data, models, training, evaluation, registry (no Prefect import)."""

import logging as _logging

# bitsandbytes logs "pip install kernels" when it is imported (by peft or transformers, whatever the spec)
# on AVX512-BF16 hosts, for a fused CPU kernel we never use (components.quantize pins it off) and that
# would be downloaded from the hub at run time. Quiet that one logger before anything imports it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
