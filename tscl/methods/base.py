"""The method protocol: what the trainer may ask of every contrastive method, and nothing else.

A method is a :class:`Method` (an ``nn.Module``) that declares, instead of the trainer finding
them by reflection:

- ``encoder`` — the backbone that is exported, embedded and probed;
- ``modalities`` — the payload kinds it can train on (``waveform``, ``ehr``, ``image``);
- ``augment_names`` / ``generator_names`` — the attributes holding its
  :class:`~tscl.augment.Augment` pipelines and its own ``torch.Generator`` objects, so that
  :meth:`rng_state` / :meth:`set_rng_state` checkpoint every random stream it draws from and a
  resumed run continues step for step;
- ``make_sampler(index, seed)`` — a batch sampler over the dataset index;
- ``forward(x, batch)`` — the loss of one batch (``x`` the modality payload, ``batch`` the id
  columns: ``patient_ids``, ``record_ids`` and :meth:`batch_extras`);
- ``after_step()`` — state updated outside autograd (EMA encoders, queues); a no-op by default;
- ``batch_extras(index)`` — per-row tensors the trainer slices into every batch (SupCon's labels);
- ``seed_rank(rank)`` — decorrelate the augmentation draws of data-parallel ranks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tscl.augment import build_augment

__all__ = ["Method"]


class Method(nn.Module):
    modalities: tuple[str, ...] = ("waveform",)
    augment_names: tuple[str, ...] = ("augment",)
    generator_names: tuple[str, ...] = ()
    default_augment: dict[str, str] = {}  # modality -> augmentation spec used when the caller gave none

    def make_sampler(self, index, seed: int = 0):  # pragma: no cover - every method overrides it
        raise NotImplementedError

    def forward(self, x, batch: dict) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def after_step(self) -> None:
        """Update state outside autograd after the optimiser step (nothing by default)."""

    def batch_extras(self, index) -> dict:
        """Per-row tensors ``{name: [N]}`` added to every batch (none by default)."""
        return {}

    def augments(self) -> list:
        return [getattr(self, name) for name in self.augment_names if getattr(self, name, None) is not None]

    def generators(self) -> list[torch.Generator]:
        return [getattr(self, name) for name in self.generator_names if getattr(self, name, None) is not None]

    def seed_rank(self, rank: int) -> None:
        """Give rank ``rank`` its own augmentation draws (the rows already differ between ranks)."""
        for a in self.augments():
            a.seed = a.seed + rank
        # the generator_names streams (windows, lead choices) stay equal on every rank: gathered views must match

    def rng_state(self, device) -> dict:
        """Every random stream this method owns, as JSON-able lists."""
        return {"augment": [a.generator(device).get_state().tolist() for a in self.augments()],
                "generators": [g.get_state().tolist() for g in self.generators()]}

    def set_rng_state(self, state: dict, device) -> None:
        augments, gens = self.augments(), self.generators()
        saved_aug, saved_gen = state.get("augment", []), state.get("generators", [])
        if len(saved_aug) != len(augments) or len(saved_gen) != len(gens):
            raise ValueError(f"checkpoint holds {len(saved_aug)} augmentation and {len(saved_gen)} generator "
                             f"states; {type(self).__name__} has {len(augments)} and {len(gens)}")
        for a, s in zip(augments, saved_aug):
            a.generator(device).set_state(torch.tensor(s, dtype=torch.uint8))
        for g, s in zip(gens, saved_gen):
            g.set_state(torch.tensor(s, dtype=torch.uint8))

    @classmethod
    def check_modality(cls, modality: str) -> None:
        """Refuse a modality the method does not train on (a classmethod: the CLI asks before any data loads)."""
        if modality not in cls.modalities:
            raise ValueError(f"{cls.__name__} trains on {', '.join(cls.modalities)} data, not {modality}")

    def set_modality(self, modality: str) -> None:
        """Check ``modality`` and, where an augmentation is still the method's waveform default, swap in
        the method's default for that modality (``default_augment``)."""
        self.check_modality(modality)
        given = getattr(self, "augment_given", False)  # set by build_method when the caller chose one
        if modality != "waveform" and modality in self.default_augment and not given:
            for name in self.augment_names:
                if getattr(self, name, None) is not None:
                    setattr(self, name, build_augment(self.default_augment[modality], modality=modality))
        for name in self.augment_names:
            aug = getattr(self, name, None)
            if aug is not None and aug.ops and aug.modality != modality:
                raise ValueError(f"{type(self).__name__}: augmentation {aug!r} is for {aug.modality} data; the "
                                 f"dataset is {modality} data")
