"""OpenFlamingo's building blocks: Perceiver resampler, gated cross-attention, and the two wrappers that
put them into a Hugging Face causal LM (a decoder-layer wrapper and an input embedding with trainable new-token rows).

Parameter names follow open-flamingo's own (``perceiver.layers.{i}.0.to_q``, ``...gated_cross_attn_layer.ff_gate``,
FeedForward = ``Sequential(LayerNorm, Linear, GELU, Linear)`` ⇒ indices 0/1/3), so released checkpoints map 1:1.

Media reach the cross-attention through the forward call, never through state stored on a module: every call of a
wrapped decoder layer receives a :class:`MediaContext` keyword argument (the visual tokens and, per text token, the
number of the image it belongs to). That keeps the model re-entrant: KV-cached generation, beam search and activation
checkpointing (which re-runs a layer during backward) see exactly the media of their own call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class MediaContext:
    """What the gated cross-attention layers of one forward call attend to."""

    media: torch.Tensor  # (B, T_img, n_latents, d_visual): Perceiver output for each image slot
    text_time: torch.Tensor  # (B·g, L) long: 1-based index of the image each token belongs to; 0 = before any image
    #: Generation: each cross-attention layer's keys/values of these media, computed by its first call and reused by
    #: every later call of the same ``generate`` (None: computed every call, as training needs).
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def group(self) -> int:
        """Text rows per media row: 1, or the beams of beam search (rows i·g … i·g+g-1 share media row i)."""
        rows, media_rows = self.text_time.shape[0], self.media.shape[0]
        if media_rows == 0 or rows % media_rows:
            raise ValueError(f"{rows} text rows cannot share the media of {media_rows} rows")
        return rows // media_rows


def media_text_time(input_ids: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """text_time = cumsum(input_ids == <image>): the image a token follows (its own <image> tag included)."""
    return (input_ids == media_token_id).long().cumsum(dim=-1)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Pre-norm MLP without biases (open-flamingo's FeedForward: indices 0 norm, 1 in, 3 out)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads*d) → (..., heads, n, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, n, d) → (..., n, heads*d)."""
    return x.transpose(-3, -2).flatten(-2)


