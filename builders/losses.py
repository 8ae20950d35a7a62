"""Training objectives as pure torch functions (tested without a server).

MTMH: the engagement head minimises in-batch InfoNCE on co-engaged pairs; the relevance head adds
`wr * KL(teacher || student)` over in-batch similarity distributions from a content encoder.
The composite scorer's ordinal relevance head predicts cumulative probabilities P(rel >= j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negatives_bias(log_q: torch.Tensor | None, target_ids: torch.Tensor | None) -> torch.Tensor | None:
    """The additive correction of a batch's in-batch logits [B, B], the same for every head of a step (so made
    once): -log Q of each target (its sampling probability: removes the popularity bias of in-batch negatives,
    Yi et al. 2019) and -inf on another copy of a query's positive."""
    if log_q is None and target_ids is None:
        return None
    n = len(log_q if log_q is not None else target_ids)
    bias = torch.zeros(n, n) if log_q is None else (-log_q.float())[None, :].expand(n, n).clone()
    if target_ids is not None:
        same = target_ids[None, :] == target_ids[:, None]
        same.fill_diagonal_(False)
        bias.masked_fill_(same, float("-inf"))
    return bias


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float,
             log_q: torch.Tensor | None = None, target_ids: torch.Tensor | None = None,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch softmax over targets, corrected by ``bias`` (`negatives_bias`; made from ``log_q`` and
    ``target_ids`` when not given). The temperature scales the [B, d] queries, not the [B, B] logits: one fused
    multiply-add makes the logits."""
    if bias is None:
        bias = negatives_bias(log_q, target_ids)
    scaled = query / temperature
    logits = scaled @ target.T if bias is None else torch.addmm(bias.to(query.dtype), scaled, target.T)
    labels = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, labels)


def distillation_kl(student_q: torch.Tensor, student_t: torch.Tensor, teacher_q: torch.Tensor,
                    teacher_t: torch.Tensor, student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """KL(P_teacher || P_student) of each query's similarity distribution over the batch's targets (temperatures
    applied to the [B, d] operands; the teacher's side is a constant, computed without autograd)."""
    student = F.log_softmax((student_q / student_temperature) @ student_t.T, dim=-1)
    with torch.no_grad():
        teacher = F.log_softmax((teacher_q / teacher_temperature) @ teacher_t.T, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def ordinal_cumulative(logit: torch.Tensor, first_threshold: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """P(rel >= j) for j = 1..L-1 as sigmoid(logit - theta_j), theta increasing by construction
    (theta_{j+1} = theta_j + softplus(gap_j)), so the probabilities never increase with j."""
    thetas = torch.cat([first_threshold.reshape(1), first_threshold + torch.cumsum(F.softplus(gaps), 0)])
    return torch.sigmoid(logit[..., None] - thetas)


def ordinal_loss(cumulative: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each threshold: target P(rel >= j) = [level >= j]."""
    js = torch.arange(1, cumulative.shape[-1] + 1, device=level.device)
    targets = (level[:, None] >= js[None, :]).float()
    return F.binary_cross_entropy(cumulative.clamp(1e-6, 1 - 1e-6), targets)


def expected_relevance(cumulative: torch.Tensor) -> torch.Tensor:
    """E[rel] = sum_j P(rel >= j) for levels 0..L-1."""
    return cumulative.sum(-1)
