"""A registered system taken out to the engines people deploy on: merged weights, GGUF, Ollama and vLLM folders,
each verified before it is reported done."""
