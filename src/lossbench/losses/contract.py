"""The contract every loss is held to, run on any loss by `lossbench check-loss`.

A loss is a pure function of `LossInputs` (hidden states at the training positions, their
targets, the item table, sampled negatives) and `LossParams`. For a comparison to be fair and
training to be sound it must: return a finite scalar; send finite gradient into the hidden
states and the item rows it scores, and none into the padding row or rows it never scores;
not depend on the order of the positions in a batch (the trainer concatenates parts); give
the same value for the same inputs (randomness belongs to the sampler, outside the loss, or,
for a loss that declares the need, to the seeded generator the trainer hands it);
have correct gradients (float64 gradcheck); and never be fed a negative equal to its target,
which the trainer's samplers guarantee and the check confirms on their draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError

from lossbench.losses.base import LossInputs, LossParams, LossSpec, Need
from lossbench.losses.negatives import UnseenSampler, popularity_cdf, sample_negatives
from lossbench.losses.samplers import build_sampler
from lossbench.plugins import one_line

# (positions N, hidden size D, catalogue n_items) of the random inputs.
SHAPES = ((1, 4, 3), (7, 8, 30), (64, 16, 500))
GRADIENT_SHAPE = (7, 8, 30)
UNSCORED_SHAPE = (5, 8, 2000)  # a large catalogue: most items are neither target nor negative
GRADCHECK_SHAPE = (3, 4, 6)
NOT_RUN = "not run: the loss must first return a finite scalar"
FED_NEGATIVES = 4  # negatives per position to tell whether a loss raises for want of them


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Subject], str | None]  # None: passed; else why it failed
    checked: str  # what a pass means, shown beside it


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool | None  # None: not run, it needs an earlier check to pass
    detail: str


@dataclass(frozen=True)
class Subject:
    """The loss under check: its function, parameters and negatives per position."""

    spec: LossSpec
    params: LossParams
    negatives: int  # per position, when the loss is fed negatives

    @property
    def needs(self) -> frozenset[Need]:
        """What the trainer would supply (`LossSpec.run_needs`)."""
        return self.spec.run_needs(self.negatives)

    @property
    def fed_negatives(self) -> bool:
        """Is the loss fed sampled negatives (it needs them, and the count is not 0)?"""
        return "negatives" in self.needs and self.negatives > 0

    def inputs(
        self, shape: tuple[int, int, int], seed: int, dtype: torch.dtype = torch.float32
    ) -> LossInputs:
        """Random inputs of `shape` with exactly the declared needs: negatives drawn by the
        trainer's uniform sampler, and that sampler's log Q and frequencies, random training
        counts and a seeded generator where the loss needs them."""
        n, dim, n_items = shape
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(n, dim, generator=generator, dtype=dtype) / dim**0.5
        table = torch.randn(n_items + 1, dim, generator=generator, dtype=dtype)
        targets = torch.randint(1, n_items + 1, (n,), generator=generator)
        counts = torch.randint(1, 50, (n_items + 1,), generator=generator)
        counts[0] = 0  # (n_items + 1,) int64, padding never occurs
        negatives, log_q, frequencies = None, None, None
        if self.fed_negatives:
            negatives = sample_negatives(targets, self.negatives, n_items, generator)
            log_q, frequencies = self._uniform_sampler_inputs(counts)
        return LossInputs(
            hidden.requires_grad_(True),
            targets,
            table.requires_grad_(True),
            negatives,
            log_q=log_q,
            item_frequencies=frequencies,
            item_counts=counts if "item_counts" in self.needs else None,
        )

    def _uniform_sampler_inputs(self, counts: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The uniform sampler's log Q and frequencies, each only where the loss needs it."""
        cpu, count = torch.device("cpu"), self.negatives
        log_q, frequencies = None, None
        if "log_q" in self.needs:
            log_q = build_sampler("uniform", count, counts, counts, cpu, logq=True).log_q
        if "item_frequencies" in self.needs:
            corrected = build_sampler("uniform", count, counts, counts, cpu, logq="corrected")
            frequencies = corrected.frequencies
        return log_q, frequencies

    def value(self, inputs: LossInputs) -> Tensor:
        """The loss of `inputs`; a loss that needs a generator gets one freshly seeded, so the
        same inputs mean the same random projections."""
        if "generator" in self.needs:
            generator = torch.Generator(inputs.hidden.device).manual_seed(0)
            inputs = dataclasses.replace(inputs, generator=generator)
        return self.spec.fn(inputs, self.params)

    def number(self, inputs: LossInputs) -> float:
        """The value as the trainer computes it (with gradients on), as a float."""
        return float(self.value(inputs).detach())


