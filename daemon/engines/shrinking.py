"""whisper's decoding loop, with finished items leaving the batch, and a faster CPU step.

``whisper.decode`` runs every item of a batch until the last one reaches end-of-text: an item
that finished early keeps paying for its cross-attention, which reads all 1,500 audio frames of
every layer at every step, until the longest item is done. Here ended items leave the batch
(their tokens, audio features and key/value caches) and the rest carry on; they leave in groups,
once a quarter of the batch has ended, since each leaving moves rows and copies the
self-attention caches. Everything else is whisper's own: the same ``DecodingTask`` with its logit
filters, greedy decoder, ranking and results, so the tokens are the ones ``whisper.decode`` picks.

On the CPU the token step itself is ``CpuInference``: whisper's text decoder, layer for layer
with the model's own modules, except that each layer's cross-attention keys and values are laid
out once per batch the way the step reads them (keys as heads × dims × frames), for two plain
matrix products: PyTorch's fused attention on a CPU has no fast fp32 path for one query against
1,500 keys.

Reading those keys and values is most of a token step's cost. With fit windows a batch mixes
lengths, so the CPU step sorts its rows by length and splits them into a few groups of like
lengths (``length_groups``), each laid out only as long as its longest row: a short memo batched
with a long one no longer reads the long one's padding at every token.

How the CPU step computes is the engine's ``CpuOptions``, decided at load. With its
``vocabulary`` (precision ``bf16``: a CPU that multiplies bfloat16 natively) the vocabulary
projection multiplies by a bf16 copy of the token embeddings (half the bytes read per step; the
fp32 ones stay for the embedding lookup), accumulating in fp32. With ``bf16_attention`` as well
(where the CPU has AMX) the cross-attention keys and values, keys
laid out like the values, are bfloat16 and go to PyTorch's fused attention, which accumulates
and takes the softmax in fp32: half the bytes per token, and half the batch's largest block of
memory. Without AMX the fused bf16 attention is slower than the two fp32 products, so only the
vocabulary is read in bf16 there. docs/decisions.md has the measurements behind each choice.

Only greedy decoding (one sequence per item) shrinks; beam search and sampling keep
whisper's loop.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from whisper.decoding import ApplyTimestampRules, DecodingOptions, DecodingResult, DecodingTask, Inference

from daemon.engines import gemm
from daemon.engines.transcribing import LEAVE_SHARE, compact

if TYPE_CHECKING:
    from daemon.engines.torch_load import CpuOptions


def _plain() -> CpuOptions:
    """fp32 throughout, torch's own matrix products."""
    from daemon.engines.torch_load import CpuOptions

    return CpuOptions(gemm.TORCH)


