"""Recipes for the built-in model: everything that decides its weights, hashed into its cache key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from fedprag.shared.models.tiny import numerics

# Bump when the corpus or training code changes in a way that changes the weights.
CODE_VERSION = 4
# Fields added after models were shipped: left out of the digest while at their defaults.
_LATER_FIELDS = ("decay", "mix_writing", "numerics")


def _digested(recipe: object, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """``recipe``'s fields but those in ``skip``; a field added after models were shipped
    (``_LATER_FIELDS``) only when it is not at its default, so those models keep their digest."""
    return {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
            if f.name not in skip and (f.name not in _LATER_FIELDS or getattr(recipe, f.name) != f.default)}


@dataclass(frozen=True)
class TinyRecipe:
    """Architecture, corpus mix and optimisation of a tiny Llama-architecture model."""

    name: str = "default"
    vocab_size: int = 2000
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 344
    max_positions: int = 512
    steps: int = 3600
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    # Shares of the corpus mix: reading comprehension, multi-hop reading, passage language
    # modelling, and closed-book recall of facts the model read as plain passages.
    mix_reading: float = 0.60
    mix_multihop: float = 0.10
    mix_passage_lm: float = 0.15
    mix_recall: float = 0.15
    max_context_passages: int = 3
    # Training runs in two stages. Until ``reading_stage`` (a fraction of the steps) every example
    # is single-passage reading; afterwards the mix above applies. Reading passages grow from one
    # sentence to full length by ``curriculum``, and distractor passages join once both are over.
    # A small model learns to copy one kind of value at a time. Measured on 2 cores: with the
    # full mix from the first step, 2,400 steps taught it to copy only cities and companies;
    # reading alone first (question before context) taught all six attributes in 2,000.
    reading_stage: float = 0.55
    curriculum: float = 0.25
    # The floating-point settings the build trains under (shared/models/tiny/numerics.py):
    # "portable" gives the same bytes on any x86-64 CPU with AVX2; "native" those of this CPU family.
    numerics: str = "native"

    def __post_init__(self) -> None:
        numerics.check(self.numerics)

    def digest(self) -> str:
        """A stable hash of the recipe and the code version; the model cache key."""
        payload = json.dumps({"code": CODE_VERSION, **_digested(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def describe(self) -> dict[str, object]:
        """The recipe as written next to the model it built."""
        return {"digest": self.digest(), **_digested(self)}


# Bump when the finishing stages' code changes in a way that changes the weights.
FINISH_CODE_VERSION = 1


@dataclass(frozen=True)
class TinyFinish:
    """Finishing stages trained from the model ``base`` builds (see :mod:`fedprag.shared.models.tiny.finish`):
    the name-lookup drill, then a mix with distractor passages. ``base`` may itself be finished.

    Measured on 2 cores, single-hop exact match on the default benchmark with the top 3 passages
    in context (top passage only in brackets):

    * the reader (it picks a person's passage among two distractors at about chance): 0.247 (0.889);
    * ``drilled``, drill and mix from it: 0.575 (0.936), PRAG from 0.219 to 0.239;
    * ``polished``, 2,400 more mix steps with more reading, decayed: 0.811 (0.972);
    * ``annealed``, 1,600 more at half the rate: 0.839 (0.978);
    * ``read``, 2,000 more with still more reading: 0.872 (0.983); closed-book 0.036;
    * ``default``, 1,600 more at 3e-4 with a quarter of the examples teaching it to write its own
      encoding data (``mix_writing``): 0.911 top 3; closed-book 0.028 (benchmarks/results/augment.md).
      The build's check with one passage fell from 0.95 to 0.73 (company 0.15, instrument 0.35),
      while with two distractor passages it rose from 0.90 to 0.92.

    Stage lengths were set by watching this benchmark figure, which moves by up to 0.13 between
    checkpoints 400 steps apart (0.76, 0.73, 0.86, 0.83, 0.87 in the last stage). The build's own
    check on 40 fresh people with two distractor passages, which no stage was tuned on, gives
    0.63, 0.87, 0.91 and 0.92 for the four finished models.

    The drill alone matched names only after a plateau of about 1,200 steps; mixed with reading
    from the start, it showed no such jump in 2,400 steps; and the drill and mix put into the
    from-scratch schedule (reading, drill, mix) left the model at 0.55 with one passage.
    """

    base: TinyRecipe | TinyFinish
    name: str = "default"
    drill_steps: int = 1600
    drill_lr: float = 2e-3
    mix_steps: int = 1600
    mix_lr: float = 1e-3
    # Shares of the mix stage: reading with 1–2 distractors, the drill, passage language
    # modelling and closed-book recall about the training population (the rest).
    mix_reading: float = 0.5
    mix_lookup: float = 0.2
    mix_passage_lm: float = 0.15
    # Writing encoding data (a rewrite and QA pairs) about a training person's passage.
    mix_writing: float = 0.0
    batch_size: int = 32
    max_length: int = 512
    seed: int = 1
    # Decay each stage's learning rate along a cosine to a tenth of it; constant when False.
    decay: bool = False
    # As TinyRecipe.numerics, for these stages.
    numerics: str = "native"

    def __post_init__(self) -> None:
        numerics.check(self.numerics)

    def _stages(self) -> dict[str, object]:
        """Every field but ``base`` (later fields only when set, see :func:`_digested`)."""
        return _digested(self, skip=("base",))

    def digest(self) -> str:
        """A stable hash of the base recipe, these stages and their code version; the cache key."""
        payload = json.dumps({"finish_code": FINISH_CODE_VERSION, "base": self.base.digest(), **self._stages()},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def describe(self) -> dict[str, object]:
        """The recipe as written next to the model it built, its base recipe included."""
        return {"digest": self.digest(), "base": self.base.describe(), **self._stages()}


# The reader, then the first finish (drill and mix): the default model before the decayed stages.
# Both keep the name "default" so that models built before later stages existed are reused.
_DRILLED = TinyFinish(base=TinyRecipe())
# Decayed mix stages with more reading, each from the model before it.
_POLISHED = TinyFinish(base=_DRILLED, drill_steps=0, mix_steps=2400, mix_reading=0.6, mix_lookup=0.1, seed=2, decay=True)
_ANNEALED = TinyFinish(base=_POLISHED, drill_steps=0, mix_steps=1600, mix_lr=5e-4, mix_reading=0.6, mix_lookup=0.1,
                       seed=3, decay=True)
# The last reading stage: the default model before it learned to write its own encoding data.
# It ships too, so that rebuilding the default model trains only the writing stage (25 min on 2 cores).
_READ = TinyFinish(base=_ANNEALED, drill_steps=0, mix_steps=2000, mix_lr=5e-4, mix_reading=0.7, mix_lookup=0.1,
                   mix_passage_lm=0.1, seed=4, decay=True)

_SMALL = TinyRecipe(name="small", steps=900, reading_stage=0.0, curriculum=0.3, mix_reading=0.2, mix_multihop=0.0,
                    mix_passage_lm=0.4, mix_recall=0.4, numerics="portable")

RECIPES: dict[str, TinyRecipe | TinyFinish] = {
    "reader": TinyRecipe(),
    "drilled": _DRILLED,
    "polished": _POLISHED,
    "annealed": _ANNEALED,
    "read": _READ,
    "default": TinyFinish(base=_READ, drill_steps=0, mix_steps=1600, mix_lr=3e-4, mix_reading=0.55, mix_lookup=0.05,
                          mix_passage_lm=0.075, mix_writing=0.25, seed=5, decay=True),
    # A fast recipe for the integration tests, which check LoRA encodings (PRAG, Poly-PRAG), never
    # in-context reading: same architecture, fewer steps, and a mix weighted towards the passage
    # language modelling and closed-book recall those encodings rely on. Built portable: a rebuild
    # gives the shipped bytes on any x86-64 CPU with AVX2.
    "small": _SMALL,
    # The first 40 steps of "small" (about 25 s): what the test that rebuilds a shipped
    # model bit for bit builds.
    "short": dataclasses.replace(_SMALL, name="short", steps=40),
}


def model_name(recipe: TinyRecipe | TinyFinish) -> str:
    """The directory name of the model ``recipe`` builds, cached or shipped: ``tiny-<name>-<digest>``."""
    return f"tiny-{recipe.name}-{recipe.digest()[:12]}"


def recipe_named(name: str) -> TinyRecipe | TinyFinish:
    """Look up a recipe by name, with an error listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"model.recipe: unknown recipe '{name}' (known: {', '.join(RECIPES)})") from None
