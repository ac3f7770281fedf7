"""Model surgery: turn a plain model into its GAAF variant and back.

In the spirit of Composer's module surgery: ``apply_gaaf`` finds the activations of any model with
the activation catalogue (:mod:`lightning_gaaf.activations.catalog`), replaces them in place and
returns a report ``{name: (old, new)}`` that says why each one matched and lists look-alikes that
were left alone. Three kinds of activation are found:

* activation modules (torch's, timm's, Hugging Face transformers', registered classes);
* function-valued attributes such as ``nn.TransformerEncoderLayer``'s ``activation=F.relu``: the
  attribute becomes a GAAF module and ``strip_gaaf`` puts the function back;
* with ``functional=True``, functional calls inside ``forward`` (``torch.tanh``, ``F.relu``,
  ``x.tanh()``...), rewritten with ``torch.fx``.

A policy ``(qualified_name, module) -> options | None`` gives per-layer options (None: leave it); a
mapping ``{name glob: options | None}`` says the same from YAML (first matching glob wins).
Surgery must run before a model is wrapped for distributed training (DDP/FSDP), so wrapped models
are refused.

One concept per module: :mod:`~lightning_gaaf.surgery.apply` (``apply_gaaf``, ``strip_gaaf``),
:mod:`~lightning_gaaf.surgery.selection` (targets, include/exclude, which options),
:mod:`~lightning_gaaf.surgery.policy`, :mod:`~lightning_gaaf.surgery.functional` (the ``torch.fx``
rewrite) and :mod:`~lightning_gaaf.surgery.report`.
"""

from lightning_gaaf.surgery.apply import apply_gaaf, strip_gaaf
from lightning_gaaf.surgery.policy import Policy, PolicyMapping, as_policy, policy_from_mapping
from lightning_gaaf.surgery.report import GAAFReport, Replacement
from lightning_gaaf.surgery.selection import resolve_targets

__all__ = [
    "GAAFReport",
    "Policy",
    "PolicyMapping",
    "Replacement",
    "apply_gaaf",
    "as_policy",
    "policy_from_mapping",
    "resolve_targets",
    "strip_gaaf",
]
