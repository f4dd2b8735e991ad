"""The training loss: per-token NLL over loss-bearing tokens, with held-out samples masked out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from jamtrain.evaluate import Holdout


def mask_heldout(batch: dict, names: list[str], holdout: Holdout | None) -> torch.Tensor:
    """The batch's loss mask with held-out samples' tokens switched off (segment j of row i is
    batch["keys"][i][j]), so evaluation data never trains the model."""
    mask = batch["loss_mask"]
    if holdout is None or "keys" not in batch:
        return mask
    mask = mask.clone()
    seg = batch["segment_ids"]
    for i, keys in enumerate(batch["keys"]):
        name = names[int(batch["dataset_index"][i])]
        for j, key in enumerate(keys):
            if holdout.is_heldout(name, key):
                mask[i] &= seg[i] != j
    return mask


# -- loss --------------------------------------------------------------------------------------
def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, L] in fp32 (logits [B, L, V] may be bf16)."""
    b, length, v = logits.shape
    return F.cross_entropy(logits.float().reshape(-1, v), targets.reshape(-1), reduction="none").view(b, length)


def masked_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    image_offset: int,
    dataset_index: torch.Tensor | None = None,
    n_datasets: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss over target positions (loss_mask[:, 1:]) and detached statistics.

    logits are the model's output for tokens[:, :-1]. The loss is the mean over this micro-batch's
    target tokens; positions with mask False contribute neither loss nor gradient. Statistics:
    [nll_text, n_text, nll_image, n_image, (nll_d, n_d) per dataset] summed (special tokens count
    as text)."""
    targets = tokens[:, 1:]
    mask = loss_mask[:, 1:].to(logits.device)
    nll = token_nll(logits, targets)
    weights = mask.to(nll.dtype)
    n = weights.sum()
    loss = (nll * weights).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        nll_d = (nll * weights).double()
        image = (targets >= image_offset).to(torch.float64) * weights.double()
        text = weights.double() - image
        parts = [(nll_d * text).sum(), text.sum(), (nll_d * image).sum(), image.sum()]
        if n_datasets and dataset_index is not None:
            per_row_nll, per_row_n = nll_d.sum(1), weights.double().sum(1)
            idx = dataset_index.to(logits.device)
            for d in range(n_datasets):
                sel = (idx == d).double()
                parts += [(per_row_nll * sel).sum(), (per_row_n * sel).sum()]
        stats = torch.stack(parts)
    return loss, stats


# -- distributed set-up ------------------------------------------------------------------------
