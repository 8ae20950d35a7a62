"""Training objectives as pure functions."""

import torch

from widefunnel.builders.losses import distillation_kl, expected_relevance, info_nce, ordinal_cumulative, ordinal_loss


def test_info_nce_prefers_aligned_pairs():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    aligned = info_nce(q, q, 0.1)
    shuffled = info_nce(q, q[torch.randperm(16)], 0.1)
    assert aligned < shuffled


def test_logq_correction_changes_loss_and_duplicates_are_masked():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    base = info_nce(q, q, 0.1)
    assert not torch.isclose(base, info_nce(q, q, 0.1, log_q=torch.tensor([0.0, -1.0, -2.0, -3.0])))
    ids = torch.tensor([7, 7, 8, 9])  # rows 0 and 1 share a target: neither is the other's negative
    masked = info_nce(q, q, 0.1, target_ids=ids)
    assert torch.isfinite(masked)


def test_distillation_is_zero_when_student_matches_teacher():
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert distillation_kl(x, x, x, x, 0.1, 0.1).abs() < 1e-5
    y = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert distillation_kl(y, y, x, x, 0.1, 0.1) > 1e-3


def test_ordinal_cumulative_never_increases_across_levels():
    torch.manual_seed(1)
    logits = torch.randn(1000) * 5
    for gaps in (torch.tensor([-5.0]), torch.tensor([0.0]), torch.tensor([3.0, -2.0])):
        cum = ordinal_cumulative(logits, torch.tensor(0.3), gaps)
        assert torch.all(cum[:, 1:] <= cum[:, :-1] + 1e-7)
        assert torch.all((cum >= 0) & (cum <= 1))
    cum = ordinal_cumulative(logits, torch.tensor(0.0), torch.tensor([0.0]))
    assert torch.allclose(expected_relevance(cum), cum.sum(-1))


def test_ordinal_loss_lower_for_correct_level():
    cum_high = torch.tensor([[0.95, 0.9]])
    cum_low = torch.tensor([[0.05, 0.01]])
    level = torch.tensor([2])
    assert ordinal_loss(cum_high, level) < ordinal_loss(cum_low, level)


def test_shared_bias_is_the_reference_formula():
    """One bias for every head (`negatives_bias`) and the temperature on the operands: the same loss as
    logits / temperature - log Q with duplicates of the positive masked."""
    import torch.nn.functional as F

    from widefunnel.builders.losses import negatives_bias

    torch.manual_seed(0)
    q, t = F.normalize(torch.randn(64, 8), dim=-1), F.normalize(torch.randn(64, 8), dim=-1)
    ids = torch.randint(0, 20, (64,))
    log_q = torch.log(torch.rand(64))
    logits = q @ t.T / 0.05 - log_q[None, :]
    same = ids[None, :] == ids[:, None]
    same.fill_diagonal_(False)
    reference = F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(64))
    bias = negatives_bias(log_q, ids)
    assert torch.allclose(info_nce(q, t, 0.05, bias=bias), reference, rtol=1e-5)
    assert torch.allclose(info_nce(q, t, 0.05, log_q, ids), reference, rtol=1e-5)
    assert negatives_bias(None, None) is None