class CpuInference(Inference):
    """The text decoder's forward pass with caches of our own layout (see the module's text).
    For greedy decoding only: beam search's cache rearranging is not needed, so not here."""

    def __init__(self, model: Any, frames: list[int] | None = None, *, cpu: CpuOptions | None = None) -> None:
        cpu = cpu or _plain()
        self.decoder = model.decoder
        self.linear = gemm.linear(cpu.gemm)  # the vocabulary projection, as the model's layers multiply
        self.n_head = model.dims.n_text_head
        self.frames = frames  # per row, how many audio frames are its own; the rest is padding, never attended
        # bfloat16 for what a step reads most: the vocabulary, and the cross-attention keys and values
        self.bf16_attention = cpu.bf16_attention
        self.vocabulary: torch.Tensor | None = cpu.vocabulary
        self.groups: list[int] = []  # rows per group: consecutive rows whose keys and values share a length
        self.masks: list[torch.Tensor | None] = []  # per group, (n, 1, 1, T): 0 for a row's frames, -inf for padding
        # per layer, per group: keys (n, H, D, T), values (n, H, T, D), T the group's longest row;
        # in bfloat16 keys (n, H, T, D) like the values
        self.cross: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.keys: list[torch.Tensor] = []  # per layer: self-attention keys so far, (B, tokens, state)
        self.values: list[torch.Tensor] = []

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        first = not self.cross
        if first:
            frames = self.frames or [audio_features.shape[1]] * audio_features.shape[0]
            self.groups = length_groups(frames)
            starts = _starts(self.groups)
            parts = [(audio_features[a : a + n, : max(frames[a : a + n])], frames[a : a + n]) for a, n in zip(starts, self.groups)]
            self.cross = [[self._lay_out(block.cross_attn, f) for f, _ in parts] for block in dec.blocks]
            self.masks = [_padding_mask(own, f.shape[1], torch.bool if self.bf16_attention else f.dtype) for f, own in parts]
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
        if self.vocabulary is not None:
            return F.linear(x.to(torch.bfloat16), self.vocabulary).float()
        return self.linear(x, dec.token_embedding.weight.to(x.dtype)).float()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)  # (B, H, tokens, D)

    def _lay_out(self, attn: Any, audio_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, H, D, T) and values (B, H, T, D), projected a row at a time: a product's
        shape is then one of the few window lengths, not rows × length, and every new shape
        keeps memory of its own (kernels, freed blocks)."""
        n, t, state = audio_features.shape
        h = self.n_head
        if self.bf16_attention:
            k = audio_features.new_empty(n, h, t, state // h, dtype=torch.bfloat16)
        else:
            k = audio_features.new_empty(n, h, state // h, t)
        v = audio_features.new_empty(n, h, t, state // h, dtype=k.dtype)
        for r in range(n):
            row = audio_features[r : r + 1]
            key = self._heads(attn.key(row))[0]
            k[r] = key if self.bf16_attention else key.transpose(-1, -2)
            v[r] = self._heads(attn.value(row))[0]
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
        if self.bf16_attention:
            return self._cross_attention_bf16(i, attn, x)
        q = self._heads(attn.query(x)) * (self.cross[i][0][0].shape[-2] ** -0.5)
        out = []
        for (k, v), mask, a, n in zip(self.cross[i], self.masks, _starts(self.groups), self.groups):
            w = torch.matmul(q[a : a + n], k)
            if mask is not None:
                w = w + mask
            out.append(torch.matmul(w.softmax(dim=-1), v))
        a = out[0] if len(out) == 1 else torch.cat(out)
        return attn.out(a.permute(0, 2, 1, 3).flatten(start_dim=2))

    def _cross_attention_bf16(self, i: int, attn: Any, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(attn.query(x)).to(torch.bfloat16)
        out = []
        for (k, v), mask, a, n in zip(self.cross[i], self.masks, _starts(self.groups), self.groups):
            out.append(F.scaled_dot_product_attention(q[a : a + n], k, v, attn_mask=mask))
        a = (out[0] if len(out) == 1 else torch.cat(out)).to(x.dtype)
        return attn.out(a.permute(0, 2, 1, 3).flatten(start_dim=2))

    def compact(self, ended: list[bool]) -> list[int]:
        """``compact`` within each group of rows, so that every group stays consecutive."""
        order: list[int] = []
        for a, n in zip(_starts(self.groups), self.groups):
            order.extend(a + p for p in compact(ended[a : a + n]))
        return order

    def keep_rows(self, order: list[int]) -> None:
        """Row ``p`` becomes old row ``order[p]``; ``order`` is ``self.compact``'s. The
        cross-attention caches (up to 18 MB per row) are not copied whole: within each group,
        only its last rows move into the places of ended ones, and what is left is the front
        of the same memory."""
        kept: list[list[int]] = []  # per group: its old rows (counted within it) in their new order
        new = 0
        for a, n in zip(_starts(self.groups), self.groups):
            m = sum(1 for q in order if a <= q < a + n)
            local = [q - a for q in order[new : new + m]]
            if any(not 0 <= q < n for q in local):
                raise ValueError("rows may only move within their group")
            kept.append(local)
            new += m
        for layer in self.cross:
            for g, local in enumerate(kept):
                k, v = layer[g]
                for p, q in enumerate(local):
                    if p != q:
                        k[p].copy_(k[q])
                        v[p].copy_(v[q])
                layer[g] = (k[: len(local)], v[: len(local)])
        live = [g for g, local in enumerate(kept) if local]
        self.cross = [[layer[g] for g in live] for layer in self.cross]
        self.masks = [None if self.masks[g] is None else self.masks[g][kept[g]] for g in live]  # type: ignore[index]
        self.groups = [len(kept[g]) for g in live]
        self.keys = [k[order] for k in self.keys]
        self.values = [v[order] for v in self.values]

    def cleanup_caching(self) -> None:
        self.cross, self.keys, self.values = [], [], []
        self.groups, self.masks = [], []


def _padding_mask(frames: list[int] | None, width: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Per row (n, 1, 1, width): added to the scores, 0 on a row's frames and -inf on its padding;
    or, as ``torch.bool``, True on a row's frames (what the fused attention takes)."""
    if frames is None or all(n >= width for n in frames):
        return None
    own = (torch.arange(width) < torch.tensor(frames)[:, None]).view(len(frames), 1, 1, width)
    if dtype == torch.bool:
        return own
    return torch.zeros(own.shape, dtype=dtype).masked_fill_(~own, float("-inf"))


def _starts(groups: list[int]) -> list[int]:
    return list(accumulate(groups[:-1], initial=0)) if groups else []


# A group of rows costs about as much per token as this many rows × audio frames of keys
# and values read (the small products and softmax each group adds to every layer).
GROUP_COST = 256


def length_groups(frames: list[int]) -> list[int]:
    """Split rows, in their order, into groups of consecutive rows for cross-attention: each
    group's keys and values are as long as its longest row, so the shorter rows of a batch do
    not read the longer ones' padding at every token. The split minimises the frames read plus
    GROUP_COST per group; sorted rows (``ShrinkingDecodingTask`` sorts them) group best."""
    n = len(frames)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = 0
        for i in range(j - 1, -1, -1):
            longest = max(longest, frames[i])
            cost = best[i] + (j - i) * longest + GROUP_COST
            if cost < best[j]:
                best[j], cut[j] = cost, i
    sizes = []
    j = n
    while j > 0:
        sizes.append(j - cut[j])
        j = cut[j]
    return sizes[::-1]


