"""GANPair: two light-weight GANs, A and B, trained with manual optimization.

One ``training_step`` is one iteration of the reference loop for *each* model: a discriminator
update then a generator update of A (on ``batch["a"]`` only), then the same for B (on
``batch["b"]`` only). Four optimizers (G_A, D_A, G_B, D_B), so Lightning's ``global_step``
advances by **4 per batch**: ``max_steps``, ``ModelCheckpoint(every_n_train_steps)`` and the
``step`` axis of the loggers count optimizer steps, whereas ``log_every_n_steps`` and
``val_check_interval`` count batches. See ``docs/gan.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from galgen_lightning.errors import require
from galgen_lightning.models.base import MODELS, PairModule, count_parameters
from galgen_lightning.models.gan.network import (
    Discriminator,
    Generator,
    Plan,
    auto_aug_prob,
    diff_augment,
    generator_loss,
    gradient_penalty,
    hinge_loss,
    hinge_per_sample,
    is_power_of_two,
)
from galgen_lightning.noise import counter_normal

OPTIMIZERS_PER_BATCH = 4  # G_A, D_A, G_B, D_B: global_step advances by this per training batch
HEADS = ("main", "small", "both")


def ema_multi_avg_fn(beta: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """torch's EMA (:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`) for float tensors;
    integer tensors (batch norm's step counters) are copied, as an average of counters means nothing."""
    ema = get_ema_multi_avg_fn(beta)

    def update(averaged: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        if averaged[0].is_floating_point():
            ema(averaged, current, n_averaged)
        else:
            torch._foreach_copy_(averaged, current)

    return update


class LightweightGAN(nn.Module):
    """One model of the pair: generator ``G``, discriminator ``D`` and the EMA generator ``G_ema``.

    ``G_ema`` is a :class:`torch.optim.swa_utils.AveragedModel` of ``G`` (parameters and
    buffers, ``use_buffers=True``) with decay ``ema_beta``; its generator is ``G_ema.module``.
    Checkpoints from before it (keys ``G_ema.<name>``) load into ``G_ema.module.<name>``.

    Args:
        generator: the generator.
        discriminator: the discriminator.
        ema_beta: EMA decay of ``G_ema``.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator, ema_beta: float = 0.995) -> None:
        super().__init__()
        self.G = generator
        self.D = discriminator
        self.G_ema = AveragedModel(generator, multi_avg_fn=ema_multi_avg_fn(ema_beta), use_buffers=True).requires_grad_(False)

    @property
    def generator_ema(self) -> nn.Module:
        """The EMA generator itself (what sampling uses)."""
        return self.G_ema.module

    @torch.no_grad()
    def update_ema(self) -> None:
        """``G_ema <- beta G_ema + (1 - beta) G`` for parameters and float buffers (batch-norm
        running statistics); integer buffers are copied."""
        self.G_ema.update_parameters(self.G)

    @torch.no_grad()
    def reset_ema(self) -> None:
        """``G_ema <- G`` (the averaged model's first update is a copy)."""
        self.G_ema.n_averaged.zero_()
        self.G_ema.update_parameters(self.G)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # checkpoints from before AveragedModel hold the EMA generator under G_ema.<name>
        old, new = prefix + "G_ema.", prefix + "G_ema.module."
        for key in [k for k in state_dict if k.startswith(old) and not k.startswith(new) and k != old + "n_averaged"]:
            state_dict[new + key[len(old) :]] = state_dict.pop(key)
        if any(k.startswith(new) for k in state_dict):
            state_dict.setdefault(old + "n_averaged", torch.tensor(1, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def head_scores(main: Tensor, small: Tensor, head: str) -> Tensor:
    """The per-sample score of ``head``: ``"main"``, ``"small"`` or ``"both"`` (their mean)."""
    if head == "main":
        return main
    if head == "small":
        return small
    if head == "both":
        return 0.5 * (main + small)
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def discriminator_objective(
    D: Callable[..., tuple[Tensor, Tensor, Tensor | None]],
    real: Tensor,
    fake: Tensor,
    augment: Callable[[Tensor], Tensor],
    gp_weight: float = 0.0,
    D_gp: Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None = None,
) -> dict[str, Tensor]:
    """The discriminator's loss on one batch: hinge on both heads + reconstruction (+ penalty).

    Args:
        D: the discriminator (possibly compiled).
        real: training images.
        fake: generated images (detached here).
        augment: DiffAugment applied to both.
        gp_weight: gradient-penalty weight; 0 skips the penalty.
        D_gp: the discriminator used when the penalty is on (an eager one: compiled graphs do not
            support the double backward); default ``D``.

    Returns:
        ``loss`` (what is minimised), ``hinge`` (main + small head), ``recon``, ``gp`` (0 when
        off), ``real_score`` and ``fake_score`` (mean main-head outputs).
    """
    real_in = augment(real)
    fake_in = augment(fake.detach())
    net = D
    if gp_weight > 0:
        real_in = real_in.detach().requires_grad_(True)
        fake_in = fake_in.detach().requires_grad_(True)
        net = D_gp or D
    real_main, real_small, recon = net(real_in, reconstruct=True)
    fake_main, fake_small, _ = net(fake_in)
    hinge = hinge_loss(real_main, fake_main) + hinge_loss(real_small, fake_small)
    assert recon is not None
    loss = hinge + recon
    gp = torch.zeros((), device=real.device)
    if gp_weight > 0:
        gp = gradient_penalty([real_in, fake_in], [real_main, real_small, fake_main, fake_small], gp_weight)
        loss = loss + gp
    return {
        "loss": loss,
        "hinge": hinge.detach(),
        "recon": recon.detach(),
        "gp": gp.detach(),
        "real_score": real_main.detach().float().mean(),
        "fake_score": fake_main.detach().float().mean(),
    }


class GANPair(PairModule):
    """Two light-weight GANs, A and B, their EMA generators, and the shared-latent sampler.

    Args:
        latent_dim: latent size (256 in the reference).
        fmap_max: most channels of any stage (512 in the reference).
        fmap_inverse_coef: width rule of the reference (12): generator channels at side ``s`` are
            ``min(fmap_max, 2**(coef+1)/s)``, discriminator ``min(fmap_max, 2**coef/s)``.
        attn_sizes: feature-map sides with attention, in G and D (``[32]`` in the reference;
            ``[]`` for none). The discriminator's small head always has attention.
        attn_heads: attention heads (8 in the reference).
        attn_dim_head: channels per attention head (64 in the reference).
        small_size: side of the discriminator's second head input (default
            ``min(32, image_size // 2)``).
        small_width: channels of the second head (64 in the reference).
        decoder_upsamples: x2 stages of the reconstruction decoder from 8x8 features (4 in the
            reference, i.e. it reconstructs at 128 px).
        lr: Adam learning rate of all four optimizers.
        betas: Adam betas.
        accumulate: micro-batches per batch: each model's batch is split into this many chunks
            whose gradients are accumulated before the update (the reference's batch 10 x 4 is
            ``data.batch_size: 40`` with ``accumulate: 4``). Steps per batch stay 4.
        gp_weight: gradient-penalty weight (10); 0 disables it.
        gp_every: the penalty is added every this many iterations (batches), from the first.
        aug_prob: DiffAugment probability; ``null`` chooses the reference's
            ``min(0.5, (1e5 - N) * 3e-6)`` for ``N < 1e5`` images per model (``data.n``), else 0.
        aug_types: DiffAugment operations, from ``translation`` and ``cutout``.
        ema_beta: EMA decay of the sampling generator (0.995), kept by
            :class:`torch.optim.swa_utils.AveragedModel`.
        ema_every: the EMA is updated every this many iterations (10 in the reference).
        ema_start: before this many iterations the EMA generator is a plain copy of the live one
            (the reference averages only after 20,000 iterations).
        sample_batch_size: generation batch of ``sample`` and the evaluation callbacks (see
            :class:`PairModule`; 256 here).
        **kwargs: the options every family shares (:class:`PairModule`): ``image_size``
            (linked from ``data.image_size``; a power of two >= 16 here), ``channels``,
            ``channels_last``, ``fused_adam`` (the four Adams) and ``compile`` (the generators and
            discriminators for training; the gradient-penalty steps use the eager discriminator:
            compiled graphs have no double backward), and the divergence guard's
            ``max_bad_steps`` (a batch counts when the update of a model's G or D was skipped),
            ``max_loss_ratio`` (on the discriminator loss; off by default: GAN losses oscillate)
            and ``check_grads``.
    """

    optimizer_steps_per_batch = OPTIMIZERS_PER_BATCH

    def __init__(
        self,
        latent_dim: int = 256,
        fmap_max: int = 512,
        fmap_inverse_coef: int = 12,
        attn_sizes: list[int] = [32],  # noqa: B006 (jsonargparse needs a literal default)
        attn_heads: int = 8,
        attn_dim_head: int = 64,
        small_size: int | None = None,
        small_width: int = 64,
        decoder_upsamples: int = 4,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        accumulate: int = 1,
        gp_weight: float = 10.0,
        gp_every: int = 4,
        aug_prob: float | None = None,
        aug_types: list[str] = ["translation", "cutout"],  # noqa: B006
        ema_beta: float = 0.995,
        ema_every: int = 10,
        ema_start: int = 20000,
        sample_batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(sample_batch_size=sample_batch_size, **kwargs)
        side = self.image_size
        require(is_power_of_two(side) and side >= 16, "model.image_size", "a power of two >= 16 (data.image_size)", side)
        require(latent_dim >= 1, "model.latent_dim", "at least 1", latent_dim)
        require(fmap_max >= 1, "model.fmap_max", "at least 1", fmap_max)
        require(fmap_inverse_coef >= 0, "model.fmap_inverse_coef", "non-negative", fmap_inverse_coef)
        sizes_ok = all(is_power_of_two(s) and 4 <= s <= side for s in attn_sizes)
        require(sizes_ok, "model.attn_sizes", f"powers of two from 4 to the image side {side}", list(attn_sizes))
        require(attn_heads >= 1, "model.attn_heads", "at least 1", attn_heads)
        require(attn_dim_head >= 1, "model.attn_dim_head", "at least 1", attn_dim_head)
        require(small_size is None or 1 <= small_size <= side, "model.small_size", f"in 1..{side} (or null)", small_size)
        require(small_width >= 1, "model.small_width", "at least 1", small_width)
        require(decoder_upsamples >= 1, "model.decoder_upsamples", "at least 1", decoder_upsamples)
        require(0 < lr < math.inf, "model.lr", "positive", lr)
        require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "model.betas", "two numbers in [0, 1)", list(betas))
        require(accumulate >= 1, "model.accumulate", "at least 1", accumulate)
        require(0 <= gp_weight < math.inf, "model.gp_weight", "non-negative (0: no penalty)", gp_weight)
        require(gp_every >= 1, "model.gp_every", "at least 1", gp_every)
        require(aug_prob is None or 0 <= aug_prob <= 1, "model.aug_prob", "in [0, 1] (or null)", aug_prob)
        unknown = sorted(set(aug_types) - {"translation", "cutout"})
        require(not unknown, "model.aug_types", "from translation, cutout", unknown)
        require(0 <= ema_beta <= 1, "model.ema_beta", "in [0, 1]", ema_beta)
        require(ema_every >= 1, "model.ema_every", "at least 1", ema_every)
        require(ema_start >= 0, "model.ema_start", "non-negative", ema_start)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model_a = self._build()
        self.model_b = self._build()
        self.aug_prob = aug_prob if aug_prob is not None else 0.0
        self._compiled: dict[str, tuple[Callable, Callable]] = {}
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _build(self) -> LightweightGAN:
        hp = self.hparams
        plan = Plan(
            self.image_size,
            self.channels,
            hp.fmap_max,
            hp.fmap_inverse_coef,
            tuple(hp.attn_sizes),
            hp.attn_heads,
            hp.attn_dim_head,
        )
        G = Generator(plan, hp.latent_dim)
        D = Discriminator(plan, hp.small_size, hp.small_width, hp.decoder_upsamples)
        return LightweightGAN(G, D, hp.ema_beta)

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self) -> None:
        if self.hparams.aug_prob is None:
            n = getattr(getattr(self.trainer, "datamodule", None), "n", None)
            self.aug_prob = auto_aug_prob(int(n)) if n is not None else 0.0
        if self.compile_networks and not self._compiled:
            self._compiled = {w: (torch.compile(self.model(w).G), torch.compile(self.model(w).D)) for w in MODELS}

    def configure_optimizers(self):
        hp = self.hparams
        opts = []
        for which in MODELS:
            net = self.model(which)
            for params in (net.G.parameters(), net.D.parameters()):
                opts.append(self.make_adam(params, lr=hp.lr, betas=tuple(hp.betas)))
        return opts  # [G_A, D_A, G_B, D_B]

    def _nets(self, which: str) -> tuple[Callable, Callable]:
        """(generator, discriminator) used for training: compiled when asked, else eager."""
        if which in self._compiled:
            return self._compiled[which]
        net = self.model(which)
        return net.G, net.D

    def _augment(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.aug_prob, self.hparams.aug_types)

    def _chunks(self, n: int) -> list[tuple[slice, float]]:
        """Micro-batch slices of a batch of ``n`` and the weight of each (its share of ``n``)."""
        k = min(self.hparams.accumulate, n)
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [(slice(a, b), (b - a) / n) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def _latents(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    # ------------------------------------------------------------------ training
    @property
    def iteration(self) -> int:
        """Training iterations (batches) done so far: ``global_step // 4``."""
        return self.global_step // OPTIMIZERS_PER_BATCH

    def _discriminator_update(self, which: str, real: Tensor, opt, apply_gp: bool) -> dict[str, Tensor]:
        G, D = self._nets(which)
        stats: dict[str, Tensor] = {}
        self.toggle_optimizer(opt)
        try:
            opt.zero_grad(set_to_none=True)
            for part, weight in self._chunks(len(real)):
                x = real[part]
                with torch.no_grad():
                    fake = self.to_memory_format(G(self._latents(len(x))))
                gp_weight = self.hparams.gp_weight if apply_gp else 0.0
                out = discriminator_objective(D, x, fake, self._augment, gp_weight, self.model(which).D)
                self.manual_backward(out["loss"] * weight)
                for key, value in out.items():
                    if key != "loss":
                        stats[key] = stats.get(key, 0.0) + value * weight
                stats["loss"] = stats.get("loss", 0.0) + out["loss"].detach() * weight
            self._guard_update(which, stats["loss"], "discriminator loss")
            opt.step()  # on_before_optimizer_step drops the gradients of a skipped update
        finally:
            self.untoggle_optimizer(opt)
        return stats

    def _generator_update(self, which: str, n: int, opt) -> Tensor:
        G, D = self._nets(which)
        total = torch.zeros((), device=self.device)
        self.toggle_optimizer(opt)
        try:
            opt.zero_grad(set_to_none=True)
            for part, weight in self._chunks(n):
                fake = self.to_memory_format(G(self._latents(part.stop - part.start)))
                main, small, _ = D(self._augment(fake))
                loss = generator_loss(main) + generator_loss(small)
                self.manual_backward(loss * weight)
                total = total + loss.detach() * weight
            self._guard_update(which, total, "generator loss", observe=False)
            opt.step()  # on_before_optimizer_step drops the gradients of a skipped update
        finally:
            self.untoggle_optimizer(opt)
        return total

    def _guard_update(self, which: str, loss: Tensor, what: str, observe: bool = True) -> None:
        """Mark ``which``'s update skipped when ``loss`` is non-finite (on any rank) or spikes;
        its gradients are checked and dropped in :meth:`PairModule.on_before_optimizer_step` (only
        the parameters of the optimizer being stepped have gradients: the others are toggled off)."""
        from galgen_lightning.faults import agree_on_all_ranks

        flags, values = agree_on_all_ranks(torch.isfinite(loss).reshape(1), loss.reshape(1))
        if not flags[0]:
            self.guard.mark(which, what)
        elif observe:
            self.guard.observe(which, values[0])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        hp = self.hparams
        iteration = self.iteration
        apply_gp = hp.gp_weight > 0 and iteration % hp.gp_every == 0
        opts = self.optimizers()
        for k, which in enumerate(MODELS):
            g_opt, d_opt = opts[2 * k], opts[2 * k + 1]
            real = self.to_memory_format(batch[which])
            d = self._discriminator_update(which, real, d_opt, apply_gp)
            g = self._generator_update(which, len(real), g_opt)
            if (iteration + 1) % hp.ema_every == 0:
                if iteration + 1 > hp.ema_start:
                    self.model(which).update_ema()
                else:
                    self.model(which).reset_ema()
            kw = dict(on_step=True, on_epoch=True, batch_size=len(real))
            self.log(f"train/d_loss_{which}", d["hinge"], prog_bar=True, **kw)
            self.log(f"train/g_loss_{which}", g, prog_bar=True, **kw)
            self.log(f"train/recon_{which}", d["recon"], **kw)
            self.log(f"train/d_real_{which}", d["real_score"], **kw)
            self.log(f"train/d_fake_{which}", d["fake_score"], **kw)
            if apply_gp:
                self.log(f"train/gp_{which}", d["gp"], **kw)
        self.log("train/aug_prob", self.aug_prob, on_step=False, on_epoch=True, batch_size=1)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """D scores on held-out images and on samples with fixed latents, and their hinge loss.

        ``val/hinge_<m>`` is the mean of ``relu(1 + D_m(held-out)) + relu(1 - D_m(G_m(z)))``: 2
        when D cannot tell; below 2 when it separates them. Compare with ``train/d_loss_<m>``
        (two heads, so 4 when D cannot tell) and the discriminator test.
        """
        x = self.to_memory_format(batch)
        idx = self.validation_indices(batch_idx, len(x), x.device)
        for which in MODELS:
            fake = self.fake_images(which, idx, seed=self.val_seed, ema=False)
            real_score = self.discriminator_scores(which, x)
            fake_score = self.discriminator_scores(which, fake)
            kw = dict(on_epoch=True, batch_size=len(x), sync_dist=True)
            self.log(f"val/d_real_{which}", real_score.mean(), **kw)
            self.log(f"val/d_fake_{which}", fake_score.mean(), **kw)
            self.log(f"val/hinge_{which}", hinge_per_sample(real_score, fake_score).mean(), **kw)

    # ------------------------------------------------------------------ sampling and scoring
    def fake_images(self, which: str, indices: Tensor, seed: int, ema: bool = True) -> Tensor:
        """Raw generator output for the samples ``indices`` (not clamped), float32.

        The latent of sample ``i`` is ``counter_normal(seed, i, (latent_dim,))`` and its
        noise-injection maps come from streams 1, 2, ... of the same counter: the same for A and B
        and independent of the batch. Uses the modules in their current mode (call in eval mode
        for batch-independent batch norm).
        """
        net = self.model(which)
        G = net.generator_ema if ema else net.G
        z = counter_normal(seed, indices, (self.hparams.latent_dim,), stream=0, dtype=self.noise_dtype)

        def noise(stage: int, shape: tuple[int, int, int]) -> Tensor:
            return counter_normal(seed, indices, shape, stream=stage + 1, dtype=self.noise_dtype)

        with torch.no_grad(), self.sampling_autocast(indices.device):
            return G(z, noise).float()

    def discriminator_scores(self, which: str, images: Tensor, head: str = "main") -> Tensor:
        """Per-sample output of discriminator ``which`` (no augmentation), ``(B,)`` float32."""
        with torch.no_grad(), self.sampling_autocast(images.device):
            main, small, _ = self.model(which).D(self.to_memory_format(images.to(self.device)))
        return head_scores(main.float(), small.float(), head)

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        """Samples of the EMA generator of ``which``, clamped to [0, 1]; non-finite ones are not ok."""
        x = self.fake_images(which, indices, seed, ema=True)
        ok = torch.isfinite(x).flatten(1).all(dim=1)
        return x.clamp(0.0, 1.0), ok, {}

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of one model, and of its generator and discriminator (the EMA copy not counted)."""
        net = self.model_a
        return {**super().parameter_counts(), "generator": count_parameters(net.G), "discriminator": count_parameters(net.D)}
