"""TorchJD's gradient aggregators and loss weightings that params ``mtl`` names: the table, the
config-time check of their options (run by the configure stage) and their construction.
How they combine a step's per-task gradients is ``pipeline/aggregation.py``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torchjd.aggregation as jd
import torchjd.scalarization as jds
from torch import nn

from pipeline.config import ConfigError, MtlConfig

# mtl.aggregator → TorchJD's aggregator. Each is a weighted one (a combination of the rows).
AGGREGATORS: dict[str, Callable[..., jd.Aggregator]] = {
    "sum": jd.Sum,
    "mean": jd.Mean,
    "random": jd.Random,
    "upgrad": jd.UPGrad,
    "mgda": jd.MGDA,
    "dualproj": jd.DualProj,
    "imtl_g": jd.IMTLG,
    "aligned_mtl": jd.AlignedMTL,
    "pcgrad": jd.PCGrad,
    "gradvac": jd.GradVac,
    "pcd": jd.PCD,
    "fairgrad": jd.FairGrad,
    "cagrad": jd.CAGrad,
    "nash_mtl": jd.NashMTL,
}
# Matrix weightings whose weights depend on the number of rows alone: they are handed a stand-in
# of that shape rather than the K×P rows (a copy of every task's gradient).
SHAPE_ONLY = (jd.MeanWeighting, jd.SumWeighting, jd.RandomWeighting, jd.ConstantWeighting)
# mtl.weighting → TorchJD's scalarizer (``fixed``: none, loss.task_weights as before).
WEIGHTINGS: dict[str, Callable[..., jds.Scalarizer]] = {
    "uw": jds.UW,
    "dwa": jds.DWA,
    "famo": jds.FAMO,
}
# Weightings whose parameters learn with the model's optimiser (UW's log-variances); FAMO steps
# its logits itself, from the losses recomputed after each update (``update``).
LEARNED_WITH_MODEL = ("uw",)
# Constructor arguments bestfit fills in itself.
_GIVEN = {"n_tasks", "shape"}
INSTALL_HINT = "install bestfit's optional extra: pip install -e '.[mtl]'"


def _options(factory: Callable, options: dict, where: str) -> dict:
    """``options`` checked against ``factory``'s keyword arguments."""
    signature = inspect.signature(factory)
    known = [n for n, p in signature.parameters.items()
             if n not in _GIVEN and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} of {factory.__name__}; "
                          f"known: {known}")
    missing = [n for n in known if signature.parameters[n].default is inspect.Parameter.empty
               and n not in options]
    if missing:
        raise ConfigError(f"{where}: {factory.__name__} needs option(s) {missing} (no default)")
    return options


def check_mtl(mtl: MtlConfig, where: str) -> None:
    """Config-time check of names and options, without building (an optional dependency may be
    missing where params are only read)."""
    if mtl.aggregator is not None:
        _options(AGGREGATORS[mtl.aggregator], mtl.aggregator_options,
                 f"{where}.aggregator_options")
    elif mtl.aggregator_options:
        raise ConfigError(f"{where}.aggregator_options: {mtl.aggregator_options} given without "
                          f"an aggregator")
    if mtl.weighting != "fixed":
        _options(WEIGHTINGS[mtl.weighting], mtl.weighting_options, f"{where}.weighting_options")
    elif mtl.weighting_options:
        raise ConfigError(f"{where}.weighting_options: {mtl.weighting_options} given with "
                          f"weighting: fixed")


def _built(factory: Callable, kwargs: dict, name: str):
    try:
        return factory(**kwargs)
    except ImportError as exc:  # cvxpy, scipy: TorchJD's optional dependencies
        raise ConfigError(f"mtl: {name} needs a package that is not installed ({exc}); "
                          f"{INSTALL_HINT}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"mtl: {name}({kwargs}): {exc}") from None


def build_aggregator(mtl: MtlConfig, n_tasks: int) -> jd.Aggregator:
    """TorchJD's aggregator that mtl names (``sum`` when only a weighting is chosen)."""
    name = mtl.aggregator or "sum"
    factory = AGGREGATORS[name]
    kwargs = dict(mtl.aggregator_options)
    if "n_tasks" in inspect.signature(factory).parameters:
        kwargs["n_tasks"] = n_tasks
    return _built(factory, kwargs, name)


def build_weighting(mtl: MtlConfig, n_tasks: int) -> jds.Scalarizer | None:
    if mtl.weighting == "fixed":
        return None
    factory = WEIGHTINGS[mtl.weighting]
    kwargs = dict(mtl.weighting_options)
    if "shape" in inspect.signature(factory).parameters:
        kwargs["shape"] = n_tasks
    return _built(factory, kwargs, mtl.weighting)


def row_weighting(aggregator: jd.Aggregator) -> tuple[str, nn.Module]:
    """The aggregator's weighting and what it reads: ``gramian`` (G) or ``matrix`` (J)."""
    if isinstance(aggregator, jd.GramianWeightedAggregator):
        return "gramian", aggregator.gramian_weighting
    if isinstance(aggregator, jd.WeightedAggregator):
        return "matrix", aggregator.weighting
    raise TypeError(f"{aggregator}: not a weighted aggregator")
