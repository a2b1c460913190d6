"""One adapter per library: the same attack setting expressed in each library's own API.

Each adapter maps a :class:`Spec` to the library's own attack with the same parameters (eps, step size,
steps, random start, CW's initial c, steps per round, rounds and learning rate) and returns the adversarial
batch as a torch tensor. Where a library lacks an attack, ``api`` returns ``None`` and the row is absent;
where it lacks a parameter (torchattacks' CW has no search over c) the substitution is named in ``api``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

# torchattacks' CW optimises one fixed c (no binary search); its docstring advises c=1 ("with default c, you
# can't easily get adversarial images. Set higher c like 1"). It gets that c and steps * rounds iterations.
TORCHATTACKS_CW_C = 1.0


@dataclass(frozen=True)
class Spec:
    """One attack setting, identical for every library."""

    attack: str  # "fgsm" | "bim" | "pgd" | "pgd_l2" | "apgd_ce" | "apgd_l2" | "cw_l2"
    eps: float | None = None
    steps: int = 1
    alpha: float | None = None
    targeted: bool = False
    c: float = 1e-2  # CW: initial trade-off constant
    binary_search_steps: int = 1  # CW: rounds of the search over c
    lr: float = 1e-2  # CW: Adam learning rate
    abort_early: bool = True  # CW: each library's early abort (torchattacks' and ART's cannot be switched off)

    @property
    def norm(self) -> str | None:
        if self.attack in ("cw_l2", "pgd_l2", "apgd_l2"):
            return "l2"
        return "linf"

    @property
    def norm_label(self) -> str:
        """The norm as torchattacks and AutoAttack spell it."""
        return "L2" if self.norm == "l2" else "Linf"

    @property
    def minimal_norm(self) -> bool:
        return self.attack == "cw_l2"

    @property
    def iterations(self) -> int:
        """Nominal gradient evaluations (CW: an upper bound; early abort may stop sooner)."""
        return self.steps * (self.binary_search_steps if self.attack == "cw_l2" else 1)

    @property
    def name(self) -> str:
        names = {
            "fgsm": "FGSM",
            "bim": "BIM",
            "pgd": "PGD-Linf",
            "pgd_l2": "PGD-L2",
            "apgd_ce": "APGD-CE",
            "apgd_l2": "APGD-CE-L2",
            "cw_l2": "CW-L2",
        }
        return names[self.attack] + (" targeted" if self.targeted else "")

    @property
    def setting(self) -> str:
        if self.attack == "cw_l2":
            abort = "" if self.abort_early else ", abort off"
            return f"c0={self.c:g}, {self.binary_search_steps}x{self.steps} steps, lr={self.lr:g}{abort}"
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" and self.eps is not None else f"{self.eps:g}"
        if self.attack == "fgsm":
            return f"eps={eps}"
        alpha = (
            ""
            if self.alpha is None
            else (f", alpha={self.alpha * 255:.3g}/255" if self.norm == "linf" else f", alpha={self.alpha:.3g}")
        )
        return f"eps={eps}, {self.steps} steps{alpha}"

    def warmup(self) -> Spec:
        """The same attack with few iterations: fills allocator and oneDNN caches for this batch shape.

        CW keeps up to 10 steps in one round: adv_lib's early-abort check divides by steps // 10.
        """
        steps = min(self.steps, 10 if self.attack == "cw_l2" else 2)
        return Spec(self.attack, self.eps, steps, self.alpha, self.targeted, self.c, 1, self.lr, self.abort_early)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Library:
    """Base adapter: ``api(spec)`` names the library call used for ``spec`` (None: not offered)."""

    name = ""
    dist = ""

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        self.model = model
        self.num_classes = num_classes
        self.device = x_example.device

    @property
    def version(self) -> str:
        return version(self.dist)

    def api(self, spec: Spec) -> str | None:
        raise NotImplementedError

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        """Attack ``x``; ``y`` holds the true classes, or the targets when ``spec.targeted``."""
        raise NotImplementedError


class Advlab(Library):
    name = "advlab"
    dist = "advlab"

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        super().__init__(model, num_classes, x_example)
        from advlab import attacks

        self.attacks = attacks
        self.apgd: Callable[..., Tensor] | None = getattr(attacks, "apgd", None)

    def api(self, spec: Spec) -> str | None:
        if spec.targeted and spec.attack != "cw_l2":
            return None
        if spec.attack in ("apgd_ce", "apgd_l2"):
            return f"attacks.apgd(norm='{spec.norm}', loss='ce')" if self.apgd is not None else None
        return {
            "fgsm": "attacks.fgsm",
            "bim": "attacks.bim",
            "pgd": "attacks.pgd(norm='linf')",
            "pgd_l2": "attacks.pgd(norm='l2')",
            "cw_l2": "attacks.cw_l2",
        }[spec.attack]

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        a, m = self.attacks, self.model
        if spec.attack == "fgsm":
            return a.fgsm(m, x, y, spec.eps)
        if spec.attack == "bim":
            return a.bim(m, x, y, spec.eps, spec.alpha, spec.steps)
        if spec.attack in ("pgd", "pgd_l2"):
            return a.pgd(m, x, y, spec.eps, spec.alpha, spec.steps, norm=spec.norm, random_start=True)
        if spec.attack == "cw_l2":
            return a.cw_l2(
                m,
                x,
                y,
                c=spec.c,
                kappa=0.0,
                steps=spec.steps,
                lr=spec.lr,
                binary_search_steps=spec.binary_search_steps,
                targeted=spec.targeted,
                abort_early=spec.abort_early,
            )
        assert self.apgd is not None
        params = inspect.signature(self.apgd).parameters
        kwargs: dict[str, object] = {"eps": spec.eps}
        kwargs["steps" if "steps" in params else "n_iter"] = spec.steps
        if "norm" in params:
            kwargs["norm"] = spec.norm
        elif spec.norm != "linf":
            raise ValueError(f"this advlab's apgd has no norm argument: cannot run {spec.name}")
        if "loss" in params:
            kwargs["loss"] = "ce"
        return self.apgd(m, x, y, **kwargs)


class AdvlabPrepared(Advlab):
    """advlab on :func:`advlab.models.prepare`'s copy of the model: the speed a user of ``advlab eval`` gets.

    The plain :class:`Advlab` row attacks the model as given, like every peer: that row compares like with like.
    """

    name = "advlab (prepared)"

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        from advlab.models import prepare

        super().__init__(prepare(model, x_example), num_classes, x_example)


class Torchattacks(Library):
    name = "torchattacks"
    dist = "torchattacks"

    def api(self, spec: Spec) -> str | None:
        if spec.targeted and spec.attack != "cw_l2":
            return None
        return {
            "fgsm": "FGSM",
            "bim": "BIM",
            "pgd": "PGD",
            "pgd_l2": "PGDL2",
            "apgd_ce": "APGD(loss='ce')",
            "apgd_l2": "APGD(norm='L2', loss='ce')",
            "cw_l2": f"CW(c={TORCHATTACKS_CW_C:g}, steps=rounds*steps; no c search)",
        }[spec.attack]

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        import torchattacks as ta

        m = self.model
        if spec.attack == "fgsm":
            atk = ta.FGSM(m, eps=spec.eps)
        elif spec.attack == "bim":
            atk = ta.BIM(m, eps=spec.eps, alpha=spec.alpha, steps=spec.steps)
        elif spec.attack == "pgd":
            atk = ta.PGD(m, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
        elif spec.attack == "pgd_l2":
            atk = ta.PGDL2(m, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
        elif spec.attack in ("apgd_ce", "apgd_l2"):
            atk = ta.APGD(
                m, norm=spec.norm_label, eps=spec.eps, steps=spec.steps, n_restarts=1, seed=0, loss="ce", rho=0.75
            )
        else:
            atk = ta.CW(m, c=TORCHATTACKS_CW_C, kappa=0, steps=spec.iterations, lr=spec.lr)
            if spec.targeted:
                atk.set_mode_targeted_by_label(quiet=True)
        return atk(x, y)


class Foolbox(Library):
    name = "foolbox"
    dist = "foolbox"

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        super().__init__(model, num_classes, x_example)
        import foolbox as fb

        self.fb = fb
        self.fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=self.device)

    def api(self, spec: Spec) -> str | None:
        if spec.targeted and spec.attack != "cw_l2":
            return None
        return {
            "fgsm": "LinfFastGradientAttack",
            "bim": "LinfBasicIterativeAttack",
            "pgd": "LinfProjectedGradientDescentAttack",
            "pgd_l2": "L2ProjectedGradientDescentAttack",
            "apgd_ce": None,
            "apgd_l2": None,
            "cw_l2": "L2CarliniWagnerAttack",
        }[spec.attack]

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        fb = self.fb
        a = fb.attacks
        if spec.attack == "fgsm":
            atk = a.LinfFastGradientAttack(random_start=False)
        elif spec.attack == "bim":
            atk = a.LinfBasicIterativeAttack(abs_stepsize=spec.alpha, steps=spec.steps, random_start=False)
        elif spec.attack == "pgd":
            atk = a.LinfProjectedGradientDescentAttack(abs_stepsize=spec.alpha, steps=spec.steps, random_start=True)
        elif spec.attack == "pgd_l2":
            atk = a.L2ProjectedGradientDescentAttack(abs_stepsize=spec.alpha, steps=spec.steps, random_start=True)
        else:
            atk = a.L2CarliniWagnerAttack(
                binary_search_steps=spec.binary_search_steps,
                steps=spec.steps,
                stepsize=spec.lr,
                confidence=0,
                initial_const=spec.c,
                abort_early=spec.abort_early,
            )
        criterion = fb.criteria.TargetedMisclassification(y) if spec.targeted else fb.criteria.Misclassification(y)
        _, clipped, _ = atk(self.fmodel, x, criterion, epsilons=spec.eps)
        return clipped


class ART(Library):
    name = "ART"
    dist = "adversarial-robustness-toolbox"

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        super().__init__(model, num_classes, x_example)
        from art.estimators.classification import PyTorchClassifier

        self.classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x_example.shape[1:]),
            nb_classes=num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if self.device.type == "cuda" else "cpu",
        )

    def api(self, spec: Spec) -> str | None:
        if spec.targeted and spec.attack != "cw_l2":
            return None
        return {
            "fgsm": "FastGradientMethod",
            "bim": "BasicIterativeMethod",
            "pgd": "ProjectedGradientDescentPyTorch",
            "pgd_l2": "ProjectedGradientDescentPyTorch(norm=2)",
            "apgd_ce": "AutoProjectedGradientDescent",
            "apgd_l2": "AutoProjectedGradientDescent(norm=2)",
            "cw_l2": "CarliniL2Method",
        }[spec.attack]

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        from art.attacks import evasion as ev

        c, n = self.classifier, len(x)
        norm = 2 if spec.norm == "l2" else np.inf
        if spec.attack == "fgsm":
            atk = ev.FastGradientMethod(c, norm=np.inf, eps=spec.eps, batch_size=n)
        elif spec.attack == "bim":
            atk = ev.BasicIterativeMethod(
                c, eps=spec.eps, eps_step=spec.alpha, max_iter=spec.steps, batch_size=n, verbose=False
            )
        elif spec.attack in ("pgd", "pgd_l2"):
            atk = ev.ProjectedGradientDescentPyTorch(
                c,
                norm=norm,
                eps=spec.eps,
                eps_step=spec.alpha,
                max_iter=spec.steps,
                num_random_init=1,
                batch_size=n,
                verbose=False,
            )
        elif spec.attack in ("apgd_ce", "apgd_l2"):
            atk = ev.AutoProjectedGradientDescent(
                c,
                norm=norm,
                eps=spec.eps,
                eps_step=2 * spec.eps,
                max_iter=spec.steps,
                nb_random_init=1,
                batch_size=n,
                loss_type="cross_entropy",
                verbose=False,
            )
        else:
            atk = ev.CarliniL2Method(
                c,
                confidence=0.0,
                targeted=spec.targeted,
                learning_rate=spec.lr,
                binary_search_steps=spec.binary_search_steps,
                max_iter=spec.steps,
                initial_const=spec.c,
                batch_size=n,
                verbose=False,
            )
        x_np = x.detach().cpu().numpy()
        out = atk.generate(x=x_np, y=y.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(out, dtype=x_np.dtype)).to(x.device)


def stub_visdom() -> None:
    """adv_lib imports ``visdom`` for its optional live plots; the benchmark never plots, so a stub will do."""
    try:
        import visdom  # noqa: F401
    except ImportError:
        stub = types.ModuleType("visdom")
        stub.Visdom = None  # type: ignore[attr-defined]
        sys.modules["visdom"] = stub


class AdvLib(Library):
    name = "adv_lib"
    dist = "adv-lib"

    def __init__(self, model: nn.Module, num_classes: int, x_example: Tensor) -> None:
        super().__init__(model, num_classes, x_example)
        stub_visdom()
        import adv_lib.attacks as al

        self.al = al

    def api(self, spec: Spec) -> str | None:
        if spec.targeted and spec.attack != "cw_l2":
            return None
        return {
            "fgsm": None,
            "bim": "pgd_linf(random_init=False)",
            "pgd": "pgd_linf",
            "pgd_l2": None,
            "apgd_ce": "apgd(loss_function='ce')",
            "apgd_l2": "apgd(norm=2, loss_function='ce')",
            "cw_l2": "carlini_wagner_l2",
        }[spec.attack]

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        al, m = self.al, self.model
        if spec.attack in ("bim", "pgd"):
            return al.pgd_linf(
                m, x, y, spec.eps, steps=spec.steps, random_init=spec.attack == "pgd", absolute_step_size=spec.alpha
            )
        if spec.attack in ("apgd_ce", "apgd_l2"):
            norm = 2.0 if spec.norm == "l2" else float("inf")
            return al.apgd(m, x, y, spec.eps, norm=norm, n_iter=spec.steps, n_restarts=1, loss_function="ce")
        return al.carlini_wagner_l2(
            m,
            x,
            y,
            targeted=spec.targeted,
            confidence=0.0,
            learning_rate=spec.lr,
            initial_const=spec.c,
            binary_search_steps=spec.binary_search_steps,
            max_iterations=spec.steps,
            abort_early=spec.abort_early,
        )


class AutoAttack(Library):
    name = "AutoAttack"
    dist = "pyautoattack"

    def api(self, spec: Spec) -> str | None:
        if spec.targeted or spec.attack not in ("apgd_ce", "apgd_l2"):
            return None
        return f"APGDAttack(norm='{spec.norm_label}', loss='ce')"

    def run(self, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
        from pyautoattack.autopgd_base import APGDAttack

        atk = APGDAttack(
            self.model,
            n_iter=spec.steps,
            norm=spec.norm_label,
            n_restarts=1,
            eps=spec.eps,
            seed=0,
            loss="ce",
            rho=0.75,
            device=x.device,
        )
        return atk.perturb(x, y)


LIBRARIES: dict[str, type[Library]] = {
    "advlab": Advlab,
    "advlab-prepared": AdvlabPrepared,
    "torchattacks": Torchattacks,
    "foolbox": Foolbox,
    "ART": ART,
    "adv_lib": AdvLib,
    "AutoAttack": AutoAttack,
}
