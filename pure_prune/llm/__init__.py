"""Pruning for transformer language models: one-shot, post-training methods that read a little
calibration data block by block, over the same trees, masks, groups and compaction as the rest of
the library.

Modules (import them by name, e.g. ``from pure_prune.llm import structured``):

* ``blocks``, ``calibrate``, ``stats``: a decoder described block by block and the calibration
  engine that runs it over calibration sequences, streaming each linear layer's input statistics;
* ``magnitude``, ``wanda``, ``sparsegpt``, ``owl``, ``pattern``: the one-shot methods, unstructured
  or N:M, and non-uniform layer sparsity;
* ``structured``: attention heads (KV-group consistent), MLP channels and whole blocks (ShortGPT's
  block influence), scored, selected and compacted to a smaller model;
* ``hf``: transformers' LLaMA, Qwen2 and OPT causal LMs described block by block for the same engine;
* ``perplexity``: held-out perplexity over non-overlapping windows.

The shipped model is ``pure_prune.models.llama``; its per-block interface (``embed``, ``block``,
``head``, ``rope``, ``LINEARS``) is what ``blocks.from_llama`` describes. The
library never imports the model zoo: callers pass the model's functions and trees in.
"""
