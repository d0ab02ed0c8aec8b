"""whisper's decoding loop, with finished items leaving the batch, and a faster CPU step.

``whisper.decode`` runs every item of a batch until the last one reaches end-of-text:
an item that finished after 40 tokens keeps paying for its cross-attention, which
reads all 1,500 audio frames of every layer at every step, until the longest item
is done after 120. Here ended items leave the batch (their tokens, audio features and
key/value caches) and the rest carry on; they leave in groups, once a quarter of the
batch has ended, since each leaving moves rows and copies the self-attention caches
(measured: leaving at every end is slower). Everything else
is whisper's own: the same ``DecodingTask`` with its logit filters, greedy decoder,
ranking and results, so the tokens are the ones ``whisper.decode`` picks.

On the CPU the token step itself is ``CpuInference``: whisper's text decoder, layer for
layer with the model's own modules, except that each layer's cross-attention keys and
values are laid out once per batch the way the step reads them (keys as heads × dims ×
frames). PyTorch's fused attention on a CPU has no fast path for one query against
1,500 keys; two plain matrix products over that layout take 40% less time.

Only greedy decoding (one sequence per item) shrinks; beam search and sampling keep
whisper's loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask, Inference

from daemon.engines import gemm


LEAVE_SHARE = 4  # ended rows leave once they are a quarter of the batch


class CpuInference(Inference):
    """The text decoder's forward pass with caches of our own layout (see the module's text).
    For greedy decoding only: beam search's cache rearranging is not needed, so not here."""

    def __init__(self, model: Any, frames: list[int] | None = None) -> None:
        self.decoder = model.decoder
        self.linear = gemm.linear_of(model)  # the vocabulary projection, as the model's layers multiply
        self.n_head = model.dims.n_text_head
        self.frames = frames  # per row, how many audio frames are its own; the rest is padding, never attended
        self.mask: torch.Tensor | None = None  # (B, 1, 1, T): 0 for a row's frames, -inf for padding
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys (B,H,D,T), values (B,H,T,D)
        self.keys: list[torch.Tensor] = []  # per layer: self-attention keys so far, (B, tokens, state)
        self.values: list[torch.Tensor] = []

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        first = not self.cross
        if first:
            self.cross = [self._lay_out(block.cross_attn, audio_features) for block in dec.blocks]
            self.mask = _padding_mask(self.frames, audio_features.shape[1], audio_features.dtype)
            offset = 0
        else:
            offset = self.keys[0].shape[1]
            tokens = tokens[:, -1:]
        x = dec.token_embedding(tokens) + dec.positional_embedding[offset : offset + tokens.shape[-1]]
        x = x.to(audio_features.dtype)
        for i, block in enumerate(dec.blocks):
            x = x + self._self_attention(i, block.attn, block.attn_ln(x), first)
            x = x + self._cross_attention(i, block.cross_attn, block.cross_attn_ln(x))
            x = x + block.mlp(block.mlp_ln(x))
        x = dec.ln(x)
        return self.linear(x, dec.token_embedding.weight.to(x.dtype)).float()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)  # (B, H, tokens, D)

    def _lay_out(self, attn: Any, audio_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._heads(attn.key(audio_features)).transpose(-1, -2).contiguous()
        v = self._heads(attn.value(audio_features)).contiguous()
        return k, v

    def _self_attention(self, i: int, attn: Any, x: torch.Tensor, first: bool) -> torch.Tensor:
        k, v = attn.key(x), attn.value(x)
        if first:
            self.keys.append(k)
            self.values.append(v)
        else:
            k = self.keys[i] = torch.cat([self.keys[i], k], dim=1)
            v = self.values[i] = torch.cat([self.values[i], v], dim=1)
        q = attn.query(x)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), is_causal=first and x.shape[1] > 1)
        return attn.out(a.permute(0, 2, 1, 3).flatten(start_dim=2))

    def _cross_attention(self, i: int, attn: Any, x: torch.Tensor) -> torch.Tensor:
        k, v = self.cross[i]
        q = self._heads(attn.query(x)) * (k.shape[-2] ** -0.5)
        w = torch.matmul(q, k)
        if self.mask is not None:
            w = w + self.mask
        w = w.softmax(dim=-1)
        return attn.out(torch.matmul(w, v).permute(0, 2, 1, 3).flatten(start_dim=2))

    def keep_rows(self, order: list[int]) -> None:
        """Row ``p`` becomes old row ``order[p]``. ``order`` is ``compact``'s: the cross-attention
        caches (18 MB per row) are not copied whole, only their last rows into the places of
        ended ones, and what is left is the front of the same memory."""
        n = len(order)
        moved = [(p, q) for p, q in enumerate(order) if p != q]
        for k, v in self.cross:
            for p, q in moved:
                k[p].copy_(k[q])
                v[p].copy_(v[q])
        self.cross = [(k[:n], v[:n]) for k, v in self.cross]
        self.keys = [k[order] for k in self.keys]
        self.values = [v[order] for v in self.values]
        if self.mask is not None:
            self.mask = self.mask[order]

    def cleanup_caching(self) -> None:
        self.cross, self.keys, self.values = [], [], []
        self.mask = None


