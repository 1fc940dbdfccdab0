"""CLIP score from a user's local CLIP model: ``100 * max(cos(E_img(x), E_txt(p)), 0)`` per image-prompt pair.

The model is a transformers ``CLIPModel`` folder (weights, ``config.json``, the tokenizer files and
``preprocessor_config.json``, as ``save_pretrained`` of a model and its ``CLIPProcessor`` writes them), read with
``local_files_only``: nothing is downloaded. Images go through the folder's own image processor (resize,
centre crop, its normalisation), prompts through its tokenizer, truncated to the model's text length.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core.errors import BenchError


class ClipScorer:
    def __init__(self, folder: Path, device: torch.device | str = "cpu", batch: int = 32) -> None:
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise BenchError(f"--clip-model {folder}: not a CLIP model folder (no config.json)")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # a folder of another model, or one without the processor files
            raise BenchError(f"--clip-model {folder}: cannot load a transformers CLIPModel and its processor: "
                             f"{str(exc).splitlines()[0]}") from exc
        self.folder, self.device, self.batch = folder, torch.device(device), batch

    @torch.no_grad()
    def embed_images(self, imgs_u8: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, len(imgs_u8), self.batch):
            chunk = [im.permute(1, 2, 0).numpy() for im in imgs_u8[s:s + self.batch].cpu()]
            px = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(_features(self.model.get_image_features(pixel_values=px)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        n_pos = self.model.config.text_config.max_position_embeddings
        for s in range(0, len(prompts), self.batch):
            tok = self.processor(text=prompts[s:s + self.batch], return_tensors="pt", padding=True, truncation=True,
                                 max_length=n_pos)
            out.append(_features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                              attention_mask=tok["attention_mask"].to(self.device)))
                       .float().cpu())
        return torch.cat(out)

    def scores(self, imgs_u8: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """One CLIP score per (image, prompt) pair, in [0, 100]."""
        if len(imgs_u8) != len(prompts):
            raise ValueError(f"{len(imgs_u8)} images but {len(prompts)} prompts")
        cos = torch.nn.functional.cosine_similarity(self.embed_images(imgs_u8), self.embed_texts(prompts), dim=1)
        return 100.0 * cos.clamp(min=0.0)


def _features(out) -> torch.Tensor:
    """transformers returns the projected embedding as a tensor, or (newer releases) inside a model output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