class PerceiverAttention(nn.Module):
    """Latents attend to [image features; latents] (keys/values from both, queries from the latents)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (N, v, D), latents (N, n, D) → (N, n, D)."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.to_out(_merge_heads(out))


class PerceiverResampler(nn.Module):
    """Maps the patch tokens of each image to ``num_latents`` visual tokens."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, num_latents: int, ff_mult: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T_img, v, D) → (B, T_img, num_latents, D)."""
        b, t = features.shape[:2]
        x = features.flatten(0, 1)
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents.unflatten(0, (b, t)))  # a fresh tensor, not a view (FSDP hooks the output)


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the visual tokens of the image they belong to (or of all earlier images)."""

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, only_attend_immediate_media: bool) -> None:
        super().__init__()
        self.heads = heads
        self.only_attend_immediate_media = only_attend_immediate_media
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def media_kv(self, media: torch.Tensor, context: MediaContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, T_img·n, d) of the media; kept in ``context.kv`` when it has one."""
        if context is not None and context.kv is not None and id(self) in context.kv:
            return context.kv[id(self)]
        k, v = self.to_kv(media.flatten(1, 2).to(self.to_kv.weight.dtype)).chunk(2, dim=-1)
        kv = _split_heads(k, self.heads), _split_heads(v, self.heads)
        if context is not None and context.kv is not None:
            context.kv[id(self)] = kv
        return kv

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor,
                context: MediaContext | None = None) -> torch.Tensor:
        """x (B·g, L, D), media (B, T_img, n, Dv), text_time (B·g, L) → (B·g, L, D).

        ``g`` text rows share one media row (the beams of a query): their queries are attended to the media together,
        as one row of g·L queries, so the media's keys and values are never copied per beam."""
        n_images, n_latents = media.shape[1:3]
        if n_images == 0:  # a text-only batch: nothing to attend to
            return torch.zeros_like(x)
        rows, length = x.shape[:2]
        if rows % media.shape[0]:
            raise ValueError(f"{rows} text rows cannot share the media of {media.shape[0]} rows")
        group = rows // media.shape[0]
        q = _split_heads(self.to_q(self.norm(x)), self.heads)  # (B·g, H, L, d)
        k, v = self.media_kv(media, context)  # (B, H, T_img·n, d)
        if group > 1:  # (B·g, H, L, d) → (B, H, g·L, d); text_time (B·g, L) → (B, g·L)
            q = q.unflatten(0, (-1, group)).transpose(1, 2).flatten(2, 3)
            text_time = text_time.unflatten(0, (-1, group)).flatten(1)
        media_time = torch.arange(1, n_images + 1, device=x.device).repeat_interleave(n_latents)  # (T_img*n,)
        if self.only_attend_immediate_media:
            allowed = text_time.unsqueeze(-1) == media_time  # (B, L, T_img*n)
        else:
            allowed = text_time.unsqueeze(-1) >= media_time
        # A token with no image to attend to (text before the first image) gets a zero output. Attention over an
        # all-masked row is NaN, so such rows attend everywhere and are zeroed afterwards. (open-flamingo zeroes them
        # only in the "immediate" mode; in the other it lets them attend to every image, including later ones.)
        has_media = allowed.any(dim=-1)  # (B, L)
        mask = (allowed | ~has_media.unsqueeze(-1)).unsqueeze(1)  # (B, 1, L, T_img*n), broadcast over heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out * has_media[:, None, :, None].to(out.dtype)
        if group > 1:  # back to (B·g, H, L, d)
            out = out.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        return self.to_out(_merge_heads(out))


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(attn_gate)·xattn(x)``, then ``x + tanh(ff_gate)·ff(x)``.

    Gates start at ``gate_init``: 0 (open-flamingo) leaves a pretrained LM unchanged at the start; a model trained from
    scratch can open them from the first step, so that its cross-attention learns alongside the language prior.
    """

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, ff_mult: int,
                 only_attend_immediate_media: bool, gate_init: float) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, heads, dim_head, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor,
                context: MediaContext | None = None) -> torch.Tensor:
        # The block keeps its own (fp32) dtype when the frozen LM runs in half precision.
        dtype = self.attn_gate.dtype
        h = x.to(dtype)
        h = self.attn(h, media, text_time, context) * self.attn_gate.tanh() + h
        h = self.ff(h) * self.ff_gate.tanh() + h
        return h.to(x.dtype)


class FlamingoDecoderLayer(nn.Module):
    """A decoder layer of the LM, preceded by a gated cross-attention block (or by nothing).

    Replaces the LM's layer in its layer list; it takes the media of the call as the ``media`` keyword argument, which
    Hugging Face models pass through from their forward to every layer, and forwards everything else untouched.
    """

    def __init__(self, decoder_layer: nn.Module, gated_cross_attn_layer: GatedCrossAttentionBlock | None) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, *args: object, media: MediaContext | None = None,
                **kwargs: object) -> object:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant checkpointing: keyword arguments (and the frozen-LM case without input grads) work.
            return checkpoint(self._forward, hidden_states, *args, media=media, use_reentrant=False, **kwargs)
        return self._forward(hidden_states, *args, media=media, **kwargs)

    def _forward(self, hidden_states: torch.Tensor, *args: object, media: MediaContext | None = None,
                 **kwargs: object) -> object:
        if self.gated_cross_attn_layer is not None:
            if media is None:
                raise ValueError("an OpenFlamingo language model was called without media; call the OpenFlamingo "
                                 "model (forward/generate), not its lang_encoder directly")
            hidden_states = self.gated_cross_attn_layer(hidden_states, media.media, media.text_time, media)
        return self.decoder_layer(hidden_states, *args, **kwargs)


class EmbeddingWithNewTokens(nn.Module):
    """The LM's input embedding (frozen) plus separate rows for the tokens OpenFlamingo adds (trainable).

    Keeping the new rows in their own small parameter means only they get gradients, optimizer state and weight decay;
    the frozen rows stay bit-identical. Token id ``>= weight.shape[0]`` selects row ``id - weight.shape[0]`` of
    ``new_weight``. Checkpoint interop joins the two into open-flamingo's single ``embed_tokens.weight``.
    """

    def __init__(self, weight: torch.Tensor, new_weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.new_weight = nn.Parameter(new_weight)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0] + self.new_weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n_base = self.weight.shape[0]
        is_new = (input_ids >= n_base).unsqueeze(-1)
        base = F.embedding(input_ids.clamp(max=n_base - 1), self.weight)
        new = F.embedding((input_ids - n_base).clamp(min=0), self.new_weight).to(base.dtype)
        return torch.where(is_new, new, base)

    def full_weight(self) -> torch.Tensor:
        """The (vocab + new, dim) matrix in open-flamingo's layout."""
        return torch.cat([self.weight.to(self.new_weight.dtype), self.new_weight], dim=0)
