"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), the closed-form edit of the cross-attention
key and value projections; no gradient step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.method import Method, merge_presets, per_task, register_method
from bench.sd.loading import cross_attention_kv

TOKENS = ("span", "last")


@register_method("uce")
class UCE(Method):
    """For every cross-attention projection W (``attn2.to_k``, ``attn2.to_v``), with erase keys c_i mapped to
    the guide's values v*_i = W_old g_i and preserve keys c_j kept at W_old c_j, UCE solves

        W = (λ W_old + s_e Σ v*_i c_iᵀ + s_p Σ W_old c_j c_jᵀ) (λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹,

    the minimiser of λ‖W − W_old‖² + s_e Σ‖W c_i − v*_i‖² + s_p Σ‖W c_j − W_old c_j‖² (reference
    ``train-scripts/train_erase.py``, technique ``replace``). Keys are the text encoder's last hidden states.
    ``tokens="span"`` (the paper's code): an erase prompt contributes its last word token and every position
    after it (end token, padding), aligned position by position with the guide's from the guide's last word
    token; a preserve prompt contributes all 77 positions. ``tokens="last"`` (the 2024 rewrite): one key per
    prompt, its last word token. The empty prompt is always preserved; ``preserve="remain"`` adds the task's
    other concepts (the paper's choice for artists; a harness choice for digits), ``"null"`` only ∅, or a
    ``;``-separated list. ``preserve_scale`` 0 means the paper code's max(0.1, 1/|preserve set|).
    ``also_erase`` lists more concepts to erase in the same edit. The solve is in float64 (the reference
    inverts in float32). One iteration is the edit; there are no optimizer steps."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1  # 1: the edit; 0: the unedited model
        lamb: float = 0.5
        erase_scale: float = 1.0
        preserve_scale: float = 0.0  # 0: max(0.1, 1 / |preserve set|), as the paper's code
        guide: str = ""  # the concept the erased one is mapped to ("": the empty prompt)
        preserve: str = "remain"  # remain | null | "concept a; concept b"
        also_erase: str = ""  # "concept a; concept b": erased with the cell's concept in one edit
        tokens: str = "span"  # span (paper code) | last (2024 rewrite)

    paper = ("Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024; "
             "rohitgandikota/unified-concept-editing)")
    data_free = True
    status = "reference"
    steps_per_iter = 0
    task_kinds = frozenset({"concept"})
    # sd-digits: every caption shares "a handwritten digit" and the end/padding positions, so at the paper
    # code's 0.1 the edit takes the other digits along (retained accuracy 0.31, UA 1.0); 0.5 keeps 0.72
    presets = merge_presets(per_task({"sd-nudity": {"preserve": "null"}, "sd-style": {"guide": "art"},
                                      "sd-digits": {"preserve_scale": 0.5}}))

    def unlearn(self, ctx):
        cfg = self.config
        if cfg.tokens not in TOKENS:
            raise BenchError(f"uce.tokens must be one of {', '.join(TOKENS)}, not {cfg.tokens!r}")
        if cfg.iters not in (0, 1):
            raise BenchError(f"uce is one closed-form edit: uce.iters must be 0 or 1, not {cfg.iters}")
        net = ctx.base_model()
        erase, preserve = prompt_sets(ctx, cfg.also_erase, cfg.preserve)
        s_p = cfg.preserve_scale or max(0.1, 1.0 / len(preserve))
        keys, guides = erase_keys(ctx, erase, cfg.guide, cfg.tokens)
        kept = preserve_keys(ctx, preserve, cfg.tokens)
        ctx.record(uce_erase=" | ".join(erase), uce_preserve_prompts=len(preserve), uce_preserve_scale=s_p)
        for _ in ctx.steps(cfg.iters):
            with torch.no_grad():
                for lin in cross_attention_projections(net):
                    w = lin.weight
                    lin.weight.copy_(closed_form_edit(w, keys, guides @ w.T.double(), kept, cfg.lamb,
                                                      cfg.erase_scale, s_p).to(w.dtype))
        return ctx.sampler(net)


def prompt_sets(ctx, also_erase: str, preserve: str) -> tuple[list[str], list[str]]:
    """The erase prompts (the cell's concept and ``also_erase``) and the preserve prompts (∅ always, plus
    ``remain``: the task's other concepts, ``null``: nothing more, or a ``;``-separated list)."""
    erase = [ctx.prompts.erase] + _split(also_erase)
    kept = [""] + {"remain": list(ctx.prompts.remain), "null": []}.get(preserve, _split(preserve))
    return erase, [p for p in dict.fromkeys(kept) if p not in erase]


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(";") if t.strip()]


def cross_attention_projections(net: nn.Module) -> list[nn.Linear]:
    """The key and value projections of every cross-attention (the weights that read the text)."""
    found = cross_attention_kv(net)
    if not found:
        raise BenchError("uce edits cross-attention (attn2.to_k, attn2.to_v); this UNet has none")
    return found


def erase_keys(ctx, erase: list[str], guide: str, tokens: str) -> tuple[Tensor, Tensor]:
    """Matching rows (keys of the erase prompts, embeddings of the guide at the same aligned positions)."""
    emb = ctx.text(erase + [guide]).double()
    n = ctx.token_lengths(erase + [guide])
    g, gi = emb[-1], n[-1] - 2
    keys, guides = [], []
    for e, ni in zip(emb[:-1], n[:-1]):
        ei = ni - 2  # the last word token (before the end token)
        if tokens == "last":
            keys.append(e[ei:ei + 1])
            guides.append(g[gi:gi + 1])
        else:
            far, length = max(ei, gi), e.shape[0]
            keys.append(e[ei:length - (far - ei)])
            guides.append(g[gi:length - (far - gi)])
    return torch.cat(keys), torch.cat(guides)


def preserve_keys(ctx, preserve: list[str], tokens: str) -> Tensor:
    emb = ctx.text(preserve).double()
    if tokens == "last":
        n = ctx.token_lengths(preserve)
        return torch.stack([e[i - 2] for e, i in zip(emb, n)])
    return emb.flatten(0, 1)


def closed_form_edit(w: Tensor, keys: Tensor, values: Tensor, kept: Tensor, lamb: float, erase_scale: float,
                     preserve_scale: float) -> Tensor:
    """UCE's W for ``w`` (out, d), erase ``keys`` (n, d) with target ``values`` (n, out) and preserve keys
    ``kept`` (m, d); float64."""
    w = w.double()
    d = w.shape[1]
    lhs = lamb * w + erase_scale * values.T @ keys + preserve_scale * (w @ kept.T) @ kept
    gram = lamb * torch.eye(d, dtype=w.dtype, device=w.device) + erase_scale * keys.T @ keys \
        + preserve_scale * kept.T @ kept
    return torch.linalg.solve(gram, lhs.T).T  # gram is symmetric: W gram = lhs
