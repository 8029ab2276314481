"""Integrations of SIA into serving engines.

``sia_kernels.integrations.vllm``: :class:`~sia_kernels.integrations.vllm.SIALogitsProcessor`, a vLLM
logits-processor plugin (needs vLLM; this package does not import it unless you do).
"""