def check_loss(
    spec: LossSpec, params: LossParams | None = None, negatives: int | None = None
) -> list[CheckResult]:
    """Every check, in order; `negatives`: per position (default: the loss's own)."""
    count = spec.negatives if negatives is None else negatives
    subject = Subject(spec, params or LossParams(), count)
    first = _guarded(SCALAR, subject)
    results = [first]
    for check in NEEDS_SCALAR:
        results.append(_guarded(check, subject) if first.passed else _not_run(check))
    results.append(_guarded(SAMPLERS, subject))
    return results


def _guarded(check: Check, subject: Subject) -> CheckResult:
    """Run one check: None passes, a string is the reason it failed, so is an exception."""
    try:
        failure = check.run(subject)
    except Exception as error:
        hint = _cause(check, subject, error)
        return CheckResult(check.name, False, f"raised {one_line(error)}{hint}")
    if failure is not None:
        return CheckResult(check.name, False, failure)
    if check is SAMPLERS and not subject.fed_negatives:
        return CheckResult(check.name, True, "the loss is fed no negatives")
    return CheckResult(check.name, True, check.checked)


def _cause(check: Check, subject: Subject, error: Exception) -> str:
    """A hint naming why the loss raised, where that can be told; else nothing."""
    if not subject.fed_negatives and subject.spec.negatives_from_flags:
        fed = Subject(subject.spec, subject.params, FED_NEGATIVES)
        try:  # the same check with negatives: does it raise only without them?
            check.run(fed)
        except Exception:  # noqa: BLE001  it raises either way: negatives are not the cause
            pass
        else:
            return " (it was fed no negatives: give --negatives K to a sampled loss)"
    text = str(error)
    if isinstance(error, TypeError) and "argument" in text:
        return " (a loss is called as fn(inputs: LossInputs, params: LossParams))"
    if isinstance(error, RuntimeError) and "does not require grad" in text:
        return " (the value is detached from the inputs: no .detach(), .item() or numpy)"
    return ""


def _not_run(check: Check) -> CheckResult:
    return CheckResult(check.name, None, NOT_RUN)


def finite_scalar(subject: Subject) -> str | None:
    for seed, shape in enumerate(SHAPES):
        n, _, n_items = shape
        value = subject.value(subject.inputs(shape, seed))
        where = f"positions x items = {n}x{n_items}"
        if not isinstance(value, Tensor):
            return f"returns a {type(value).__name__}, not a tensor ({where})"
        if value.ndim != 0:
            return (
                f"returns a tensor of shape {tuple(value.shape)}, not a scalar ({where}): "
                "reduce over the positions, e.g. .mean()"
            )
        if not value.is_floating_point() or not bool(torch.isfinite(value)):
            return f"returns {value.item()} ({where})"
    return None


def gradients_flow(subject: Subject) -> str | None:
    inputs = subject.inputs(GRADIENT_SHAPE, 10)
    subject.value(inputs).backward()
    hidden, table = inputs.hidden.grad, inputs.item_embeddings.grad
    if hidden is None or not bool(hidden.any()):
        return "the hidden states get no gradient (is the result detached from them?)"
    if table is None or not bool(table[inputs.targets].any()):
        return "the target items' rows get no gradient (are they scored?)"
    if not (bool(torch.isfinite(hidden).all()) and bool(torch.isfinite(table).all())):
        return "a gradient is not finite (inf or nan)"
    return None


def no_gradient_to_unscored_rows(subject: Subject) -> str | None:
    inputs = subject.inputs(UNSCORED_SHAPE, 11)
    subject.value(inputs).backward()
    table = inputs.item_embeddings.grad
    if table is None:
        return "the item table gets no gradient at all"
    if bool(table[0].any()):
        return (
            f"the padding row 0 gets gradient (|g| = {float(table[0].norm()):.3g}): score "
            "only items 1..n_items, e.g. item_embeddings[1:] with targets - 1"
        )
    if inputs.negatives is None:
        return None  # a full-catalogue loss scores every real item
    scored = torch.zeros(len(table), dtype=torch.bool)
    scored[inputs.targets] = True
    scored[inputs.negatives.reshape(-1)] = True
    leaked = (table.ne(0).any(dim=1) & ~scored).nonzero()
    if len(leaked):
        return (
            f"item {int(leaked[0])} gets gradient but is neither a target nor a negative "
            f"({len(leaked)} such rows): score only the targets and the given negatives"
        )
    return None


