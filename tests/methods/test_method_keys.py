"""Every field of a method's config moves its stage's key or is listed here with the reason it
cannot change a result (as tests/test_key_fields.py does for the pipeline's configs).

Each field is set to another valid value and the method's ``key_fields()`` (what its stage key
hashes besides the inputs' keys) compared: the fields of :data:`OUT_OF_KEY` must leave it alone,
every other field must move it. ``device``/``dtype`` of Dr.E are keyed as resolved (see
tests/methods/test_dre.py): set here to values off the CPU-float32 path, they move it.
"""

from __future__ import annotations


import pytest

from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.gallon.config import GallonMethod
from tag_pipeline.methods.glem.config import GlemMethod
from tag_pipeline.methods.leading.config import LeadingMethod

#: ``{config: {field: why it cannot change the artifact}}`` (the configs' key_fields docstrings say the same).
OUT_OF_KEY: dict[str, dict[str, str]] = {
    "GallonMethod": {"timing_repeats": "forward passes timed for infer_ms_per_node; predictions do not read it"},
    "GlemMethod": {"threads": "torch CPU threads: float rounding only"},
    "LeadingMethod": {
        "threads": "torch CPU threads: float rounding only",
        "gnns": "TAPE's GNNs on the embeddings are artifacts of their own, keyed on this run's path",
    },
    "DreMethod": {
        "threads": "torch CPU threads: float rounding only",
        "eval_batch_size": "nodes per scoring pass; prompts have equal lengths, nothing is padded",
        "gnns": "TAPE's GNNs beside Dr.E are artifacts of their own",
        "report_nodes": "rows of the report",
    },
}

#: The other value each field is set to, where its type alone does not give one.
OTHER = {
    ("GallonMethod", "student_features"): ["TA", "E"], ("GallonMethod", "lm_teacher_features"): ["TA"],
    ("GallonMethod", "alphas"): [1.0], ("GallonMethod", "betas"): [0.0], ("GallonMethod", "temperatures"): [1.0, 2.0],
    ("GallonMethod", "gammas"): [0.0, 0.5],
    ("LeadingMethod", "features"): ["TA"],
    ("DreMethod", "device"): "cuda", ("DreMethod", "dtype"): "bfloat16", ("DreMethod", "codebook_size"): 64, ("DreMethod", "views"): 2,
}


@pytest.mark.parametrize("cls", [GallonMethod, GlemMethod, LeadingMethod, DreMethod], ids=lambda c: c.__name__)
def test_every_field_is_classified_and_moves_the_key_iff_it_is_in_it(cls, monkeypatch, other_value):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU machine's default path
    out = OUT_OF_KEY.get(cls.__name__, {})
    assert set(out) <= set(cls.model_fields), f"{cls.__name__}: OUT_OF_KEY names no such field"
    base = cls()
    k0 = base.key_fields()
    wrong = []
    for name in cls.model_fields:
        if name == "name":  # the discriminator
            continue
        value = other_value(cls, name, getattr(base, name), OTHER)
        changed = cls.model_validate(base.model_dump() | {name: value})  # a valid config
        moved = changed.key_fields() != k0
        if moved == (name in out):
            wrong.append(f"{name} -> {value!r}: key {'moved' if moved else 'unchanged'}")
    assert not wrong, f"{cls.__name__}: " + "; ".join(wrong)
