"""Training objectives as pure torch functions (tested without a server).

MTMH: the engagement head minimises in-batch InfoNCE on co-engaged pairs; the relevance head adds
`wr * KL(teacher || student)` over in-batch similarity distributions from a content encoder.
The composite scorer's ordinal relevance head predicts cumulative probabilities P(rel >= j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float,
             log_q: torch.Tensor | None = None, target_ids: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch softmax over targets. `log_q` (log sampling probability of each target) removes the
    popularity bias of in-batch negatives (Yi et al. 2019); duplicates of the positive are masked."""
    logits = query @ target.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    labels = torch.arange(len(query), device=query.device)
    if target_ids is not None:
        same = target_ids[None, :] == target_ids[:, None]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def distillation_kl(student_q: torch.Tensor, student_t: torch.Tensor, teacher_q: torch.Tensor,
                    teacher_t: torch.Tensor, student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """KL(P_teacher || P_student) of each query's similarity distribution over the batch's targets."""
    student = F.log_softmax(student_q @ student_t.T / student_temperature, dim=-1)
    teacher = F.log_softmax(teacher_q @ teacher_t.T / teacher_temperature, dim=-1)
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
