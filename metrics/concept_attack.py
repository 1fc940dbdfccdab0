"""Token-embedding attack on concept tasks (textual inversion against the unlearned model): is the erased
concept still reachable through the prompt, once the concept word's input embeddings are chosen by an
attacker?

The concept's name (sd-digits: "zero") is found among the tokens of the forget caption; its k input token
embeddings, starting where the method's text encoder has them, are optimised with Adam to minimise SD's
denoising loss (L_ldm, element mean) of the unlearned UNet on the concept's training images (VAE posterior
means; all of them in every step), with t and noise drawn from a seed derived from the cell seed. Every
network weight stays frozen and unchanged: the gradient reaches only the k vectors, through the method's own
text encoder (AdvUnlearn's unlearned one, else the task's). The forget caption is then rendered with the
attacked embeddings and with the plain ones on the same noise, by the method's sampler:

* ``ua_embed_attack``: UA after the attack (share NOT read as the concept; higher means it stayed gone);
* ``asr_embed_attack``: the attack success rate, 1 - ``ua_embed_attack``;
* ``ua_embed_before``: UA of the same noise with the plain embeddings.

The row records the budget, the tokens attacked and the denoising loss on one fixed draw before and after
(``embed_attack_loss0``, ``embed_attack_loss``). The prefix and keys are the class attack's
(``metrics/attack.py``), so both task kinds share the table column.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bench.metric import register_metric
from bench.models.generators import eval_mode
from bench.sd.attention import concept_positions
from bench.sd.latent import SDModel, ldm_loss
from bench.sd.sampler import PromptSampler
from bench.sd.textenc import token_embeddings_replaced
from metrics._concept_probe import ConceptProbe, forget_prompt, probe_requests, render

ATTACK_SEED_OFFSET = 7_100_027


def concept_span(model: SDModel, prompt: str, word: str) -> tuple[int, int] | None:
    """(first position, token count) of ``word``'s first occurrence among ``prompt``'s tokens; None if absent."""
    word_ids = model.word_ids(word)
    pos = concept_positions(model.token_ids([prompt]), word_ids)[0].nonzero().flatten()
    return (int(pos[0]), len(word_ids)) if len(pos) else None


def encode_with(encoder: nn.Module, ids: Tensor, start: int, values: Tensor) -> Tensor:
    """The encoder's last hidden state of ``ids`` with the input token embeddings at ``start`` .. replaced."""
    with token_embeddings_replaced(encoder, start, values):
        return encoder(ids)[0].float()


def invert_tokens(encoder: nn.Module, unet: nn.Module, ac: Tensor, z0: Tensor, ids: Tensor, start: int,
                  init: Tensor, steps: int, lr: float, seed: int) -> tuple[Tensor, float, float]:
    """Optimise the (k, D) token embeddings ``init`` at ``start`` of the prompt ``ids`` (1, L) with Adam to
    minimise ``L_ldm`` of ``unet`` on ``z0`` conditioned on the encoded prompt, every weight frozen (the
    gradient is taken for the k vectors alone, so no network even gets a ``.grad``); returns the vectors and the
    loss on one fixed draw of t (stratified) and noise before and after."""
    values = init.detach().clone().float().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    dev, n = z0.device, len(z0)

    def draw(stratified: bool = False) -> tuple[Tensor, Tensor]:
        t = torch.randint(0, ac.shape[0], (n,), generator=g)
        if stratified:  # one t in each of n equal bins of [0, T): the loss varies most with t
            t = (torch.arange(n) * ac.shape[0] + t) // n
        return t.to(dev), torch.randn(z0.shape, generator=g).to(dev)

    def loss_of(t: Tensor, eps: Tensor) -> Tensor:
        e = encode_with(encoder, ids, start, values)
        return ldm_loss(unet, ac, z0, e.expand(n, -1, -1), t, eps)

    fixed = draw(stratified=True)
    opt = torch.optim.Adam([values], lr=lr)
    with eval_mode(unet), eval_mode(encoder):
        with torch.no_grad():
            loss0 = float(loss_of(*fixed))
        for _ in range(steps):
            (values.grad,) = torch.autograd.grad(loss_of(*draw()), [values])
            opt.step()
        with torch.no_grad():
            loss1 = float(loss_of(*fixed))
    return values.detach(), loss0, loss1


def with_prompt_embedding(sampler: PromptSampler, prompt: str, e: Tensor) -> PromptSampler:
    """A copy of ``sampler`` that encodes ``prompt`` as ``e`` (1, L, D) and every other prompt as before."""
    attacked = copy.copy(sampler)

    def text(prompts: list[str]) -> Tensor:
        out = sampler.text(prompts).clone()
        for i, p in enumerate(prompts):
            if p == prompt:
                out[i] = e[0].to(out.dtype)
        return out

    attacked.text = text
    return attacked


@register_metric("concept_token_attack")
class ConceptTokenAttack(ConceptProbe):
    directions = {"ua_embed_attack": True, "asr_embed_attack": False, "ua_embed_before": None}
    definition = ("concept tasks: UA of the forget caption rendered after optimising its concept word's input "
                  "token embeddings (every weight frozen, through the method's text encoder) to minimise the "
                  "unlearned UNet's L_ldm on the concept's images; asr = 1 - UA; ua_embed_before = same noise, "
                  "plain embeddings; budget in embed_attack_steps/_lr/_images")
    prefix, one_step = "embed_attack", "no denoising loss to invert"

    def run(self, ev, sampler, read, budget):
        m, prompt, word = sampler.model, forget_prompt(ev), ev.task.concepts[ev.concept]
        base = {"embed_attack_steps": budget.attack_steps, "embed_attack_lr": budget.attack_lr,
                "embed_attack_word": word}
        span = concept_span(m, prompt, word)
        if span is None:
            return {**{k: float("nan") for k in self.directions}, **base,
                    "embed_attack_note": f"not applicable: the concept's name {word!r} is not in the forget "
                                         f"caption {prompt!r}", "embed_attack_columns": ",".join(self.directions)}
        start, k = span
        encoder = sampler.text_encoder if sampler.text_encoder is not None else m.text_encoder
        ids = m.token_ids([prompt]).to(m.device)
        init = encoder.get_input_embeddings().weight[ids[0, start:start + k]]
        x = ev.assets.data(ev.concept).forget_images[:budget.images]
        z0 = m.encode(x.float() / 127.5 - 1.0, sample=False)
        seed = ev.seed + ATTACK_SEED_OFFSET
        values, loss0, loss1 = invert_tokens(encoder, sampler.net, m.alphas_cumprod, z0, ids, start, init,
                                             budget.attack_steps, budget.attack_lr, seed)
        with torch.no_grad(), eval_mode(encoder):
            e = encode_with(encoder, ids, start, values)
        requests = probe_requests(ev, budget.images, seed, ev.profile.guidance, prompt)
        before = 1.0 - read(render(sampler, requests), "ua_embed_before")
        after = 1.0 - read(render(with_prompt_embedding(sampler, prompt, e), requests), "ua_embed_attack")
        return {"ua_embed_attack": after, "asr_embed_attack": 1.0 - after, "ua_embed_before": before, **base,
                "embed_attack_tokens": k, "embed_attack_images": len(z0), "embed_attack_n": len(requests),
                "embed_attack_loss0": loss0, "embed_attack_loss": loss1}
