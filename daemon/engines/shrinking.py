"""whisper's decoding loop, with finished items leaving the batch.

``whisper.decode`` runs every item of a batch until the last one reaches end-of-text:
an item that finished after 40 tokens keeps paying for its cross-attention, which
reads all 1,500 audio frames of every layer at every step, until the longest item
is done after 120. Here an item leaves the batch (its tokens, audio features and
key/value caches) as soon as it has ended, and the rest carry on. Everything else
is whisper's own: the same ``DecodingTask`` with its logit filters, greedy decoder,
ranking and results, so the tokens are the ones ``whisper.decode`` picks.

Only greedy decoding (one sequence per item) shrinks; beam search and sampling keep
whisper's loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask


class ShrinkingDecodingTask(DecodingTask):
    def _main_loop(self, audio_features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        if self.n_group != 1:
            return super()._main_loop(audio_features, tokens)
        eot = self.tokenizer.eot
        n_batch = tokens.shape[0]
        sum_logprobs = torch.zeros(n_batch, device=audio_features.device)
        no_speech_probs = [np.nan] * n_batch
        finished: dict[int, torch.Tensor] = {}  # row → its tokens, ending in end-of-text
        rows = list(range(n_batch))  # the rows still decoding, in batch order
        running = torch.zeros(n_batch, device=audio_features.device)  # their sums of log-probabilities
        try:
            for i in range(self.sample_len):
                logits = self.inference.logits(tokens, audio_features)
                if i == 0 and self.tokenizer.no_speech is not None:
                    probs_at_sot = logits[:, self.sot_index].float().softmax(dim=-1)
                    no_speech_probs = probs_at_sot[:, self.tokenizer.no_speech].tolist()
                logits = logits[:, -1]
                for logit_filter in self.logit_filters:
                    logit_filter.apply(logits, tokens)
                tokens, completed = self.decoder.update(tokens, logits, running)
                if completed or tokens.shape[-1] > self.n_ctx:
                    break
                ended = (tokens[:, -1] == eot).tolist()
                if any(ended):
                    keep = [k for k, e in enumerate(ended) if not e]
                    for k, e in enumerate(ended):
                        if e:
                            finished[rows[k]] = tokens[k]
                            sum_logprobs[rows[k]] = running[k]
                    rows = [rows[k] for k in keep]
                    tokens, running, audio_features = tokens[keep], running[keep], audio_features[keep]
                    self._keep_rows(keep)
        finally:
            self.inference.cleanup_caching()
        for k, row in enumerate(rows):
            finished[row] = tokens[k]
            sum_logprobs[row] = running[k]
        width = max(t.shape[0] for t in finished.values())
        out = torch.full((n_batch, width), eot, dtype=tokens.dtype, device=tokens.device)
        for row, t in finished.items():
            out[row, : t.shape[0]] = t
        return out, sum_logprobs, no_speech_probs

    def _keep_rows(self, keep: list[int]) -> None:
        """Drop the ended rows from every cached key and value, self- and cross-attention alike."""
        cache: dict[Any, torch.Tensor] = self.inference.kv_cache  # type: ignore[attr-defined]
        for module, value in cache.items():
            cache[module] = value[keep]


@torch.no_grad()
def decode(model: Any, features: torch.Tensor, options: DecodingOptions) -> list[DecodingResult]:
    """``whisper.decode`` for a batch of audio features, finished items leaving the batch."""
    return ShrinkingDecodingTask(model, options).run(features)