class BatchTimestampRules(ApplyTimestampRules):
    """whisper's timestamp rules, applied to every row of the batch at once. whisper's own
    ``apply`` loops over the rows, and for each it reads the tokens back (``tolist``), picks
    out the timestamps by a mask and slices by the last one: on a GPU each of those waits for
    the device, about four times per row and token. Here the same masks are built with tensor
    operations for all rows, with no wait (docs/decisions.md: faster on a GPU, the same on a
    CPU). A test holds the masked logits equal to whisper's on token states of every kind."""

    _vocab: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # token ids, is timestamp, is text

    def apply(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        tok = self.tokenizer
        begin, eot = tok.timestamp_begin, tok.eot
        if tok.no_timestamps is not None:
            logits[:, tok.no_timestamps] = -np.inf
        if self._vocab is None:  # one task, one device and vocabulary
            ids = torch.arange(logits.shape[-1], device=logits.device)
            self._vocab = (ids, ids >= begin, ids < begin)  # the same at every step of the task
        vocab, is_time, is_text = self._vocab
        sampled = tokens[:, self.sample_begin :]
        n = sampled.shape[1]
        if n > 0:
            # timestamps come in pairs, except directly before end-of-text
            last_time = sampled[:, -1] >= begin
            before_time = sampled[:, -2] >= begin if n >= 2 else torch.ones_like(last_time)
            pair = last_time & before_time  # a pair just closed: text (or end-of-text) next
            opened = last_time & ~before_time  # a segment just ended: a timestamp or end-of-text next
            logits.masked_fill_(pair[:, None] & is_time, -np.inf)
            logits.masked_fill_(opened[:, None] & (vocab < eot), -np.inf)
            # timestamps never decrease, and a segment has a length: nothing below the last
            # timestamp (nothing up to it, unless it just ended a segment)
            times = sampled >= begin
            where = torch.where(times, torch.arange(n, device=sampled.device), -1).amax(dim=1)
            last = sampled.gather(1, where.clamp(min=0)[:, None])[:, 0]
            bound = torch.where(where >= 0, last + (~opened).long(), begin)
            logits.masked_fill_(is_time & (vocab < bound[:, None]), -np.inf)
        if tokens.shape[1] == self.sample_begin:
            logits[:, :begin] = -np.inf  # the first token is a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, begin + self.max_initial_timestamp_index + 1 :] = -np.inf
        # a timestamp when the timestamps together are likelier than any one text token
        logprobs = F.log_softmax(logits.float(), dim=-1)
        time_logprob = logprobs[:, begin:].logsumexp(dim=-1)
        text_logprob = logprobs[:, :begin].max(dim=-1).values
        logits.masked_fill_((time_logprob > text_logprob)[:, None] & is_text, -np.inf)


class ShrinkingDecodingTask(DecodingTask):
    """``frames``: for audio features shorter than a 30 s window (see ``openai_whisper``'s fit
    windows), each row's own length; the rows are padded to the longest, and the padding is
    masked out of cross-attention. Only the CPU step masks, so only it takes padded rows."""

    def __init__(
        self, model: Any, options: DecodingOptions, frames: list[int] | None = None, *, cpu: CpuOptions | None = None,
    ) -> None:
        super().__init__(model, options)
        self.logit_filters = [
            BatchTimestampRules(f.tokenizer, f.sample_begin, f.max_initial_timestamp_index)
            if type(f) is ApplyTimestampRules else f
            for f in self.logit_filters
        ]
        if next(model.parameters()).device.type == "cpu" and self.n_group == 1:
            self.inference = CpuInference(model, frames, cpu=cpu)
        elif frames is not None and len(set(frames)) > 1:
            raise ValueError("rows of different lengths need the CPU greedy step, which masks their padding")

    def run(self, mel: torch.Tensor) -> list[DecodingResult]:
        """With rows of different lengths, the CPU step decodes them sorted by length, so that
        its groups (see ``length_groups``) hold rows of like lengths; results come back in
        the rows' own order."""
        frames = self.inference.frames if isinstance(self.inference, CpuInference) else None
        if not frames or frames == sorted(frames):
            return super().run(mel)
        order = sorted(range(len(frames)), key=frames.__getitem__)
        self.inference.frames = [frames[i] for i in order]  # type: ignore[union-attr]
        results = super().run(mel[order])
        out: list[DecodingResult] = [None] * len(order)  # type: ignore[list-item]
        for row, result in zip(order, results):
            out[row] = result
        return out

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
                    keep = self.inference.compact(ended) if isinstance(self.inference, CpuInference) else compact(ended)
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
def decode(
    model: Any, features: torch.Tensor, options: DecodingOptions, frames: list[int] | None = None, *,
    cpu: CpuOptions | None = None,
) -> list[DecodingResult]:
    """``whisper.decode`` for a batch of audio features, finished items leaving the batch.
    ``frames``: each row's own number of audio frames, when rows are padded (CPU only).
    ``cpu``: how the CPU step computes (the engine's, decided at load; fp32 and torch's
    products without it)."""
    return ShrinkingDecodingTask(model, options, frames, cpu=cpu).run(features)