def _padding_mask(frames: list[int] | None, width: int, dtype: torch.dtype) -> torch.Tensor | None:
    if frames is None or all(n >= width for n in frames):
        return None
    mask = torch.zeros(len(frames), 1, 1, width, dtype=dtype)
    for row, n in enumerate(frames):
        mask[row, ..., n:] = float("-inf")
    return mask


def compact(ended: list[bool]) -> list[int]:
    """The rows to keep, as an order: the rows still decoding at the front stay where they
    are, and the last ones still decoding move into the places of the ended rows before them.
    So ``[F, T, F, F, T, F]`` gives ``[0, 5, 2, 3]``: one row moves instead of four."""
    n = ended.count(False)
    movers = iter(q for q in range(n, len(ended)) if not ended[q])
    return [next(movers) if ended[p] else p for p in range(n)]


class ShrinkingDecodingTask(DecodingTask):
    """``frames``: for audio features shorter than a 30 s window (see ``openai_whisper``'s fit
    windows), each row's own length; the rows are padded to the longest, and the padding is
    masked out of cross-attention. Only the CPU step masks, so only it takes padded rows."""

    def __init__(self, model: Any, options: DecodingOptions, frames: list[int] | None = None) -> None:
        super().__init__(model, options)
        if next(model.parameters()).device.type == "cpu" and self.n_group == 1:
            self.inference = CpuInference(model, frames)
        elif frames is not None and len(set(frames)) > 1:
            raise ValueError("rows of different lengths need the CPU greedy step, which masks their padding")

    def _get_audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        dims = self.model.dims
        if mel.shape[-1] == dims.n_audio_state and mel.shape[-2] < dims.n_audio_ctx:
            return mel.half() if self.options.fp16 else mel  # encoded from a window shorter than 30 s
        return super()._get_audio_features(mel)

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
                # Leaving moves rows and copies caches, so rows leave in groups: once a quarter of
                # the batch has ended. Until then an ended row only repeats end-of-text and adds nothing.
                if sum(ended) * LEAVE_SHARE >= len(ended):
                    for k, e in enumerate(ended):
                        if e:
                            finished[rows[k]] = tokens[k]
                            sum_logprobs[rows[k]] = running[k]
                    keep = compact(ended)
                    rows = [rows[k] for k in keep]
                    tokens, running = tokens[keep], running[keep]
                    audio_features = self._keep_rows(keep, audio_features)
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

    def _keep_rows(self, keep: list[int], audio_features: torch.Tensor) -> torch.Tensor:
        """Drop the ended rows from every cached key and value, self- and cross-attention alike,
        and from the audio features; ``keep`` is ``compact``'s order."""
        if isinstance(self.inference, CpuInference):
            self.inference.keep_rows(keep)
            return audio_features[: len(keep)]  # read at the first step only (then laid out), for its type
        cache: dict[Any, torch.Tensor] = self.inference.kv_cache  # type: ignore[attr-defined]
        for module, value in cache.items():
            cache[module] = value[keep]
        return audio_features[keep]


@torch.no_grad()
def decode(model: Any, features: torch.Tensor, options: DecodingOptions, frames: list[int] | None = None) -> list[DecodingResult]:
    """``whisper.decode`` for a batch of audio features, finished items leaving the batch.
    ``frames``: each row's own number of audio frames, when rows are padded (CPU only)."""
    return ShrinkingDecodingTask(model, options, frames).run(features)