def order_independent(subject: Subject) -> str | None:
    inputs = subject.inputs(SHAPES[-1], 12)
    order = torch.randperm(len(inputs.targets), generator=torch.Generator().manual_seed(0))
    shuffled = dataclasses.replace(
        inputs,
        hidden=inputs.hidden[order],
        targets=inputs.targets[order],
        negatives=None if inputs.negatives is None else inputs.negatives[order],
    )
    before, after = subject.number(inputs), subject.number(shuffled)
    if abs(before - after) > 1e-5 * max(1.0, abs(before)):
        return f"reordering the positions changes the value from {before:.6g} to {after:.6g}"
    return None


def deterministic(subject: Subject) -> str | None:
    inputs = subject.inputs(SHAPES[-1], 13)
    first, second = subject.number(inputs), subject.number(inputs)
    if first != second:
        return (
            f"the same inputs gave {first:.8g} and then {second:.8g}: draw nothing at random "
            "in the loss (negatives come from the trainer's sampler)"
        )
    return None


def float64_gradcheck(subject: Subject) -> str | None:
    inputs = subject.inputs(GRADCHECK_SHAPE, 14, dtype=torch.float64)

    def loss_of(hidden: Tensor, table: Tensor) -> Tensor:
        return subject.value(dataclasses.replace(inputs, hidden=hidden, item_embeddings=table))

    try:
        torch.autograd.gradcheck(loss_of, (inputs.hidden, inputs.item_embeddings))
    except GradcheckError as error:
        return f"analytical and numerical gradients differ: {str(error).splitlines()[0]}"
    return None


def negatives_exclude_target(subject: Subject) -> str | None:
    """The trainer's samplers on tiny and skewed catalogues; also the inputs fed above."""
    if not subject.fed_negatives:
        return None
    generator = torch.Generator().manual_seed(15)
    draws = []
    for n_items in (2, 3, 50):
        targets = torch.randint(1, n_items + 1, (400,), generator=generator)
        counts = torch.arange(n_items + 1, dtype=torch.float64) ** 3  # skewed popularity
        for cdf in (None, popularity_cdf(counts)):
            draws.append((targets, sample_negatives(targets, 64, n_items, generator, cdf)))
        # Each user's history is their target: unseen negatives avoid it by construction.
        offsets = torch.arange(len(targets) + 1)
        unseen = UnseenSampler(offsets, targets, n_items, "cpu")
        draws.append((targets, unseen.sample(torch.arange(len(targets)), 64, generator)))
    for seed, shape in enumerate(SHAPES):
        fed = subject.inputs(shape, seed)
        assert fed.negatives is not None
        draws.append((fed.targets, fed.negatives))
    for targets, negatives in draws:
        hits = int((negatives == targets.unsqueeze(1)).sum())
        if hits:
            return f"{hits} sampled negatives equal their target"
    return None


_SIZES = ", ".join(f"{n}x{items}" for n, _, items in SHAPES)
SCALAR = Check("finite scalar", finite_scalar, f"0-dim and finite (positions x items: {_SIZES})")
NEEDS_SCALAR = (
    Check(
        "gradients reach hidden states and items",
        gradients_flow,
        "finite, non-zero on the hidden states and the targets' rows",
    ),
    Check(
        "no gradient to padding or unscored items",
        no_gradient_to_unscored_rows,
        "exactly 0 on row 0 and on rows neither target nor negative",
    ),
    Check(
        "independent of position order",
        order_independent,
        f"{SHAPES[-1][0]} positions shuffled: same value",
    ),
    Check("deterministic", deterministic, "two calls on the same inputs: identical values"),
    Check(
        "float64 gradcheck",
        float64_gradcheck,
        f"{GRADCHECK_SHAPE[0]} positions x {GRADCHECK_SHAPE[2]} items, float64",
    ),
)
SAMPLERS = Check(
    "no negative equals its target",
    negatives_exclude_target,
    "the trainer's uniform, popularity and unseen samplers, and the inputs fed: none",
)
