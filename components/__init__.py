"""Typed building blocks: spec, data, models, training, evaluation, registry (no Prefect import)."""

import logging as _logging

# bitsandbytes logs "pip install kernels" when it is imported (by peft or transformers, whatever the spec)
# on AVX512-BF16 hosts, for a fused CPU kernel we never use (components.models.quantize pins it off) and that
# would be downloaded from the hub at run time. Quiet that one logger before anything imports it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)


# Since transformers 5.25 `kernels` is installed with it, so on those hosts bitsandbytes' import asks the hub
# for that kernel instead; offline (our default) `kernels` warns that it skips the publisher check and the
# fetch fails quietly. Drop that one record, only for bitsandbytes' kernel repository.
_BNB_KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
_logging.getLogger("kernels._internals.hf_hub").addFilter(lambda record: _BNB_KERNEL_REPO not in record.getMessage())
